// A mutex with a condition variable, over pthreads. Synchronization.Mutex has no condition
// variable, and the engine's writer queue and background scheduler need to wait on one.
// Thread-safe by construction; `withLock` bodies must not re-enter the same lock.
#if canImport(Glibc)
    import Glibc
#endif

/// A pthread mutex paired with a condition variable.
public final class ConditionLock: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` holding the lock.
    @inlinable
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits for a broadcast. Precondition: the caller holds the lock.
    public func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a broadcast or until `seconds` pass. Precondition: the caller holds the lock.
    public func wait(seconds: Double) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nanos = Int(now.tv_nsec) + Int(seconds * 1e9)
        var deadline = timespec(
            tv_sec: now.tv_sec + nanos / 1_000_000_000, tv_nsec: nanos % 1_000_000_000)
        pthread_cond_timedwait(condition, mutex, &deadline)
    }

    /// Wakes every waiter.
    public func broadcast() { pthread_cond_broadcast(condition) }
}

/// A second condition variable on a `ConditionLock`'s mutex, for waiters that only one kind of
/// event concerns. (The engine's writer queue has its own: when writers and background threads
/// shared one condition, every write woke both background threads, which then fought the next
/// write for the mutex.)
public final class LockCondition: @unchecked Sendable {
    private let lock: ConditionLock
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init(on lock: ConditionLock) {
        self.lock = lock
        condition = .allocate(capacity: 1)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
    }

    /// Waits for a broadcast of this condition. Precondition: the caller holds the lock.
    public func wait() { pthread_cond_wait(condition, lock.mutex) }

    /// Wakes every waiter of this condition.
    public func broadcast() { pthread_cond_broadcast(condition) }
}

/// Starts a detached OS thread running `body` (background work belongs on threads we own,
/// not on the cooperative pool).
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    precondition(startThreadIfPossible(name: name, body), "pthread_create failed")
}

/// Starts a detached OS thread running `body`; false when the system refuses another thread
/// (EAGAIN at the process's thread limit), which a server must survive.
public func startThreadIfPossible(name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) {
            self.body = body
            self.name = name
        }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
        &thread, nil,
        { raw in
            let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, box)
    guard rc == 0 else {
        Unmanaged<AnyObject>.fromOpaque(box).release()
        return false
    }
    pthread_detach(thread)
    return true
}

/// `body(0..<count)`, the items spread over up to `threads` threads (this one included); the
/// results in order. An item that throws makes the whole call throw (the first error, by index).
public func parallelMap<T: Sendable>(
    _ count: Int, threads: Int, _ body: @escaping @Sendable (Int) throws -> T
) throws -> [T] {
    let results = ParallelResults<T>(count)
    let work: @Sendable () -> Void = {
        while true {
            let index: Int = results.lock.withLock {
                defer { results.next += 1 }
                return results.next
            }
            guard index < count else { break }
            let outcome = Result { try body(index) }
            results.lock.withLock { results.values[index] = outcome }
        }
        results.lock.withLock {
            results.running -= 1
            results.lock.broadcast()
        }
    }
    let helpers = max(0, min(threads, count) - 1)
    results.lock.withLock { results.running = 1 }
    for i in 0..<helpers {
        results.lock.withLock { results.running += 1 }
        if !startThreadIfPossible(name: "moraine-par\(i)", work) { results.lock.withLock { results.running -= 1 } }
    }
    work()
    results.lock.withLock { while results.running > 0 { results.lock.wait() } }
    return try results.values.map { try $0!.get() }
}

/// The shared state of one `parallelMap`.
private final class ParallelResults<T>: @unchecked Sendable {
    let lock = ConditionLock()
    var values: [Result<T, any Error>?]
    var next = 0
    var running = 0
    init(_ count: Int) { values = Array(repeating: nil, count: count) }
}
