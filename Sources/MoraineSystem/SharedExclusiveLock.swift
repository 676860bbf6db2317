// A lock held either by any number of sharers or by one exclusive holder, on one atomic word, so
// that any thread may release a share (a write queued without waiting is released by whichever
// thread applies it: the Redis front end's key stripes, docs/RESP.md). An exclusive taker that is
// waiting keeps new sharers out, so a stream of sharers cannot starve it. Waiting spins briefly,
// then yields, then sleeps in short steps: the holders it waits for are short (one write group).
// Thread-safe. Not reentrant.
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A shared/exclusive lock whose shares may be released by any thread.
public final class SharedExclusiveLock: Sendable {
    /// Sharers holding it (>= 0), or -1 while held exclusively.
    private let state = Atomic<Int>(0)
    /// Exclusive takers waiting: new sharers wait for them.
    private let exclusiveWaiting = Atomic<Int>(0)

    public init() {}

    public func lockShared() {
        var attempts = 0
        while true {
            let current = state.load(ordering: .relaxed)
            if current >= 0 && exclusiveWaiting.load(ordering: .relaxed) == 0
                && state.compareExchange(expected: current, desired: current + 1, ordering: .acquiring).exchanged
            {
                return
            }
            Self.pause(&attempts)
        }
    }

    /// Releases one share; any thread may, for a share taken on another.
    public func unlockShared() { state.subtract(1, ordering: .releasing) }

    public func lockExclusive() {
        exclusiveWaiting.add(1, ordering: .relaxed)
        var attempts = 0
        while !state.compareExchange(expected: 0, desired: -1, ordering: .acquiring).exchanged { Self.pause(&attempts) }
        exclusiveWaiting.subtract(1, ordering: .relaxed)
    }

    public func unlockExclusive() { state.store(0, ordering: .releasing) }

    private static func pause(_ attempts: inout Int) {
        attempts += 1
        if attempts < 64 {
            return  // spin: the holder is likely on the other core, nearly done
        } else if attempts < 256 {
            sched_yield()
        } else {
            usleep(50)
        }
    }
}
