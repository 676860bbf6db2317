// Snapshots pin a sequence number: reads through one see the database as of that sequence, and
// compactions keep every entry a live snapshot may need. The list is guarded by its own lock.
import MoraineFormat
import Synchronization

/// A consistent point-in-time view. Released by `Database.releaseSnapshot` or when dropped.
public final class Snapshot: Sendable {
    public let sequence: SequenceNumber
    private let list: SnapshotList

    private let released = Atomic<Bool>(false)

    init(sequence: SequenceNumber, list: SnapshotList) {
        self.sequence = sequence
        self.list = list
    }

    /// Stops pinning the sequence; later compactions may drop what only it needed. Idempotent.
    func release() {
        if !released.exchange(true, ordering: .acquiringAndReleasing) { list.remove(sequence) }
    }

    deinit { release() }
}

/// Live snapshot sequence numbers with their counts.
final class SnapshotList: Sendable {
    private let counts = Mutex<[SequenceNumber: Int]>([:])

    func make(_ sequence: SequenceNumber) -> Snapshot {
        counts.withLock { $0[sequence, default: 0] += 1 }
        return Snapshot(sequence: sequence, list: self)
    }

    func remove(_ sequence: SequenceNumber) {
        counts.withLock { c in
            if let n = c[sequence] { c[sequence] = n > 1 ? n - 1 : nil }
        }
    }

    /// The oldest live snapshot, or nil.
    var oldest: SequenceNumber? { counts.withLock { $0.keys.min() } }
    var count: Int { counts.withLock { $0.values.reduce(0, +) } }
}
