// The memory node: the only allocator of its region's arenas. Arenas are granted one memtable at a
// time, tagged with the database and the owner's epoch; a database's newest epoch is the only one
// that may take, give back or adopt its arenas (an older one is `fenced`), and adopting moves
// every arena of the database to the new epoch, which a stalled old owner sees in the arena
// itself and stops writing. The newest epoch per database is rebuilt from the table at start, so
// a restarted node fences as before. Peers on the same box map the region by its path and write
// their memtables in place: a write costs no request here, a new arena does. Peers that cannot
// map it (another box, or a node that serves by request only) ask for shared-cache blocks here.
//
// Thread-safety: any thread may call in; one mutex guards the table.
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

/// Serves a region's arenas.
public final class MemoryNode: Sendable {
    private struct State: ~Copyable {
        let region: MemoryRegion
        /// The newest epoch seen per database id.
        var epochs: [UInt64: UInt64] = [:]
        /// The shared cache's CLOCK hand per set.
        var hands: [UInt8] = []
        var cacheInserts: UInt64 = 0
        /// When (monotonic nanoseconds) each arena in quarantine may be granted again. A restarted
        /// node gives every one a whole quarantine: a wall clock stepped either way never
        /// shortens or stretches one.
        var quarantineEnds: [Int: Int64] = [:]
    }

    private let state: Mutex<State>
    public let region: MemoryRegion
    /// False: peers are told not to map the region, and reach it by request only.
    public let mappable: Bool
    /// How long an adopted arena given back stays out of the grants.
    public let quarantineNanos: Int64
    /// Ten seconds: an owner fenced in an arena must have been stopped that long between its
    /// epoch check and its stores (a lease lapses in a few seconds) before the arena is anyone
    /// else's. Longer would cost every restart of a compute node its arenas for longer (a dead
    /// owner writes nothing, but the node cannot tell a dead one from a stopped one).
    public static let defaultQuarantineNanos: Int64 = 10_000_000_000
    /// Shared-cache lookups served by request, and how many of them were hits (atomics: served
    /// without the lock, as a reader in place would).
    private let requestLookups = Atomic<UInt64>(0)
    private let requestHits = Atomic<UInt64>(0)

    /// Serves `region`, whose table says which epochs are current.
    /// - Parameter mappable: false to serve it by request only (peers on this box then reach
    ///   it as peers on another box do).
    /// - Parameter quarantineNanos: how long an arena given back after a newer owner adopted it
    ///   stays out of the grants (its earlier owner may still be writing into it).
    public init(region: MemoryRegion, mappable: Bool = true, quarantineNanos: Int64 = MemoryNode.defaultQuarantineNanos) {
        self.region = region
        self.mappable = mappable
        self.quarantineNanos = quarantineNanos
        var epochs: [UInt64: UInt64] = [:]
        // Arenas in quarantine keep their database and epoch: the newest epoch is theirs too.
        for entry in region.entries() + region.quarantined() { epochs[entry.database] = max(epochs[entry.database] ?? 0, entry.epoch) }
        // Slots a crash left half written are emptied; the others are whole (and CRC-checked by readers).
        let cache = region.layout.cache
        _ = region.mapping.sharedCacheClear(cache, database: 0)
        var state = State(region: region, epochs: epochs, hands: Array(repeating: 0, count: cache.sets))
        let ends = monotonicNanos() + quarantineNanos
        for entry in region.quarantined() { state.quarantineEnds[entry.index] = ends }
        self.state = Mutex(state)
    }

    /// Arenas a grant may take now: free ones and those whose quarantine is over.
    private static func grantableCount(in state: borrowing State) -> Int {
        let now = monotonicNanos()
        return state.region.freeArenaCount + state.region.quarantined().count { (state.quarantineEnds[$0.index] ?? 0) <= now }
    }

    /// A router that serves the memory node's protocol.
    public func router() -> RequestRouter {
        var router = RequestRouter()
        register(in: &router)
        return router
    }

    /// Registers the memory opcodes in `router`.
    public func register(in router: inout RequestRouter) {
        router.register(MemoryOpcode.regionInfo) { [self] _ in .success(.bytes(info.encoded())) }
        router.register(MemoryOpcode.status) { [self] _ in .success(.bytes(status.encoded())) }
        router.register(MemoryOpcode.adopt) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try adopt(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.list) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try list(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.cacheInsert) { [self] request in
            do throws(TransportError) {
                cacheInsert(try .decode(request.payload))
                return .success(.bytes([]))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.cacheLookup) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(cacheLookup(try .decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.logAppend) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try logAppend(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.logRead) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try logRead(.decode(request.payload))))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.cacheForget) { [self] request in
            do throws(TransportError) {
                _ = cacheForget(try MemoryAdopt.decode(request.payload).database)
                return .success(.bytes([]))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.allocate) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try allocate(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(MemoryOpcode.release) { [self] request in
            do throws(TransportError) {
                try release(.decode(request.payload))
                return .success(.bytes([]))
            } catch {
                return .failure(error)
            }
        }
    }

    public var info: MemoryRegionInfo {
        let free = state.withLock { Self.grantableCount(in: $0) }
        return MemoryRegionInfo(
            path: region.path, layoutVersion: MemoryRegionLayout.version, regionBytes: UInt64(region.layout.regionBytes),
            arenaBytes: UInt64(region.layout.arenaBytes), arenaCount: UInt32(region.layout.arenaCount), freeArenas: UInt32(free),
            isPersistentMemory: region.mapping.isPersistentMemory, cacheSlots: UInt64(region.layout.cacheSlots),
            slotBytes: UInt32(region.layout.slotBytes), identity: region.identity, mappable: mappable)
    }

    /// Shared-cache lookups served by request and how many hit.
    public var lookupCounters: (lookups: UInt64, hits: UInt64) {
        (requestLookups.load(ordering: .relaxed), requestHits.load(ordering: .relaxed))
    }

    public var status: MemoryStatusReply {
        state.withLock { state in
            var held: [UInt64: UInt32] = [:]
            for entry in state.region.entries() { held[entry.database, default: 0] += 1 }
            let holders = held.keys.sorted().map {
                MemoryStatusReply.Holder(database: $0, epoch: state.epochs[$0] ?? 0, arenas: held[$0] ?? 0)
            }
            let free = Self.grantableCount(in: state)
            return MemoryStatusReply(arenaCount: UInt32(state.region.layout.arenaCount), freeArenas: UInt32(free), holders: holders)
        }
    }

    /// Refuses an epoch older than the database's newest.
    private static func checkEpoch(_ epoch: UInt64, of database: String, id: UInt64, in state: borrowing State) throws(TransportError) {
        if let newest = state.epochs[id], epoch < newest {
            throw TransportError(.fenced, "database \(database): epoch \(epoch) is older than its owner's \(newest) at the memory node")
        }
    }

    /// Moves the database's arenas to `request.epoch` and lists them.
    public func adopt(_ request: MemoryAdopt) throws(TransportError) -> MemoryArenaList {
        let id = MemoryDatabaseID.of(request.database)
        return try state.withLock { state throws(TransportError) -> MemoryArenaList in
            try Self.checkEpoch(request.epoch, of: request.database, id: id, in: state)
            state.epochs[id] = request.epoch
            var arenas: [MemoryArena] = []
            for entry in state.region.entries() where entry.database == id {
                // Adopted again where a crash kept the entry's new epoch but not the arena's.
                if entry.epoch != request.epoch || state.region.arenaEpoch(entry.index) != request.epoch {
                    do {
                        try state.region.adopt(entry.index, epoch: request.epoch)
                    } catch {
                        throw TransportError(.io, "adopting arena \(entry.index) of \(request.database): \(error)")
                    }
                }
                arenas.append(state.region.listed(entry))
            }
            return MemoryArenaList(arenas: arenas)
        }
    }

    /// Stores blocks in the shared cache (each in its set, evicting by CLOCK there).
    public func cacheInsert(_ request: MemoryCacheInsert) {
        let id = MemoryDatabaseID.of(request.database)
        let cache = region.layout.cache
        guard cache.sets > 0 else { return }
        state.withLock { state in
            for block in request.blocks {
                let set = cache.set(database: id, file: block.file, offset: block.offset)
                block.bytes.withUnsafeBytes {
                    state.region.mapping.sharedCacheInsert(
                        cache, hand: &state.hands[set], database: id, file: block.file, offset: block.offset, bytes: $0)
                }
                state.cacheInserts += 1
            }
        }
    }

    /// The blocks a peer that cannot map the region asks for: each copied out of its slot and
    /// checked as a reader in place checks it (version, key, CRC), without the node's lock. A
    /// slot that fails its CRC is emptied, so the block's next insert stores it whole.
    public func cacheLookup(_ request: MemoryCacheLookup) -> MemoryCacheBlocks {
        let id = MemoryDatabaseID.of(request.database)
        let cache = region.layout.cache
        var hits: UInt64 = 0
        let blocks = request.blocks.map { key -> MemoryCacheBlocks.Found in
            let (found, buffer) = region.mapping.sharedCacheLookup(cache, database: id, file: key.file, offset: key.offset)
            defer { buffer?.deallocate() }
            switch found {
            case .hit:
                hits += 1
                return .hit(Array(UnsafeRawBufferPointer(buffer!)))
            case .miss: return .miss
            case .damaged:
                state.withLock { state in
                    state.region.mapping.sharedCacheDrop(cache, database: id, file: key.file, offset: key.offset)
                }
                return .damaged
            }
        }
        requestLookups.add(UInt64(request.blocks.count), ordering: .relaxed)
        requestHits.add(hits, ordering: .relaxed)
        return MemoryCacheBlocks(blocks: blocks)
    }

    /// Forgets every cached block of `database`; returns how many slots were emptied.
    public func cacheForget(_ database: String) -> Int {
        let id = MemoryDatabaseID.of(database)
        return state.withLock { state in state.region.mapping.sharedCacheClear(state.region.layout.cache, database: id) }
    }

    /// The database's arenas, changing nothing.
    public func list(_ request: MemoryAdopt) throws(TransportError) -> MemoryArenaList {
        let id = MemoryDatabaseID.of(request.database)
        return state.withLock { state in
            MemoryArenaList(
                arenas: state.region.entries().filter { $0.database == id }.map { state.region.listed($0) })
        }
    }

    /// Grants a free arena.
    /// - Throws: `fenced` for an old epoch, `busy` when none is free, `invalid` for tag 0.
    public func allocate(_ request: MemoryAllocate) throws(TransportError) -> MemoryArenaGrant {
        guard request.tag != 0, request.tag != MemoryRegion.quarantineTag else {
            throw TransportError(.invalid, "arena tags are nonzero and below \(MemoryRegion.quarantineTag)")
        }
        let id = MemoryDatabaseID.of(request.database)
        return try state.withLock { state throws(TransportError) -> MemoryArenaGrant in
            try Self.checkEpoch(request.epoch, of: request.database, id: id, in: state)
            if state.epochs[id] != request.epoch {
                // A new owner takes the old one's arenas first (adopt), so the old one is fenced in them.
                guard !state.region.entries().contains(where: { $0.database == id }) else {
                    throw TransportError(
                        .invalid, "database \(request.database) holds arenas of epoch \(state.epochs[id] ?? 0): adopt them before asking for more")
                }
                state.epochs[id] = request.epoch
            }
            let granted: MemoryRegionEntry?
            do {
                let now = monotonicNanos()
                let ends = state.quarantineEnds
                granted = try state.region.grant(database: id, epoch: request.epoch, tag: request.tag) { (ends[$0] ?? 0) <= now }
                if let granted { state.quarantineEnds[granted.index] = nil }
            } catch {
                throw TransportError(.io, "granting an arena to \(request.database): \(error)")
            }
            guard let granted else {
                let quarantined = state.region.quarantined().count
                throw TransportError(
                    .busy, "every one of the \(state.region.layout.arenaCount) arenas of \(state.region.path) holds an unflushed memtable"
                        + (quarantined == 0 ? "" : " or is in quarantine (\(quarantined), taken from a fenced owner)"))
            }
            return MemoryArenaGrant(index: UInt32(granted.index))
        }
    }

    /// The arena `arena` names, checked to be `database`'s under that tag.
    private static func ownedArena(
        _ arena: MemoryArena, of database: String, id: UInt64, in state: borrowing State
    ) throws(TransportError) -> MemoryRegionEntry {
        let index = Int(arena.index)
        guard index < state.region.layout.arenaCount else {
            throw TransportError(.invalid, "arena \(index) is past the region's \(state.region.layout.arenaCount)")
        }
        let entry = state.region.entry(index)
        guard entry.tag == arena.tag, entry.database == id, arena.tag != MemoryRegion.quarantineTag else {
            throw TransportError(.invalid, "arena \(index) is not \(database)'s for tag \(arena.tag) (it holds tag \(entry.tag))")
        }
        return entry
    }

    /// Appends to the write log of one of the database's arenas, for its owner (a newer epoch
    /// than the arena's adopted it first; an older one is fenced); durable on return.
    public func logAppend(_ request: MemoryLogAppend) throws(TransportError) -> MemoryLogLength {
        let id = MemoryDatabaseID.of(request.database)
        return try state.withLock { state throws(TransportError) -> MemoryLogLength in
            try Self.checkEpoch(request.epoch, of: request.database, id: id, in: state)
            let entry = try Self.ownedArena(request.arena, of: request.database, id: id, in: state)
            guard entry.epoch == request.epoch else {
                throw TransportError(.fenced, "arena \(entry.index) belongs to epoch \(entry.epoch), not \(request.epoch)")
            }
            guard request.offset <= UInt64(Int.max) else { throw TransportError(.invalid, "a log offset of \(request.offset)") }
            do {
                let length = try request.bytes.withUnsafeBytes { try state.region.logAppend(entry.index, offset: Int(request.offset), bytes: $0) }
                return MemoryLogLength(length: UInt64(length))
            } catch let error as MoraineError {
                throw TransportError(error.kind == .noSpace ? .noSpace : error.kind == .invalid ? .invalid : .io, error.message)
            } catch {
                throw TransportError(.io, "appending to arena \(entry.index): \(error)")
            }
        }
    }

    /// A range of one of the database's arenas' write log (any epoch may read).
    public func logRead(_ request: MemoryLogRead) throws(TransportError) -> [UInt8] {
        let id = MemoryDatabaseID.of(request.database)
        return try state.withLock { state throws(TransportError) -> [UInt8] in
            let entry = try Self.ownedArena(request.arena, of: request.database, id: id, in: state)
            guard request.offset <= UInt64(Int.max) else { return [] }
            do {
                return try state.region.logRead(entry.index, offset: Int(request.offset), count: Int(request.count))
            } catch let error as MoraineError {
                throw TransportError(.invalid, error.message)
            } catch {
                throw TransportError(.io, "reading arena \(entry.index): \(error)")
            }
        }
    }

    /// Frees an arena its owner is done with (its memtable's flush is durable).
    /// - Throws: `fenced` for an old epoch; `invalid` for an arena that is not the database's
    ///   with that tag.
    public func release(_ request: MemoryRelease) throws(TransportError) {
        let id = MemoryDatabaseID.of(request.database)
        try state.withLock { state throws(TransportError) in
            try Self.checkEpoch(request.epoch, of: request.database, id: id, in: state)
            let index = Int(request.arena.index)
            guard index < state.region.layout.arenaCount else {
                throw TransportError(.invalid, "arena \(index) is past the region's \(state.region.layout.arenaCount)")
            }
            let entry = state.region.entry(index)
            // A retry of a release whose reply was lost: the arena went to quarantine already.
            if entry.tag == MemoryRegion.quarantineTag && entry.database == id && request.arena.tag != MemoryRegion.quarantineTag { return }
            guard entry.tag == request.arena.tag, entry.database == id, request.arena.tag != MemoryRegion.quarantineTag else {
                throw TransportError(
                    .invalid, "arena \(index) is not \(request.database)'s for tag \(request.arena.tag) (it holds tag \(entry.tag))")
            }
            guard entry.epoch <= request.epoch else {
                throw TransportError(.fenced, "arena \(index) belongs to epoch \(entry.epoch), not \(request.epoch)")
            }
            do {
                if try state.region.release(index, nowNanos: wallClockNanos()) {
                    state.quarantineEnds[index] = monotonicNanos() + quarantineNanos
                }
            } catch {
                throw TransportError(.io, "releasing arena \(index): \(error)")
            }
        }
    }
}
