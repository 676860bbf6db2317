// The row cache (Options.rowCacheSize): the cache itself against a dictionary under random
// lookups, fills, invalidations and evictions; point reads through a database with it on, against
// an oracle across flushes and compactions, with snapshots (which never use it); and readers
// racing a writer and flushes, which must never see a value older than one already acknowledged,
// nor half of a write batch.
import Dispatch
import Moraine
import MoraineFormat
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@testable import MoraineEngine

@Suite("Row cache")
struct RowCacheTests {
    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    static func lookup(_ cache: RowCache, _ key: [UInt8]) -> RowCache.Lookup {
        key.withUnsafeBytes { cache.lookup($0, hash: cache.hash($0), epoch: cache.epoch) }
    }

    static func fill(_ cache: RowCache, _ key: [UInt8], _ value: [UInt8]?, epoch: UInt64) {
        key.withUnsafeBytes { k in
            if let value {
                value.withUnsafeBytes { cache.fill(k, hash: cache.hash(k), value: $0, epoch: epoch) }
            } else {
                cache.fill(k, hash: cache.hash(k), value: nil, epoch: epoch)
            }
        }
    }

    @Test("answers as a dictionary of what was filled, less what was invalidated or evicted, within its budget")
    func matchesADictionary() throws {
        let seed = SeededRandom.testSeed()
        var rng = SeededRandom(seed: seed)
        let cache = RowCache(capacityBytes: 24 << 10)
        #expect(cache.shardCount == 1)
        // What the cache may hold: a key's last fill since its last invalidation (nil: absent).
        var model: [[UInt8]: [UInt8]?] = [:]
        var hits = 0
        for step in 0..<20_000 {
            let key = Self.bytes("k\(rng.next() % 600)")
            switch rng.next() % 10 {
            case 0...3:
                let value: [UInt8]? = rng.next() % 5 == 0 ? nil : [UInt8](repeating: UInt8(step & 0xff), count: Int(rng.next() % 120))
                Self.fill(cache, key, value, epoch: cache.epoch)
                model[key] = .some(value)
            case 4:
                key.withUnsafeBytes { cache.invalidate($0, hash: cache.hash($0)) }
                model[key] = nil
            default:
                switch Self.lookup(cache, key) {
                case .miss: model[key] = nil  // evicted (or never filled)
                case .absent:
                    hits += 1
                    #expect(model[key] == .some(nil), "seed \(seed) step \(step): absent for a key the model holds as \(String(describing: model[key]))")
                case .value(let value):
                    hits += 1
                    #expect(model[key] == .some(value), "seed \(seed) step \(step): a value the model does not hold")
                }
            }
            #expect(cache.usageBytes <= cache.capacityBytes, "seed \(seed) step \(step): over budget")
        }
        // 600 keys of up to ~170 bytes charged do not fit in 24 KiB: eviction ran, and hits happened.
        #expect(hits > 1_000 && cache.entryCount < 600, "seed \(seed): \(hits) hits, \(cache.entryCount) entries")
        #expect(cache.hits == hits)
        cache.clear()
        #expect(cache.usageBytes == 0 && cache.entryCount == 0)
    }

    @Test("a fill from before an epoch advance is dropped; one after it is kept")
    func staleFillsAreDropped() {
        let cache = RowCache(capacityBytes: 1 << 20)
        #expect(cache.shardCount == 16)
        let before = cache.epoch
        cache.advanceEpoch()
        Self.fill(cache, Self.bytes("a"), Self.bytes("old"), epoch: before)
        guard case .miss = Self.lookup(cache, Self.bytes("a")) else {
            Issue.record("a fill from an earlier epoch was kept")
            return
        }
        Self.fill(cache, Self.bytes("a"), Self.bytes("new"), epoch: cache.epoch)
        guard case .value(let value) = Self.lookup(cache, Self.bytes("a")) else {
            Issue.record("a current fill was not kept")
            return
        }
        #expect(value == Self.bytes("new"))
        // A reader that noted an earlier epoch gets a miss, not the entry.
        let stale = Self.bytes("a").withUnsafeBytes { cache.lookup($0, hash: cache.hash($0), epoch: before) }
        guard case .miss = stale else {
            Issue.record("a reader of an earlier epoch was answered from the cache")
            return
        }
        // Two caches file a key under different hashes (each has its own seed).
        #expect(Self.bytes("a").withUnsafeBytes { cache.hash($0) != RowCache(capacityBytes: 1 << 20).hash($0) })
        // Too big for a quarter of its shard: not cached at all.
        Self.fill(cache, Self.bytes("big"), [UInt8](repeating: 1, count: 32 << 10), epoch: cache.epoch)
        guard case .miss = Self.lookup(cache, Self.bytes("big")) else {
            Issue.record("an entry larger than a quarter of its shard was cached")
            return
        }
    }

    static func options(rowCacheBytes: Int = 64 << 10) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 16 << 10
        options.targetFileSizeBase = 16 << 10
        options.maxBytesForLevelBase = 64 << 10
        options.level0FileNumCompactionTrigger = 2
        options.blockSize = 512
        options.rowCacheSize = rowCacheBytes
        return options
    }

    @Test("gets and multiGets equal an oracle across overwrites, deletes, flushes and compactions; snapshots bypass the cache")
    func readsEqualAnOracle() throws {
        let seed = SeededRandom.testSeed()
        var rng = SeededRandom(seed: seed)
        let directory = makeTemporaryDirectory("moraine-row-cache")
        defer { removeTree(directory) }
        let db = try Database(path: directory, options: Self.options())
        var oracle: [[UInt8]: [UInt8]] = [:]
        var pinned: (snapshot: Snapshot, state: [[UInt8]: [UInt8]])? = nil
        func key(_ i: UInt64) -> [UInt8] { Self.bytes("key\(String(i).leftPad(5))") }
        for step in 0..<6_000 {
            let k = key(rng.next() % 400)
            switch rng.next() % 20 {
            case 0...5:
                let value = Self.bytes("v\(step)-") + [UInt8](repeating: UInt8(step & 0x7f), count: Int(rng.next() % 60))
                try db.put(k, value)
                oracle[k] = value
            case 6:
                try db.delete(k)
                oracle[k] = nil
            case 7 where step % 5 == 0:
                try db.flush()
            case 8 where step % 50 == 0:
                pinned = (try db.snapshot(), oracle)
            case 9...13:
                #expect(try db.get(k) == oracle[k], "seed \(seed) step \(step): get \(String(decoding: k, as: UTF8.self))")
            case 14...17:
                let keys = (0..<1 + rng.next() % 8).map { _ in key(rng.next() % 400) }
                let values = try db.multiGet(keys)
                for (k, value) in zip(keys, values) {
                    #expect(value == oracle[k], "seed \(seed) step \(step): multiGet \(String(decoding: k, as: UTF8.self))")
                }
            default:
                if let pinned {
                    var read = ReadOptions()
                    read.snapshot = pinned.snapshot
                    #expect(try db.get(k, options: read) == pinned.state[k], "seed \(seed) step \(step): snapshot get")
                    #expect(try db.multiGet([k], options: read) == [pinned.state[k]], "seed \(seed) step \(step): snapshot multiGet")
                }
            }
        }
        let stats = db.stats()
        #expect(
            stats.flushes > 10 && stats.rowCacheHits > 1_000 && stats.rowCacheEntries > 0,
            "seed \(seed): \(stats.flushes) flushes, \(stats.rowCacheHits) hits")
        #expect(stats.rowCacheCapacityBytes == 64 << 10 && stats.rowCacheUsageBytes <= 64 << 10)
        try db.close()
    }

    @Test("a write that reached the tables is never read back older, nor a write batch by halves, while flushes run")
    func readersNeverGoBack() throws {
        let seed = SeededRandom.testSeed()
        let directory = makeTemporaryDirectory("moraine-row-cache-race")
        defer { removeTree(directory) }
        let db = try Database(path: directory, options: Self.options(rowCacheBytes: 1 << 20))
        let keyCount = 1024
        // Each round writes, in one batch, key a<i> and b<i> with the round's number; acknowledged[i]
        // is the last round whose batch returned.
        let acknowledged = Mutex([Int](repeating: 0, count: keyCount))
        let stop = Atomic<Bool>(false)
        let failures = Mutex<[String]>([])
        @Sendable func name(_ side: String, _ i: Int) -> [UInt8] { Array("\(side)\(String(i).leftPad(3))".utf8) }
        @Sendable func round(_ value: [UInt8]?) -> Int { value.flatMap { Int(String(decoding: $0.prefix(8), as: UTF8.self)) } ?? 0 }
        let group = DispatchGroup()
        for reader in 0..<2 {
            DispatchQueue.global().async(group: group) {
                var rng = SeededRandom(seed: seed &+ UInt64(reader))
                var reads = 0
                while !stop.load(ordering: .acquiring) && reads < 2_000_000 {
                    reads += 1
                    let i = Int(rng.next() % UInt64(keyCount))
                    let floor = acknowledged.withLock { $0[i] }
                    do {
                        let pair = try db.multiGet([name("a", i), name("b", i)])
                        let single = try db.get(name("a", i))
                        if round(pair[0]) < floor || round(pair[1]) < floor || round(single) < floor {
                            failures.withLock { $0.append("key \(i): read rounds \(round(pair[0]))/\(round(pair[1]))/\(round(single)) after \(floor)") }
                        }
                        if round(pair[0]) != round(pair[1]) {
                            failures.withLock { $0.append("key \(i): batch read by halves, rounds \(round(pair[0])) and \(round(pair[1]))") }
                        }
                    } catch {
                        failures.withLock { $0.append("read failed: \(error)") }
                    }
                    if failures.withLock({ $0.count }) > 10 { break }
                }
            }
        }
        var rng = SeededRandom(seed: seed)
        let deadline = monotonicNanos() + 4_000_000_000
        var rounds = 0
        while monotonicNanos() < deadline && rounds < 200_000 {
            rounds += 1
            let i = Int(rng.next() % UInt64(keyCount))
            let value = Array(String(rounds).leftPad(8).utf8) + [UInt8](repeating: 0x2e, count: 40)
            var batch = WriteBatch()
            batch.put(name("a", i), value)
            batch.put(name("b", i), value)
            try db.write(batch)
            acknowledged.withLock { $0[i] = rounds }
        }
        stop.store(true, ordering: .releasing)
        group.wait()
        let stats = db.stats()
        try db.close()
        let found = failures.withLock { $0 }
        #expect(found.isEmpty, "seed \(seed): \(found.prefix(5))")
        // The race needs flushes under the readers, and readers that use the cache.
        #expect(stats.flushes >= 20 && stats.rowCacheHits > 1_000, "seed \(seed): \(stats.flushes) flushes, \(stats.rowCacheHits) row cache hits")
        print("row cache race: seed \(seed), \(rounds) rounds, \(stats.flushes) flushes, \(stats.rowCacheHits) hits, \(stats.rowCacheMisses) misses")
    }

    @Test(
        "a read that read the tables before a flush of a newer value does not put its older answer back",
        arguments: [false, true])
    func fillAfterAFlushIsDropped(batched: Bool) throws {
        let directory = makeTemporaryDirectory("moraine-row-cache-pause")
        defer { removeTree(directory) }
        let fileSystem = PausingFileSystem()
        var options = Self.options()
        options.blockCacheSize = 0  // every lookup in a table reads its block from the file
        options.disableAutoCompactions = true
        options.fileSystem = fileSystem
        let db = try Database(path: directory, options: options)
        let k = Self.bytes("k")
        try db.put(k, Self.bytes("old"))
        try db.put(Self.bytes("other"), Self.bytes("x"))
        try db.flush()
        #expect(try db.get(Self.bytes("other")) == Self.bytes("x"))  // the table is open
        // A reader misses the row cache and stops inside its table read of "old".
        fileSystem.armedRead.withLock { $0 = true }
        let done = DispatchSemaphore(value: 0)
        let readerSaw = Mutex<[UInt8]??>(nil)
        DispatchQueue.global().async {
            let value = batched ? try? db.multiGet([k]).first ?? nil : try? db.get(k)
            readerSaw.withLock { $0 = .some(value) }
            done.signal()
        }
        #expect(fileSystem.paused.wait(timeout: .now() + 10) == .success, "the reader never reached the table")
        // Meanwhile a newer value goes into a table; the flush invalidates "k" in the row cache.
        try db.put(k, Self.bytes("new"))
        try db.flush()
        fileSystem.resume.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(readerSaw.withLock { $0 } == .some(Self.bytes("old")))  // right for the sequence it read at
        // Its fill came after the flush's invalidation: dropped, so reads see the newer value.
        #expect(try db.get(k) == Self.bytes("new"))
        #expect(try db.multiGet([k]) == [Self.bytes("new")])
        try db.close()
    }

    @Test("reads without fillCache use the row cache but do not fill it; a memory-only multiGet is answered from it; a read-only open uses it")
    func fillCacheMemoryOnlyAndReadOnly() throws {
        let directory = makeTemporaryDirectory("moraine-row-cache-modes")
        defer { removeTree(directory) }
        var options = Self.options()
        options.blockCacheSize = 0  // a table lookup always needs a file read
        let db = try Database(path: directory, options: options)
        let (a, b) = (Self.bytes("a"), Self.bytes("b"))
        try db.put(a, Self.bytes("1"))
        try db.put(b, Self.bytes("2"))
        try db.flush()
        var noFill = ReadOptions()
        noFill.fillCache = false
        #expect(try db.get(a, options: noFill) == Self.bytes("1"))
        #expect(db.stats().rowCacheEntries == 0)
        // Neither key is in memory yet: the memory-only read needs the file.
        #expect(try db.multiGetFromMemory([a, b]) == nil)
        #expect(try db.multiGet([a, b]) == [Self.bytes("1"), Self.bytes("2")])  // fills both
        #expect(db.stats().rowCacheEntries == 2)
        #expect(try db.multiGetFromMemory([a, b]) == [Self.bytes("1"), Self.bytes("2")])
        #expect(try db.get(b, options: noFill) == Self.bytes("2"))  // a hit, without filling
        try db.close()
        var readOnly = options
        readOnly.readOnly = true
        readOnly.createIfMissing = false
        let reader = try Database(path: directory, options: readOnly)
        #expect(try reader.get(a) == Self.bytes("1"))
        #expect(try reader.get(a) == Self.bytes("1"))
        #expect(try reader.get(Self.bytes("missing")) == nil)
        let stats = reader.stats()
        #expect(stats.rowCacheHits == 1 && stats.rowCacheEntries == 2)
        try reader.close()
    }

    @Test("row_cache_size goes to the OPTIONS file and back, and is counted in the stats and metrics")
    func optionsFileAndStats() throws {
        var options = Options()
        options.rowCacheSize = 12345
        var read = Options()
        try OptionsFile.apply(OptionsFile.render(options), to: &read, name: "OPTIONS")
        #expect(read.rowCacheSize == 12345)
        let directory = makeTemporaryDirectory("moraine-row-cache-stats")
        defer { removeTree(directory) }
        let db = try Database(path: directory, options: Self.options())
        try db.put(Self.bytes("k"), Self.bytes("v"))
        try db.flush()
        #expect(try db.get(Self.bytes("k")) == Self.bytes("v"))  // miss, filled
        #expect(try db.get(Self.bytes("k")) == Self.bytes("v"))  // hit
        #expect(try db.get(Self.bytes("absent")) == nil)  // miss, filled as absent
        #expect(try db.get(Self.bytes("absent")) == nil)  // hit
        let stats = db.stats()
        #expect(stats.rowCacheHits == 2 && stats.rowCacheMisses == 2 && stats.rowCacheEntries == 2)
        let samples = stats.metricSamples(database: "db")
        #expect(samples.contains { $0.name == "moraine_row_cache_hits_total" } && samples.contains { $0.name == "moraine_row_cache_bytes" })
        try db.close()
    }
}
