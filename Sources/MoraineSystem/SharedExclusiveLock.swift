// A lock held either by any number of sharers or by one exclusive holder, over a pthread
// read-write lock that prefers the exclusive side (a steady stream of sharers cannot starve it).
// The Redis front end's key stripes use it: blind writes (SET, MSET) share a stripe, since the
// write batch's sequence already orders them, while a read-modify-write (INCR, DEL's count, SET NX)
// holds its stripes alone. Thread-safe; a holder must not take the same lock again.
#if canImport(Glibc)
    import Glibc
#endif

/// A shared/exclusive lock.
public final class SharedExclusiveLock: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    public func lockShared() { pthread_rwlock_rdlock(lock) }
    public func lockExclusive() { pthread_rwlock_wrlock(lock) }
    public func unlock() { pthread_rwlock_unlock(lock) }
}
