// The database's LOG, read as an operator reads it after an incident: the open with its options,
// what recovery replayed (and a torn tail it dropped), every flush and compaction with its
// files, and the close; earlier LOGs moved aside at each open, the newest few kept; destroy
// takes them with the database.
import Foundation
import Moraine
import Testing

@Suite("Database LOG")
struct EventLogTests {
    static func options() -> Options {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        options.targetFileSizeBase = 64 << 10
        options.maxBytesForLevelBase = 256 << 10
        options.level0FileNumCompactionTrigger = 2
        return options
    }

    static func lines(_ directory: TempDir, _ name: String = "LOG") -> [String] {
        ((try? String(contentsOfFile: directory.file(name), encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    @Test("open, recovery, flushes, compactions and close are in the LOG; old LOGs rotate; destroy removes them")
    func events() throws {
        let directory = TempDir("moraine-eventlog")
        defer { directory.remove() }
        let db = try Database(path: directory.path, options: Self.options())
        for i in 0..<4000 { try db.put("key\(i % 1500)", String(repeating: "v", count: 100) + "\(i)") }
        try db.flush()
        try db.compactRange()
        try db.put("last", "write")
        try db.close()
        let first = Self.lines(directory)
        // Every line starts with the local time: "2026/12/06-16:55:01.123456 ".
        let stamped = #/^\d{4}/\d{2}/\d{2}-\d{2}:\d{2}:\d{2}\.\d{6} /#
        #expect(!first.isEmpty && first.allSatisfy { $0.prefixMatch(of: stamped) != nil }, "\(first.prefix(3))")
        #expect(first.first?.contains("open \(directory.path): write_buffer_size=65536 ") == true, "\(first.first ?? "")")
        #expect(first.contains { $0.contains(" opened: last sequence 0; no tables") }, "\(first.prefix(3))")
        #expect(first.contains { $0.contains(" flush: memtable of log ") && $0.contains(" -> L0 #") }, "no flush in \(first)")
        #expect(
            first.contains { $0.contains(" compaction: L0 ") && $0.contains(" -> L1 #") && $0.contains(", dropped ") },
            "no compaction in \(first)")
        #expect(first.last?.hasSuffix(" closed cleanly") == true, "\(first.last ?? "")")

        // The reopen moves that LOG aside and writes what recovery replayed: the unflushed write.
        let again = try Database(path: directory.path, options: Self.options())
        #expect(try again.get("last") == "write")
        try again.close()
        let second = Self.lines(directory)
        #expect(second.contains { $0.contains(" recovery: replayed ") && $0.contains(".log: 1 records") }, "\(second)")
        #expect(second.contains { $0.contains(" opened: last sequence 4001; L") }, "\(second)")
        let old = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("LOG.old.") }
        #expect(old.count == 1 && Self.lines(directory, old[0]) == first)

        // A WAL cut mid-record: the LOG says what recovery dropped.
        let writer = try Database(path: directory.path, options: Self.options())
        for i in 0..<20 { try writer.put("torn\(i)", "value\(i)") }
        try writer.close()
        let wal = try #require(try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".log") }.max())
        let size = try #require(try FileManager.default.attributesOfItem(atPath: directory.file(wal))[.size] as? Int)
        truncateFile(directory.file(wal), to: size - 3)
        try Database(path: directory.path, options: Self.options()).close()
        let torn = Self.lines(directory)
        #expect(torn.contains { $0.contains(" recovery: replayed ") && $0.contains("19 records; dropped a torn tail of ") }, "\(torn)")

        // Each open keeps the newest four earlier LOGs.
        for _ in 0..<4 { try Database(path: directory.path, options: Self.options()).close() }
        let kept = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("LOG.old.") }
        #expect(kept.count == 4, "\(kept.sorted())")

        // Destroy takes the LOGs with the database.
        #expect(try Database.destroy(path: directory.path) > 0)
        let left = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        #expect(!left.contains { $0.hasPrefix("LOG") }, "\(left)")
    }

    @Test("a read-only open writes no LOG")
    func readOnly() throws {
        let directory = TempDir("moraine-eventlog-ro")
        defer { directory.remove() }
        try Database(path: directory.path, options: Self.options()).close()
        let before = Self.lines(directory)
        var readOnly = Options()
        readOnly.readOnly = true
        try Database(path: directory.path, options: readOnly).close()
        #expect(Self.lines(directory) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("LOG.old.") }.isEmpty)
    }
}
