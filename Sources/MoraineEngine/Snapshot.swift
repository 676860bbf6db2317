// Snapshots pin a sequence number: reads through one see the database as of that sequence, and
// compactions keep every entry a live snapshot may need. The list is guarded by its own lock.
// A new snapshot reads the last sequence while holding that lock, so a compaction that reads
// `oldest` (under the same lock) either sees the snapshot or picked its bound before the
// snapshot's sequence was read. In the second case every entry of the compaction's inputs
// (installed before it started) is at or below that sequence, and the newest of them per key,
// which a compaction always keeps, is what the snapshot reads. Reading the sequence before
// taking the lock left a gap in which a compaction saw no snapshot, bounded itself by a newer
// sequence, and dropped the version the snapshot was about to pin.
import MoraineFormat
import MoraineSystem
import Synchronization

/// A consistent point-in-time view. Released by `Database.releaseSnapshot` or when dropped.
/// An engine's own snapshot pins its sequence in the engine; a connected database's snapshot is
/// a lease the compute node holds for the client's session (`leaseID`), given back on release.
/// A snapshot reads only through the database that took it.
public final class Snapshot: Sendable {
    public let sequence: SequenceNumber
    /// The compute node's id for a connected database's snapshot; 0 for an engine's own.
    public let leaseID: UInt64
    private let list: SnapshotList?
    private let onRelease: (@Sendable () -> Void)?

    private let released = Atomic<Bool>(false)

    init(sequence: SequenceNumber, list: SnapshotList) {
        self.sequence = sequence
        self.list = list
        leaseID = 0
        onRelease = nil
    }

    /// A snapshot held elsewhere under `leaseID`; `onRelease` gives the lease back (once).
    public init(leaseID: UInt64, sequence: SequenceNumber, onRelease: @escaping @Sendable () -> Void) {
        self.sequence = sequence
        self.leaseID = leaseID
        list = nil
        self.onRelease = onRelease
    }

    /// Stops pinning the sequence; later compactions may drop what only it needed. Idempotent.
    public func release() {
        if !released.exchange(true, ordering: .acquiringAndReleasing) {
            list?.remove(sequence)
            onRelease?()
        }
    }

    deinit { release() }
}

/// Live snapshot sequence numbers with their counts.
final class SnapshotList: @unchecked Sendable {
    /// Guards `counts`. A pthread mutex rather than Synchronization.Mutex: ThreadSanitizer sees
    /// through pthread locks, not through Mutex on Linux, and reported the list's accesses as
    /// races under the stress test.
    private let lock = ConditionLock()
    private var counts: [SequenceNumber: Int] = [:]

    /// Registers a snapshot at the sequence `currentSequence` returns, called under the list's
    /// lock (see the file's opening comment for why the load must happen there).
    func make(_ currentSequence: () -> SequenceNumber) -> Snapshot {
        let sequence = lock.withLock {
            let sequence = currentSequence()
            counts[sequence, default: 0] += 1
            return sequence
        }
        return Snapshot(sequence: sequence, list: self)
    }

    func remove(_ sequence: SequenceNumber) {
        lock.withLock {
            if let n = counts[sequence] { counts[sequence] = n > 1 ? n - 1 : nil }
        }
    }

    /// The oldest live snapshot, or nil.
    var oldest: SequenceNumber? { lock.withLock { counts.keys.min() } }
    var count: Int { lock.withLock { counts.values.reduce(0, +) } }
}
