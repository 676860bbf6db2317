// `pmem` durability across boxes: a compute node that cannot map the memory node's region keeps
// its memtables in its own memory and each write group goes, before it is acknowledged, to a write
// log in an arena of the region, by request over TCP (MemoryLogFileSystem). A node in this process
// serving by request only stands for one on another box. Tested: no WAL on the storage side, a
// reopen replays the logs read back by request and the flushed logs' arenas go back, a log that
// fills its arena switches memtables (a batch larger than an arena is refused, the database goes
// on), a superseded owner is fenced, and a log left without its database is never taken for an
// empty directory.
import Foundation
import Moraine
@testable import MoraineCompute
@testable import MoraineEngine
import MoraineFormat
@testable import MoraineMemory
import MoraineMemtable
import MoraineMessages
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import Synchronization
import Testing

@Suite("Write logs by request")
struct MemoryLogTests {
    /// What `ClusterAttachment` makes for `pmem` where the region does not map, over local files.
    static func options(_ arenas: MemoryNodeArenas, writeBufferSize: Int = 256 << 10) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.durability = .wal
        options.memtableRegion = arenas
        options.fileSystem = MemoryLogFileSystem(base: PosixFileSystem.shared, arenas: arenas, placesNewLogs: true)
        options.writeBufferSize = writeBufferSize
        options.disableAutoCompactions = true
        return options
    }

    static func value(_ i: Int, _ round: Int = 0) -> [UInt8] {
        Array("value-\(i)-\(round)-".utf8) + [UInt8](repeating: UInt8(i & 0xff), count: 60)
    }

    /// Files named like logs in the database's directory on the local disk.
    static func localLogs(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".log") }
    }

    @Test("writes go to logs in arenas by request, no WAL file; a reopen replays them read back by request; flushed logs go back")
    func replayAfterReopen() throws {
        let memory = try MemoryTestNode(arenaBytes: 1 << 20, arenaCount: 8, carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        var expected: [Int: [UInt8]] = [:]
        do {
            var options = Self.options(memory.arenas(epoch: 1))
            options.maxWriteBufferNumber = 6
            let db = try Database(path: path, options: options)
            db.engine!.pauseBackgroundWork()  // the memtables pile up unflushed, their logs with them
            for i in 0..<6000 {
                try db.put(MemoryNodeTests.key(i), Self.value(i))
                expected[i] = Self.value(i)
            }
            var batch = WriteBatch()
            for i in 0..<50 { batch.put(MemoryNodeTests.key(i), Self.value(i, 1)) }
            try db.write(batch, options: WriteOptions(sync: true))
            for i in 0..<50 { expected[i] = Self.value(i, 1) }
            #expect(Self.localLogs(path).isEmpty, "a WAL file was written: \(Self.localLogs(path))")
            let logs = try memory.arenas().logs(database: path)
            #expect(logs.count >= 2, "the writes did not spread over several logs: \(logs)")
            #expect(logs.allSatisfy { $0.logLength > 0 })
            #expect(try options.fileSystem.children(of: path).filter { $0.hasSuffix(".log") }.count == logs.count)
            try db.close()  // the memtables are not flushed: only the logs hold the writes
        }
        let held = try memory.arenas().logs(database: path).count
        #expect(held >= 2)
        let reopened = try Database(path: path, options: Self.options(memory.arenas(epoch: 2)))
        defer { try? reopened.close() }
        #expect(reopened.engine!.stats().reattachedMemtables == 0)
        var wrong = 0
        for (i, value) in expected where try reopened.get(MemoryNodeTests.key(i)) != value { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(expected.count) writes read back wrong after the replay")
        // The replay went to tables; the old logs went back, the new one holds the next writes.
        #expect(eventually(seconds: 10) { (try? memory.arenas().logs(database: path).count) == 1 }, "replayed logs were not given back")
        try reopened.put(MemoryNodeTests.key(1), Self.value(1, 2))
        #expect(try reopened.get(MemoryNodeTests.key(1)) == Self.value(1, 2))
        #expect(try memory.arenas().logs(database: path).first?.logLength ?? 0 > 0, "the write did not reach the log")
        #expect(Self.localLogs(path).isEmpty)
    }

    @Test("a log that fills its arena switches memtables; a batch larger than an arena is refused and the database goes on")
    func logFillsArena() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 16, carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        // A write buffer far past an arena: only the logs' capacity switches memtables.
        var options = Self.options(memory.arenas(epoch: 1), writeBufferSize: 8 << 20)
        options.maxWriteBufferNumber = 8
        var expected: [Int: [UInt8]] = [:]
        do {
            let db = try Database(path: path, options: options)
            db.engine!.pauseBackgroundWork()
            for i in 0..<4000 {
                try db.put(MemoryNodeTests.key(i), Self.value(i))
                expected[i] = Self.value(i)
            }
            let logs = try memory.arenas().logs(database: path)
            #expect(logs.count >= 2, "no switch at the arena's end: \(logs.map(\.logLength))")
            let capacity = UInt64(memory.layout.arenaBytes - RegionArenaLayout.headerBytes)
            #expect(logs.allSatisfy { $0.logLength <= capacity })
            var big = WriteBatch()
            big.put(MemoryNodeTests.key(999_999), [UInt8](repeating: 7, count: 300 << 10))
            #expect {
                try db.write(big)
            } throws: { error in
                (error as? MoraineError)?.kind == .invalid && "\(error)".contains("capacity")
            }
            try db.put(MemoryNodeTests.key(0), Self.value(0, 1))
            expected[0] = Self.value(0, 1)
            try db.close()
        }
        let reopened = try Database(path: path, options: Self.options(memory.arenas(epoch: 2), writeBufferSize: 8 << 20))
        defer { try? reopened.close() }
        var wrong = 0
        for (i, value) in expected where try reopened.get(MemoryNodeTests.key(i)) != value { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(expected.count) writes read back wrong")
        #expect(try reopened.get(MemoryNodeTests.key(999_999)) == nil)
    }

    @Test("a switch that finds every arena held waits for a flush to give one back, then writes go on (no lasting error)")
    func fullRegionWaits() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 3, carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        var options = Self.options(memory.arenas(epoch: 1), writeBufferSize: 64 << 10)
        options.maxWriteBufferNumber = 8
        let db = try Database(path: directory.file("db"), options: options)
        defer { try? db.close() }
        let engine = db.engine!
        engine.pauseBackgroundWork()
        // Three arenas, 64 KiB memtables: the fourth log finds none free and its writer waits.
        let done = Atomic<Int>(0)
        let failure = Mutex<String?>(nil)
        let writer = Thread {
            do {
                for i in 0..<2000 { try db.put(MemoryNodeTests.key(i), Self.value(i)) }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
            done.store(1, ordering: .releasing)
        }
        writer.start()
        #expect(eventually(seconds: 10) { engine.stats().stallStops > 0 || done.load(ordering: .acquiring) == 1 })
        #expect(done.load(ordering: .acquiring) == 0, "every write got through with three arenas: the test proves nothing")
        engine.continueBackgroundWork()  // flushes give arenas back
        #expect(eventually(seconds: 30) { done.load(ordering: .acquiring) == 1 }, "the waiting writer never finished")
        #expect(failure.withLock { $0 } == nil, "a write failed: \(failure.withLock { $0 } ?? "")")
        try db.put(MemoryNodeTests.key(5000), Self.value(5000))
        var wrong = 0
        for i in stride(from: 0, to: 2000, by: 37) where try db.get(MemoryNodeTests.key(i)) != Self.value(i) { wrong += 1 }
        #expect(wrong == 0)
    }

    @Test("concurrent writers' groups stay within a log's arena: batches near an arena's size from four threads all succeed")
    func groupsWithinArena() throws {
        let memory = try MemoryTestNode(arenaBytes: 192 << 10, arenaCount: 24, carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let db = try Database(path: directory.file("db"), options: Self.options(memory.arenas(epoch: 1), writeBufferSize: 8 << 20))
        defer { try? db.close() }
        let failures = Mutex<[String]>([])
        let threads = (0..<4).map { t in
            Thread {
                for b in 0..<4 {
                    var batch = WriteBatch()
                    // About 100 KiB a batch: two in one group pass a 192 KiB arena.
                    for k in 0..<10 { batch.put(MemoryNodeTests.key(t * 1000 + b * 10 + k), [UInt8](repeating: UInt8(t), count: 10 << 10)) }
                    do { try db.write(batch) } catch { failures.withLock { $0.append("\(error)") } }
                }
            }
        }
        let finished = Atomic<Int>(0)
        for thread in threads { thread.start() }
        // Threads end on their own; wait for every write to be readable.
        #expect(eventually(seconds: 60) {
            finished.store((0..<4).count { t in (try? db.get(MemoryNodeTests.key(t * 1000 + 39))) != nil }, ordering: .relaxed)
            return finished.load(ordering: .relaxed) == 4 || !failures.withLock { $0.isEmpty }
        })
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 }.prefix(3))")
        let capacity = UInt64(memory.layout.arenaBytes - RegionArenaLayout.headerBytes)
        #expect(try memory.arenas().logs(database: directory.file("db")).allSatisfy { $0.logLength <= capacity })
    }

    /// Makes each log it is asked for, but reports the `failAt`-th as failed (a reply lost after
    /// the memory node made the arena, and its release failing too, leave exactly this).
    final class HalfMadeLog: ForwardingFileSystem, @unchecked Sendable {
        let base: any FileSystem = PosixFileSystem.shared
        let failAt: Int
        let made = Mutex<(logs: Int, failed: String?)>((0, nil))

        init(failAt: Int) { self.failAt = failAt }

        func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
            let file = try base.createNew(path, hint: hint)
            guard path.hasSuffix(".log"), made.withLock({ $0.logs += 1; return $0.logs == failAt }) else { return file }
            try file.close()
            made.withLock { $0.failed = path }
            throw MoraineError(.unavailable, "injected: the reply to making \(path) was lost")
        }
    }

    @Test("a log made but reported failed (left empty) is no link in the WAL chain: the logs after it are replayed, not set aside")
    func halfMadeLogIsNoLink() throws {
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        let files = HalfMadeLog(failAt: 3)
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        options.maxWriteBufferNumber = 8
        options.disableAutoCompactions = true
        options.fileSystem = files
        var acknowledged: [Int: [UInt8]] = [:]
        var refused = 0
        do {
            let db = try Database(path: path, options: options)
            db.engine!.pauseBackgroundWork()  // nothing flushed: every write stays in a log
            for i in 0..<3000 {
                do {
                    try db.put(MemoryNodeTests.key(i), Self.value(i))
                    acknowledged[i] = Self.value(i)
                } catch let error as MoraineError where error.kind == .unavailable {
                    refused += 1  // the switch the injected failure hit: not acknowledged
                }
            }
            try db.close()
        }
        let failed = try #require(files.made.withLock { $0.failed }, "no log creation was failed: the test proves nothing")
        #expect(refused >= 1)
        #expect(try PosixFileSystem.shared.fileSize(failed) == 0)
        options.fileSystem = PosixFileSystem.shared
        options.createIfMissing = false
        let reopened = try Database(path: path, options: options)
        defer { try? reopened.close() }
        var wrong = 0
        for (i, value) in acknowledged where try reopened.get(MemoryNodeTests.key(i)) != value { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(acknowledged.count) acknowledged writes lost: the logs after the empty one were set aside")
    }

    @Test("an owner whose log a newer owner adopted stops with fenced instead of acknowledging")
    func staleOwnerFenced() throws {
        let memory = try MemoryTestNode(carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        let db = try Database(path: path, options: Self.options(memory.arenas(epoch: 1)))
        defer { try? db.close() }
        try db.put(MemoryNodeTests.key(1), Array("before".utf8))
        _ = try memory.node.adopt(MemoryAdopt(database: path, epoch: 2))
        #expect {
            try db.put(MemoryNodeTests.key(2), Array("after".utf8))
        } throws: { error in
            (error as? MoraineError)?.kind == .fenced
        }
    }

    @Test("logs whose database directory is gone are seen, never taken for an empty directory; destroy gives them back")
    func leftoverLogs() throws {
        let memory = try MemoryTestNode(carrier: .tcp, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        do {
            let db = try Database(path: path, options: Self.options(memory.arenas(epoch: 1)))
            try db.put(MemoryNodeTests.key(1), Array("kept in a log".utf8))
            try db.close()
        }
        try FileManager.default.removeItem(atPath: path)
        #expect {
            _ = try Database(path: path, options: Self.options(memory.arenas(epoch: 2)))
        } throws: { error in
            (error as? MoraineError)?.kind == .corruption && "\(error)".contains("WAL")
        }
        #expect(try memory.arenas().logs(database: path).count == 1, "a refused open changed the logs")
        try Database.destroy(path: path, options: Self.options(memory.arenas(epoch: 3)))
        #expect(try memory.arenas().logs(database: path).isEmpty, "destroy left the logs' arenas")
        // Without the log file system, an arena holding a log is never re-attached as a memtable.
        do {
            let db = try Database(path: path, options: Self.options(memory.arenas(epoch: 4)))
            try db.put(MemoryNodeTests.key(1), Array("x".utf8))
            try db.close()
        }
        let endpoint = memory.endpoint
        var plain = MemoryNodeTests.options(MemoryNodeArenas(key: memory.key, epoch: { _ in 5 }) { () throws(TransportError) -> Endpoint in endpoint })
        plain.durability = .wal
        #expect {
            _ = try Database(path: path, options: plain)
        } throws: { error in
            (error as? MoraineError)?.kind == .corruption && "\(error)".contains("write log")
        }
    }
}
