// Wrappers that need _GNU_SOURCE or libnuma's bitmask API, kept out of the header so the Swift
// importer sees neither.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include "CSystemShims.h"

int CSystemShims_o_direct(void) { return O_DIRECT; }

int CSystemShims_numa_available(void) { return numa_available() >= 0 ? 1 : 0; }

int CSystemShims_numa_max_node(void) {
    if (numa_available() < 0) return 0;
    return numa_max_node();
}

int CSystemShims_numa_node_cpus(int node, int *cpus, int capacity) {
    if (numa_available() < 0) return -1;
    struct bitmask *mask = numa_allocate_cpumask();
    if (mask == NULL) return -1;
    if (numa_node_to_cpus(node, mask) != 0) {
        numa_free_cpumask(mask);
        return -1;
    }
    int count = 0;
    for (unsigned cpu = 0; cpu < mask->size; cpu++) {
        if (numa_bitmask_isbitset(mask, cpu)) {
            if (count < capacity) cpus[count] = (int)cpu;
            count++;
        }
    }
    numa_free_cpumask(mask);
    return count;
}

long long CSystemShims_numa_node_size(int node, long long *free_bytes) {
    if (numa_available() < 0) return -1;
    return numa_node_size64(node, free_bytes);
}

int CSystemShims_numa_run_on_node(int node) {
    if (numa_available() < 0) return ENOSYS;
    return numa_run_on_node(node) == 0 ? 0 : errno;
}

int CSystemShims_numa_bind_memory(void *address, size_t length, int node) {
    if (numa_available() < 0) return ENOSYS;
    if (node < 0 || node > numa_max_node()) return EINVAL;
    unsigned long mask[16] = {0};
    if ((unsigned)node >= sizeof(mask) * 8) return EINVAL;
    mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
    long rc = mbind(address, length, MPOL_BIND, mask, sizeof(mask) * 8, MPOL_MF_MOVE);
    return rc == 0 ? 0 : errno;
}

int CSystemShims_numa_bind_process_memory(int node) {
    if (numa_available() < 0) return ENOSYS;
    if (node < 0 || node > numa_max_node()) return EINVAL;
    unsigned long mask[16] = {0};
    if ((unsigned)node >= sizeof(mask) * 8) return EINVAL;
    mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
    long rc = set_mempolicy(MPOL_BIND, mask, sizeof(mask) * 8);
    return rc == 0 ? 0 : errno;
}

int CSystemShims_numa_node_of_cpu(int cpu) {
    if (numa_available() < 0) return -1;
    return numa_node_of_cpu(cpu);
}

int CSystemShims_current_cpu(void) { return sched_getcpu(); }
