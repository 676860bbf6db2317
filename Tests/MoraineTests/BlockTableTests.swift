// Blocks (BlockBuilder/Block/BlockIterator) and tables (TableBuilder/TableReader) against a
// sorted model: full scans both ways, seeks to present and absent keys, and point gets.
import Foundation
import Testing

@testable import MoraineFormat
@testable import MoraineSystem

/// One internal entry of the model.
struct ModelEntry {
    let key: [UInt8]  // internal key
    let value: [UInt8]
    let user: [UInt8]
    init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
        self.user = Array(key.dropLast(internalKeyTagBytes))
    }
}

func userKeyBytes(_ n: Int) -> [UInt8] { Array("key\(padded(n))".utf8) }

/// Sorted entries: user keys for even n in 0..<2*count (odd ones are absent), some with two
/// versions, some deletions; the newest version comes first.
func makeModel(count: Int, rng: inout SeededRandom, valueBytes: ClosedRange<Int> = 0...40) -> [ModelEntry] {
    var entries: [ModelEntry] = []
    var sequence: SequenceNumber = 1_000_000
    for i in 0..<count {
        let user = userKeyBytes(2 * i)
        let versions = Int.random(in: 0..<4, using: &rng) == 0 ? 2 : 1
        for v in 0..<versions {
            let deletion = Int.random(in: 0..<10, using: &rng) == 0
            let length = Int.random(in: valueBytes, using: &rng)
            let value =
                deletion ? [] : Array(String(repeating: "v\(i).\(v)|", count: length / 4 + 1).utf8.prefix(length))
            entries.append(
                ModelEntry(
                    key: makeInternalKey(user, sequence - SequenceNumber(v), deletion ? .deletion : .value),
                    value: value))
        }
        sequence -= 7
    }
    entries.sort { a, b in a.key.withUnsafeBytes { x in b.key.withUnsafeBytes { y in compareInternalKeys(x, y) < 0 } } }
    return entries
}

func compareKeys(_ a: [UInt8], _ b: [UInt8]) -> Int {
    a.withUnsafeBytes { x in b.withUnsafeBytes { y in compareInternalKeys(x, y) } }
}

/// Index of the first model entry >= target, or model.count.
func lowerBound(_ model: [ModelEntry], _ target: [UInt8]) -> Int {
    var low = 0
    var high = model.count
    while low < high {
        let mid = (low + high) / 2
        if compareKeys(model[mid].key, target) < 0 { low = mid + 1 } else { high = mid }
    }
    return low
}

/// Seek targets: every entry's key, absent user keys, keys between versions, before-first and
/// after-last.
func seekTargets(_ model: [ModelEntry], rng: inout SeededRandom) -> [[UInt8]] {
    var targets: [[UInt8]] = model.map(\.key)
    targets.append(makeInternalKey([], maxSequenceNumber, .forSeek))
    targets.append(makeInternalKey(Array("a".utf8), 1, .value))
    targets.append(makeInternalKey(Array("zzz".utf8), maxSequenceNumber, .forSeek))
    targets.append(makeInternalKey(Array("key".utf8), 0, .deletion))
    for entry in model {
        let n = Int(String(decoding: entry.user.dropFirst(3), as: UTF8.self))!
        targets.append(makeInternalKey(userKeyBytes(n + 1), maxSequenceNumber, .forSeek))  // absent
        targets.append(makeInternalKey(entry.user, maxSequenceNumber, .forSeek))
        targets.append(makeInternalKey(entry.user, 0, .deletion))  // after every version
        if Int.random(in: 0..<4, using: &rng) == 0 {
            targets.append(makeInternalKey(entry.user, sequence(ofKey: entry.key) &- 1, .value))
        }
    }
    return targets
}

func sequence(ofKey key: [UInt8]) -> SequenceNumber { key.withUnsafeBytes { MoraineFormat.sequence($0) } }

/// Checks full forward and backward scans and seeks of `iterator` against `model`.
func checkIterator(_ iterator: any InternalIterator, _ model: [ModelEntry], seed: UInt64, label: String) throws {
    var rng = SeededRandom(seed: seed ^ 0x1234)
    try iterator.seekToFirst()
    var i = 0
    while iterator.isValid {
        guard i < model.count else { Issue.record("seed \(seed) \(label): extra entries forward"); break }
        #expect(Array(iterator.key) == model[i].key, "seed \(seed) \(label): forward entry \(i)")
        #expect(Array(iterator.value) == model[i].value, "seed \(seed) \(label): forward value \(i)")
        try iterator.next()
        i += 1
    }
    #expect(i == model.count, "seed \(seed) \(label): forward saw \(i) of \(model.count)")

    try iterator.seekToLast()
    i = model.count - 1
    while iterator.isValid {
        guard i >= 0 else { Issue.record("seed \(seed) \(label): extra entries backward"); break }
        #expect(Array(iterator.key) == model[i].key, "seed \(seed) \(label): backward entry \(i)")
        #expect(Array(iterator.value) == model[i].value, "seed \(seed) \(label): backward value \(i)")
        try iterator.prev()
        i -= 1
    }
    #expect(i == -1, "seed \(seed) \(label): backward stopped at \(i)")

    for target in seekTargets(model, rng: &rng) {
        try target.withUnsafeBytes { try iterator.seek($0) }
        let expected = lowerBound(model, target)
        if expected == model.count {
            #expect(!iterator.isValid, "seed \(seed) \(label): seek past the end must be invalid")
        } else {
            #expect(
                iterator.isValid && Array(iterator.key) == model[expected].key,
                "seed \(seed) \(label): seek to \(target) should land on entry \(expected)")
            // Step both ways from the landing point.
            if iterator.isValid, expected > 0 {
                try iterator.prev()
                #expect(
                    iterator.isValid && Array(iterator.key) == model[expected - 1].key,
                    "seed \(seed) \(label): prev after seek")
                try iterator.next()
            }
            if iterator.isValid {
                try iterator.next()
                if expected + 1 < model.count {
                    #expect(
                        iterator.isValid && Array(iterator.key) == model[expected + 1].key,
                        "seed \(seed) \(label): next after seek")
                } else {
                    #expect(!iterator.isValid, "seed \(seed) \(label): next after the last")
                }
            }
        }
    }
}

@Suite("Block")
struct BlockTests {
    static func build(_ model: [ModelEntry], restartInterval: Int) throws -> Block {
        var builder = BlockBuilder(restartInterval: restartInterval)
        for entry in model { builder.add(key: entry.key, value: entry.value) }
        #expect(builder.entryCount == model.count)
        let contents = builder.finish()
        #expect(builder.isEmpty)
        return try Block(copying: contents, origin: "test block")
    }

    @Test(arguments: [1, 2, 16])
    func scansAndSeeks(restartInterval: Int) throws {
        let seed = testSeed("restart interval \(restartInterval)")
        var rng = SeededRandom(seed: seed)
        for count in [1, 2, 3, 17, 300] {
            let model = makeModel(count: count, rng: &rng)
            let block = try Self.build(model, restartInterval: restartInterval)
            try checkIterator(
                block.makeIterator(), model, seed: seed, label: "interval \(restartInterval) count \(count)")
        }
    }

    @Test func emptyBlock() throws {
        var builder = BlockBuilder(restartInterval: 4)
        let block = try Block(copying: builder.finish(), origin: "empty")
        let iterator = block.makeIterator()
        try iterator.seekToFirst()
        #expect(!iterator.isValid)
        try iterator.seekToLast()
        #expect(!iterator.isValid)
        try makeInternalKey([], maxSequenceNumber, .forSeek).withUnsafeBytes { try iterator.seek($0) }
        #expect(!iterator.isValid)
    }

    @Test func damagedBlockThrowsCorruption() throws {
        #expect(moraineError { _ = try Block(copying: [1, 2], origin: "short block") }?.kind == .corruption)
        // A restart count larger than the block.
        #expect(
            moraineError { _ = try Block(copying: [0, 0, 0, 0, 9, 0, 0, 0], origin: "bad restarts") }?.kind
                == .corruption)
        // An entry whose lengths run past the block.
        var builder = BlockBuilder()
        builder.add(key: makeInternalKey(Array("abc".utf8), 1, .value), value: Array("xyz".utf8))
        var contents = builder.finish()
        contents[1] = 0x7f  // non-shared length far too large
        let block = try Block(copying: contents, origin: "damaged block")
        let error = moraineError { try block.makeIterator().seekToFirst() }
        #expect(error?.kind == .corruption)
        #expect(error?.message.contains("damaged block") == true)
    }
}

/// A file the kernel cannot prefetch (as behind a fault-injecting or simulated file system).
final class NoPrefetchFile: RandomAccessFile, @unchecked Sendable {
    let base: any RandomAccessFile
    init(_ base: any RandomAccessFile) { self.base = base }
    var size: UInt64 { base.size }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try base.read(at: offset, into: buffer)
    }
}

@Suite("Index search")
struct IndexSearchTests {
    /// Sorted distinct user keys of one shape.
    static func keys(_ shape: Int, count: Int, rng: inout SeededRandom) -> [[UInt8]] {
        var set = Set<[UInt8]>()
        while set.count < count {
            let n = Int.random(in: 0..<1_000_000_000, using: &rng)
            switch shape {
            case 0: set.insert((0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })  // random bytes
            case 1: set.insert(Array(String(n).leftPad(16).utf8))  // decimal: a long shared prefix
            case 2: set.insert(Array("user:00000000:" .utf8) + Array(String(n % 5000).utf8))  // 8-byte ties
            default: set.insert((0..<Int.random(in: 0...6, using: &rng)).map { _ in UInt8.random(in: 0...3, using: &rng) })  // short
            }
        }
        return set.sorted { $0.lexicographicallyPrecedes($1) }
    }

    @Test("the search arrays find the entry a seek of the index block finds, for every key shape", arguments: 0..<4)
    func matchesBlockSeek(shape: Int) throws {
        let seed = testSeed("shape \(shape)")
        var rng = SeededRandom(seed: seed &+ UInt64(shape))
        let users = Self.keys(shape, count: shape == 3 ? 300 : 2000, rng: &rng)
        // Separators: every other key, as internal keys with descending sequences per key.
        var builder = BlockBuilder(restartInterval: 1)
        let separators = stride(from: 0, to: users.count, by: 2).map { users[$0] }
        for (i, user) in separators.enumerated() {
            var handle: [UInt8] = []
            BlockHandle(offset: UInt64(i) * 4096, size: 4000).encode(into: &handle)
            builder.add(key: makeInternalKey(user, SequenceNumber(100 + i), .value), value: handle)
        }
        let index = try Block(copying: builder.finish(), origin: "index")
        let search = try #require(try IndexSearch.build(index: index, fileSize: 1 << 40, name: "t"))
        #expect(search.count == separators.count)
        let iterator = index.makeIterator()
        var targets = users.map { makeInternalKey($0, SequenceNumber.random(in: 1...5000, using: &rng), .forSeek) }
        targets.append(makeInternalKey([], maxSequenceNumber, .forSeek))
        targets.append(makeInternalKey([255, 255, 255, 255, 255, 255, 255, 255, 255], 1, .forSeek))
        for _ in 0..<500 { targets.append(makeInternalKey(Self.keys(shape, count: 1, rng: &rng)[0], 7, .forSeek)) }
        for target in targets {
            let found = try target.withUnsafeBytes { t in
                try search.firstEntry(atOrAfter: t) { try index.restartKey($0) }
            }
            try target.withUnsafeBytes { try iterator.seek($0) }
            var expected = separators.count
            if iterator.isValid {
                expected = 0
                let key = Array(iterator.key)
                while try Array(index.restartKey(expected)) != key { expected += 1 }
            }
            #expect(found == expected, "seed \(seed) shape \(shape): target \(target)")
            if found < search.count { #expect(search.handle(found).offset == UInt64(found) * 4096) }
        }
    }
}

@Suite("Block cache")
struct BlockCacheTests {
    /// A block charging about 1 KiB.
    static func block() throws -> Block {
        var builder = BlockBuilder(restartInterval: 16)
        builder.add(key: makeInternalKey(Array("k".utf8), 1, .value), value: [UInt8](repeating: 7, count: 900))
        return try Block(copying: builder.finish(), origin: "cache test")
    }

    @Test("the budget holds; a block used again outlives a scan of blocks used once; a table's blocks go with it")
    func clockEviction() throws {
        let one = try Self.block()
        let perBlock = one.chargeBytes
        let cache = BlockCache(capacityBytes: perBlock * 64, shardCount: 1)
        let hot = BlockCacheKey(tableID: 1, offset: 0)
        cache.insert(hot, try Self.block())
        #expect(cache.lookup(hot) != nil && cache.hits == 1)
        // A scan of 1,000 blocks, each used once; the hot block is used between insertions.
        for i in 0..<1000 {
            cache.insert(BlockCacheKey(tableID: 2, offset: UInt64(i) * 4096), try Self.block())
            #expect(cache.usageBytes <= cache.capacityBytes, "over budget after \(i) inserts")
            if i % 16 == 0 { #expect(cache.lookup(hot) != nil, "the hot block was evicted after \(i) inserts") }
        }
        #expect(cache.usageBytes > cache.capacityBytes - 2 * perBlock, "the cache does not fill its budget")
        // The newest scan blocks are there, the oldest are not.
        #expect(cache.lookup(BlockCacheKey(tableID: 2, offset: 999 * 4096)) != nil)
        #expect(cache.lookup(BlockCacheKey(tableID: 2, offset: 0)) == nil)
        let misses = cache.misses
        cache.evictTable(2)
        #expect(cache.lookup(BlockCacheKey(tableID: 2, offset: 999 * 4096)) == nil && cache.misses == misses + 1)
        #expect(cache.usageBytes == perBlock, "usage after dropping table 2: \(cache.usageBytes)")
        #expect(cache.lookup(hot) != nil)
        // Re-inserting a key replaces its block without double-charging it.
        cache.insert(hot, try Self.block())
        #expect(cache.usageBytes == perBlock)
    }

    @Test("a block a second tier served comes in on its second offer while the first is remembered; a stream of one-time offers evicts nothing")
    func secondHitAdmission() throws {
        let perBlock = try Self.block().chargeBytes
        let cache = BlockCache(capacityBytes: perBlock * 64, shardCount: 1)
        let hot = BlockCacheKey(tableID: 1, offset: 0)
        cache.insert(hot, try Self.block())
        let first = BlockCacheKey(tableID: 2, offset: 4096)
        #expect(!cache.offerSecondHit(first, try Self.block()) && cache.lookup(first) == nil, "taken on its first offer")
        #expect(cache.offerSecondHit(first, try Self.block()) && cache.lookup(first) != nil, "not taken on its second offer")
        // A scan of blocks offered once each: none comes in, and the block in the cache stays.
        let usage = cache.usageBytes
        for i in 0..<10_000 { cache.offerSecondHit(BlockCacheKey(tableID: 3, offset: UInt64(i) * 4096), try Self.block()) }
        #expect(cache.usageBytes == usage && cache.lookup(hot) != nil && usage == 2 * perBlock)
        // A hot set re-offered while remembered comes in: the cache serves it from then on.
        let set = (0..<8).map { BlockCacheKey(tableID: 4, offset: UInt64($0) * 4096) }
        for _ in 0..<2 { for key in set { cache.offerSecondHit(key, try Self.block()) } }
        #expect(set.allSatisfy { cache.lookup($0) != nil }, "a hot set offered twice in a row did not come in: \(set.map { cache.lookup($0) != nil })")
    }

    @Test("against a model: a lookup finds the block last inserted or nothing, never another; usage is exact", arguments: [false, true])
    func modelled(evicting: Bool) throws {
        let seed = testSeed("block cache model evicting=\(evicting)")
        var rng = SeededRandom(seed: seed)
        let perBlock = try Self.block().chargeBytes
        // Without eviction every inserted block must stay (which checks the table's deletions);
        // with it, the budget holds 40 blocks of the 600 keys.
        let cache = BlockCache(capacityBytes: perBlock * (evicting ? 40 : 10_000), shardCount: 1)
        let pool = try (0..<8).map { _ in try Self.block() }
        var model: [BlockCacheKey: Block] = [:]
        for step in 0..<20_000 {
            let key = BlockCacheKey(tableID: UInt64.random(in: 1...3, using: &rng), offset: UInt64.random(in: 0..<200, using: &rng) * 4096)
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<45:
                let block = pool[Int.random(in: 0..<pool.count, using: &rng)]
                cache.insert(key, block)
                model[key] = block
            case 45..<99:
                let found = cache.lookup(key)
                #expect(found == nil || found === model[key], "step \(step): \(key) found another block (MORAINE_SEED=\(seed))")
                if !evicting { #expect((found == nil) == (model[key] == nil), "step \(step): \(key) (MORAINE_SEED=\(seed))") }
            default:
                cache.evictTable(key.tableID)
                model = model.filter { $0.key.tableID != key.tableID }
            }
            #expect(cache.usageBytes <= cache.capacityBytes, "step \(step): over budget (MORAINE_SEED=\(seed))")
        }
        var held = 0
        for (key, block) in model {
            guard let found = cache.lookup(key) else { continue }
            #expect(found === block, "\(key) (MORAINE_SEED=\(seed))")
            held += found.chargeBytes
        }
        #expect(cache.usageBytes == held, "usage \(cache.usageBytes), blocks held \(held) (MORAINE_SEED=\(seed))")
        if !evicting { #expect(held == model.count * perBlock) }
    }
}

@Suite("Table")
struct TableTests {
    struct Built {
        let path: String
        let properties: TableProperties
        let size: UInt64
    }

    static func write(_ model: [ModelEntry], dir: TempDir, name: String, compression: CompressionType) throws -> Built {
        let path = dir.file(name)
        let fs = PosixFileSystem()
        let file = try fs.createWritable(path)
        let builder = TableBuilder(file: file, options: TableOptions(compression: compression), name: path)
        for entry in model { try builder.add(key: entry.key, value: entry.value) }
        let properties = try builder.finish()
        try file.sync()
        try file.close()
        return Built(path: path, properties: properties, size: builder.fileSizeBytes)
    }

    @Test(arguments: [CompressionType.lz4, .none])
    func writeReopenScanSeekGet(compression: CompressionType) throws {
        let seed = testSeed("\(compression)")
        var rng = SeededRandom(seed: seed)
        let dir = TempDir()
        defer { dir.remove() }
        let model = makeModel(count: 4000, rng: &rng, valueBytes: 10...120)
        let built = try Self.write(model, dir: dir, name: "000011.sst", compression: compression)
        #expect(UInt64(fileSize(built.path)) == built.size, "seed \(seed)")

        for cache in [nil, BlockCache(capacityBytes: 1 << 20)] as [BlockCache?] {
            let label = "\(compression) cache \(cache != nil)"
            let file = try PosixFileSystem().openRandomAccess(built.path)
            let reader = try TableReader(file: file, name: built.path, cache: cache)
            let p = reader.properties
            #expect(p == built.properties, "seed \(seed) \(label)")
            #expect(p.entryCount == UInt64(model.count), "seed \(seed) \(label)")
            #expect(
                p.deletionCount == UInt64(model.filter { $0.key.withUnsafeBytes { valueType($0) } == .deletion }.count),
                "seed \(seed) \(label)")
            #expect(p.smallestKey == model.first!.key && p.largestKey == model.last!.key, "seed \(seed) \(label)")
            #expect(p.smallestSequence == model.map { sequence(ofKey: $0.key) }.min(), "seed \(seed) \(label)")
            #expect(p.largestSequence == model.map { sequence(ofKey: $0.key) }.max(), "seed \(seed) \(label)")
            #expect(p.compression == compression && p.dataBlockCount > 10, "seed \(seed) \(label)")

            try checkIterator(reader.makeIterator(), model, seed: seed, label: label)
            for readahead in [Readahead.automatic(), .fixed(bytes: 64 << 10)] {
                let iterator = reader.makeIterator(readahead: readahead)
                try checkIterator(iterator, model, seed: seed, label: label + " readahead")
                if cache == nil {
                    // A full forward scan reads many blocks per readahead request.
                    try iterator.seekToFirst()
                    let before = readahead.readCount
                    while iterator.isValid { try iterator.next() }
                    #expect(readahead.readCount - before > 0, "seed \(seed) \(label)")
                    #expect(
                        (readahead.readCount - before) * 4 < Int(p.dataBlockCount),
                        "seed \(seed) \(label): \(readahead.readCount - before) reads for \(p.dataBlockCount) blocks")
                }
            }
            if cache == nil {
                // Where the kernel cannot prefetch, automatic readahead reads spans itself.
                let plain = try TableReader(file: NoPrefetchFile(file), name: built.path, cache: nil)
                let readahead = Readahead.automatic()
                let iterator = plain.makeIterator(readahead: readahead)
                try checkIterator(iterator, model, seed: seed, label: label + " own readahead")
                try iterator.seekToFirst()
                let before = readahead.readCount
                while iterator.isValid { try iterator.next() }
                #expect(
                    readahead.readCount - before > 0 && (readahead.readCount - before) * 4 < Int(p.dataBlockCount),
                    "seed \(seed) \(label): \(readahead.readCount - before) reads for \(p.dataBlockCount) blocks")
            }

            // get: every present user key finds its newest version; older snapshots find older ones.
            for (index, entry) in model.enumerated() {
                let lookup = makeInternalKey(entry.user, sequence(ofKey: entry.key), .forSeek)
                var foundKey: [UInt8] = []
                var foundValue: [UInt8] = []
                let hash = entry.user.withUnsafeBytes { hashBytes($0) }
                let found = try lookup.withUnsafeBytes { lk in
                    try reader.get(lk, hash: hash) { k, v in
                        foundKey = Array(k)
                        foundValue = Array(v)
                    }
                }
                #expect(
                    found && foundKey == entry.key && foundValue == entry.value,
                    "seed \(seed) \(label): get entry \(index)")
            }
            // Absent user keys (odd numbers) are not found.
            for n in stride(from: 1, to: 8000, by: 2) {
                let user = userKeyBytes(n)
                let lookup = makeInternalKey(user, maxSequenceNumber, .forSeek)
                let hash = user.withUnsafeBytes { hashBytes($0) }
                let found = try lookup.withUnsafeBytes { lk in try reader.get(lk, hash: hash) { _, _ in } }
                #expect(!found, "seed \(seed) \(label): absent key \(n) reported present")
            }
            if let cache {
                let again = reader.makeIterator()
                try again.seekToFirst()
                for i in 0..<50 {
                    #expect(
                        again.isValid && Array(again.key) == model[i].key,
                        "seed \(seed) \(label): second pass entry \(i)")
                    try again.next()
                }
                #expect(cache.hits > 0 && cache.usageBytes > 0, "seed \(seed) \(label): the cache was never hit")
            }
        }
    }

    @Test func lz4MakesCompressibleTablesSmaller() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let dir = TempDir()
        defer { dir.remove() }
        let model = makeModel(count: 2000, rng: &rng, valueBytes: 80...120)
        let small = try Self.write(model, dir: dir, name: "000001.sst", compression: .lz4)
        let large = try Self.write(model, dir: dir, name: "000002.sst", compression: .none)
        #expect(small.size * 2 < large.size, "seed \(seed): lz4 \(small.size) vs none \(large.size)")
    }

    @Test func tooShortFileThrowsCorruptionNamingIt() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let path = dir.file("000003.sst")
        writeFileBytes(path, [UInt8](repeating: 0, count: 40))
        let error = moraineError {
            _ = try TableReader(file: try PosixFileSystem().openRandomAccess(path), name: path, cache: nil)
        }
        #expect(error?.kind == .corruption)
        #expect(error?.message.contains(path) == true)
    }
}
