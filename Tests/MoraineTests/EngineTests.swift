// Engine behaviours a RocksDB user relies on, each checked directly: snapshots keep what they
// need through compaction, tombstones go only when nothing can see them, files outlive the
// iterators that read them, trivial moves, write stalls, manifest rolls, and reopen.
import Dispatch
import Foundation
import Glibc
import Moraine
import MoraineFormat
import MoraineMemtable
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@testable import MoraineEngine

func openTemporary(_ configure: (inout Options) -> Void = { _ in }) throws -> (Database, String) {
    let directory = makeTemporaryDirectory("moraine-engine")
    var options = Options()
    options.createIfMissing = true
    configure(&options)
    return (try Database(path: directory, options: options), directory)
}

func tableFiles(_ directory: String) throws -> Set<String> {
    Set(try PosixFileSystem.shared.children(of: directory).filter { $0.hasSuffix(".sst") })
}

func key(_ i: Int) -> [UInt8] { Array("key\(String(i).leftPad(8))".utf8) }

@Suite("Engine behaviour")
struct EngineTests {
    @Test("a snapshot keeps its view through flush and compaction; tombstones drop once unneeded")
    func snapshotsAndTombstones() throws {
        let (db, directory) = try openTemporary { $0.writeBufferSize = 16 << 10 }
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<2000 { try db.put(key(i), Array("old\(i)".utf8)) }
        let snapshot = try db.snapshot()
        for i in 0..<2000 where i % 2 == 0 { try db.delete(key(i)) }
        for i in 0..<2000 where i % 2 == 1 { try db.put(key(i), Array("new\(i)".utf8)) }
        try db.compactRange()
        for i in stride(from: 0, to: 2000, by: 97) {
            #expect(try db.get(key(i), options: ReadOptions(snapshot: snapshot)) == Array("old\(i)".utf8))
            #expect(try db.get(key(i)) == (i % 2 == 0 ? nil : Array("new\(i)".utf8)))
        }
        let entriesWithSnapshot = db.engine!.liveFiles().count
        #expect(entriesWithSnapshot > 0)
        db.releaseSnapshot(snapshot)
        try db.compactRange()
        // With no snapshot, only the 1000 live keys remain, and no tombstone survives at the bottom.
        var entries: UInt64 = 0
        var deletions: UInt64 = 0
        for (_, file) in db.engine!.liveFiles() {
            let reader = try TableReaderProbe.open(directory: directory, number: file.number)
            entries += reader.entryCount
            deletions += reader.deletionCount
        }
        #expect(entries == 1000)
        #expect(deletions == 0)
    }

    @Test("compactRange rewrites the deepest level only when it can drop something, or when forced")
    func bottommostRewrite() throws {
        let (db, directory) = try openTemporary { $0.writeBufferSize = 16 << 10 }
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<2000 { try db.put(key(i), Array(repeating: 3, count: 40)) }
        try db.compactRange()
        let settled = Set(db.engine!.liveFiles().map(\.1.number))
        // Everything is in the deepest level and holds no tombstone: nothing to do.
        try db.compactRange()
        #expect(Set(db.engine!.liveFiles().map(\.1.number)) == settled, "a second compactRange rewrote the deepest level")
        // Forced, it is rewritten anyway (new file numbers, same contents).
        try db.compactRange(bottommost: .force)
        let forced = Set(db.engine!.liveFiles().map(\.1.number))
        #expect(forced.isDisjoint(with: settled))
        #expect(try db.get(key(1234)) == Array(repeating: 3, count: 40))
        // A tombstone kept in the deepest level for a snapshot stays with .skip, goes by default.
        let snapshot = try db.snapshot()
        try db.delete(key(7))
        try db.compactRange()
        db.releaseSnapshot(snapshot)
        func deletions() throws -> UInt64 {
            try db.engine!.liveFiles().reduce(0) { $0 + (try TableReaderProbe.open(directory: directory, number: $1.1.number).deletionCount) }
        }
        #expect(try deletions() == 1)
        try db.compactRange(bottommost: .skip)
        #expect(try deletions() == 1)
        try db.compactRange()
        #expect(try deletions() == 0)
        #expect(try db.get(key(7)) == nil)
    }

    @Test("iterators seek past a key's many hidden versions and see exactly their snapshot")
    func manyVersions() throws {
        let (db, directory) = try openTemporary()
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<50 { try db.put(key(i), Array("first\(i)".utf8)) }
        // Key 20 gets 2,000 versions and key 30 a deletion among hundreds of versions: far more
        // than the 8 an iterator steps over before it seeks.
        var snapshot: Snapshot? = nil
        for v in 0..<2000 {
            try db.put(key(20), Array("v\(v)".utf8))
            if v == 999 { snapshot = try db.snapshot() }
            if v < 300 { try db.put(key(30), Array("w\(v)".utf8)) }
        }
        try db.delete(key(30))
        for v in 0..<20 { try db.put(key(31), Array("x\(v)".utf8)) }
        func scan(_ options: ReadOptions) throws -> [(String, String)] {
            let iterator = try db.makeIterator(options: options)
            var out: [(String, String)] = []
            try iterator.seekToFirst()
            while iterator.isValid {
                out.append((String(decoding: iterator.key, as: UTF8.self), String(decoding: iterator.value, as: UTF8.self)))
                try iterator.next()
            }
            return out
        }
        let now = try scan(ReadOptions())
        #expect(now.count == 49)  // key 30 deleted
        #expect(now.first { $0.0 == String(decoding: key(20), as: UTF8.self) }?.1 == "v1999")
        #expect(now.first { $0.0 == String(decoding: key(31), as: UTF8.self) }?.1 == "x19")
        #expect(!now.contains { $0.0 == String(decoding: key(30), as: UTF8.self) })
        let then = try scan(ReadOptions(snapshot: snapshot))
        #expect(then.count == 50)
        #expect(then.first { $0.0 == String(decoding: key(20), as: UTF8.self) }?.1 == "v999")
        #expect(then.first { $0.0 == String(decoding: key(30), as: UTF8.self) }?.1 == "w299")
        #expect(then.first { $0.0 == String(decoding: key(31), as: UTF8.self) }?.1 == "first31")
        // The same after a flush, with the versions in a table instead of the memtable.
        try db.flush()
        #expect(try scan(ReadOptions()).map(\.1) == now.map(\.1))
        #expect(try scan(ReadOptions(snapshot: snapshot)).map(\.1) == then.map(\.1))
        // Backward agrees with forward.
        let iterator = try db.makeIterator()
        var backward: [String] = []
        try iterator.seekToLast()
        while iterator.isValid {
            backward.append(String(decoding: iterator.value, as: UTF8.self))
            try iterator.prev()
        }
        #expect(backward.reversed() == now.map(\.1))
        if let snapshot { db.releaseSnapshot(snapshot) }
    }

    @Test("table files stay while an iterator reads them, and go after")
    func filesOutliveIterators() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 16 << 10
            $0.disableAutoCompactions = true
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        // Keys in a scattered order, so the L0 files overlap and compaction rewrites them (disjoint
        // files would just move).
        for i in 0..<3000 { try db.put(key(i * 7919 % 3000), Array(repeating: 7, count: 50)) }
        try db.flush()
        let before = try tableFiles(directory)
        #expect(!before.isEmpty)
        var iterator: DatabaseIterator? = try db.makeIterator()
        try db.compactRange()
        let during = try tableFiles(directory)
        #expect(before.isSubset(of: during), "a file an iterator holds was deleted")
        var count = 0
        try iterator!.seekToFirst()
        while iterator!.isValid {
            count += 1
            try iterator!.next()
        }
        #expect(count == 3000)
        iterator = nil
        let after = try tableFiles(directory)
        #expect(
            after.isDisjoint(with: before),
            "obsolete files remain after the last reader left: \(after.intersection(before))")
    }

    @Test("sequential inserts reach deeper levels by trivial moves")
    func trivialMoves() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 32 << 10
            $0.targetFileSizeBase = 32 << 10
            $0.maxBytesForLevelBase = 64 << 10
            $0.level0FileNumCompactionTrigger = 1
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<20000 { try db.put(key(i), Array(repeating: 1, count: 40)) }
        try db.flush()
        try db.compactRange()
        let stats = db.stats()
        #expect(stats.trivialMoves > 0, "no trivial move in a sequential load: \(stats.json)")
        #expect(try db.get(key(12345)) == Array(repeating: 1, count: 40))
    }

    @Test("waitForBackgroundIdle returns once nothing is flushing, compacting or due; false while paused")
    func backgroundIdle() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 64 << 10
            $0.level0FileNumCompactionTrigger = 2
            $0.targetFileSizeBase = 64 << 10
            $0.maxBytesForLevelBase = 256 << 10
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        var generator = SplitMix64(seed: testSeed("background idle"))
        for _ in 0..<30000 { try db.put(key(Int.random(in: 0..<100_000, using: &generator)), Array(repeating: 7, count: 60)) }
        #expect(db.waitForBackgroundIdle(timeoutNanos: 60_000_000_000), "still busy after 60 s: \(db.stats().shape)")
        // Idle means settled: no memtable waiting, and L0 under the compaction trigger.
        let settled = db.stats()
        #expect(settled.immutableMemtables == 0, "\(settled.shape)")
        #expect(settled.levels[0].fileCount < 2, "\(settled.shape)")
        #expect(settled.compactions > 0, "no compaction ran: \(settled.shape)")
        // Paused, background work never finishes by itself: the wait says so at once.
        try db.pauseBackgroundWork()
        let started = monotonicNanos()
        #expect(!db.waitForBackgroundIdle(timeoutNanos: 10_000_000_000))
        #expect(monotonicNanos() - started < 5_000_000_000)
        try db.continueBackgroundWork()
    }

    @Test("writesMayWait says whether the last write group had to make room, and clears at the next that did not")
    func writesMayWaitHint() throws {
        let (db, directory) = try openTemporary { $0.writeBufferSize = 64 << 10 }
        defer {
            try? db.close()
            removeTree(directory)
        }
        try db.put(key(0), Array(repeating: 1, count: 100))
        #expect(!db.writesMayWait)
        // Fill the memtable until a put has to switch it: that put leaves the hint set.
        var switched = false
        for i in 1..<5000 where !switched {
            try db.put(key(i), Array(repeating: 1, count: 100))
            switched = db.writesMayWait
        }
        #expect(switched, "no put switched the 64 KiB memtable")
        try db.put(key(99_999), Array(repeating: 2, count: 100))
        #expect(!db.writesMayWait, "a put with room left the hint set")
    }

    @Test("asynchronous writes beside synchronous ones: every write applied once, every completion run once, errors reported")
    func asynchronousWrites() throws {
        let (db, directory) = try openTemporary { $0.writeBufferSize = 256 << 10 }
        defer {
            try? db.close()
            removeTree(directory)
        }
        let threads = 6
        let each = 2000
        let completed = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        // Even threads write synchronously, odd ones queue without waiting (one of them never
        // leading: the write helper applies its batches); every key is written
        // once, its value naming its writer, and read back after.
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for i in 0..<each {
                var batch = WriteBatch()
                batch.put(Array("t\(thread)-\(i)".utf8), Array("v\(thread)-\(i)".utf8))
                if thread % 2 == 0 {
                    do { try db.write(batch) } catch { failures.withLock { $0.append("sync \(thread)-\(i): \(error)") } }
                } else {
                    // Thread 3 never leads: the engine's write helper applies its batches.
                    db.write(batch, lead: thread != 3) { error in
                        if let error { failures.withLock { $0.append("async \(thread)-\(i): \(error)") } }
                        completed.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        let asyncWrites = threads / 2 * each
        let deadline = monotonicNanos() + 30_000_000_000
        while completed.load(ordering: .relaxed) < asyncWrites && monotonicNanos() < deadline { usleep(1000) }
        #expect(completed.load(ordering: .relaxed) == asyncWrites, "completions run: \(completed.load(ordering: .relaxed)) of \(asyncWrites)")
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { Array($0.prefix(5)) })")
        for thread in 0..<threads {
            for i in stride(from: 0, to: each, by: 7) {
                #expect(try db.get(Array("t\(thread)-\(i)".utf8)) == Array("v\(thread)-\(i)".utf8), "t\(thread)-\(i)")
            }
        }
        #expect(db.stats().writes == threads * each)
        // Alone and not leading: the write helper applies it.
        let alone = DispatchSemaphore(value: 0)
        var single = WriteBatch()
        single.put(Array("alone".utf8), Array("helped".utf8))
        db.write(single, lead: false) { _ in alone.signal() }
        #expect(alone.wait(timeout: .now() + 10) == .success, "the write helper never applied a batch queued without a leader")
        #expect(try db.get(Array("alone".utf8)) == Array("helped".utf8))
        // A batch the engine refuses is reported to its completion and writes nothing.
        var oversized = WriteBatch()
        oversized.put(Array(repeating: 7, count: 128 << 10), [1])
        oversized.put(Array("not-written".utf8), [1])
        let refused = Mutex<MoraineError?>(nil)
        db.write(oversized) { error in refused.withLock { $0 = error } }
        #expect(refused.withLock { $0 }?.kind == .invalid, "\(String(describing: refused.withLock { $0 }))")
        #expect(try db.get(Array("not-written".utf8)) == nil)
    }

    @Test("every memtable the engine makes keeps the point-lookup index, after switches and a reopen; none with it off")
    func memtablesHaveTheHashIndex() throws {
        for indexed in [true, false] {
            let (db, directory) = try openTemporary {
                $0.writeBufferSize = 64 << 10
                $0.memtableHashIndex = indexed
            }
            defer { removeTree(directory) }
            func memtables(_ db: Database) -> [MemTable] {
                let version = db.engine!.currentSuperVersion()
                return [version.mem] + version.imms
            }
            #expect(memtables(db).allSatisfy { ($0.hashIndexBytes > 0) == indexed })
            for i in 0..<3000 { try db.put(key(i), Array(repeating: 3, count: 100)) }
            #expect(db.stats().flushes + db.stats().immutableMemtables > 0, "no memtable switch")
            #expect(memtables(db).allSatisfy { ($0.hashIndexBytes > 0) == indexed }, "indexed: \(indexed)")
            try db.close()
            var options = Options()
            options.memtableHashIndex = indexed
            let reopened = try Database(path: directory, options: options)
            #expect(memtables(reopened).allSatisfy { ($0.hashIndexBytes > 0) == indexed }, "reopened, indexed: \(indexed)")
            #expect(try reopened.get(key(2999)) == Array(repeating: 3, count: 100))
            try reopened.close()
        }
    }

    /// The `VmFlags` of the mapping that holds `address`, from /proc/self/smaps.
    static func mappingFlags(_ address: UnsafeRawPointer) -> [Substring] {
        // Read to the end (a /proc file's size is 0, so a read by size gets nothing).
        let text = String(decoding: FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
        let target = UInt(bitPattern: address)
        var inside = false
        for line in text.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
                let start = UInt(line[..<dash], radix: 16), let end = UInt(line[line.index(after: dash)..<space], radix: 16)
            {
                inside = start <= target && target < end
            } else if inside && line.hasPrefix("VmFlags:") {
                return line.dropFirst("VmFlags:".count).split(separator: " ")
            }
        }
        return []
    }

    @Test("memtable_huge_pages: every memtable's arena is advised for huge pages when on (the default), none when off")
    func memtableHugePages() throws {
        for huge in [true, false] {
            let (db, directory) = try openTemporary {
                $0.writeBufferSize = 256 << 10
                $0.memtableHugePages = huge
            }
            defer { removeTree(directory) }
            func advised() -> [Bool] {
                let version = db.engine!.currentSuperVersion()
                return ([version.mem] + version.imms).map { Self.mappingFlags($0.arenaStart).contains("hg") }
            }
            #expect(advised() == [huge], "huge: \(huge)")
            for i in 0..<6000 { try db.put(key(i), Array(repeating: 5, count: 100)) }
            #expect(db.stats().flushes > 0, "no memtable switch")
            #expect(advised().allSatisfy { $0 == huge }, "after switches, huge: \(huge)")
            #expect(OptionsFile.render(db.engine!.options).contains("memtable_huge_pages=\(huge)"))
            var read = Options()
            read.memtableHugePages = !huge
            try OptionsFile.apply(OptionsFile.render(db.engine!.options), to: &read, name: "OPTIONS-test")
            #expect(read.memtableHugePages == huge)
            try db.close()
        }
        #expect(Options().memtableHugePages, "on by default")
    }

    @Test("disjoint L0 files move to L1 together without a rewrite; overlapping ones are merged")
    func level0TrivialMove() throws {
        for overlapping in [false, true] {
            let (db, directory) = try openTemporary {
                $0.writeBufferSize = 1 << 20
                $0.disableAutoCompactions = true
            }
            defer {
                try? db.close()
                removeTree(directory)
            }
            // Four flushes: ranges [0, 500), [500, 1000), ... or, overlapping, every fourth key.
            for part in 0..<4 {
                for i in 0..<500 { try db.put(key(overlapping ? i * 4 + part : part * 500 + i), [UInt8(part)]) }
                try db.flush()
            }
            #expect(db.stats().levels[0].fileCount == 4)
            try db.compactRange()
            let stats = db.stats()
            #expect(stats.levels[0].fileCount == 0)
            if overlapping {
                #expect(stats.compactions == 1 && stats.trivialMoves == 0, "\(stats.json)")
                #expect(stats.levels[1].fileCount == 1)
            } else {
                #expect(stats.compactions == 0 && stats.compactionBytesRead == 0, "\(stats.json)")
                #expect(stats.trivialMoves == 1 && stats.levels[1].fileCount == 4, "\(stats.json)")
            }
            for i in stride(from: 0, to: 2000, by: 7) {
                let part = overlapping ? i % 4 : i / 500
                #expect(try db.get(key(i)) == [UInt8(part)], "key \(i)")
            }
        }
    }

    @Test("a backward scan keeps large values right while blocks leave a tiny cache and memtables switch")
    func backwardLargeValues() throws {
        let (db, directory) = try openTemporary {
            $0.blockCacheSize = 16 << 10  // far smaller than the data: blocks are evicted while a value is held
            $0.writeBufferSize = 256 << 10
            $0.disableAutoCompactions = true
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        func value(_ i: Int, _ round: Int) -> [UInt8] {
            let length = 300 + (i * 37 + round * 101) % 3000  // both sides of the pinning threshold
            return (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i &+ round) }
        }
        var expected: [Int: [UInt8]] = [:]
        for round in 0..<3 {
            for i in stride(from: round, to: 400, by: round + 1) {
                expected[i] = value(i, round)
                try db.put(key(i), expected[i]!)
            }
            if round < 2 { try db.flush() }  // two rounds in tables, the last in the memtable
        }
        for i in stride(from: 0, to: 400, by: 9) {
            try db.delete(key(i))
            expected[i] = nil
        }
        let iterator = try db.makeIterator()
        try iterator.seekToLast()
        var seen: [(Int, [UInt8])] = []
        while iterator.isValid {
            let k = Int(String(decoding: iterator.key.dropFirst(3), as: UTF8.self))!
            seen.append((k, iterator.value))
            try iterator.prev()
        }
        let want = expected.keys.sorted(by: >)
        #expect(seen.map(\.0) == want)
        for (k, v) in seen where v != expected[k] { Issue.record("key \(k): wrong value of \(v.count) bytes") }
    }

    @Test("writes slow down and stop when L0 piles up, then proceed")
    func writeStalls() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 8 << 10
            $0.level0FileNumCompactionTrigger = 2
            $0.level0SlowdownWritesTrigger = 2
            $0.level0StopWritesTrigger = 3
            $0.maxBackgroundJobs = 1
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<6000 { try db.put(key(i), Array(repeating: 2, count: 60)) }
        let stats = db.stats()
        #expect(stats.stallSlowdowns + stats.stallStops > 0, "no stall recorded: \(stats.json)")
        #expect(stats.levels[0].fileCount <= 3 + 1)
        for i in stride(from: 0, to: 6000, by: 501) { #expect(try db.get(key(i)) != nil) }
    }

    @Test("the manifest rolls when large, and the database reopens from the new one")
    func manifestRoll() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 8 << 10
            $0.maxManifestFileSize = 1024
        }
        for i in 0..<5000 { try db.put(key(i), Array("v\(i)".utf8)) }
        try db.flush()
        let rolls = db.stats().manifestRolls
        try db.close()
        #expect(rolls > 2)
        let manifests = try PosixFileSystem.shared.children(of: directory).filter { $0.hasPrefix("MANIFEST-") }
        #expect(manifests.count == 1, "old manifests left: \(manifests)")
        var options = Options()
        options.writeBufferSize = 8 << 10
        let reopened = try Database(path: directory, options: options)
        defer {
            try? reopened.close()
            removeTree(directory)
        }
        for i in stride(from: 0, to: 5000, by: 333) { #expect(try reopened.get(key(i)) == Array("v\(i)".utf8)) }
    }

    @Test("unsynced writes survive close and reopen through the WAL; disableWAL writes through the close flush")
    func reopenKeepsWrites() throws {
        let (db, directory) = try openTemporary()
        try db.put("a", "1")
        try db.put(Array("b".utf8), Array("2".utf8), options: WriteOptions(disableWAL: true))
        try db.close()
        let reopened = try Database(path: directory, options: Options())
        defer {
            try? reopened.close()
            removeTree(directory)
        }
        #expect(try reopened.get("a") == "1")
        #expect(try reopened.get("b") == "2")
    }

    @Test("concurrent writers are grouped and all land")
    func groupCommit() throws {
        let (db, directory) = try openTemporary { $0.writeBufferSize = 64 << 10 }
        defer {
            try? db.close()
            removeTree(directory)
        }
        let threads = 4
        let perThread = 300
        final class Countdown: @unchecked Sendable {
            let lock = ConditionLock()
            var remaining: Int
            var failures = 0
            init(_ n: Int) { remaining = n }
        }
        let countdown = Countdown(threads)
        for t in 0..<threads {
            startThread(name: "writer\(t)") {
                var failures = 0
                for i in 0..<perThread {
                    // Synced writes: while a leader waits on fdatasync, the others queue behind it.
                    do {
                        try db.put(key(t * perThread + i), Array("t\(t)".utf8), options: WriteOptions(sync: true))
                    } catch { failures += 1 }
                }
                countdown.lock.withLock {
                    countdown.remaining -= 1
                    countdown.failures += failures
                    countdown.lock.broadcast()
                }
            }
        }
        countdown.lock.withLock { while countdown.remaining > 0 { countdown.lock.wait() } }
        #expect(countdown.failures == 0)
        for t in 0..<threads {
            for i in stride(from: 0, to: perThread, by: 97) {
                #expect(try db.get(key(t * perThread + i)) == Array("t\(t)".utf8))
            }
        }
        let stats = db.stats()
        #expect(stats.writes == threads * perThread)
        // Group commit must have merged writers: fewer groups (and WAL syncs) than writes.
        #expect(stats.writeGroups < stats.writes, "no write was grouped: \(stats.json)")
        #expect(stats.walSyncs == stats.writeGroups)
    }
}

/// Reads a table's properties for assertions.
enum TableReaderProbe {
    struct Counts {
        let entryCount: UInt64
        let deletionCount: UInt64
    }
    static func open(directory: String, number: UInt64) throws -> Counts {
        let path = directory + "/" + DatabaseFile.table(number).name
        let reader = try TableReader(file: try PosixFileSystem.shared.openRandomAccess(path), name: path, cache: nil)
        return Counts(entryCount: reader.properties.entryCount, deletionCount: reader.properties.deletionCount)
    }
}

@Suite("Batched reads")
struct MultiGetTests {
    @Test("multiGet equals get across memtables and levels, and reads the missing blocks in one batch")
    func multiGetMatchesGet() throws {
        let (db, directory) = try openTemporary {
            $0.writeBufferSize = 32 << 10
            $0.blockSize = 1024
            $0.blockCacheSize = 0  // every table read is a real read
        }
        defer {
            try? db.close()
            removeTree(directory)
        }
        for i in 0..<6000 { try db.put(key(i), Array("v\(i)".utf8)) }
        try db.compactRange()
        for i in stride(from: 0, to: 6000, by: 3) { try db.put(key(i), Array("w\(i)".utf8)) }  // L0 and memtable
        for i in stride(from: 0, to: 6000, by: 7) { try db.delete(key(i)) }
        let keys = stride(from: 0, to: 6300, by: 41).map { key($0) } + [key(5), key(5), []]
        let before = db.stats()
        let batch = try db.multiGet(keys)
        let after = db.stats()
        #expect(batch == (try keys.map { try db.get($0) }))
        #expect(batch.compactMap { $0 }.count > 50)
        #expect(after.multiGetBatches == before.multiGetBatches + 1)
        #expect(after.multiGetBlockReads - before.multiGetBlockReads >= 50)
    }

    @Test("multiGetFromMemory answers from the memtables and the block cache, and is nil where a key needs a file read")
    func multiGetFromMemory() throws {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 32 << 10
        options.blockSize = 1024
        options.blockCacheSize = 8 << 20
        let directory = makeTemporaryDirectory("moraine-memory-only")
        defer { removeTree(directory) }
        var db = try Database(path: directory, options: options)
        for i in 0..<6000 { try db.put(key(i), Array("v\(i)".utf8)) }
        try db.compactRange()
        try db.close()
        // Reopened: no table open, nothing cached.
        db = try Database(path: directory, options: options)
        defer { try? db.close() }
        for i in 6000..<6010 { try db.put(key(i), Array("m\(i)".utf8)) }
        let inMemtable = (6000..<6010).map { key($0) }
        #expect(try db.multiGetFromMemory(inMemtable) == inMemtable.indices.map { Array("m\(6000 + $0)".utf8) })
        let inTables = stride(from: 0, to: 6000, by: 97).map { key($0) }
        #expect(try db.multiGetFromMemory(inTables) == nil, "tables not open, blocks not cached: a read is needed")
        #expect(try db.multiGetFromMemory(inMemtable + [key(0)]) == nil, "one key needing a read makes the batch need one")
        let read = try db.multiGet(inTables)
        #expect(read.allSatisfy { $0 != nil })
        #expect(try db.multiGetFromMemory(inTables) == read, "once read, the blocks are cached")
    }

    @Test("a damaged block fails the batch with corruption naming the table")
    func multiGetCorruption() throws {
        let (db, directory) = try openTemporary {
            $0.blockCacheSize = 0
            $0.compression = .none
        }
        defer { removeTree(directory) }
        for i in 0..<2000 { try db.put(key(i), Array(repeating: UInt8(i % 251), count: 100)) }
        try db.compactRange()
        try db.close()
        let table = try tableFiles(directory).sorted().first!
        let path = directory + "/" + table
        var bytes = try PosixFileSystem.shared.readAll(path)
        bytes[100] ^= 0xFF  // inside the first data block
        let file = try PosixFileSystem.shared.createWritable(path)
        try file.append(bytes)
        try file.sync()
        try file.close()
        var options = Options()
        options.blockCacheSize = 0
        let reopened = try Database(path: directory, options: options)
        defer { try? reopened.close() }
        do {
            _ = try reopened.multiGet([key(0), key(1999)])
            Issue.record("multiGet over a damaged block succeeded")
        } catch let error as MoraineError {
            #expect(error.kind == .corruption)
            #expect(error.message.contains(table))
        }
        #expect(try reopened.multiGet([key(1999)]) == [Array(repeating: UInt8(1999 % 251), count: 100)])
    }
}

@Suite("Persistent-memory durability")
struct PmemDurabilityTests {
    @Test("pmem durability: no WAL, unflushed writes recovered (also by a wal-mode reopen), arenas freed, stale region refused")
    func pmemEndToEnd() throws {
        let directory = makeTemporaryDirectory("moraine-pmem")
        let region = Options.defaultPmemPath(for: directory)
        defer {
            removeTree(directory)
            removeTree(region)
        }
        var options = Options()
        options.createIfMissing = true
        options.durability = .pmem
        options.writeBufferSize = 64 << 10
        var db = try Database(path: directory, options: options)
        for i in 0..<3000 { try db.put(key(i), Array("p\(i)".utf8)) }
        #expect(try PosixFileSystem.shared.children(of: directory).filter { $0.hasSuffix(".log") }.isEmpty)
        // Flushes run in the background: wait (bounded) for at least one.
        for _ in 0..<2000 where db.stats().flushes == 0 { usleep(10_000) }
        #expect(db.stats().flushes > 0)
        // Arenas of flushed memtables are free again: at most the active one and the unflushed ones remain.
        let mapped = try PmemRegion.open(path: region, layout: options.pmemLayout)
        #expect(mapped.allocatedArenas().count <= options.maxWriteBufferNumber)
        try db.close()
        // Writes still in the memtable at close come back from the region (close does not flush).
        db = try Database(path: directory, options: options)
        for i in stride(from: 0, to: 3000, by: 7) { #expect(try db.get(key(i)) == Array("p\(i)".utf8)) }
        try db.close()

        // Reopened in wal mode, the writes still in the region are replayed, not dropped.
        db = try Database(path: directory, options: options)
        for i in 3000..<3200 { try db.put(key(i), Array("late\(i)".utf8)) }
        try db.close()
        var walOptions = options
        walOptions.durability = .wal
        db = try Database(path: directory, options: walOptions)
        for i in stride(from: 3000, to: 3200, by: 13) { #expect(try db.get(key(i)) == Array("late\(i)".utf8)) }
        try db.close()
        #expect(try PmemRegion.open(path: region, layout: options.pmemLayout).allocatedArenas().isEmpty)

        // A new database must not adopt a region that still holds another database's logs.
        let other = makeTemporaryDirectory("moraine-pmem-other")
        defer { removeTree(other) }
        var stale = options
        stale.pmemPath = region
        let keep = try #require(try mapped.allocateArena(tag: 1 << 40))
        let error = #expect(throws: MoraineError.self) { _ = try Database(path: other, options: stale) }
        #expect(error?.kind == .invalid)
        try mapped.freeArena(keep)
    }
}
