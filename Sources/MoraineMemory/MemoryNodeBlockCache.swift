// A compute node's side of the memory node's shared block cache (SecondaryBlockCache): lookups
// copy a block out of the mapped region in place (no request), inserts go to the memory node in
// batches from a thread of their own, so a read never waits for one. Advisory all the way: a region
// that cannot be mapped, a node that does not answer or a full queue costs hit rate, never a read.
// While the node is down, the slots already in the region still serve lookups.
//
// Thread-safety: lookups from any thread; the insert queue behind one lock.
import Atomics
import MoraineFormat
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

/// The memory node's shared cache, for one database's tables.
public final class MemoryNodeBlockCache: SecondaryBlockCache, @unchecked Sendable {
    let database: String
    let databaseID: UInt64
    let arenas: MemoryNodeArenas
    /// Blocks waiting to be sent, and how many bytes they hold.
    private let queue = ConditionLock()
    private var pending: [MemoryCacheInsert.Block] = []
    private var pendingBytes = 0
    private var senderRunning = false
    // Counted on every lookup, from any thread: atomics, not a lock.
    private let hits = ManagedAtomic<Int>(0)
    private let misses = ManagedAtomic<Int>(0)
    private let corrupt = ManagedAtomic<Int>(0)
    private let inserts = ManagedAtomic<Int>(0)
    private let dropped = ManagedAtomic<Int>(0)
    /// When the region could not be mapped, not before this (monotonic ns) is it tried again.
    private let retryMappingAt = Atomic<Int64>(0)
    /// Off for good (see `invalidateAll`).
    private let disabled = Atomic<Bool>(false)

    /// The most bytes waiting to be sent; past it, offers are dropped.
    static let pendingBytesMax = 16 << 20
    /// The most blocks in one request.
    static let batchMax = 64

    /// The shared cache of the memory node `arenas` reaches, for `database`.
    public init(database: String, arenas: MemoryNodeArenas) {
        self.database = database
        self.databaseID = MemoryDatabaseID.of(database)
        self.arenas = arenas
    }

    public var counters: SecondaryCacheCounters {
        var counters = SecondaryCacheCounters()
        counters.hits = hits.load(ordering: .relaxed)
        counters.misses = misses.load(ordering: .relaxed)
        counters.corrupt = corrupt.load(ordering: .relaxed)
        counters.inserts = inserts.load(ordering: .relaxed)
        counters.dropped = dropped.load(ordering: .relaxed)
        return counters
    }

    /// The largest block a slot holds, once the region is mapped.
    private func slotPayloadMax() -> Int? { cache().map { $0.1.payloadMax } }

    /// The region and its cache, once mapped (read without a lock on every lookup).
    private final class Mapped: @unchecked Sendable {
        let region: PmemRegion
        let layout: SharedCacheLayout

        init(region: PmemRegion, layout: SharedCacheLayout) {
            self.region = region
            self.layout = layout
        }
    }
    private let mapping = ManagedAtomicLazyReference<Mapped>()

    /// The mapped region and its cache layout; nil (counted as a miss) while it cannot be mapped.
    private func cache() -> (PmemRegion, SharedCacheLayout)? {
        if disabled.load(ordering: .relaxed) { return nil }
        if let mapped = mapping.load() { return mapped.layout.sets > 0 ? (mapped.region, mapped.layout) : nil }
        if monotonicNanos() < retryMappingAt.load(ordering: .relaxed) { return nil }
        do {
            let (region, layout) = try arenas.mapped()
            let mapped = mapping.storeIfNilThenLoad(Mapped(region: region, layout: layout.cache))
            return mapped.layout.sets > 0 ? (mapped.region, mapped.layout) : nil
        } catch {
            retryMappingAt.store(monotonicNanos() + 1_000_000_000, ordering: .relaxed)
            return nil
        }
    }

    public func lookup(file: UInt64, offset: UInt64) -> UnsafeMutableRawBufferPointer? {
        guard let (region, layout) = cache() else {
            misses.wrappingIncrement(ordering: .relaxed)
            return nil
        }
        let (found, block) = region.sharedCacheLookup(layout, database: databaseID, file: file, offset: offset)
        switch found {
        case .hit:
            hits.wrappingIncrement(ordering: .relaxed)
        case .miss:
            misses.wrappingIncrement(ordering: .relaxed)
        case .damaged:
            corrupt.wrappingIncrement(ordering: .relaxed)
            SystemLog.warning("shared cache: the block at \(offset) of table \(file) of \(database) failed its CRC in the region; read from the file")
        }
        return block
    }

    public func insert(file: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer) {
        if disabled.load(ordering: .relaxed) { return }
        // A block larger than a slot never fits: not worth a request.
        if let payloadMax = slotPayloadMax(), bytes.count > payloadMax {
            dropped.wrappingIncrement(ordering: .relaxed)
            return
        }
        let startSender = queue.withLock { () -> Bool? in
            guard pendingBytes + bytes.count <= Self.pendingBytesMax else { return nil }
            pending.append(MemoryCacheInsert.Block(file: file, offset: offset, bytes: Array(bytes)))
            pendingBytes += bytes.count
            queue.broadcast()
            if senderRunning { return false }
            senderRunning = true
            return true
        }
        guard let startSender else {
            dropped.wrappingIncrement(ordering: .relaxed)
            return
        }
        if startSender && !startThreadIfPossible(name: "moraine-cache-insert", { [weak self] in self?.send() }) {
            queue.withLock { senderRunning = false }
        }
    }

    /// Asks the node to forget the database's blocks. When it cannot be asked, this cache turns
    /// itself off instead (nothing looked up, nothing offered): a block the node still holds from
    /// an earlier database of the same name must never be read as this one's.
    public func invalidateAll() throws {
        do throws(TransportError) {
            let connection = try arenas.endpoint().connect(key: arenas.key)
            defer { connection.close() }
            _ = try connection.call(MemoryOpcode.cacheForget, MemoryAdopt(database: database, epoch: 0).encoded(), timeoutNanos: 10_000_000_000)
        } catch {
            disabled.store(true, ordering: .relaxed)
            SystemLog.warning("shared cache: could not clear the blocks of an earlier \(database) (\(error.message)); not used by this open")
        }
    }

    /// The sender: takes batches off the queue and sends them; exits after a second with nothing
    /// to send (the next offer starts it again).
    private func send() {
        var client: (any TransportClient)? = nil
        defer { client?.close() }
        while true {
            let batch: [MemoryCacheInsert.Block] = queue.withLock {
                if pending.isEmpty { queue.wait(seconds: 1) }
                let taken = Array(pending.prefix(Self.batchMax))
                pending.removeFirst(taken.count)
                pendingBytes -= taken.reduce(0) { $0 + $1.bytes.count }
                if taken.isEmpty { senderRunning = false }
                return taken
            }
            if batch.isEmpty { return }
            do throws(TransportError) {
                if client == nil { client = try arenas.endpoint().connect(key: arenas.key) }
                _ = try client!.call(
                    MemoryOpcode.cacheInsert, MemoryCacheInsert(database: database, blocks: batch).encoded(), timeoutNanos: 5_000_000_000)
                inserts.wrappingIncrement(by: batch.count, ordering: .relaxed)
            } catch {
                client?.close()
                client = nil
                dropped.wrappingIncrement(by: batch.count, ordering: .relaxed)
                sleepNanos(100_000_000)
            }
        }
    }
}
