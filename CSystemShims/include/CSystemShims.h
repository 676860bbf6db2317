// CSystemShims: the only C in Moraine. Thin wrappers over liburing, libpmem, libnuma, liblz4
// and a CRC32C with a hardware (SSE4.2) path chosen at run time and a portable software path.
// liburing's and libpmem's functions import directly; only what the Swift importer cannot see
// (macros built from enums, O_DIRECT, libnuma's bitmask API) is wrapped here. No feature macro
// is defined in this header: _GNU_SOURCE here clashes with the Swift Glibc module's fd_set, so
// the .c files that need it define it themselves. <sys/types.h> must precede <liburing.h>.
#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H


#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <liburing.h>
#include <libpmem.h>

// ---- CRC32C (Castagnoli) ---------------------------------------------------------------
/// Extends `crc` (a finished CRC32C of earlier bytes, 0 for none) over `length` bytes,
/// using the SSE4.2 instruction when the CPU has it and the table path otherwise.
uint32_t CSystemShims_crc32c_extend(uint32_t crc, const void *data, size_t length);
/// The table-driven software path, always available.
uint32_t CSystemShims_crc32c_extend_software(uint32_t crc, const void *data, size_t length);
/// The SSE4.2 path. Precondition: CSystemShims_crc32c_hardware_available() returned 1.
uint32_t CSystemShims_crc32c_extend_hardware(uint32_t crc, const void *data, size_t length);
/// 1 when the running CPU has the SSE4.2 CRC32 instruction, else 0.
int CSystemShims_crc32c_hardware_available(void);

// ---- LZ4 -------------------------------------------------------------------------------
/// Worst-case compressed size for `input_size` bytes, or 0 when the input is too large.
int CSystemShims_lz4_compress_bound(int input_size);
/// Compresses; returns bytes written, or 0 when `capacity` is too small.
int CSystemShims_lz4_compress(const void *source, int source_size, void *destination, int capacity);
/// Decompresses exactly; returns bytes written, or a negative number for malformed input.
int CSystemShims_lz4_decompress(const void *source, int source_size, void *destination, int capacity);

// ---- io_uring --------------------------------------------------------------------------
/// IOSQE_IO_LINK: the next submission starts only after this one succeeds.
static inline unsigned CSystemShims_iosqe_io_link(void) { return IOSQE_IO_LINK; }
/// IOSQE_FIXED_FILE: the descriptor is an index into the ring's registered files.
static inline unsigned CSystemShims_iosqe_fixed_file(void) { return IOSQE_FIXED_FILE; }
/// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (kernel 6.1 and later).
static inline unsigned CSystemShims_ioring_setup_single_issuer_deferred(void) {
    return IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
}
/// IORING_SETUP_COOP_TASKRUN (kernel 5.19 and later).
static inline unsigned CSystemShims_ioring_setup_coop_taskrun(void) { return IORING_SETUP_COOP_TASKRUN; }
/// The O_DIRECT open flag (hidden from Swift without _GNU_SOURCE).
int CSystemShims_o_direct(void);

// ---- NUMA ------------------------------------------------------------------------------
/// 1 when the kernel has NUMA support (numa_available() succeeded), else 0.
int CSystemShims_numa_available(void);
/// The highest node number (0 on a one-node machine or without NUMA support).
int CSystemShims_numa_max_node(void);
/// Writes up to `capacity` CPU numbers of `node` to `cpus`; returns how many the node has, or -1.
int CSystemShims_numa_node_cpus(int node, int *cpus, int capacity);
/// Total memory of `node` in bytes (free bytes in `*free_bytes`), or -1.
long long CSystemShims_numa_node_size(int node, long long *free_bytes);
/// Restricts the calling thread to the CPUs of `node`; 0 on success, else an errno.
int CSystemShims_numa_run_on_node(int node);
/// Binds the pages of [address, address+length) to `node` (mbind MPOL_BIND); 0 or an errno.
int CSystemShims_numa_bind_memory(void *address, size_t length, int node);
/// Binds the calling thread's future allocations (and threads it starts later) to `node`
/// (set_mempolicy MPOL_BIND); 0 or an errno (ENOSYS without NUMA support).
int CSystemShims_numa_bind_process_memory(int node);
/// The CPU the calling thread runs on (sched_getcpu), or -1.
int CSystemShims_current_cpu(void);
/// The node a CPU belongs to, or -1.
int CSystemShims_numa_node_of_cpu(int cpu);

// ---- Cache hints --------------------------------------------------------------------------
/// Asks for the cache line at `address` ahead of a write to it (no fault, no effect on memory).
static inline void CSystemShims_prefetch_for_write(const void *address) { __builtin_prefetch(address, 1, 3); }

// ---- Shared memory between processes ---------------------------------------------------
// Atomics on words inside a mapping two processes share. Swift's atomics are defined for
// Swift storage; these builtins say exactly which order each access has.
/// Loads with acquire ordering.
static inline uint64_t CSystemShims_load_acquire_u64(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}
/// Stores with release ordering.
static inline void CSystemShims_store_release_u64(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
/// Loads with acquire ordering.
static inline uint32_t CSystemShims_load_acquire_u32(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}
/// Stores with release ordering.
static inline void CSystemShims_store_release_u32(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
/// Stores with sequentially consistent ordering (the sleep/wake handshake needs a full fence
/// between "I am going to sleep" and re-checking the ring).
static inline void CSystemShims_store_seq_cst_u32(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}
/// Atomically adds and returns the previous value (sequentially consistent).
static inline uint32_t CSystemShims_fetch_add_u32(uint32_t *word, uint32_t value) {
    return __atomic_fetch_add(word, value, __ATOMIC_SEQ_CST);
}
/// A full memory fence.
static inline void CSystemShims_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/// A spin-wait hint to the CPU (PAUSE on x86, YIELD on ARM).
static inline void CSystemShims_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
/// Gives the calling thread's CPU to another runnable thread, if any (sched_yield).
int CSystemShims_yield(void);
/// Sleeps while `*word == expected`, at most `timeout_nanos` (shared, not private, futex: the
/// word may be in a mapping of another process). Returns 0 when woken, else an errno (EAGAIN:
/// the word had changed; ETIMEDOUT; EINTR).
int CSystemShims_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_nanos);
/// Wakes up to `count` sleepers on `word`; returns how many woke, or -errno.
int CSystemShims_futex_wake(uint32_t *word, int count);
/// memfd_create with close-on-exec and sealing allowed; returns a descriptor or -errno.
int CSystemShims_memfd_create(const char *name);
/// Seals a memfd's size (no shrink, no grow, no further seals); 0 or errno.
int CSystemShims_memfd_seal_size(int fd);
/// 1 when `fd` is a memfd that can no longer shrink, so mapping it cannot end in SIGBUS.
int CSystemShims_memfd_size_is_sealed(int fd);
/// Sends `length` bytes and, when `fd` >= 0, the descriptor `fd` (SCM_RIGHTS) on a Unix socket.
/// Returns bytes sent or -errno.
long CSystemShims_send_with_fd(int socket, const void *bytes, size_t length, int fd);
/// Receives up to `capacity` bytes and at most one descriptor (SCM_RIGHTS) into `*fd` (-1 when
/// none came). Returns bytes received (0 at end of stream) or -errno.
long CSystemShims_receive_with_fd(int socket, void *bytes, size_t capacity, int *fd);
/// The peer's process, user and group ids of a connected Unix socket (SO_PEERCRED); 0 or errno.
int CSystemShims_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid);
/// poll(2) flag for "peer closed its end" (POLLRDHUP needs _GNU_SOURCE).
int CSystemShims_pollrdhup(void);

#endif
