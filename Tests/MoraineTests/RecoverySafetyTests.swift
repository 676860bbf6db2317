// What an open may delete, and what it must refuse or set aside (Engine+Recovery's planCleanup),
// in-process over real files: crash garbage still goes, an unreadable stray table and the WALs
// after a broken chain go to lost/, "could not look" never becomes "create", an interrupted
// create is not a database, and a read-only open beside a live writer reads without writing.
import Foundation
import Moraine
@testable import MoraineEngine
import MoraineSystem
import Testing

@Suite("Recovery deletes only what it can prove obsolete")
struct RecoverySafetyTests {
    func options(_ adjust: (inout Options) -> Void = { _ in }) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.disableAutoCompactions = true
        adjust(&options)
        return options
    }

    func fill(_ db: Database, _ range: Range<Int>, tag: String = "v") throws {
        for i in range { try db.put("key\(padded(i))", "\(tag)\(i)") }
    }

    @Test("an open never hands out a sequence a table already holds, whatever the manifest recorded")
    func sequencesPastTheTables() throws {
        let directory = makeTemporaryDirectory("moraine-sequence")
        defer { removeTree(directory) }
        do {
            let db = try Database(path: directory, options: options())
            for round in 0..<3 { try db.put("k", "old\(round)") }
            try db.flush()
            // A manifest whose last sequence is below its table's entries: what a flush installed
            // before the group that wrote them had published its sequence could leave (a WAL
            // write that failed and was resumed). The WAL that held them is gone after the flush.
            try db.engine!.versions.writeNewManifest(lastSequence: 1)
            try db.close()
        }
        let db = try Database(path: directory, options: options())
        try db.put("k", "new")
        #expect(try db.get("k") == "new")
        let iterator = try db.makeIterator()
        try iterator.seekToFirst()
        #expect(iterator.isValid && String(decoding: iterator.value, as: UTF8.self) == "new", "an iterator saw the table's older entry")
        try db.compactRange()
        #expect(try db.get("k") == "new", "a compaction kept the older entry")
        try db.close()
    }

    @Test("a stray copy of a live table is deleted; an unreadable stray table moves to lost/")
    func strayTables() throws {
        let dir = TempDir("moraine-stray")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: options())
        try fill(db, 0..<200)
        try db.flush()
        try db.close()
        let live = dir.names().first { $0.hasSuffix(".sst") }!
        // An unfinished compaction's output: its sequences are all within the live tables'.
        try FileManager.default.copyItem(atPath: dir.file(live), toPath: dir.file("900000.sst"))
        // A flush cut short by a crash: no footer.
        writeFileBytes(dir.file("900001.sst"), Array(repeating: 7, count: 300))
        let reopened = try Database(path: dir.path, options: options())
        #expect(try reopened.get("key\(padded(7))") == "v7")
        try reopened.close()
        #expect(!dir.names().contains("900000.sst"), "the covered copy stays")
        #expect(!dir.names().contains("900001.sst"))
        #expect(FileManager.default.fileExists(atPath: dir.file("lost/900001.sst")), "the torn table was not set aside")
    }

    @Test("WALs after a missing one are replayed no further and set aside, not deleted")
    func brokenWALChain() throws {
        let dir = TempDir("moraine-walgap")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: options {
            $0.writeBufferSize = 64 << 10
            $0.maxWriteBufferNumber = 8
        })
        try db.pauseBackgroundWork()
        try fill(db, 0..<5000)  // about 1,000 keys per memtable: five memtables, one WAL each
        try db.continueBackgroundWork()
        try db.close()
        // close() flushes nothing here, so every WAL since the manifest's log number is live.
        let logs = dir.names().filter { $0.hasSuffix(".log") }
        try #require(logs.count >= 3, "\(logs)")
        let sizes = logs.map { fileSize(dir.file($0)) }
        try FileManager.default.removeItem(atPath: dir.file(logs[1]))
        let reopened = try Database(path: dir.path, options: options())
        #expect(try reopened.get("key\(padded(0))") == "v0", "the first WAL's writes are replayed")
        #expect(try reopened.get("key\(padded(4999))") == nil, "replay went past the gap")
        try reopened.close()
        for (name, size) in zip(logs.dropFirst(2), sizes.dropFirst(2)) {
            #expect(fileSize(dir.file("lost/" + name)) == size, "\(name) was not kept whole in lost/")
        }
    }

    @Test("an open that cannot look fails; it neither creates nor deletes")
    func couldNotLook() throws {
        let dir = TempDir("moraine-nolook")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: options())
        try fill(db, 0..<50)
        try db.close()
        let before = listing(dir.path)
        let fs = FaultInjectingFileSystem(wrapping: PosixFileSystem.shared)
        fs.arm(.lookupError, on: .any, trigger: .init(limit: nil))
        for path in [dir.path, dir.path + "/absent"] {
            let error = moraineError { _ = try Database(path: path, options: options { $0.fileSystem = fs }) }
            #expect(error?.kind == .io && error?.message.contains("injected EIO") == true, "\(path): \(String(describing: error))")
        }
        #expect(listing(dir.path) == before)
        fs.disarm()
        let reopened = try Database(path: dir.path, options: options { $0.fileSystem = fs })
        #expect(try reopened.get("key\(padded(49))") == "v49")
        try reopened.close()
    }

    @Test("a directory left by an interrupted create is no database; one with only a LOCK file neither")
    func interruptedCreate() throws {
        let dir = TempDir("moraine-halfmade")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: options())
        try db.close()
        // What a crash between writing the first manifest and CURRENT leaves.
        try FileManager.default.removeItem(atPath: dir.file("CURRENT"))
        for log in dir.names().filter({ $0.hasSuffix(".log") }) { try FileManager.default.removeItem(atPath: dir.file(log)) }
        var plain = options()
        plain.createIfMissing = false
        #expect(moraineError { _ = try Database(path: dir.path, options: plain) }?.kind == .invalid)
        let created = try Database(path: dir.path, options: options())
        try created.put("k", "v")
        try created.close()
        // A crash right after the first manifest was created: the new create numbers its
        // manifest past the leftover one (manifests are created exclusively, never truncated).
        let fresh = TempDir("moraine-halfmade-first")
        defer { fresh.remove() }
        #expect(FileManager.default.createFile(atPath: fresh.file("MANIFEST-000002"), contents: Data()))
        let again = try Database(path: fresh.path, options: options())
        try again.put("k", "v")
        try again.close()
        #expect(!fresh.names().contains("MANIFEST-000002"), "the leftover manifest was kept: \(fresh.names())")
    }

    @Test("read-only: no lock, replays the WAL in memory, refuses writes, sees the state as of its open")
    func readOnlyBesideWriter() throws {
        let dir = TempDir("moraine-ro")
        defer { dir.remove() }
        let writer = try Database(path: dir.path, options: options())
        try fill(writer, 0..<100)
        try writer.flush()
        try fill(writer, 100..<150)  // only in the WAL
        // The writer's own LOG may still grow (its background work logs as it finishes): every
        // other file is compared whole, the LOG only for being there.
        func files() -> [String: Int] { listing(dir.path).filter { $0.key != "LOG" } }
        let before = files()
        let logBefore = listing(dir.path)["LOG"] != nil
        var readOnly = options()
        readOnly.readOnly = true
        let reader = try Database(path: dir.path, options: readOnly)
        #expect(files() == before, "a read-only open wrote")
        #expect((listing(dir.path)["LOG"] != nil) == logBefore)
        #expect(try reader.get("key\(padded(3))") == "v3")
        #expect(try reader.get("key\(padded(120))") == "v120", "WAL not replayed")
        for (what, attempt) in [
            ("put", { try reader.put("x", "y") }), ("delete", { try reader.delete("key000001") }),
            ("flush", { try reader.flush() }), ("compactRange", { try reader.compactRange() }),
        ] as [(String, () throws -> Void)] {
            let error = moraineError(attempt)
            #expect(error?.kind == .invalid && error?.message.contains("read-only") == true, "\(what): \(String(describing: error))")
        }
        try writer.put("later", "1")
        try writer.flush()
        #expect(try reader.get("later") == nil, "the reader sees writes after its open")
        let iterator = try reader.makeIterator()
        try iterator.seekToFirst()
        var count = 0
        while iterator.isValid {
            count += 1
            try iterator.next()
        }
        #expect(count == 150)
        try reader.close()
        try writer.close()
        #expect(try Database(path: dir.path, options: readOnly).get("later") == "1")
    }

    @Test("close after disableWAL writes records the log past its flush: a reopen replays nothing twice")
    func closeAfterDisableWAL() throws {
        let dir = TempDir("moraine-nowal")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: options())
        try fill(db, 0..<50)
        for i in 50..<80 { try db.put("key\(padded(i))", "u\(i)", options: WriteOptions(disableWAL: true)) }
        try db.close()
        let tablesAfterClose = dir.names().filter { $0.hasSuffix(".sst") }.count
        let second = try Database(path: dir.path, options: options())
        #expect(second.stats().levels[0].fileCount == tablesAfterClose, "the reopen flushed a replayed WAL again")
        #expect(try second.get("key\(padded(60))") == "u60")
        #expect(try second.get("key\(padded(10))") == "v10")
        try second.close()
    }
}

@Suite("Read-only and repair over a persistent-memory region")
struct PmemRecoverySafetyTests {
    @Test("writes only in the region are seen read-only without freeing an arena, and kept by repair")
    func regionReadOnlyAndRepair() throws {
        let dir = TempDir("moraine-pmem-ro")
        let region = Options.defaultPmemPath(for: dir.path)
        defer {
            dir.remove()
            removeTree(region)
        }
        var options = Options()
        options.createIfMissing = true
        options.durability = .pmem
        options.disableAutoCompactions = true
        let db = try Database(path: dir.path, options: options)
        for i in 0..<300 { try db.put("key\(padded(i))", "p\(i)") }
        try db.close()  // close does not flush: the writes live in the region's arenas only
        let arenas = try PmemRegion.open(path: region, layout: options.pmemLayout).allocatedArenas().map(\.tag)
        #expect(!arenas.isEmpty)
        var readOnly = options
        readOnly.readOnly = true
        let before = listing(dir.path)
        let reader = try Database(path: dir.path, options: readOnly)
        #expect(try reader.get("key\(padded(299))") == "p299")
        try reader.close()
        #expect(listing(dir.path) == before)
        #expect(try PmemRegion.open(path: region, layout: options.pmemLayout).allocatedArenas().map(\.tag) == arenas)

        // Repair (it trusts no manifest) replays the arenas into tables; the next open frees them.
        try FileManager.default.removeItem(atPath: dir.file("CURRENT"))
        let report = try Database.repair(path: dir.path, options: options)
        #expect(report.logRecordsReplayed == 300, "\(report)")
        let repaired = try Database(path: dir.path, options: options)
        for i in stride(from: 0, to: 300, by: 17) { #expect(try repaired.get("key\(padded(i))") == "p\(i)") }
        try repaired.close()
        let left = try PmemRegion.open(path: region, layout: options.pmemLayout).allocatedArenas().map(\.tag)
        #expect(Set(left).isDisjoint(with: arenas), "the replayed arenas \(arenas) were not freed: \(left)")
    }
}

@Suite("Repair does not bring back what compaction dropped")
struct RepairCompactedInputTests {
    @Test("a compaction input still on disk (pinned by an iterator at the crash) is set aside, not adopted")
    func lingeringCompactionInput() throws {
        let dir = TempDir("moraine-repair-input")
        let image = TempDir("moraine-repair-image")
        defer {
            dir.remove()
            image.remove()
        }
        var options = Options()
        options.createIfMissing = true
        options.disableAutoCompactions = true
        let db = try Database(path: dir.path, options: options)
        for i in 0..<100 { try db.put("key\(padded(i))", "v\(i)") }
        try db.flush()
        let pin = try db.makeIterator()  // holds the first table past the compaction below
        try db.delete("key\(padded(50))")
        try db.flush()
        try db.compactRange()  // both L0 tables into one: key 50 and its tombstone are gone
        // What a crash now leaves: the pinned input and the compaction's output side by side.
        for name in dir.names() where name != "LOCK" {
            try FileManager.default.copyItem(atPath: dir.file(name), toPath: image.file(name))
        }
        _ = pin
        try db.close()
        let tables = image.names().filter { $0.hasSuffix(".sst") }
        try #require(tables.count == 2, "expected the pinned input and the output: \(tables)")
        let report = try Database.repair(path: image.path, options: options)
        #expect(report.moved.contains { $0.reason.contains("a compaction the manifest recorded replaced it") }, "\(report)")
        let repaired = try Database(path: image.path, options: options)
        #expect(try repaired.get("key\(padded(50))") == nil, "repair brought back a key compaction dropped")
        #expect(try repaired.get("key\(padded(49))") == "v49")
        try repaired.close()
    }
}
