// Batched point reads. multiGet answers what it can from the memtables, then plans every table
// lookup the rest could need: for each key, every candidate table in search order (L0 newest
// first, one table per deeper level) whose bloom filter admits the key, and the data block the
// index names. Blocks missing from the cache are read in one batch through the file system
// (one io_uring submission for the whole batch), checked, cached, and then each key takes the
// first table in its search order that holds an entry for it.
//
// Trade-off: planning every level up front may read a deeper block for a key that a shallower
// level answers (a key overwritten after reaching the lower level). That costs bandwidth, never
// correctness, and buys one submission instead of one per level; with bloom filters the extra
// blocks are the rare keys that live in two levels at once.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    /// The values of `keys` (nil where absent or deleted), read as of one sequence number.
    /// - Throws: `.corruption` naming the table when a block fails its checks, `.io` when a read
    ///   fails, `.closed`.
    public func multiGet(_ keys: [[UInt8]], options readOptions: ReadOptions = ReadOptions()) throws -> [[UInt8]?] {
        try multiGet(keys, options: readOptions, memoryOnly: false)!
    }

    /// `multiGet` answered from memory only, as RocksDB's `kBlockCacheTier` read tier: the
    /// memtables, the open tables' index and filter blocks, the block cache (and tables' mappings).
    /// Nil when a key would need a read: a block not in the block cache (the second tier, which
    /// may be a memory node, is not asked either) or a table not open yet. For a caller that must
    /// not block (the Redis front end's event loop), which then reads the batch elsewhere.
    /// - Throws: as `multiGet`.
    public func multiGetFromMemory(_ keys: [[UInt8]], options readOptions: ReadOptions = ReadOptions()) throws -> [[UInt8]?]? {
        do {
            return try multiGet(keys, options: readOptions, memoryOnly: true)
        } catch is NeedsRead {
            return nil
        }
    }

    /// Thrown inside a memory-only multiGet where a read would be needed.
    private struct NeedsRead: Error {}

    private func multiGet(_ keys: [[UInt8]], options readOptions: ReadOptions, memoryOnly: Bool) throws -> [[UInt8]?]? {
        if closed { throw MoraineError(.closed, "database \(path) is closed") }
        // Noted before the superversion is taken (RowCache.swift says why).
        let rowCache = readOptions.snapshot == nil ? self.rowCache : nil
        let epoch = rowCache?.epoch ?? 0
        let sv = currentSuperVersion()
        let seq = readSequence(readOptions)
        var results = [[UInt8]?](repeating: nil, count: keys.count)
        var pending: [Int] = []
        for (i, key) in keys.enumerated() {
            switch key.withUnsafeBytes({ memtableLookup(sv, key: $0, sequence: seq) }) {
            case .found(let value): results[i] = value
            case .deleted: break
            case .notFound: pending.append(i)
            }
        }
        if pending.isEmpty { return results }
        if let rowCache {
            // Each hit comes while the epoch is the one noted (checked under its shard's lock), so
            // hits and the table reads below all answer as of the superversion taken above.
            var missed: [Int] = []
            for i in pending {
                switch keys[i].withUnsafeBytes({ rowCache.lookup($0, hash: rowCache.hash($0), epoch: epoch) }) {
                case .value(let value): results[i] = value
                case .absent: break
                case .miss: missed.append(i)
                }
            }
            if missed.isEmpty { return results }
            pending = missed
        }
        let lookups = pending.map { makeInternalKey(keys[$0], seq, .forSeek) }
        let probes = try planProbes(sv.version, keys: keys, pending: pending, lookups: lookups, memoryOnly: memoryOnly)
        let blocks = try fetchBlocks(probes, fillCache: readOptions.fillCache, memoryOnly: memoryOnly)
        var resolved = [Bool](repeating: false, count: pending.count)
        for (p, probe) in probes.enumerated() where !resolved[probe.pendingIndex] {
            let block = blocks[p]
            let keyIndex = pending[probe.pendingIndex]
            let hit = try lookups[probe.pendingIndex].withUnsafeBytes { lookupKey in
                try probe.table.get(lookupKey, in: block) { foundKey, value in
                    switch valueType(foundKey) {
                    case .value: results[keyIndex] = Array(value)
                    case .deletion: results[keyIndex] = nil
                    case nil:
                        throw MoraineError.corruption(
                            "unknown value type for key \(keys[keyIndex].withUnsafeBytes { describeKey($0) })", file: probe.table.name)
                    }
                }
            }
            if hit { resolved[probe.pendingIndex] = true }
        }
        if let rowCache, readOptions.fillCache {
            for i in pending {
                keys[i].withUnsafeBytes { key in
                    let hash = rowCache.hash(key)
                    if let value = results[i] {
                        value.withUnsafeBytes { rowCache.fill(key, hash: hash, value: $0, epoch: epoch) }
                    } else {
                        rowCache.fill(key, hash: hash, value: nil, epoch: epoch)
                    }
                }
            }
        }
        return results
    }

    /// A memtable answer for one key: the active memtable, then the immutable ones.
    func memtableLookup(_ sv: SuperVersion, key: UnsafeRawBufferPointer, sequence: SequenceNumber) -> LookupResult {
        let first = sv.mem.get(key, sequence: sequence)
        if case .notFound = first {
            for imm in sv.imms {
                let result = imm.get(key, sequence: sequence)
                if case .notFound = result { continue }
                return result
            }
        }
        return first
    }

    /// One table lookup a key may need.
    struct Probe {
        let pendingIndex: Int
        let table: TableReader
        let handle: BlockHandle
    }

    /// Every lookup the pending keys could need, grouped by key in search order.
    private func planProbes(
        _ version: Version, keys: [[UInt8]], pending: [Int], lookups: [[UInt8]], memoryOnly: Bool
    ) throws -> [Probe] {
        var probes: [Probe] = []
        for (n, keyIndex) in pending.enumerated() {
            try keys[keyIndex].withUnsafeBytes { key in
                let hash = hashBytes(key)
                try lookups[n].withUnsafeBytes { lookupKey in
                    try forEachCandidateFile(version, key: key, lookupKey: lookupKey) { file in
                        guard let table = memoryOnly ? tableCache.openedReader(file) : try tableCache.reader(file) else { throw NeedsRead() }
                        if let handle = try table.candidateBlock(lookupKey, hash: hash) {
                            probes.append(Probe(pendingIndex: n, table: table, handle: handle))
                        }
                        return false
                    }
                }
            }
        }
        return probes
    }

    /// The block each probe names (same order as `probes`): from the cache, then the second tier
    /// (one batch: a tier reached by request answers it in one round trip), the rest read in one
    /// batch. Probes of the same block are grouped by sorting, not hashing: a Swift dictionary
    /// hashes with SipHash, which was 9% of a 16-key batch's instructions.
    private func fetchBlocks(_ probes: [Probe], fillCache: Bool, memoryOnly: Bool) throws -> [Block] {
        func sortKey(_ i: Int) -> (UInt64, UInt64) { (probes[i].table.tableID, probes[i].handle.offset) }
        let order = probes.indices.sorted { sortKey($0) < sortKey($1) }
        var blockOf = [Block?](repeating: nil, count: probes.count)
        // Each group: the range of `order` whose probes name one block.
        var missing: [Range<Int>] = []
        var start = 0
        while start < order.count {
            var end = start + 1
            while end < order.count && sortKey(order[end]) == sortKey(order[start]) { end += 1 }
            let leader = probes[order[start]]
            // A block read in place from a mapped table, or a cached one, needs no read.
            let table = leader.table
            if let block = try table.mappedUncompressedBlock(leader.handle) ?? table.blockCacheDataBlock(leader.handle) {
                for i in order[start..<end] { blockOf[i] = block }
            } else if memoryOnly {
                throw NeedsRead()
            } else {
                missing.append(start..<end)
            }
            start = end
        }
        if let secondary = tableCache.secondary, !missing.isEmpty {
            let found = secondary.lookup(
                batch: missing.map { group in
                    let probe = probes[order[group.lowerBound]]
                    return probe.table.secondaryKey(probe.handle)
                })
            precondition(found.count == missing.count, "a second tier answered \(found.count) lookups for \(missing.count)")
            var stillMissing: [Range<Int>] = []
            for (group, contents) in zip(missing, found) {
                let probe = probes[order[group.lowerBound]]
                if let contents, let block = probe.table.dataBlock(fromSecondary: contents, handle: probe.handle, fillCache: fillCache) {
                    for i in order[group] { blockOf[i] = block }
                } else {
                    stillMissing.append(group)
                }
            }
            missing = stillMissing
        }
        if !missing.isEmpty {
            var reads: [BatchRead] = []
            reads.reserveCapacity(missing.count)
            var decoded = 0  // reads[0..<decoded] have been handed to dataBlock(fromRead:)
            defer { for read in reads[decoded...] { read.buffer.deallocate() } }
            for group in missing {
                let probe = probes[order[group.lowerBound]]
                let buffer = try probe.table.allocateDataBlockRead(probe.handle)
                reads.append(BatchRead(file: probe.table.file, offset: probe.handle.offset, buffer: buffer))
            }
            reads.withUnsafeMutableBufferPointer { fileSystem.read(batch: $0) }
            counters.update {
                $0.multiGetBatches += 1
                $0.multiGetBlockReads += reads.count
            }
            for (group, read) in zip(missing, reads) {
                let probe = probes[order[group.lowerBound]]
                if let error = read.error { throw error }
                guard read.bytesRead == read.buffer.count else {
                    throw MoraineError.corruption(
                        "short read: \(read.bytesRead) of \(read.buffer.count) bytes at offset \(read.offset)",
                        file: probe.table.name)
                }
                decoded += 1
                let block = try probe.table.dataBlock(fromRead: read.buffer, handle: probe.handle, fillCache: fillCache)
                for i in order[group] { blockOf[i] = block }
            }
        }
        return blockOf.map { $0! }
    }
}
