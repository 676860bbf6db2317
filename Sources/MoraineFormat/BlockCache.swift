// A sharded LRU cache of decoded blocks with a byte budget. Keys are (table id, block offset);
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

/// A byte-budgeted, sharded LRU cache of blocks.
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

    /// The cached block, marked most recently used.
    public func lookup(_ key: BlockCacheKey) -> Block? {
        let block = shard(for: key).lookup(key)
        if block != nil {
            hitCount.wrappingAdd(1, ordering: .relaxed)
        } else {
            missCount.wrappingAdd(1, ordering: .relaxed)
        }
        return block
    }

    /// Inserts a block, evicting least recently used blocks past the budget.
    public func insert(_ key: BlockCacheKey, _ block: Block) {
        shard(for: key).insert(key, block)
    }

    /// Drops every block of one table (after the table's file is deleted).
    public func evictTable(_ tableID: UInt64) {
        for shard in shards { shard.evictTable(tableID) }
    }

    public var usageBytes: Int { shards.reduce(0) { $0 + $1.usage } }
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    public var misses: Int { missCount.load(ordering: .relaxed) }
}

/// One shard: a dictionary into an intrusive doubly linked LRU list.
private final class Shard: @unchecked Sendable {
    final class Node {
        let key: BlockCacheKey
        let block: Block
        var newer: Node?
        unowned(unsafe) var older: Node?
        init(key: BlockCacheKey, block: Block) {
            self.key = key
            self.block = block
        }
    }

    private let lock = ConditionLock()
    private var map: [BlockCacheKey: Node] = [:]
    private var newest: Node? = nil  // head of the "older" chain
    private var oldest: Node? = nil  // owns the chain through `newer`
    private(set) var usage = 0
    let capacityBytes: Int

    init(capacityBytes: Int) { self.capacityBytes = capacityBytes }

    private func unlink(_ node: Node) {
        if let newer = node.newer { newer.older = node.older } else { newest = node.older }
        if let older = node.older { older.newer = node.newer } else { oldest = node.newer }
        node.newer = nil
        node.older = nil
    }

    private func pushNewest(_ node: Node) {
        node.older = newest
        node.newer = nil
        if let n = newest { n.newer = node } else { oldest = node }
        newest = node
    }

    func lookup(_ key: BlockCacheKey) -> Block? {
        lock.withLock {
            guard let node = map[key] else { return nil }
            if newest !== node {
                unlink(node)
                pushNewest(node)
            }
            return node.block
        }
    }

    func insert(_ key: BlockCacheKey, _ block: Block) {
        let charge = block.chargeBytes
        guard charge <= capacityBytes else { return }
        lock.withLock {
            if let existing = map[key] {
                unlink(existing)
                usage -= existing.block.chargeBytes
            }
            let node = Node(key: key, block: block)
            map[key] = node
            pushNewest(node)
            usage += charge
            while usage > capacityBytes, let victim = oldest {
                unlink(victim)
                map[victim.key] = nil
                usage -= victim.block.chargeBytes
            }
        }
    }

    func evictTable(_ tableID: UInt64) {
        lock.withLock {
            for (key, node) in map where key.tableID == tableID {
                unlink(node)
                map[key] = nil
                usage -= node.block.chargeBytes
            }
        }
    }
}
