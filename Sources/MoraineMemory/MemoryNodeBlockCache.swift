// A compute node's side of the memory node's shared block cache (SecondaryBlockCache): on the
// same box lookups copy a block out of the mapped region in place (no request); a peer that
// cannot map the region (another box, a same-named file that is not the node's region, a node
// that serves by request only: MemoryNodeArenas.reach) asks the node by request, a batch of
// blocks per round trip, on pooled connections. Inserts go to the memory node in batches from a
// thread of their own, so a read never waits for one. Advisory all the way: a node that does not
// answer or a full queue costs hit rate, never a read: a lookup by request waits at most
// `lookupTimeoutNanos`, and after a failure none is sent for `requestBackoffNanos`. While the node
// is down, the slots already in a mapped region still serve lookups.
//
// Thread-safety: lookups from any thread; the insert queue and the connection pool behind a lock
// each.
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
    /// Idle connections for lookups by request.
    private let idle = Mutex<[ClientBox]>([])
    /// After a lookup by request failed, none is sent before this (monotonic ns).
    private let requestsResumeAt = Atomic<Int64>(0)
    /// Lookups by request: requests sent (each for up to `MemoryCacheLookup.blocksMax` blocks).
    private let lookupRequests = ManagedAtomic<Int>(0)

    /// The most bytes waiting to be sent; past it, offers are dropped.
    static let pendingBytesMax = 16 << 20
    /// The most blocks in one request.
    static let batchMax = 64
    /// The longest a lookup by request waits for its answer (then it is a miss).
    static let lookupTimeoutNanos: Int64 = 20_000_000
    /// How long lookups by request pause after one failed.
    static let requestBackoffNanos: Int64 = 1_000_000_000
    /// Idle lookup connections kept.
    static let idleConnectionsMax = 16

    /// The shared cache of the memory node `arenas` reaches, for `database`.
    public init(database: String, arenas: MemoryNodeArenas) {
        self.database = database
        self.databaseID = MemoryDatabaseID.of(database)
        self.arenas = arenas
    }

    deinit {
        for box in idle.withLock({ $0 }) { box.client.close() }
    }

    public var counters: SecondaryCacheCounters {
        var counters = SecondaryCacheCounters()
        counters.hits = hits.load(ordering: .relaxed)
        counters.misses = misses.load(ordering: .relaxed)
        counters.corrupt = corrupt.load(ordering: .relaxed)
        counters.inserts = inserts.load(ordering: .relaxed)
        counters.dropped = dropped.load(ordering: .relaxed)
        counters.requests = lookupRequests.load(ordering: .relaxed)
        return counters
    }

    /// Requests sent to look blocks up (0 while the region is mapped).
    public var lookupRequestCount: Int { lookupRequests.load(ordering: .relaxed) }

    /// Whether lookups go by request (known after the first lookup reached the node).
    public var isByRequest: Bool {
        if case .byRequest = access.load()?.way { return true }
        return false
    }

    /// The largest block a slot holds, once the node was reached.
    private func slotPayloadMax() -> Int? {
        switch cache() {
        case .mapped(_, let layout): return layout.payloadMax
        case .byRequest(let payloadMax): return payloadMax
        case nil: return nil
        }
    }

    /// How lookups reach the cache.
    private enum Way {
        /// In place in the mapped region.
        case mapped(PmemRegion, SharedCacheLayout)
        /// By request; the largest block a slot holds.
        case byRequest(payloadMax: Int)
    }

    /// The way, once known (read without a lock on every lookup).
    private final class Access: @unchecked Sendable {
        let way: Way?  // nil: the node has no shared cache
        init(_ way: Way?) { self.way = way }
    }
    private let access = ManagedAtomicLazyReference<Access>()

    /// How to reach the cache; nil (counted as a miss) while the node cannot be reached or has no
    /// cache, or after a failed request for a while.
    private func cache() -> Way? {
        if disabled.load(ordering: .relaxed) { return nil }
        let known: Access
        if let loaded = access.load() {
            known = loaded
        } else {
            if monotonicNanos() < retryMappingAt.load(ordering: .relaxed) { return nil }
            do {
                switch try arenas.reach() {
                case .mapped(let region, let layout):
                    known = access.storeIfNilThenLoad(Access(layout.cache.sets > 0 ? .mapped(region, layout.cache) : nil))
                case .byRequest(let info, let reason):
                    let payloadMax = Int(info.slotBytes) - SharedCacheLayout.slotHeaderBytes
                    known = access.storeIfNilThenLoad(Access(info.cacheSlots > 0 && payloadMax > 0 ? .byRequest(payloadMax: payloadMax) : nil))
                    SystemLog.info("shared cache of \(database): \(reason); blocks are looked up by request")
                }
            } catch {
                retryMappingAt.store(monotonicNanos() + 1_000_000_000, ordering: .relaxed)
                return nil
            }
        }
        if case .byRequest = known.way, monotonicNanos() < requestsResumeAt.load(ordering: .relaxed) { return nil }
        return known.way
    }

    public func lookup(file: UInt64, offset: UInt64) -> UnsafeMutableRawBufferPointer? {
        switch cache() {
        case .mapped(let region, let layout):
            let (found, block) = region.sharedCacheLookup(layout, database: databaseID, file: file, offset: offset)
            count(found, file: file, offset: offset)
            return block
        case .byRequest:
            return lookupByRequest([SecondaryBlockKey(file: file, offset: offset)])[0]
        case nil:
            misses.wrappingIncrement(ordering: .relaxed)
            return nil
        }
    }

    public func lookup(batch: [SecondaryBlockKey]) -> [UnsafeMutableRawBufferPointer?] {
        if batch.isEmpty { return [] }
        switch cache() {
        case .mapped(let region, let layout):
            return batch.map { key in
                let (found, block) = region.sharedCacheLookup(layout, database: databaseID, file: key.file, offset: key.offset)
                count(found, file: key.file, offset: key.offset)
                return block
            }
        case .byRequest:
            return lookupByRequest(batch)
        case nil:
            misses.wrappingIncrement(by: batch.count, ordering: .relaxed)
            return Array(repeating: nil, count: batch.count)
        }
    }

    private func count(_ found: SharedCacheLookup, file: UInt64, offset: UInt64) {
        switch found {
        case .hit:
            hits.wrappingIncrement(ordering: .relaxed)
        case .miss:
            misses.wrappingIncrement(ordering: .relaxed)
        case .damaged:
            corrupt.wrappingIncrement(ordering: .relaxed)
            SystemLog.warning("shared cache: the block at \(offset) of table \(file) of \(database) failed its CRC in the region; read from the file")
        }
    }

    /// The blocks, asked of the node in requests of up to `MemoryCacheLookup.blocksMax` sent
    /// together on one connection; every block a failed or late request named is a miss.
    private func lookupByRequest(_ keys: [SecondaryBlockKey]) -> [UnsafeMutableRawBufferPointer?] {
        var found = [UnsafeMutableRawBufferPointer?](repeating: nil, count: keys.count)
        let chunks = stride(from: 0, to: keys.count, by: MemoryCacheLookup.blocksMax).map {
            $0..<min($0 + MemoryCacheLookup.blocksMax, keys.count)
        }
        var answered = 0  // blocks with an answer (hit, miss or damaged), the rest count as misses
        defer { misses.wrappingIncrement(by: keys.count - answered, ordering: .relaxed) }
        var box: ClientBox? = idle.withLock { $0.popLast() }
        do throws(TransportError) {
            if box == nil { box = ClientBox(try arenas.endpoint().connect(key: arenas.key)) }
            let client = box!.client
            let deadline = monotonicNanos() + Self.lookupTimeoutNanos
            var ids: [UInt64] = []
            for chunk in chunks {
                let request = MemoryCacheLookup(
                    database: database, blocks: keys[chunk].map { MemoryCacheLookup.Key(file: $0.file, offset: $0.offset) })
                ids.append(try client.send(opcode: MemoryOpcode.cacheLookup, payload: .bytes(request.encoded())))
            }
            lookupRequests.wrappingIncrement(by: ids.count, ordering: .relaxed)
            for (chunk, id) in zip(chunks, ids) {
                let reply = try MemoryCacheBlocks.decode(
                    try client.receive(requestID: id, timeoutNanos: max(1, deadline - monotonicNanos())).get())
                guard reply.blocks.count == chunk.count else {
                    throw TransportError(.malformed, "\(reply.blocks.count) blocks answered for \(chunk.count) asked")
                }
                for (index, block) in zip(chunk, reply.blocks) {
                    answered += 1
                    switch block {
                    case .hit(let bytes):
                        guard !bytes.isEmpty else {
                            misses.wrappingIncrement(ordering: .relaxed)
                            continue
                        }
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
                        buffer.copyBytes(from: bytes)
                        found[index] = buffer
                        hits.wrappingIncrement(ordering: .relaxed)
                    case .miss:
                        misses.wrappingIncrement(ordering: .relaxed)
                    case .damaged:
                        count(.damaged, file: keys[index].file, offset: keys[index].offset)
                    }
                }
            }
            let kept = idle.withLock { pool -> Bool in
                guard pool.count < Self.idleConnectionsMax else { return false }
                pool.append(box!)
                return true
            }
            if !kept { client.close() }
        } catch {
            // A late answer would arrive on this connection later: never reuse it.
            box?.client.close()
            requestsResumeAt.store(monotonicNanos() + Self.requestBackoffNanos, ordering: .relaxed)
            SystemLog.warning(
                "shared cache of \(database): a lookup by request failed (\(error.message)); none for \(Self.requestBackoffNanos / 1_000_000) ms")
        }
        return found
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

/// A lookup connection, passed between threads through the pool (one user at a time).
private final class ClientBox: @unchecked Sendable {
    let client: any TransportClient
    init(_ client: any TransportClient) { self.client = client }
}
