// Direct reads (O_DIRECT; Options.useDirectReads, RocksDB's use_direct_reads; a storage node's
// --direct-reads). Checked against the bytes written, on both I/O backends, and against the page
// cache itself: after the file's pages are dropped, direct reads leave none of them resident
// (mincore), where the same reads through the page cache bring them in, so the check can fail.
import Foundation
import Moraine
import MoraineBench
import MoraineCluster
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import MoraineWorker
import Synchronization
import Testing

@testable import MoraineEngine

#if canImport(Glibc)
    import Glibc
#endif

/// A temporary directory on a file system whose page cache sits in front of a device, so pages
/// can be dropped (not tmpfs, whose pages are the file): the system's temporary directory, else
/// one under the working directory (the package's, on disk). Told apart by dropping a probe
/// file's pages and looking whether any stayed.
func deviceBackedTempDir(_ label: String) -> TempDir {
    func dropsPages(_ dir: TempDir) -> Bool {
        let probe = dir.file(".page-probe")
        FileManager.default.createFile(atPath: probe, contents: Data(repeating: 7, count: 16384))
        defer { try? FileManager.default.removeItem(atPath: probe) }
        PageCache.drop(probe)
        return PageCache.residentPages(probe) == 0
    }
    let temporary = TempDir(label)
    if dropsPages(temporary) { return temporary }
    temporary.remove()
    let path = FileManager.default.currentDirectoryPath + "/.build/direct-tests/" + label + "-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return TempDir(existing: path)
}

enum PageCache {
    /// Drops a file's clean pages from the page cache (it is synced first).
    static func drop(_ path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0, "open \(path)")
        defer { close(fd) }
        fdatasync(fd)
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
    }

    /// How many of a file's pages the page cache holds (mincore over a mapping, which faults
    /// nothing in).
    static func residentPages(_ path: String) -> Int {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0, "open \(path)")
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let size = Int(st.st_size)
        guard size > 0 else { return 0 }
        let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0)
        precondition(map != MAP_FAILED, "mmap \(path)")
        defer { munmap(map, size) }
        let pages = (size + 4095) / 4096
        var vector = [UInt8](repeating: 0, count: pages)
        precondition(mincore(map, size, &vector) == 0, "mincore \(path)")
        return vector.reduce(0) { $0 + Int($1 & 1) }
    }
}

@Suite("direct reads")
struct DirectReadsTests {
    @Test("a direct file reads any range, alone and in batches, as written, and leaves the page cache empty", arguments: IOBackend.allCases)
    func anyRange(backend: IOBackend) throws {
        let dir = deviceBackedTempDir("moraine-direct")
        defer { dir.remove() }
        let seed = SeededRandom.testSeed("direct reads \(backend)")
        var rng = SeededRandom(seed: seed)
        let content = rng.bytes(300_000 + Int.random(in: 1..<4096, using: &rng))  // usually ends inside a block (wholeBlocks covers the other case)
        let path = dir.file("data")
        FileManager.default.createFile(atPath: path, contents: Data(content))
        PageCache.drop(path)
        try #require(PageCache.residentPages(path) == 0, "the kernel kept the file's pages; the check below would prove nothing")

        let files = PosixFileSystem(ioBackend: backend)
        let direct = try files.openDirect(path)
        #expect(direct.size == UInt64(content.count))
        #expect(direct.prefetch(at: 0, length: 65536) == false, "a direct file has no page cache to prefetch into")
        func expected(_ offset: Int, _ length: Int) -> [UInt8] {
            offset >= content.count ? [] : Array(content[offset..<min(content.count, offset + length)])
        }
        var ranges: [(Int, Int)] = [(0, 0), (0, 1), (4095, 2), (4096, 4096), (content.count - 10, 100), (content.count, 10), (content.count + 5000, 10)]
        for _ in 0..<300 {
            ranges.append((Int.random(in: 0..<content.count + 100, using: &rng), Int.random(in: 0...70_000, using: &rng)))
        }
        for (offset, length) in ranges {
            var buffer = [UInt8](repeating: 0xEE, count: length)
            let got = try buffer.withUnsafeMutableBytes { try direct.read(at: UInt64(offset), into: $0) }
            #expect(Array(buffer[0..<got]) == expected(offset, length), "read \(length) at \(offset) (MORAINE_SEED=\(seed))")
        }
        // A batch mixing direct and buffered files goes in one submission (with empty reads,
        // reads past the end and one at an offset no file reaches).
        let buffered = try files.openRandomAccess(path)
        let batchRanges = (0..<24).map { _ in (Int.random(in: 0..<content.count, using: &rng), Int.random(in: 1...9000, using: &rng)) }
            + [(4097, 0), (content.count + 3, 50), (content.count - 1, 4096), (Int(Int64.max) - 10, 100)]
        let buffers = batchRanges.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.1, alignment: 1) }
        defer { buffers.forEach { $0.deallocate() } }
        var batch = batchRanges.indices.map { i in
            BatchRead(file: i % 3 == 0 && i < 24 ? buffered : direct, offset: UInt64(batchRanges[i].0), buffer: buffers[i])
        }
        batch.withUnsafeMutableBufferPointer { files.read(batch: $0) }
        for (i, read) in batch.enumerated() {
            #expect(read.error == nil, "batch read \(i): \(String(describing: read.error))")
            #expect(Array(buffers[i][0..<read.bytesRead]) == expected(batchRanges[i].0, batchRanges[i].1), "batch read \(i) (MORAINE_SEED=\(seed))")
        }
        // Only the buffered third of the batch may have brought pages in: drop them, read
        // directly again, and the cache stays empty; the same reads buffered fill it.
        PageCache.drop(path)
        for (offset, length) in ranges.prefix(100) {
            var buffer = [UInt8](repeating: 0, count: length)
            _ = try buffer.withUnsafeMutableBytes { try direct.read(at: UInt64(offset), into: $0) }
        }
        #expect(PageCache.residentPages(path) == 0, "direct reads went through the page cache")
        for (offset, length) in ranges.prefix(100) {
            var buffer = [UInt8](repeating: 0, count: length)
            _ = try buffer.withUnsafeMutableBytes { try buffered.read(at: UInt64(offset), into: $0) }
        }
        #expect(PageCache.residentPages(path) > 0, "buffered reads left no page resident: the residency check cannot tell")
    }

    @Test("a direct read across the end of a file of whole blocks, and at offsets no file reaches, reads what is there", arguments: IOBackend.allCases)
    func wholeBlocks(backend: IOBackend) throws {
        let dir = deviceBackedTempDir("moraine-direct-blocks")
        defer { dir.remove() }
        var rng = SeededRandom(seed: SeededRandom.testSeed("direct whole blocks \(backend)"))
        let content = rng.bytes(5 * 4096)  // ends on a block boundary: the read continues from there and finds the end
        let path = dir.file("data")
        FileManager.default.createFile(atPath: path, contents: Data(content))
        let direct = try PosixFileSystem(ioBackend: backend).openDirect(path)
        for (offset, length) in [(0, 5 * 4096 + 100), (4 * 4096, 8192), (4 * 4096 + 1, 4096), (5 * 4096, 10), (3, 5 * 4096 - 3)] {
            var buffer = [UInt8](repeating: 0, count: length)
            let got = try buffer.withUnsafeMutableBytes { try direct.read(at: UInt64(offset), into: $0) }
            #expect(Array(buffer[0..<got]) == Array(content[min(offset, content.count)..<min(content.count, offset + length)]), "\(length) at \(offset)")
        }
        var buffer = [UInt8](repeating: 0, count: 100)
        for offset in [UInt64.max, UInt64.max - 200, UInt64(Int64.max)] {
            #expect(try buffer.withUnsafeMutableBytes { try direct.read(at: offset, into: $0) } == 0, "read at \(offset)")
        }
    }

    @Test("the O_DIRECT probe asks regular files only, and writes nothing unless allowed")
    func probe() throws {
        let dir = deviceBackedTempDir("moraine-direct-probe")
        defer { dir.remove() }
        // A subdirectory (a database's lost/) opened with O_DIRECT is EINVAL on ext4: it must not
        // make a file system that takes O_DIRECT look as if it did not.
        try FileManager.default.createDirectory(atPath: dir.file("lost"), withIntermediateDirectories: false)
        #expect(PosixFileSystem.supportsDirectReads(in: dir.path, mayCreate: false))
        #expect(dir.names() == ["lost"], "a read-only probe wrote: \(dir.names())")
        #expect(PosixFileSystem.supportsDirectReads(in: dir.path))
        #expect(dir.names() == ["lost"], "the probe file stayed: \(dir.names())")
        FileManager.default.createFile(atPath: dir.file("CURRENT"), contents: Data("MANIFEST-000001\n".utf8))
        #expect(PosixFileSystem.supportsDirectReads(in: dir.path, mayCreate: false))
        #expect(!PosixFileSystem.supportsDirectReads(in: dir.file("missing")), "a directory that is not there cannot be probed")
    }

    static func options(direct: Bool) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        options.blockCacheSize = 64 << 10  // small: most reads miss and go to the file
        options.useDirectReads = direct
        options.disableAutoCompactions = true  // several tables stay
        return options
    }

    static func key(_ i: Int) -> [UInt8] { Array("key\(String(i).leftPad(6))".utf8) }

    @Test("a database with useDirectReads reads what was written, and its reads leave the tables' pages out of the page cache")
    func database() throws {
        let dir = deviceBackedTempDir("moraine-direct-db")
        defer { dir.remove() }
        let seed = SeededRandom.testSeed("direct reads database")
        var rng = SeededRandom(seed: seed)
        var oracle: [Int: [UInt8]] = [:]
        do {
            let db = try Database(path: dir.path, options: Self.options(direct: true))
            for round in 0..<4 {
                for _ in 0..<2000 {
                    let i = Int.random(in: 0..<4000, using: &rng)
                    if Int.random(in: 0..<10, using: &rng) == 0 {
                        oracle[i] = nil
                        try db.delete(Self.key(i))
                    } else {
                        let value = rng.bytes(Int.random(in: 1...200, using: &rng))
                        oracle[i] = value
                        try db.put(Self.key(i), value)
                    }
                }
                try db.flush()
                if round == 2 { try db.compactRange() }
            }
            try db.close()
        }
        let tables = dir.names().filter { $0.hasSuffix(".sst") }.map(dir.file)
        try #require(tables.count > 1, "tables: \(tables)")
        tables.forEach(PageCache.drop)
        try #require(tables.allSatisfy { PageCache.residentPages($0) == 0 }, "the kernel kept the tables' pages")

        let db = try Database(path: dir.path, options: Self.options(direct: true))
        for i in 0..<4000 {
            #expect(try db.get(Self.key(i)) == oracle[i], "key \(i) (MORAINE_SEED=\(seed))")
        }
        let wanted = (0..<64).map { _ in Int.random(in: 0..<4000, using: &rng) }
        #expect(try db.multiGet(wanted.map(Self.key)) == wanted.map { oracle[$0] }, "multiGet (MORAINE_SEED=\(seed))")
        let iterator = try db.makeIterator()
        var forward: [[UInt8]] = []
        try iterator.seekToFirst()
        while iterator.isValid {
            forward.append(iterator.key)
            #expect(iterator.value == oracle[Int(String(decoding: iterator.key.dropFirst(3), as: UTF8.self).trimmingCharacters(in: .whitespaces))!])
            try iterator.next()
        }
        #expect(forward == oracle.keys.sorted().map(Self.key), "forward scan (MORAINE_SEED=\(seed))")
        var backward = 0
        try iterator.seekToLast()
        while iterator.isValid {
            backward += 1
            try iterator.prev()
        }
        #expect(backward == oracle.count, "backward scan")
        let resident = tables.filter { FileManager.default.fileExists(atPath: $0) }.map(PageCache.residentPages).reduce(0, +)
        #expect(resident == 0, "the engine's reads brought \(resident) table pages into the page cache")
        try db.close()

        // The same reads without direct reads fill the page cache: the check above can fail.
        let plain = try Database(path: dir.path, options: Self.options(direct: false))
        for i in 0..<4000 { _ = try plain.get(Self.key(i)) }
        let live = dir.names().filter { $0.hasSuffix(".sst") }.map(dir.file)
        #expect(live.map(PageCache.residentPages).reduce(0, +) > 0, "buffered reads left no table page resident")
        try plain.close()
    }

    /// Counts how tables are opened for reading.
    final class OpenCounter: ForwardingFileSystem, @unchecked Sendable {
        let base: any FileSystem
        let direct = Mutex(0)
        let plain = Mutex(0)
        init(_ base: any FileSystem) { self.base = base }
        func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
            if path.hasSuffix(".sst") { plain.withLock { $0 += 1 } }
            return try base.openRandomAccess(path)
        }
        /// Directories of the tables opened direct, one entry per open.
        let directPaths = Mutex<[String]>([])
        func openDirect(_ path: String) throws -> any RandomAccessFile {
            if path.hasSuffix(".sst") {
                direct.withLock { $0 += 1 }
                directPaths.withLock { $0.append(path) }
            }
            return try base.openDirect(path)
        }
        func directUnder(_ directory: String) -> Int { directPaths.withLock { $0.filter { $0.hasPrefix(directory + "/") }.count } }
    }

    @Test("with useDirectReads every table the engine reads, a compaction's inputs included, is opened for direct reads")
    func everyTableOpenIsDirect() throws {
        let dir = deviceBackedTempDir("moraine-direct-opens")
        defer { dir.remove() }
        let counter = OpenCounter(PosixFileSystem.shared)
        var options = Self.options(direct: true)
        options.fileSystem = counter
        options.maxOpenFiles = 16  // the table cache evicts, so readers are opened again
        let db = try Database(path: dir.path, options: options)
        for round in 0..<4 {
            for i in 0..<1500 { try db.put(Self.key(i * 4 + round), Array("value-\(round)-\(i)".utf8)) }
            try db.flush()
        }
        try db.compactRange()  // reads every table made above as a compaction input
        for i in stride(from: 0, to: 6000, by: 7) { #expect(try db.get(Self.key(i)) == Array("value-\(i % 4)-\(i / 4)".utf8)) }
        try db.close()
        #expect(counter.plain.withLock { $0 } == 0, "\(counter.plain.withLock { $0 }) tables opened through the page cache")
        #expect(counter.direct.withLock { $0 } >= 5, "\(counter.direct.withLock { $0 }) direct opens for 4 flushed tables, their compaction and reads")
    }

    @Test("with tiers, a tier read through mappings is never opened direct (reads, compactions, moves); the others are; a read-only open reads direct")
    func mappedTier() throws {
        let dir = deviceBackedTempDir("moraine-direct-tiers")
        let fast = TempDir("moraine-direct-fast")
        defer {
            dir.remove()
            fast.remove()
        }
        let counter = OpenCounter(PosixFileSystem.shared)
        var options = Self.options(direct: true)
        options.fileSystem = counter
        options.maxBytesForLevelBase = 64 << 10
        options.tiers = [StorageTier(path: fast.path, budgetBytes: 96 << 10, mapped: true), StorageTier(path: dir.path + "/slow", budgetBytes: nil)]
        let db = try Database(path: dir.path + "/db", options: options)
        for round in 0..<6 {
            for i in 0..<1500 { try db.put(Self.key(i * 6 + round), Array("value-\(round)-\(i)".utf8)) }
            try db.flush()
        }
        try db.compactRange()  // inputs on both tiers; outputs past the fast tier's budget move down
        for i in stride(from: 0, to: 9000, by: 11) { #expect(try db.get(Self.key(i)) == Array("value-\(i % 6)-\(i / 6)".utf8)) }
        try db.close()
        #expect(counter.directUnder(fast.path) == 0, "\(counter.directUnder(fast.path)) direct opens on the mapped tier")
        #expect(counter.directUnder(dir.path + "/slow") > 0, "no direct open on the other tier")
        // Read-only: nothing written, tables still read directly.
        var readOnly = options
        readOnly.readOnly = true
        let before = counter.directUnder(dir.path + "/slow")
        let reader = try Database(path: dir.path + "/db", options: readOnly)
        for i in stride(from: 0, to: 9000, by: 13) { #expect(try reader.get(Self.key(i)) == Array("value-\(i % 6)-\(i / 6)".utf8)) }
        try reader.close()
        #expect(counter.directUnder(dir.path + "/slow") > before, "a read-only open read no table directly")
    }

    @Test("use_direct_reads goes to the OPTIONS file and back, and is refused beside allow_mmap_reads")
    func optionsRules() throws {
        var options = Options()
        options.useDirectReads = true
        let text = OptionsFile.render(options)
        #expect(text.contains("use_direct_reads=true"), "\(text)")
        var read = Options()
        try OptionsFile.apply(text, to: &read, name: "OPTIONS-test")
        #expect(read.useDirectReads)
        options.allowMmapReads = true
        let dir = TempDir("moraine-direct-mmap")
        defer { dir.remove() }
        options.createIfMissing = true
        let error = moraineError { _ = try Database(path: dir.path, options: options) }
        #expect(error?.kind == .invalid && error?.message.contains("use_direct_reads") == true, "\(String(describing: error))")
    }

    @Test("a storage node with direct reads serves a database's reads from the device, never the page cache", arguments: [Carrier.sharedMemory, .tcp])
    func storageNode(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier, directReads: true)
        defer { node.remove() }
        // The node decides how its files are read; the engine's own option must not get in the
        // way of its files on the node, nor of its compactions on a worker.
        var options = Self.options(direct: true)
        options.fileSystem = node.remote
        let worker = try TestWorker(for: node)
        defer { withExtendedLifetime(worker) {} }  // serving until the end
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing, flushWorkers: { [] }) { [worker.endpoint] }
        options.jobRunner = runner
        let seed = SeededRandom.testSeed("direct reads node \(carrier)")
        var rng = SeededRandom(seed: seed)
        var oracle: [Int: [UInt8]] = [:]
        do {
            let db = try Database(path: "db", options: options)
            for _ in 0..<3 {
                for _ in 0..<2000 {
                    let i = Int.random(in: 0..<3000, using: &rng)
                    let value = rng.bytes(Int.random(in: 1...200, using: &rng))
                    oracle[i] = value
                    try db.put(Self.key(i), value)
                }
                try db.flush()
            }
            try db.compactRange()
            #expect(runner.remoteJobs >= 1 && runner.fallbacks == 0, "\(runner.remoteJobs) compactions on the worker, \(runner.fallbacks) here")
            try db.put(Self.key(0), oracle[0] ?? [1])  // still the lease's owner
            oracle[0] = oracle[0] ?? [1]
            try db.flush()
            try db.close()
        }
        let tables = try PosixFileSystem.shared.children(of: node.dataDirectory.file("db")).filter { $0.hasSuffix(".sst") }
            .map { node.dataDirectory.file("db/" + $0) }
        try #require(tables.count > 1, "tables: \(tables)")
        tables.forEach(PageCache.drop)
        try #require(tables.allSatisfy { PageCache.residentPages($0) == 0 }, "the kernel kept the tables' pages")
        let db = try Database(path: "db", options: options)
        for i in 0..<3000 {
            #expect(try db.get(Self.key(i)) == oracle[i], "key \(i) (MORAINE_SEED=\(seed))")
        }
        #expect(tables.map(PageCache.residentPages).reduce(0, +) == 0, "the node's reads went through the page cache")
        try db.close()
        // A node without direct reads fills the page cache from the same reads: the check can fail.
        let plain = try StorageNode(dataDirectory: node.dataDirectory.path)
        let served = try Endpoint.tcp(host: "127.0.0.1", port: 0).serve(key: node.key, router: plain.router())
        defer { served.close() }
        var plainOptions = options
        plainOptions.fileSystem = RemoteFileSystem(endpoint: served.endpoint, key: node.key, options: StorageTestNode.fastOptions)
        plainOptions.readOnly = true
        let reader = try Database(path: "db", options: plainOptions)
        for i in 0..<3000 { _ = try reader.get(Self.key(i)) }
        #expect(tables.map(PageCache.residentPages).reduce(0, +) > 0, "buffered reads through a node left no table page resident")
        try reader.close()
    }

    @Test("direct_reads in a topology is a storage node's, true or false; --use_direct_reads reaches the engines' configuration")
    func configuration() throws {
        let topology = try Topology(parsing: "[[role]]\nkind = \"storage\"\ndirect_reads = true\n", name: "t.toml")
        try topology.check()
        #expect(topology.roles[0].directReads)
        #expect(try Topology(parsing: "[[role]]\nkind = \"storage\"\n", name: "t.toml").roles[0].directReads == false)
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"compute\"\ndirect_reads = true\n", name: "t.toml").check()
        }
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"storage\"\ndirect_reads = 1\n", name: "t.toml")
        }
        #expect(try BenchFlags.parse(BenchFlags.normalizing(["-use_direct_reads"])).configuration.directReads)
        #expect(try BenchFlags.parse(BenchFlags.normalizing(["--use_direct_reads=0"])).configuration.directReads == false)
        #expect(try BenchFlags.parse([]).configuration.directReads == false)
    }
}
