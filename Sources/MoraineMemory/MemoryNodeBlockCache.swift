// A compute node's side of the memory node's shared block cache (SecondaryBlockCache): on the
// same box lookups copy a block out of the mapped region in place (no request); a peer that
// cannot map the region (another box, a same-named file that is not the node's region, a node
// that serves by request only: MemoryNodeArenas.reach) asks the node by request, a batch of
// blocks per round trip, on pooled connections. Inserts go to the memory node in batches from a
// thread of their own, so a read never waits for one. Advisory all the way: a node that does not
// answer or a full queue costs hit rate, never a read. How the cache is reached is found on a
// thread of its own (lookups miss meanwhile); a lookup by request connects and waits within
// `lookupTimeoutNanos` (per 64 blocks of a batch); after a node failed to answer, lookups pause for
// `requestBackoffNanos` and then one reader alone tries again. While the node is down, the slots
// already in a mapped region still serve lookups.
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
    /// After a lookup by request failed, none is sent before this (monotonic ns); 0: none failed
    /// since the last answer.
    private let requestsResumeAt = Atomic<Int64>(0)
    /// A thread is finding how the cache is reached.
    private let reaching = Atomic<Bool>(false)
    /// Lookups by request: requests sent (each for up to `MemoryCacheLookup.blocksMax` blocks).
    private let lookupRequests = ManagedAtomic<Int>(0)

    /// The most bytes waiting to be sent; past it, offers are dropped.
    static let pendingBytesMax = 16 << 20
    /// The most blocks in one request.
    static let batchMax = 64
    /// The longest a lookup by request waits to connect, and then for each answer of up to 64
    /// blocks (then it is a miss).
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
        // Not through `cache()`: an offer must not take the one lookup let through after a pause.
        if disabled.load(ordering: .relaxed) { return nil }
        guard let known = access.load() else {
            startReaching()
            return nil
        }
        switch known.way {
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

    /// How to reach the cache; nil (counted as a miss) until it is known, when the node has no
    /// cache, and while lookups by request pause after a failure (then one caller is let through
    /// to try again, the others still miss).
    private func cache() -> Way? {
        if disabled.load(ordering: .relaxed) { return nil }
        guard let known = access.load() else {
            startReaching()
            return nil
        }
        if case .byRequest = known.way {
            let resumeAt = requestsResumeAt.load(ordering: .relaxed)
            if resumeAt != 0 {
                let now = monotonicNanos()
                guard now >= resumeAt,
                    requestsResumeAt.compareExchange(expected: resumeAt, desired: now + Self.requestBackoffNanos, ordering: .relaxed).exchanged
                else { return nil }
            }
        }
        return known.way
    }

    /// Finds how the cache is reached on a thread of its own (asking the node takes a round trip,
    /// and seconds when it does not answer: never a reader's wait); again a second after a failure.
    private func startReaching() {
        if monotonicNanos() < retryMappingAt.load(ordering: .relaxed) { return }
        guard reaching.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        let started = startThreadIfPossible(name: "moraine-cache-reach") { [weak self] in
            guard let self else { return }
            defer { reaching.store(false, ordering: .releasing) }
            do {
                switch try arenas.reach() {
                case .mapped(let region, let layout):
                    _ = access.storeIfNilThenLoad(Access(layout.cache.sets > 0 ? .mapped(region, layout.cache) : nil))
                case .byRequest(let info, let reason):
                    let payloadMax = Int(info.slotBytes) - SharedCacheLayout.slotHeaderBytes
                    let usable = info.cacheSlots >= UInt64(SharedCacheLayout.ways) && payloadMax > 0
                    _ = access.storeIfNilThenLoad(Access(usable ? .byRequest(payloadMax: payloadMax) : nil))
                    SystemLog.info("shared cache of \(database): \(reason); blocks are looked up by request")
                }
            } catch {
                retryMappingAt.store(monotonicNanos() + 1_000_000_000, ordering: .relaxed)
            }
        }
        if !started {
            retryMappingAt.store(monotonicNanos() + 1_000_000_000, ordering: .relaxed)
            reaching.store(false, ordering: .releasing)
        }
    }

    /// True when a lookup costs a round trip to the node (a scan that reads ahead skips it).
    public var lookupIsRequest: Bool { isByRequest }

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
        // The pause this lookup was let through (0: none): cleared on success only if no later
        // failure set another meanwhile.
        let pauseSeen = requestsResumeAt.load(ordering: .relaxed)
        var box: ClientBox? = idle.withLock { $0.popLast() }
        var answers = 0  // requests answered: a failure after one is a slow node, not a dead one
        do throws(TransportError) {
            if box == nil {
                // Connecting is bounded like an answer: a stopped node completes a TCP connect but
                // never the handshake.
                var limits = TransportLimits()
                limits.handshakeNanos = Self.lookupTimeoutNanos
                box = ClientBox(try arenas.endpoint().connect(key: arenas.key, limits: limits))
            }
            let client = box!.client
            var ids: [UInt64] = []
            for chunk in chunks {
                let request = MemoryCacheLookup(
                    database: database, blocks: keys[chunk].map { MemoryCacheLookup.Key(file: $0.file, offset: $0.offset) })
                ids.append(try client.send(opcode: MemoryOpcode.cacheLookup, payload: .bytes(request.encoded())))
            }
            lookupRequests.wrappingIncrement(by: ids.count, ordering: .relaxed)
            for (chunk, id) in zip(chunks, ids) {
                let reply = try MemoryCacheBlocks.decode(try client.receive(requestID: id, timeoutNanos: Self.lookupTimeoutNanos).get())
                answers += 1
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
            if pauseSeen != 0 { _ = requestsResumeAt.compareExchange(expected: pauseSeen, desired: 0, ordering: .relaxed) }
            let kept = idle.withLock { pool -> Bool in
                guard pool.count < Self.idleConnectionsMax else { return false }
                pool.append(box!)
                return true
            }
            if !kept { client.close() }
        } catch {
            // A late answer would arrive on this connection later: never reuse it.
            box?.client.close()
            if answers == 0 || error.code != .timedOut {
                // The node did not answer at all (or the link broke): every pooled connection is
                // suspect (a restarted node refuses them all), and lookups pause.
                let stale = idle.withLock { pool -> [ClientBox] in
                    defer { pool.removeAll() }
                    return pool
                }
                for box in stale { box.client.close() }
                requestsResumeAt.store(monotonicNanos() + Self.requestBackoffNanos, ordering: .relaxed)
                SystemLog.warning(
                    "shared cache of \(database): a lookup by request failed (\(error.message)); none for \(Self.requestBackoffNanos / 1_000_000) ms")
            }
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
