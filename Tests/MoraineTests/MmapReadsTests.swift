// Options.allowMmapReads (RocksDB's allow_mmap_reads): tables read through read-only mappings.
// Checked end to end through the public API against an oracle: point reads, scans both ways and
// seeks read what was written across memtable, L0 and deeper tables; only the database that asked
// maps its tables; a damaged block read through a mapping is still a corruption error naming the
// table; the option goes to the OPTIONS file and back.
import Foundation
import Moraine
import MoraineFormat
import MoraineTestSupport
import Testing

@testable import MoraineEngine

@Suite("mmap reads")
struct MmapReadsTests {
    static func options(mapped: Bool, compression: CompressionType = .lz4) -> Options {
        var options = Options()
        options.compression = compression
        options.createIfMissing = true
        options.writeBufferSize = 32 << 10
        options.blockCacheSize = 64 << 10  // small: most reads miss and go to the file
        options.allowMmapReads = mapped
        // No background compaction replaces a table after the test has read it.
        options.disableAutoCompactions = true
        return options
    }

    static func key(_ i: Int) -> [UInt8] { Array("key\(String(i).leftPad(6))".utf8) }

    /// A directory's name as /proc/self/maps shows paths under it (the temporary directory's
    /// path may carry a doubled slash the kernel does not show).
    static func shown(_ dir: TempDir) -> String { "/" + dir.path.split(separator: "/").last! + "/" }

    /// The process's mappings (read to the end: procfs files say size 0).
    static func mappings() -> String {
        String(decoding: FileHandle(forReadingAtPath: "/proc/self/maps")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
    }

    @Test(
        "with allowMmapReads tables are read through mappings and read what was written; without, none is mapped",
        arguments: [CompressionType.lz4, .none])
    func readsThroughMappings(compression: CompressionType) throws {
        let mappedDir = TempDir("moraine-mmap-on")
        let plainDir = TempDir("moraine-mmap-off")
        defer {
            mappedDir.remove()
            plainDir.remove()
        }
        let seed = SeededRandom.testSeed("mmap reads \(compression)")
        var rng = SeededRandom(seed: seed)
        let mapped = try Database(path: mappedDir.path, options: Self.options(mapped: true, compression: compression))
        let plain = try Database(path: plainDir.path, options: Self.options(mapped: false, compression: compression))
        var oracle: [Int: [UInt8]] = [:]
        for round in 0..<3 {
            for _ in 0..<1500 {
                let i = Int.random(in: 0..<3000, using: &rng)
                if Int.random(in: 0..<10, using: &rng) == 0 {
                    oracle[i] = nil
                    for db in [mapped, plain] { try db.delete(Self.key(i)) }
                } else {
                    let value = rng.bytes(Int.random(in: 1...300, using: &rng))
                    oracle[i] = value
                    for db in [mapped, plain] { try db.put(Self.key(i), value) }
                }
            }
            for db in [mapped, plain] {
                try db.flush()
                if round == 1 { try db.compactRange() }
            }
        }
        let expected = oracle.keys.sorted().map { (Self.key($0), oracle[$0]!) }
        for db in [mapped, plain] {
            for i in 0..<3000 {
                #expect(try db.get(Self.key(i)) == oracle[i], "key \(i) (MORAINE_SEED=\(seed))")
            }
            let iterator = try db.makeIterator()
            var forward: [([UInt8], [UInt8])] = []
            try iterator.seekToFirst()
            while iterator.isValid {
                forward.append((iterator.key, iterator.value))
                try iterator.next()
            }
            #expect(forward.map(\.0) == expected.map(\.0) && forward.map(\.1) == expected.map(\.1), "forward scan (MORAINE_SEED=\(seed))")
            var backward: [[UInt8]] = []
            try iterator.seekToLast()
            while iterator.isValid {
                backward.append(iterator.key)
                try iterator.prev()
            }
            #expect(backward == expected.map(\.0).reversed(), "backward scan (MORAINE_SEED=\(seed))")
            for _ in 0..<200 {
                let i = Int.random(in: 0..<3100, using: &rng)
                try iterator.seek(Self.key(i))
                let want = expected.first { $0.0.lexicographicallyPrecedes(Self.key(i)) == false }
                let got: [UInt8]? = iterator.isValid ? iterator.key : nil
                #expect(got == want?.0, "seek to \(i) (MORAINE_SEED=\(seed))")
            }
        }
        _ = try mapped.get(Self.key(5))
        let maps = Self.mappings()
        let liveTables = mappedDir.names().filter { $0.hasSuffix(".sst") }
        #expect(liveTables.count > 1, "tables: \(liveTables)")
        for name in liveTables {
            #expect(maps.contains(Self.shown(mappedDir) + name), "table \(name) of the mmap database is not mapped")
        }
        #expect(!maps.contains(Self.shown(plainDir)), "a table of the database without allowMmapReads is mapped")
        try mapped.close()
        try plain.close()
    }

    @Test(
        "a damaged data block read through a mapping is a corruption error naming the table, every time; other keys read",
        arguments: [CompressionType.lz4, .none])
    func damageThroughMapping(compression: CompressionType) throws {
        let dir = TempDir("moraine-mmap-damage")
        defer { dir.remove() }
        var options = Self.options(mapped: true, compression: compression)
        options.blockCacheSize = 1 << 20  // a damaged block is never cached, so every read meets it
        options.writeBufferSize = 4 << 20  // one table
        let value = { (i: Int) in Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i % 251), count: 40) }
        do {
            let db = try Database(path: dir.path, options: options)
            for i in 0..<2000 { try db.put(Self.key(i), value(i)) }
            try db.flush()
            try db.close()
        }
        let tables = dir.names().filter { $0.hasSuffix(".sst") }.map { dir.file($0) }
        try #require(tables.count == 1, "tables: \(tables)")
        flipByte(tables[0], at: 100)  // inside the first data block
        let db = try Database(path: dir.path, options: options)
        var damaged = 0
        for i in Array(0..<2000) + Array(0..<2000) {  // twice: a block read in place is checked each time
            do {
                #expect(try db.get(Self.key(i)) == value(i), "key \(i)")
            } catch let error as MoraineError {
                damaged += 1
                #expect(error.kind == .corruption && error.message.contains(tables[0]), "key \(i): \(error)")
            }
        }
        #expect(damaged > 0 && damaged < 4000 && damaged % 2 == 0, "\(damaged) of 4000 reads met the damaged block")
        #expect(Self.mappings().contains(Self.shown(dir) + tables[0].split(separator: "/").last!), "the table was not read through a mapping")
        try db.close()
    }

    @Test("allow_mmap_reads is written to the OPTIONS file and read back")
    func optionsFile() throws {
        var options = Options()
        options.allowMmapReads = true
        let text = OptionsFile.render(options)
        #expect(text.contains("allow_mmap_reads=true"), "\(text)")
        var read = Options()
        try OptionsFile.apply(text, to: &read, name: "OPTIONS-test")
        #expect(read.allowMmapReads)
    }
}
