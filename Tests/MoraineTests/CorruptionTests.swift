// Damaged files under the public Database API: every read either returns the right value or
// throws a .corruption error naming the damaged file; nothing crashes, and no wrong value (nor
// a silently missing one) is ever returned.
import Foundation
import Moraine
import MoraineFormat
import Testing

@Suite("Corruption")
struct CorruptionTests {
    static func key(_ i: Int) -> String { "key" + padded(i) }
    static func value(_ i: Int) -> String { "value-\(i)-" + String(repeating: "\(i % 10)", count: 20 + i % 17) }

    static func options(_ configure: (inout Options) -> Void = { _ in }) -> Options {
        var options = Options()
        options.createIfMissing = true
        configure(&options)
        return options
    }

    /// Writes keys `range` (one put each), flushes when asked, and closes.
    static func write(_ dir: TempDir, _ range: Range<Int>, flush: Bool, options: Options = options()) throws {
        let db = try Database(path: dir.path, options: options)
        for i in range { try db.put(key(i), value(i)) }
        if flush { try db.flush() }
        try db.close()
    }

    static func files(_ dir: TempDir, suffix: String) -> [String] {
        dir.names().filter { $0.hasSuffix(suffix) }.map { dir.file($0) }
    }
    static func manifest(_ dir: TempDir) -> String? {
        dir.names().first { $0.hasPrefix("MANIFEST-") }.map { dir.file($0) }
    }

    /// Reads every key in `range`: each get must return the right value or throw .corruption
    /// naming `damaged`. Returns how many threw. Keys in `mayBeLost` may also read as absent.
    @discardableResult
    static func checkReads(
        _ db: Database, _ range: Range<Int>, damaged: String, mayBeLost: Set<Int> = [], label: String
    ) -> Int {
        var errors = 0
        for i in range {
            do {
                let got = try db.get(key(i))
                if got == nil && mayBeLost.contains(i) { continue }
                #expect(got == value(i), "\(label): key \(i) read \(got.map { "'\($0)'" } ?? "nil")")
            } catch let error as MoraineError {
                errors += 1
                #expect(error.kind == .corruption, "\(label): key \(i): \(error)")
                #expect(error.message.contains(damaged), "\(label): key \(i): \(error) does not name \(damaged)")
            } catch {
                Issue.record("\(label): key \(i): unexpected \(error)")
            }
        }
        return errors
    }

    /// Opens the database; a failure must be .corruption naming `damaged`.
    static func openExpectingCorruptionOrSuccess(_ dir: TempDir, damaged: String, label: String) -> Database? {
        do {
            return try Database(path: dir.path, options: options())
        } catch let error as MoraineError {
            #expect(error.kind == .corruption, "\(label): open failed with \(error)")
            #expect(error.message.contains(damaged), "\(label): \(error) does not name \(damaged)")
        } catch {
            Issue.record("\(label): open failed with \(error)")
        }
        return nil
    }

    static let keyCount = 3000

    @Test func dataBlockDamage() throws {
        let dir = TempDir("moraine-corrupt-data")
        defer { dir.remove() }
        try Self.write(dir, 0..<Self.keyCount, flush: true)
        let tables = Self.files(dir, suffix: ".sst")
        try #require(tables.count == 1, "tables: \(tables)")
        flipByte(tables[0], at: 100)
        let db = try Database(path: dir.path, options: Self.options())
        let errors = Self.checkReads(db, 0..<Self.keyCount, damaged: tables[0], label: "data block")
        #expect(errors > 0, "no read met the damaged first block")
        let first = moraineError { _ = try db.get(Self.key(0)) }
        #expect(
            first?.kind == .corruption && first?.message.contains(tables[0]) == true, "\(String(describing: first))")
        // A scan reaches the damaged block first.
        let scan = moraineError {
            let iterator = try db.makeIterator()
            try iterator.seekToFirst()
            while iterator.isValid { try iterator.next() }
        }
        #expect(
            scan?.kind == .corruption && scan?.message.contains(tables[0]) == true, "scan: \(String(describing: scan))")
        try db.close()
    }

    @Test func indexBlockDamage() throws {
        let dir = TempDir("moraine-corrupt-index")
        defer { dir.remove() }
        try Self.write(dir, 0..<Self.keyCount, flush: true)
        let tables = Self.files(dir, suffix: ".sst")
        try #require(tables.count == 1, "tables: \(tables)")
        let bytes = readFileBytes(tables[0])
        let footer = Array(bytes.suffix(64))
        let indexOffset = footer[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        let indexSize = footer[8..<16].reversed().reduce(0) { $0 << 8 | Int($1) }
        try #require(indexSize > 0 && indexOffset + indexSize <= bytes.count - 64, "index \(indexOffset)+\(indexSize)")
        flipByte(tables[0], at: indexOffset + indexSize / 2)
        guard let db = Self.openExpectingCorruptionOrSuccess(dir, damaged: tables[0], label: "index") else { return }
        let errors = Self.checkReads(db, 0..<Self.keyCount, damaged: tables[0], label: "index")
        #expect(errors == Self.keyCount, "only \(errors) reads reported the damaged index")
        try db.close()
    }

    @Test(arguments: [0, 9, 20, 40, 48, 52, 58, 63])
    func footerDamage(offsetInFooter: Int) throws {
        let dir = TempDir("moraine-corrupt-footer")
        defer { dir.remove() }
        try Self.write(dir, 0..<500, flush: true)
        let tables = Self.files(dir, suffix: ".sst")
        try #require(tables.count == 1, "tables: \(tables)")
        flipByte(tables[0], at: fileSize(tables[0]) - 64 + offsetInFooter)
        let label = "footer byte \(offsetInFooter)"
        guard let db = Self.openExpectingCorruptionOrSuccess(dir, damaged: tables[0], label: label) else { return }
        let errors = Self.checkReads(db, 0..<500, damaged: tables[0], label: label)
        #expect(errors == 500, "\(label): only \(errors) reads reported the damaged footer")
        try db.close()
    }

    @Test func walDamageInTheMiddle() throws {
        let dir = TempDir("moraine-corrupt-wal")
        defer { dir.remove() }
        let count = 2000
        try Self.write(dir, 0..<count, flush: false)  // stays in the WAL (64 MiB write buffer)
        let logs = Self.files(dir, suffix: ".log")
        try #require(logs.count == 1, "logs: \(logs)")
        try #require(Self.files(dir, suffix: ".sst").isEmpty)
        try #require(fileSize(logs[0]) > 50_000)
        flipByte(logs[0], at: 700)  // in about the tenth record

        let stop = moraineError { _ = try Database(path: dir.path, options: Self.options()) }
        #expect(stop?.kind == .corruption, "stop mode: \(String(describing: stop))")
        #expect(
            stop?.message.contains(logs[0]) == true, "stop mode: \(String(describing: stop)) does not name \(logs[0])")

        let skipping = Self.options { $0.walRecoveryMode = .skip }
        let db = try Database(path: dir.path, options: skipping)
        // Keys written before and after the damaged record survive; the damaged ones may not.
        let damagedKeys = Set(0..<30)
        var lost = 0
        for i in 0..<count {
            let got = try db.get(Self.key(i))
            if got == nil && damagedKeys.contains(i) { lost += 1; continue }
            #expect(got == Self.value(i), "skip mode: key \(i) read \(String(describing: got))")
        }
        #expect(lost >= 1 && lost <= 2, "skip mode lost \(lost) keys")
        for i in 100..<count { #expect(try db.get(Self.key(i)) == Self.value(i)) }
        try db.close()
        // The replayed WAL now lives in a table: a default reopen works.
        let again = try Database(path: dir.path, options: Self.options())
        #expect(try again.get(Self.key(count - 1)) == Self.value(count - 1))
        try again.close()
    }

    @Test func truncatedWALTail() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let dir = TempDir("moraine-torn-wal")
        defer { dir.remove() }
        let count = 1000
        try Self.write(dir, 0..<count, flush: false)
        let logs = Self.files(dir, suffix: ".log")
        try #require(logs.count == 1, "logs: \(logs)")
        let cut = Int.random(in: 1...20, using: &rng)
        truncateFile(logs[0], to: fileSize(logs[0]) - cut)
        let db = try Database(path: dir.path, options: Self.options())
        for i in 0..<(count - 1) {
            #expect(try db.get(Self.key(i)) == Self.value(i), "seed \(seed) cut \(cut): key \(i)")
        }
        let last = try db.get(Self.key(count - 1))
        #expect(last == nil || last == Self.value(count - 1), "seed \(seed) cut \(cut)")
        try db.close()
    }

    /// Power loss after a memtable switch can keep the newer WAL but not the end of the older
    /// one, which was retired unsynced. Replaying the newer WAL then would make writes after a
    /// lost one appear: recovery must stop at the older WAL's end, whether the loss cut a record
    /// (a torn tail) or fell exactly between records (which no torn-tail check can see).
    @Test(arguments: [false, true])
    func retiredWALLostTail(atRecordBoundary: Bool) throws {
        let seed = testSeed("at a record boundary: \(atRecordBoundary)")
        var rng = SeededRandom(seed: seed)
        let dir = TempDir("moraine-retired-wal")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: Self.options())
        for i in 0..<40 { try db.put(Self.key(i), Self.value(i)) }
        try db.pauseBackgroundWork()  // keep the older WAL: no flush may make it obsolete
        try db.flush(wait: false)
        for i in 40..<80 { try db.put(Self.key(i), Self.value(i)) }
        #expect(db.stats().immutableMemtables == 1)
        try db.close()
        let logs = Self.files(dir, suffix: ".log").sorted()
        try #require(logs.count == 2, "logs: \(logs)")
        // Where each record of the older WAL ends; keep the first `kept` whole records.
        let reader = try LogReader(bytes: Array(FileManager.default.contents(atPath: logs[0])!), name: logs[0])
        var ends: [Int] = []
        while try reader.nextRecord() != nil { ends.append(reader.validEndOffset) }
        try #require(ends.count == 40)
        // `survivors` whole records stay; torn, part of the next one stays too.
        let survivors = Int.random(in: 0..<39, using: &rng)
        let start = survivors == 0 ? 0 : ends[survivors - 1]
        let length = atRecordBoundary ? start : start + Int.random(in: 1..<(ends[survivors] - start), using: &rng)
        truncateFile(logs[0], to: length)
        let again = try Database(path: dir.path, options: Self.options())
        for i in 0..<80 {
            let expected: String? = i < survivors ? Self.value(i) : nil
            #expect(try again.get(Self.key(i)) == expected, "seed \(seed) survivors \(survivors): key \(i)")
        }
        try again.close()
    }

    /// A table that cannot be opened (here: its file gone) fails every read that needs it, each
    /// time: after a scan met the failure, a seek into that table must fail again, not answer from
    /// the file before or after it (a level iterator once kept the previous file's iterator under
    /// the new file's index when the open threw).
    @Test func missingTableFailsEverySeekIntoIt() throws {
        let dir = TempDir("moraine-missing-table")
        defer { dir.remove() }
        let small = Self.options {
            $0.targetFileSizeBase = 16 << 10
            $0.disableAutoCompactions = true
        }
        let db = try Database(path: dir.path, options: small)
        // Two overlapping flushes, so the compaction merges them (one would only move down).
        for _ in 0..<2 {
            for i in 0..<Self.keyCount { try db.put(Self.key(i), Self.value(i)) }
            try db.flush()
        }
        try db.compactRange()
        try db.close()
        // Compaction numbers its outputs in key order: the second table holds the second range.
        let tables = Self.files(dir, suffix: ".sst").sorted()
        try #require(tables.count >= 4, "tables: \(tables)")
        let missing = String(tables[1].split(separator: "/").last!)
        let again = try Database(path: dir.path, options: small)  // no table opened yet
        try FileManager.default.removeItem(atPath: tables[1])
        let iterator = try again.makeIterator()
        var read = 0
        let scan = moraineError {
            try iterator.seekToFirst()
            while iterator.isValid {
                read += 1
                try iterator.next()
            }
        }
        #expect(scan?.message.contains(missing) == true, "scan: \(String(describing: scan))")
        #expect(read > 0 && read < Self.keyCount, "\(read) keys read before the missing table")
        // key(read) is the missing table's first key; seek there (and inside it) twice each.
        for target in [read, read, read + 5, read + 5] {
            let seek = moraineError { try iterator.seek(Array(Self.key(target).utf8)) }
            let landed = iterator.isValid ? String(decoding: iterator.key, as: UTF8.self) : "nothing"
            #expect(seek?.message.contains(missing) == true, "a seek to key \(target) answered \(landed), error \(String(describing: seek))")
        }
        #expect(try again.get(Self.key(0)) == Self.value(0), "a key of another table")
        try again.close()
    }

    /// A database whose manifest holds several records: a snapshot and three flushes.
    static func buildWithFlushes(_ dir: TempDir) throws {
        let db = try Database(path: dir.path, options: options { $0.disableAutoCompactions = true })
        for round in 0..<3 {
            for i in (round * 300)..<((round + 1) * 300) { try db.put(key(i), value(i)) }
            try db.flush()
        }
        try db.close()
    }

    @Test func manifestDamageInTheMiddle() throws {
        let dir = TempDir("moraine-corrupt-manifest")
        defer { dir.remove() }
        try Self.buildWithFlushes(dir)
        let manifest = try #require(Self.manifest(dir))
        flipByte(manifest, at: fileSize(manifest) / 2)
        let error = moraineError { _ = try Database(path: dir.path, options: Self.options()) }
        #expect(error?.kind == .corruption, "\(String(describing: error))")
        #expect(error?.message.contains(manifest) == true, "\(String(describing: error)) does not name \(manifest)")
    }

    @Test func manifestDamageInTheLastRecord() throws {
        // The last edit (the third flush) was synced and acknowledged; a flipped byte in it must
        // not make its table vanish: either the open reports corruption, or every key reads back.
        let dir = TempDir("moraine-corrupt-manifest-tail")
        defer { dir.remove() }
        try Self.buildWithFlushes(dir)
        let manifest = try #require(Self.manifest(dir))
        let tablesBefore = Self.files(dir, suffix: ".sst")
        flipByte(manifest, at: fileSize(manifest) - 20)
        guard let db = Self.openExpectingCorruptionOrSuccess(dir, damaged: manifest, label: "manifest tail") else {
            return
        }
        let missing = (0..<900).filter { (try? db.get(Self.key($0))) == nil }
        let range = "\(missing.first ?? -1)...\(missing.last ?? -1)"
        let before = tablesBefore.map { ($0 as NSString).lastPathComponent }
        let after = Self.files(dir, suffix: ".sst").map { ($0 as NSString).lastPathComponent }
        #expect(
            missing.count == 0,
            "reopen succeeded but \(missing.count) acknowledged keys are gone (keys \(range)); tables before \(before), after \(after)"
        )
        try db.close()
    }
}
