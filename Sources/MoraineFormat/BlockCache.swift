// A sharded cache of decoded blocks with a byte budget, evicted by CLOCK (see Shard). Keys are (table id, block offset);
// table ids are unique per process, so tables never alias. Each shard has its own mutex, and the
// budget is split evenly across shards. Thread-safe.
import MoraineSystem
import Synchronization

/// Identifies a cached block.
public struct BlockCacheKey: Hashable, Sendable {
    public let tableID: UInt64
    public let offset: UInt64

    public init(tableID: UInt64, offset: UInt64) {
        self.tableID = tableID
        self.offset = offset
    }
}

/// A byte-budgeted, sharded cache of blocks (CLOCK eviction).
public final class BlockCache: Sendable {
    private let shards: [Shard]
    public let capacityBytes: Int
    private let hitCount = Atomic<Int>(0)
    private let missCount = Atomic<Int>(0)

    private static let nextTableID = Atomic<UInt64>(1)

    /// A fresh id for a newly opened table.
    public static func newTableID() -> UInt64 {
        nextTableID.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// - Parameter capacityBytes: total budget; 0 disables caching.
    public init(capacityBytes: Int, shardCount: Int = 16) {
        precondition(shardCount > 0 && shardCount.nonzeroBitCount == 1)
        self.capacityBytes = capacityBytes
        let perShard = capacityBytes / shardCount
        shards = (0..<shardCount).map { _ in Shard(capacityBytes: perShard) }
    }

    @inline(__always)
    private func shard(for key: BlockCacheKey) -> Shard {
        let h = (key.tableID &* 0x9e37_79b9_7f4a_7c15) ^ (key.offset &* 0xc2b2_ae3d_27d4_eb4f)
        return shards[Int(truncatingIfNeeded: h >> 40) & (shards.count - 1)]
    }

    /// The cached block, marked recently used.
    public func lookup(_ key: BlockCacheKey) -> Block? {
        let block = shard(for: key).lookup(key)
        if block != nil {
            hitCount.wrappingAdd(1, ordering: .relaxed)
        } else {
            missCount.wrappingAdd(1, ordering: .relaxed)
        }
        return block
    }

    /// Inserts a block, evicting blocks not used since the clock hand last passed them.
    public func insert(_ key: BlockCacheKey, _ block: Block) {
        shard(for: key).insert(key, block)
    }

    /// Offers a block a second tier (the memory node's shared cache) served: it is inserted on
    /// its second offer while the first is remembered, as RocksDB's secondary cache admits on a
    /// second hit. Each shard remembers the keys of its last offers, about as many as the blocks
    /// it holds, so a block hit again soon (a hot one) comes in, and a working set much larger
    /// than this cache, whose blocks come back rarely, is served from the second tier without
    /// evicting a block per read. Measured: 1M keys, an 8 MiB cache over a 256 MiB shared one,
    /// readrandom 1.2x faster than inserting every hit, back to back on one warm database
    /// (BENCHMARKS.md, "Memory node"). A tier reached by request inserts at once instead
    /// (`insert`): there a second hit costs a round trip, far more than an eviction.
    /// - Returns: whether the block was inserted.
    @discardableResult
    public func offerSecondHit(_ key: BlockCacheKey, _ block: Block) -> Bool {
        let shard = shard(for: key)
        guard shard.admitSecondHit(key) else { return false }
        shard.insert(key, block)
        return true
    }

    /// Drops every block of one table (after the table's file is deleted).
    public func evictTable(_ tableID: UInt64) {
        for shard in shards { shard.evictTable(tableID) }
    }

    /// Bytes charged to cached blocks now: each shard's usage read under that shard's lock, so
    /// the sum is a moment per shard, not one moment for the whole cache.
    public var usageBytes: Int { shards.reduce(0) { $0 + $1.usageBytes } }
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    public var misses: Int { missCount.load(ordering: .relaxed) }
}

/// One shard: an open-addressing hash table of blocks (linear probing, deletion by backward
/// shift), evicted by CLOCK over the table's own slots. A hit only sets the slot's reference bit;
/// eviction sweeps a hand over the slots, clearing set bits and evicting the first block whose
/// bit is clear (a recently used block gets a second chance, as under LRU). LRU's move to the
/// front on every hit touched the two neighbours' memory and retained and released them: in a
/// backward scan over 4 KiB values that was about 15% of the time, mostly cache misses. (RocksDB's
/// HyperClockCache makes the same trade.) Slots live in plain allocations hashed with two
/// multiplications: a `Dictionary` of entry objects (SipHash, an object and its reference counting
/// per block, exclusivity checks on every access) cost about 3,700 instructions per insert, most
/// of a block-cache miss's time outside the read itself.
private final class Shard: @unchecked Sendable {
    private let lock = ConditionLock()
    // Everything below is guarded by `lock`. A slot is empty where its block is nil.
    @exclusivity(unchecked) private var keys: UnsafeMutablePointer<BlockCacheKey>
    @exclusivity(unchecked) private var blocks: UnsafeMutablePointer<Block?>
    @exclusivity(unchecked) private var referenced: UnsafeMutablePointer<Bool>
    /// Slots in the table (a power of two), kept at least twice the blocks held.
    @exclusivity(unchecked) private var slotCount: Int
    @exclusivity(unchecked) private var count = 0
    @exclusivity(unchecked) private var hand = 0
    @exclusivity(unchecked) private var usage = 0
    let capacityBytes: Int
    /// Hashes of the keys last offered once by a second tier (BlockCache.offerSecondHit),
    /// in sets of four ways, newest first; 0: none.
    @exclusivity(unchecked) private var offered: UnsafeMutablePointer<UInt64>
    private let offeredCount: Int

    init(capacityBytes: Int) {
        self.capacityBytes = capacityBytes
        slotCount = 64
        (keys, blocks, referenced) = Self.allocate(slotCount)
        // About the blocks of 4 KiB the shard holds, a power of two.
        var remembered = 16
        while remembered < capacityBytes / 4096 { remembered *= 2 }
        offeredCount = remembered
        offered = .allocate(capacity: remembered)
        offered.initialize(repeating: 0, count: remembered)
    }

    deinit {
        Self.deallocate(keys, blocks, referenced, slotCount)
        offered.deallocate()
    }

    /// True on a key's second offer while its first is remembered; else remembers it. Keys are
    /// remembered in sets of four, newest first, so a few hot keys that share a set do not push
    /// each other out before their second offer.
    func admitSecondHit(_ key: BlockCacheKey) -> Bool {
        var h = (key.tableID &* 0xff51_afd7_ed55_8ccd) ^ (key.offset &* 0xc4ce_b9fe_1a85_ec53)
        h ^= h >> 33
        h |= 1
        let set = (Int(truncatingIfNeeded: h >> 40) & (offeredCount / 4 - 1)) * 4  // not the low bits: bit 0 is always set
        return lock.withLock {
            for way in 0..<4 where offered[set + way] == h {
                // Forgotten, and the later ways move up, so the set keeps four remembered keys.
                for later in way..<3 { offered[set + later] = offered[set + later + 1] }
                offered[set + 3] = 0
                return true
            }
            offered[set + 3] = offered[set + 2]
            offered[set + 2] = offered[set + 1]
            offered[set + 1] = offered[set]
            offered[set] = h
            return false
        }
    }

    private static func allocate(
        _ slots: Int
    ) -> (UnsafeMutablePointer<BlockCacheKey>, UnsafeMutablePointer<Block?>, UnsafeMutablePointer<Bool>) {
        let keys = UnsafeMutablePointer<BlockCacheKey>.allocate(capacity: slots)
        keys.initialize(repeating: BlockCacheKey(tableID: 0, offset: 0), count: slots)
        let blocks = UnsafeMutablePointer<Block?>.allocate(capacity: slots)
        blocks.initialize(repeating: nil, count: slots)
        let referenced = UnsafeMutablePointer<Bool>.allocate(capacity: slots)
        referenced.initialize(repeating: false, count: slots)
        return (keys, blocks, referenced)
    }

    private static func deallocate(
        _ keys: UnsafeMutablePointer<BlockCacheKey>, _ blocks: UnsafeMutablePointer<Block?>,
        _ referenced: UnsafeMutablePointer<Bool>, _ slots: Int
    ) {
        blocks.deinitialize(count: slots)
        blocks.deallocate()
        keys.deallocate()
        referenced.deallocate()
    }

    /// Bytes charged to this shard's blocks (stats() reads it while inserts change it).
    var usageBytes: Int { lock.withLock { usage } }

    /// The slot a key's probe starts at. (The shard was chosen from the high bits of another
    /// mix, so these bits still spread a shard's keys.)
    @inline(__always)
    private func home(_ key: BlockCacheKey) -> Int {
        var h = (key.tableID &* 0xff51_afd7_ed55_8ccd) ^ (key.offset &* 0xc4ce_b9fe_1a85_ec53)
        h ^= h >> 32
        return Int(truncatingIfNeeded: h) & (slotCount - 1)
    }

    /// The slot holding `key`, or nil.
    @inline(__always)
    private func find(_ key: BlockCacheKey) -> Int? {
        var i = home(key)
        while blocks[i] != nil {
            if keys[i] == key { return i }
            i = (i + 1) & (slotCount - 1)
        }
        return nil
    }

    func lookup(_ key: BlockCacheKey) -> Block? {
        lock.withLock {
            guard let i = find(key) else { return nil }
            if !referenced[i] { referenced[i] = true }
            return blocks[i]
        }
    }

    /// Empties slot `i` and closes the gap: each later block of the probe run that may move back
    /// (its home is not cyclically after the gap) moves into the gap.
    private func remove(at i: Int) {
        usage -= blocks[i]!.chargeBytes
        blocks[i] = nil
        count -= 1
        let mask = slotCount - 1
        var gap = i
        var j = i
        while true {
            j = (j + 1) & mask
            guard blocks[j] != nil else { return }
            let k = home(keys[j])
            // The block at j stays if its home lies cyclically in (gap, j].
            let stays = gap <= j ? (gap < k && k <= j) : (gap < k || k <= j)
            if stays { continue }
            keys[gap] = keys[j]
            referenced[gap] = referenced[j]
            (blocks + gap).pointee = (blocks + j).move()
            (blocks + j).initialize(to: nil)
            gap = j
        }
    }

    /// Evicts until the budget holds: the first unreferenced block from the hand on.
    private func evict() {
        var steps = 0
        while usage > capacityBytes && count > 0 {
            hand &= slotCount - 1
            guard blocks[hand] != nil else {
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
            // The slot may now hold a block shifted back into it: the hand looks at it next.
            remove(at: hand)
        }
    }

    /// Doubles the table and places every block again.
    private func grow() {
        let (oldKeys, oldBlocks, oldReferenced, oldCount) = (keys, blocks, referenced, slotCount)
        slotCount *= 2
        (keys, blocks, referenced) = Self.allocate(slotCount)
        for i in 0..<oldCount where oldBlocks[i] != nil {
            var j = home(oldKeys[i])
            while blocks[j] != nil { j = (j + 1) & (slotCount - 1) }
            keys[j] = oldKeys[i]
            referenced[j] = oldReferenced[i]
            (blocks + j).pointee = (oldBlocks + i).move()
            (oldBlocks + i).initialize(to: nil)
        }
        hand = 0
        Self.deallocate(oldKeys, oldBlocks, oldReferenced, oldCount)
    }

    func insert(_ key: BlockCacheKey, _ block: Block) {
        let charge = block.chargeBytes
        guard charge <= capacityBytes else { return }
        lock.withLock {
            if let i = find(key) {
                usage += charge - blocks[i]!.chargeBytes
                blocks[i] = block
            } else {
                if 2 * (count + 1) > slotCount { grow() }
                var i = home(key)
                while blocks[i] != nil { i = (i + 1) & (slotCount - 1) }
                keys[i] = key
                blocks[i] = block
                referenced[i] = false
                count += 1
                usage += charge
            }
            evict()
        }
    }

    func evictTable(_ tableID: UInt64) {
        lock.withLock {
            var doomed: [BlockCacheKey] = []
            for i in 0..<slotCount where blocks[i] != nil && keys[i].tableID == tableID { doomed.append(keys[i]) }
            for key in doomed {
                if let i = find(key) { remove(at: i) }
            }
        }
    }
}
