// Futexes, memfds, descriptor passing and peer credentials for the shared-memory carrier.
// These need _GNU_SOURCE (struct ucred, memfd_create, POLLRDHUP), which the header must not
// define, so they live here.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "CSystemShims.h"

int CSystemShims_yield(void) { return sched_yield(); }

int CSystemShims_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_nanos) {
    struct timespec timeout = {.tv_sec = timeout_nanos / 1000000000, .tv_nsec = timeout_nanos % 1000000000};
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_nanos >= 0 ? &timeout : NULL, NULL, 0);
    return rc == 0 ? 0 : errno;
}

int CSystemShims_futex_wake(uint32_t *word, int count) {
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc >= 0 ? (int)rc : -errno;
}

int CSystemShims_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd >= 0 ? fd : -errno;
}

int CSystemShims_memfd_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0 ? 0 : errno;
}

int CSystemShims_memfd_size_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) != 0;
}

long CSystemShims_send_with_fd(int socket, const void *bytes, size_t length, int fd) {
    struct iovec vector = {.iov_base = (void *)bytes, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        message.msg_control = control.buffer;
        message.msg_controllen = sizeof control.buffer;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &fd, sizeof(int));
    }
    for (;;) {
        ssize_t sent = sendmsg(socket, &message, MSG_NOSIGNAL);
        if (sent >= 0) return (long)sent;
        if (errno != EINTR) return -errno;
    }
}

long CSystemShims_receive_with_fd(int socket, void *bytes, size_t capacity, int *fd) {
    *fd = -1;
    struct iovec vector = {.iov_base = bytes, .iov_len = capacity};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } control;
    struct msghdr message = {
        .msg_iov = &vector, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof control.buffer};
    ssize_t received;
    for (;;) {
        received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
        if (received >= 0) break;
        if (errno != EINTR) return -errno;
    }
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int descriptors[4];
        memcpy(descriptors, CMSG_DATA(header), count * sizeof(int));
        // Keep the first descriptor; a peer that sent more gets the rest closed, not leaked.
        for (size_t i = 0; i < count; i++) {
            if (*fd < 0) *fd = descriptors[i];
            else close(descriptors[i]);
        }
    }
    return (long)received;
}

int CSystemShims_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return errno;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int CSystemShims_pollrdhup(void) { return POLLRDHUP; }
