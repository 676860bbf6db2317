// The database's LOG, read as an operator reads it after an incident: the open with its options,
// what recovery replayed (and a torn tail it dropped), every flush and compaction with its
// files, and the close; earlier LOGs moved aside at each open, the newest few kept; destroy
// takes them with the database. And its OPTIONS files: written at each open, read back into the
// same options, strict about what they hold, and a start for `--options_file`.
import Foundation
import Moraine
import Testing

@Suite("Database LOG and OPTIONS")
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
        let open = first.first ?? ""
        #expect(open.contains(" open \(directory.path): max_background_jobs=") && open.contains(" write_buffer_size=65536 "), "\(open)")
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

    static func optionsFiles(_ directory: TempDir) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasPrefix("OPTIONS-") }.sorted()
    }

    @Test("each open writes the options in force to OPTIONS-NNNNNN, read back as the same options; two are kept")
    func optionsFile() throws {
        let directory = TempDir("moraine-options")
        defer { directory.remove() }
        var options = Self.options()
        options.compression = .none
        options.bloomBitsPerKey = 7
        options.maxBytesForLevelMultiplier = 8.5
        options.disableAutoCompactions = true
        options.walRecoveryMode = .skip
        try Database(path: directory.path, options: options).close()
        let written = Self.optionsFiles(directory)
        #expect(written.count == 1, "\(written)")
        let text = try String(contentsOfFile: directory.file(written[0]), encoding: .utf8)
        #expect(text.contains("\n[CFOptions \"default\"]\n") && text.contains("  write_buffer_size=65536\n") && text.contains("  compression=kNoCompression\n"))
        var read = Options()
        try OptionsFile.apply(text, to: &read, name: written[0])
        #expect(OptionsFile.render(read) == OptionsFile.render(options))
        #expect(read.writeBufferSize == 65536 && read.compression == .none && read.bloomBitsPerKey == 7 && read.maxBytesForLevelMultiplier == 8.5)
        #expect(read.disableAutoCompactions && read.walRecoveryMode == .skip && read.level0FileNumCompactionTrigger == 2)
        #expect(Self.lines(directory).contains { $0.hasSuffix(" options written to \(written[0])") })
        for _ in 0..<3 { try Database(path: directory.path, options: options).close() }
        let kept = Self.optionsFiles(directory)
        #expect(kept.count == 2 && kept.last! > written[0], "\(kept)")
    }

    @Test("an OPTIONS file with an unknown option, a bad value or a stray line is refused, naming the line")
    func optionsFileRefused() {
        for (text, expected) in [
            ("[DBOptions]\n  max_background_jobs=2\n  frobnicate=1\n", "opts line 3: unknown option frobnicate"),
            ("[CFOptions \"default\"]\n  write_buffer_size=lots\n", "opts line 2: write_buffer_size=lots is not a valid value"),
            ("[CFOptions \"default\"]\n  write_buffer_size=100\n", "opts line 2: write_buffer_size=100 is not a valid value"),
            ("# comment\n\n[TableOptions/BlockBasedTable \"default\"]\n  block_size 4096\n", "opts line 4: not name=value"),
            ("[DBOptions\n", "opts line 1: an unclosed section"),
        ] {
            var options = Options()
            #expect {
                try OptionsFile.apply(text, to: &options, name: "opts")
            } throws: { error in
                (error as? MoraineError)?.kind == .invalid && (error as? MoraineError)?.message.contains(expected) == true
            }
        }
    }

    @Test("--options_file starts a database from a written OPTIONS file; a flag overrides it")
    func optionsFileFlag() throws {
        let first = TempDir("moraine-options-src")
        let second = TempDir("moraine-options-dst")
        defer {
            first.remove()
            second.remove()
        }
        var options = Self.options()
        options.blockSize = 8192
        try Database(path: first.path, options: options).close()
        let source = first.file(try #require(Self.optionsFiles(first).last))
        let put = try runMoraineCLI(["put", "--db", second.path, "--options_file", source, "--write_buffer_size", "131072", "k", "v"])
        #expect(put.status == 0, "\(put.err)")
        let text = try String(contentsOfFile: second.file(try #require(Self.optionsFiles(second).last)), encoding: .utf8)
        let expected = ["  block_size=8192\n", "  max_bytes_for_level_base=262144\n", "  write_buffer_size=131072\n"]
        #expect(expected.allSatisfy { text.contains($0) }, "\(text)")
        let missing = try runMoraineCLI(["get", "--db", second.path, "--options_file", first.file("nope"), "k"])
        #expect(missing.status == 1 && missing.err.contains("cannot read --options_file"), "\(missing.err)")
    }
}
