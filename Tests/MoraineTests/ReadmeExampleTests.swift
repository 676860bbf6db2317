// The README's library example, kept compiling and correct: if this test needs a change, the
// README needs the same one.
import Moraine
import MoraineTestSupport
import Testing

@Suite("README example")
struct ReadmeExampleTests {
    @Test("the library example runs as documented")
    func example() throws {
        let directory = makeTemporaryDirectory("moraine-readme")
        defer { removeTree(directory) }

        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 20  // RocksDB: write_buffer_size
        let db = try Database(path: directory, options: options)

        try db.put("apple", "red")
        try db.put(Array("pear".utf8), Array("green".utf8), options: WriteOptions(sync: true))
        #expect(try db.get("apple") == "red")

        var batch = WriteBatch()  // applied atomically
        batch.put(Array("plum".utf8), Array("purple".utf8))
        batch.delete(Array("apple".utf8))
        try db.write(batch)

        let snapshot = try db.snapshot()  // reads as of now, whatever comes later
        try db.put("peach", "orange")
        let it = try db.makeIterator(
            options: ReadOptions(snapshot: snapshot, lowerBound: Array("a".utf8), upperBound: Array("q".utf8)))
        try it.seekToFirst()
        var seen: [String] = []
        while it.isValid {
            seen.append(String(decoding: it.key, as: UTF8.self) + "=" + String(decoding: it.value, as: UTF8.self))
            try it.next()
        }
        #expect(seen == ["pear=green", "plum=purple"])
        db.releaseSnapshot(snapshot)

        try db.flush()
        try db.compactRange()
        #expect(db.stats().shape.contains("L1: 1 files"))
        try db.close()
    }
}
