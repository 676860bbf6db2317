// The row cache (Options.rowCacheSize; RocksDB's row_cache): for a user key, what the tables of
// the current version answer for it at the latest sequence — the newest value, or that no table
// holds it (a deletion or nothing). A point read that the memtables do not answer takes its answer
// here before it probes any level: no bloom filter, index, block-cache lookup or block search.
//
// Why keyed by user key and not, as RocksDB's, by (table, key): RocksDB's row cache still walks
// the levels to the table that holds the key and saves only that table's block search; here a hit
// skips the levels too.
//
// Invariant: an entry equals what the tables of the current version answer for its key. The
// tables' answer for a key changes only when a flush adds a memtable holding the key (compaction
// keeps the newest version and drops only what no read at the latest sequence sees), so a flush
// advances the cache's epoch, then invalidates each of its memtable's keys, and only then lets the
// memtable leave the read path (Engine.runFlush): until then readers find the key in that memtable.
//
// A reader notes the epoch before it takes its superversion. A lookup answers it, and a fill
// lands, only while the epoch has not moved (both check under the shard's lock): a reader that started before a flush may hold an older
// superversion (a memtable that went on taking writes after its sequence, then was flushed), and
// must neither answer from entries filled after the flush nor put back what the flush invalidated.
// A fill checks the epoch under its shard's lock, and a flush advances the epoch before it takes
// any shard's lock to invalidate, so a fill either lands before the invalidation (which removes
// it) or sees the new epoch (and is dropped).
//
// Keys come from clients (a Redis front end caches what GETs ask for, absent keys too), so the
// table's hash is keyed with a seed drawn per cache: colliding keys cannot be worked out offline
// to make one long probe run under a shard's lock.
//
// Layout: each shard is an open-addressing table (linear probing, backward-shift deletion, CLOCK
// eviction over the slots, as the block cache's shards) of entries, each one allocation:
// key length (4 bytes) | value length (4 bytes, or absentMarker) | key | value.
// Thread-safe: each shard has its own lock; counters are per shard, so two readers on two cores
// share no cache line unless they share a shard.
import MoraineFormat
import MoraineSystem
import Synchronization

/// A byte-budgeted, sharded cache of the tables' answers for user keys.
final class RowCache: @unchecked Sendable {
    /// What a lookup found.
    enum Lookup {
        /// The tables hold this value for the key.
        case value([UInt8])
        /// No table holds a live value for the key.
        case absent
        /// Not cached.
        case miss
    }

    private let shards: [RowCacheShard]
    let capacityBytes: Int
    var shardCount: Int { shards.count }
    /// Advanced by every flush before it invalidates its keys.
    private let epochCounter = Atomic<UInt64>(0)
    /// Keys the table's hash (`hash(_:)`).
    private let seed = UInt64.random(in: 1...UInt64.max)

    /// - Parameter capacityBytes: the budget over every shard (entries and their slots).
    /// - Parameter shardCount: a power of two; by default one per 64 KiB of budget, at most 64, so
    ///   a small cache still takes entries of a few KiB (an entry may use a quarter of its shard).
    init(capacityBytes: Int, shardCount: Int? = nil) {
        let shardCount = shardCount ?? 1 << min(6, Int.bitWidth - 1 - max(1, capacityBytes >> 16).leadingZeroBitCount)
        precondition(capacityBytes > 0 && shardCount > 0 && shardCount.nonzeroBitCount == 1)
        self.capacityBytes = capacityBytes
        shards = (0..<shardCount).map { _ in RowCacheShard(capacityBytes: capacityBytes / shardCount) }
    }

    @inline(__always)
    private func shard(_ hash: UInt64) -> RowCacheShard {
        shards[Int(truncatingIfNeeded: hash >> 58) & (shards.count - 1)]
    }

    /// The hash the cache files `key` under: the filters' hash, started from this cache's seed.
    func hash(_ key: UnsafeRawBufferPointer) -> UInt64 { hashBytes(key, seed: seed) }

    /// The cached answer for `key` (`hash` is `hash(key)`), marked recently used, for a reader
    /// that noted `epoch`: a miss once the epoch has moved (and counted as one).
    func lookup(_ key: UnsafeRawBufferPointer, hash: UInt64, epoch: UInt64) -> Lookup {
        shard(hash).lookup(key, hash: hash) { epochCounter.load(ordering: .sequentiallyConsistent) == epoch }
    }

    /// The epoch a reader notes before it takes its superversion.
    var epoch: UInt64 { epochCounter.load(ordering: .sequentiallyConsistent) }

    /// Starts an invalidation: fills and hits of readers that noted an earlier epoch no longer
    /// count. Call before invalidating keys.
    func advanceEpoch() {
        epochCounter.wrappingAdd(1, ordering: .sequentiallyConsistent)
    }

    /// Caches the tables' answer for `key` (nil: absent), read by a reader that noted `epoch`,
    /// unless the epoch has moved since.
    func fill(_ key: UnsafeRawBufferPointer, hash: UInt64, value: UnsafeRawBufferPointer?, epoch: UInt64) {
        shard(hash).fill(key, hash: hash, value: value) { epochCounter.load(ordering: .sequentiallyConsistent) == epoch }
    }

    /// Drops `key`'s entry. Precondition: `advanceEpoch` was called since the key's newer
    /// version reached the tables.
    func invalidate(_ key: UnsafeRawBufferPointer, hash: UInt64) {
        shard(hash).invalidate(key, hash: hash)
    }

    /// Drops every entry, advancing the epoch first.
    func clear() {
        advanceEpoch()
        for shard in shards { shard.clear() }
    }

    /// Bytes charged to entries now (each shard read under its lock).
    var usageBytes: Int { shards.reduce(0) { $0 + $1.counters.usage } }
    var entryCount: Int { shards.reduce(0) { $0 + $1.counters.entries } }
    var hits: Int { shards.reduce(0) { $0 + $1.counters.hits } }
    var misses: Int { shards.reduce(0) { $0 + $1.counters.misses } }
}

/// One shard. Everything is guarded by `lock`. A slot is empty where its entry is nil.
private final class RowCacheShard: @unchecked Sendable {
    /// The value length of an entry that records an absent key.
    static let absentMarker = UInt32.max
    /// Bytes charged per entry besides its key and value: the header, the allocator's rounding,
    /// and the two slots (kept at most half full) of hash, pointer and reference bit.
    static let overheadBytes = 48
    private let lock = ConditionLock()
    @exclusivity(unchecked) private var hashes: UnsafeMutablePointer<UInt64>
    @exclusivity(unchecked) private var entries: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    @exclusivity(unchecked) private var referenced: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) private var slotCount = 64
    @exclusivity(unchecked) private var count = 0
    @exclusivity(unchecked) private var hand = 0
    @exclusivity(unchecked) private var usage = 0
    @exclusivity(unchecked) private var hitCount = 0
    @exclusivity(unchecked) private var missCount = 0
    let capacityBytes: Int

    init(capacityBytes: Int) {
        self.capacityBytes = capacityBytes
        (hashes, entries, referenced) = Self.allocate(slotCount)
    }

    deinit {
        for i in 0..<slotCount { entries[i]?.deallocate() }
        Self.deallocate(hashes, entries, referenced)
    }

    private static func allocate(
        _ slots: Int
    ) -> (UnsafeMutablePointer<UInt64>, UnsafeMutablePointer<UnsafeMutableRawPointer?>, UnsafeMutablePointer<Bool>) {
        let hashes = UnsafeMutablePointer<UInt64>.allocate(capacity: slots)
        hashes.initialize(repeating: 0, count: slots)
        let entries = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: slots)
        entries.initialize(repeating: nil, count: slots)
        let referenced = UnsafeMutablePointer<Bool>.allocate(capacity: slots)
        referenced.initialize(repeating: false, count: slots)
        return (hashes, entries, referenced)
    }

    private static func deallocate(
        _ hashes: UnsafeMutablePointer<UInt64>, _ entries: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
        _ referenced: UnsafeMutablePointer<Bool>
    ) {
        hashes.deallocate()
        entries.deallocate()
        referenced.deallocate()
    }

    var counters: (usage: Int, entries: Int, hits: Int, misses: Int) {
        lock.withLock { (usage, count, hitCount, missCount) }
    }

    @inline(__always)
    private func home(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: hash) & (slotCount - 1) }

    private static func keyBytes(_ entry: UnsafeMutableRawPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: entry + 8, count: Int(entry.load(as: UInt32.self)))
    }

    private static func chargeBytes(_ entry: UnsafeMutableRawPointer) -> Int {
        let valueLength = entry.load(fromByteOffset: 4, as: UInt32.self)
        return Int(entry.load(as: UInt32.self)) + (valueLength == absentMarker ? 0 : Int(valueLength)) + overheadBytes
    }

    /// The slot holding `key`, or nil.
    @inline(__always)
    private func find(_ key: UnsafeRawBufferPointer, hash: UInt64) -> Int? {
        var i = home(hash)
        while let entry = entries[i] {
            if hashes[i] == hash && compareBytes(Self.keyBytes(entry), key) == 0 { return i }
            i = (i + 1) & (slotCount - 1)
        }
        return nil
    }

    /// The entry for `key` if `current()`, asked under the lock, says it may be used.
    func lookup(_ key: UnsafeRawBufferPointer, hash: UInt64, current: () -> Bool) -> RowCache.Lookup {
        lock.lock()
        defer { lock.unlock() }
        guard let i = find(key, hash: hash), let entry = entries[i], current() else {
            missCount += 1
            return .miss
        }
        hitCount += 1
        if !referenced[i] { referenced[i] = true }
        let keyLength = Int(entry.load(as: UInt32.self))
        let valueLength = entry.load(fromByteOffset: 4, as: UInt32.self)
        if valueLength == Self.absentMarker { return .absent }
        return .value(Array(UnsafeRawBufferPointer(start: entry + 8 + keyLength, count: Int(valueLength))))
    }

    /// Inserts or replaces `key`'s entry if `current()`, asked under the lock, says so.
    func fill(_ key: UnsafeRawBufferPointer, hash: UInt64, value: UnsafeRawBufferPointer?, current: () -> Bool) {
        let valueLength = value?.count ?? 0
        guard key.count + valueLength + Self.overheadBytes <= capacityBytes / 4, valueLength < Int(Self.absentMarker) else { return }
        let entry = UnsafeMutableRawPointer.allocate(byteCount: 8 + key.count + valueLength, alignment: 8)
        entry.storeBytes(of: UInt32(key.count), as: UInt32.self)
        entry.storeBytes(of: value.map { UInt32($0.count) } ?? Self.absentMarker, toByteOffset: 4, as: UInt32.self)
        if let base = key.baseAddress { (entry + 8).copyMemory(from: base, byteCount: key.count) }
        if let value, let base = value.baseAddress { (entry + 8 + key.count).copyMemory(from: base, byteCount: value.count) }
        lock.lock()
        defer { lock.unlock() }
        guard current() else {
            entry.deallocate()
            return
        }
        if let i = find(key, hash: hash) {
            usage += Self.chargeBytes(entry) - Self.chargeBytes(entries[i]!)
            entries[i]!.deallocate()
            entries[i] = entry
        } else {
            if 2 * (count + 1) > slotCount { grow() }
            var i = home(hash)
            while entries[i] != nil { i = (i + 1) & (slotCount - 1) }
            hashes[i] = hash
            entries[i] = entry
            referenced[i] = false
            count += 1
            usage += Self.chargeBytes(entry)
        }
        evict()
    }

    func invalidate(_ key: UnsafeRawBufferPointer, hash: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        if let i = find(key, hash: hash) { remove(at: i) }
    }

    func clear() {
        lock.lock()
        defer { lock.unlock() }
        for i in 0..<slotCount {
            entries[i]?.deallocate()
            entries[i] = nil
        }
        count = 0
        usage = 0
    }

    /// Empties slot `i` and closes the gap (backward shift, as the block cache's shards).
    private func remove(at i: Int) {
        usage -= Self.chargeBytes(entries[i]!)
        entries[i]!.deallocate()
        entries[i] = nil
        count -= 1
        let mask = slotCount - 1
        var gap = i
        var j = i
        while true {
            j = (j + 1) & mask
            guard entries[j] != nil else { return }
            let k = home(hashes[j])
            // The entry at j stays if its home lies cyclically in (gap, j].
            let stays = gap <= j ? (gap < k && k <= j) : (gap < k || k <= j)
            if stays { continue }
            hashes[gap] = hashes[j]
            referenced[gap] = referenced[j]
            entries[gap] = entries[j]
            entries[j] = nil
            gap = j
        }
    }

    /// Evicts until the budget holds: the first unreferenced entry from the hand on.
    private func evict() {
        var steps = 0
        while usage > capacityBytes && count > 0 {
            hand &= slotCount - 1
            guard entries[hand] != nil else {
                hand += 1
                continue
            }
            steps += 1
            // After two sweeps every bit is clear, so this always ends.
            if referenced[hand] && steps <= 2 * slotCount {
                referenced[hand] = false
                hand += 1
                continue
            }
            remove(at: hand)
        }
    }

    /// Doubles the table and places every entry again.
    private func grow() {
        let (oldHashes, oldEntries, oldReferenced, oldCount) = (hashes, entries, referenced, slotCount)
        slotCount *= 2
        (hashes, entries, referenced) = Self.allocate(slotCount)
        for i in 0..<oldCount {
            guard let entry = oldEntries[i] else { continue }
            var j = home(oldHashes[i])
            while entries[j] != nil { j = (j + 1) & (slotCount - 1) }
            hashes[j] = oldHashes[i]
            entries[j] = entry
            referenced[j] = oldReferenced[i]
        }
        hand = 0
        Self.deallocate(oldHashes, oldEntries, oldReferenced)
    }
}
