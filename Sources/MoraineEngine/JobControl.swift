// What ties a running job to whoever watches it: the job publishes how many bytes it has done
// (so a watcher can tell a slow job from a stuck one), and stops at its next check once it is
// cancelled or its deadline has passed, removing the outputs it wrote (CompactionJob).
//
// Thread-safety: the job thread records and checks; any thread reads and cancels. Atomics only.
import MoraineSystem
import Synchronization

/// A running job's progress, cancel flag and deadline.
public final class JobControl: Sendable {
    private let bytes = Atomic<UInt64>(0)
    private let cancelled = Atomic<Bool>(false)
    /// Wall-clock nanoseconds after which the job stops (0: never).
    public let deadlineUnixNanos: Int64

    public init(deadlineUnixNanos: Int64 = 0) {
        self.deadlineUnixNanos = deadlineUnixNanos
    }

    /// Bytes of input the job has merged so far.
    public var bytesDone: UInt64 { bytes.load(ordering: .relaxed) }

    /// Whether `cancel` was called.
    public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Asks the job to stop at its next check; it removes its outputs and fails.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }

    func record(bytesDone: UInt64) { bytes.store(bytesDone, ordering: .relaxed) }

    /// Throws when the job must stop.
    /// - Throws: `unavailable` naming job `jobID` and why: cancelled, or past its deadline.
    func check(jobID: UInt64) throws {
        if cancelled.load(ordering: .relaxed) {
            throw MoraineError(.unavailable, "compaction job \(jobID) was cancelled")
        }
        if deadlineUnixNanos != 0, wallClockNanos() >= deadlineUnixNanos {
            throw MoraineError(.unavailable, "compaction job \(jobID) passed its deadline; its sender has given up on it")
        }
    }
}
