// Small checks of three rules the concurrency stress test leans on: L0's order never rests on a
// tie, a snapshot reads the last sequence under the snapshot list's lock, and the block cache's
// usage is read under each shard's lock. Each is checked directly, without timing.
import Glibc
import MoraineFormat
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@testable import MoraineEngine

@Suite("Engine invariants")
struct EngineInvariantTests {
    static func info(_ number: UInt64, largestSequence: SequenceNumber) -> TableFileInfo {
        TableFileInfo(
            number: number, sizeBytes: 100, smallest: makeInternalKey(Array("a".utf8), 1, .value),
            largest: makeInternalKey(Array("z".utf8), largestSequence, .value), smallestSequence: 1,
            largestSequence: largestSequence)
    }

    @Test("L0 is newest first by largest sequence, then by file number, whatever the edit's order")
    func levelZeroTiesBreakByFileNumber() {
        let seed = SeededRandom.testSeed("L0 tie order")
        var rng = SeededRandom(seed: seed)
        // Sequences 10, 10, 10, 7, 7, 3 over files 1…6: the expected order is by sequence
        // descending, and among equal sequences by number descending.
        let files: [(UInt64, SequenceNumber)] = [(1, 10), (2, 10), (3, 10), (4, 7), (5, 7), (6, 3)]
        let expected: [UInt64] = [3, 2, 1, 5, 4, 6]
        for _ in 0..<20 {
            var edit = VersionEdit()
            var order = files
            for i in order.indices.reversed() { order.swapAt(i, rng.below(i + 1)) }
            for (number, sequence) in order { edit.newFiles.append((0, Self.info(number, largestSequence: sequence))) }
            let version = Version.empty(levelCount: 7).applying(edit, sink: ObsoleteFiles()).version
            #expect(version.levels[0].map(\.number) == expected, "edit order \(order.map(\.0)); seed \(seed)")
            // Adding a file to a version whose L0 already holds some keeps the same rule.
            var more = VersionEdit()
            more.newFiles.append((0, Self.info(7, largestSequence: 10)))
            let grown = version.applying(more, sink: ObsoleteFiles()).version
            #expect(grown.levels[0].map(\.number) == [7] + expected, "seed \(seed)")
        }
    }

    @Test("a snapshot loads its sequence while the snapshot list is locked")
    func snapshotLoadsUnderTheListLock() {
        let list = SnapshotList()
        let older = list.make { 5 }
        // Inside the load, the list's lock is held: another thread asking for the oldest
        // snapshot must wait until the new one is registered, so it sees 5, never a gap.
        let observed = Observed()
        let started = Atomic<Bool>(false)
        let snapshot = list.make {
            startThread(name: "snapshot-reader") {
                started.store(true, ordering: .releasing)
                let oldest = list.oldest
                observed.set(oldest)
            }
            while !started.load(ordering: .acquiring) { sched_yield() }
            usleep(20_000)  // the reader is now blocked on the lock (or about to be)
            #expect(observed.value == nil, "oldest was read while make held the lock")
            return 3
        }
        var waited = 0
        while observed.value == nil && waited < 5_000 {
            usleep(1_000)
            waited += 1
        }
        #expect(observed.value == 3, "the reader saw \(String(describing: observed.value))")
        #expect(snapshot.sequence == 3 && list.count == 2)
        snapshot.release()
        older.release()
        #expect(list.oldest == nil && list.count == 0)
    }

    @Test("block cache usage is exact once inserts stop, and reading it while they run is safe")
    func blockCacheUsageUnderInserts() throws {
        let cache = BlockCache(capacityBytes: 1 << 30, shardCount: 4)
        var builder = BlockBuilder(restartInterval: 16)
        builder.add(key: makeInternalKey(Array("k".utf8), 1, .value), value: Array(repeating: 7, count: 100))
        let block = try Block(copying: builder.finish(), origin: "usage")
        let threads = 4
        let perThread = 2_000
        let done = Atomic<Int>(0)
        for t in 0..<threads {
            startThread(name: "cache-insert") {
                for i in 0..<perThread { cache.insert(BlockCacheKey(tableID: UInt64(t + 1), offset: UInt64(i)), block) }
                done.wrappingAdd(1, ordering: .releasing)
            }
        }
        var reads = 0
        while done.load(ordering: .acquiring) < threads && reads < 1_000_000 {
            _ = cache.usageBytes  // ThreadSanitizer flagged this read before the shard lock
            reads += 1
        }
        while done.load(ordering: .acquiring) < threads { usleep(1_000) }
        #expect(cache.usageBytes == threads * perThread * block.chargeBytes)
    }
}

/// A value one thread sets and another reads, under a pthread lock (which ThreadSanitizer follows).
private final class Observed: @unchecked Sendable {
    private let lock = ConditionLock()
    private var stored: SequenceNumber? = nil
    func set(_ value: SequenceNumber?) { lock.withLock { stored = value } }
    var value: SequenceNumber? { lock.withLock { stored } }
}
