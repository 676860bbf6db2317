// A compute node's side of the memory node: asks it for arenas and maps its region, so the engine
// writes its memtables there in place (MemtableArenaProvider). The region is found by the path
// the node reports and mapped once; its header is checked against what the node says before
// any arena is used. Only the same box can map it: a region whose file is not here, whose file
// here carries another identity (a same-named region on this box), or whose node serves by
// request only is reached by request (`reach`). There the memtables stay in this process and
// their write logs go to arenas by request (MemoryLogFileSystem, through the calls below); the
// shared cache asks by request.
//
// Thread-safety: one mutex around the connection and the mapping; requests are rare (one per
// memtable, or one per write group for a log by request, which the write leader sends one at
// a time), so they are not pipelined.
import MoraineEngine
import MoraineMemtable
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Arenas of a memory node's region for one compute node's memtables.
public final class MemoryNodeArenas: MemtableArenaProvider, Sendable {
    private struct State: ~Copyable {
        var client: (any TransportClient)? = nil
        var region: PmemRegion? = nil
        var info: MemoryRegionInfo? = nil
        /// Why the region is reached by request, once found so.
        var byRequest: String? = nil
    }

    /// How this process reaches the node's region.
    enum Reach {
        /// Mapped here, checked against the node's description.
        case mapped(PmemRegion, MemoryRegionLayout)
        /// By request only, and why (the region is on another box, or the node serves it so).
        case byRequest(MemoryRegionInfo, reason: String)
    }

    let endpoint: @Sendable () throws(TransportError) -> Endpoint
    let key: ClusterKey
    private let epoch: @Sendable (String) -> UInt64
    private let state = Mutex(State())
    /// Whether a MemoryLogFileSystem serves the write logs in the node's arenas as files (else
    /// an arena holding one fails an open).
    let logsAreFiles = Atomic<Bool>(false)
    /// The write logs of each database this process adopted, by tag: from the adoption on no one
    /// else adds or removes them (an older owner is fenced), so a listing needs no request.
    /// Lengths here are not kept up to date (`logs(database:fresh: true)` asks).
    private let ownedLogs = Mutex<[String: [UInt64: MemoryArena]]>([:])
    /// How long one request may take.
    static let callTimeoutNanos: Int64 = 5_000_000_000

    /// Arenas of the memory node `endpoint` names (looked up again after a broken connection, so
    /// a restarted node is found); `epoch` gives the lease epoch of a database, which every
    /// request carries.
    public init(
        key: ClusterKey, epoch: @escaping @Sendable (String) -> UInt64, endpoint: @escaping @Sendable () throws(TransportError) -> Endpoint
    ) {
        self.key = key
        self.epoch = epoch
        self.endpoint = endpoint
    }

    public var arenaBytes: Int { state.withLock { Int($0.info?.arenaBytes ?? 0) } }

    public var description: String {
        state.withLock { state in state.info.map { "memory node region \($0.path)" } ?? "memory node" }
    }

    /// The region's geometry as the node reports it (after the first request).
    public var regionInfo: MemoryRegionInfo? { state.withLock { $0.info } }

    public func adopt(database: String) throws -> [MemtableArenaGrant] {
        let database = Self.named(database)
        let epoch = epoch(database)
        let list = try MemoryArenaList.decode(try call(MemoryOpcode.adopt, MemoryAdopt(database: database, epoch: epoch).encoded()))
        let logs = list.arenas.filter { $0.kind == .log }
        ownedLogs.withLock { $0[database] = Dictionary(logs.map { ($0.tag, $0) }) { first, _ in first } }
        return try grants(list.arenas, database: database, epoch: epoch)
    }

    public func list(database: String) throws -> [MemtableArenaGrant] {
        let database = Self.named(database)
        let list = try MemoryArenaList.decode(try call(MemoryOpcode.list, MemoryAdopt(database: database, epoch: 0).encoded()))
        return try grants(list.arenas, database: database, epoch: nil)
    }

    /// The memtables among `arenas`, mapped. Write logs are the log file system's files
    /// (MemoryLogFileSystem), not memtables. Across boxes an arena never written is given back
    /// by an owner (`epoch`; its predecessor died between the grant and its first write);
    /// a memtable written in place there cannot be read: `unavailable`, never taken for none.
    private func grants(_ arenas: [MemoryArena], database: String, epoch: UInt64?) throws -> [MemtableArenaGrant] {
        if !logsAreFiles.load(ordering: .relaxed), let log = arenas.first(where: { $0.kind == .log }) {
            // Nothing here would replay it: never taken for an empty arena.
            throw MoraineError(
                .corruption, "\(database)'s arena \(log.index) holds a write log kept by request (log \(log.tag), \(log.logLength) bytes), "
                    + "not a memtable: open the database through its cluster, whose file system reads the logs there")
        }
        let memtables = arenas.filter { $0.kind != .log }
        if memtables.isEmpty { return [] }  // nothing to map: a peer across boxes opens too
        if case .byRequest(_, let reason) = try reach() {
            if let written = memtables.first(where: { $0.kind == .memtable }) {
                throw MoraineError(
                    .unavailable,
                    "\(database)'s memtable of log \(written.tag) is in arena \(written.index), written in place by a compute node that "
                        + "maps the region; \(reason): open the database where the region maps")
            }
            if let epoch {
                for arena in memtables {
                    _ = try call(MemoryOpcode.release, MemoryRelease(database: database, epoch: epoch, arena: arena).encoded())
                }
            }
            return []
        }
        let (region, layout) = try mapped()
        return try memtables.map { arena in
            try grant(index: Int(arena.index), tag: arena.tag, epoch: epoch ?? 0, region: region, layout: layout)
        }
    }

    public func allocate(database: String, logNumber: UInt64) throws -> MemtableArenaGrant {
        let database = Self.named(database)
        let epoch = epoch(database)
        let (region, layout) = try mapped()
        let reply = try call(MemoryOpcode.allocate, MemoryAllocate(database: database, epoch: epoch, tag: logNumber).encoded())
        let granted = try MemoryArenaGrant.decode(reply)
        return try grant(index: Int(granted.index), tag: logNumber, epoch: epoch, region: region, layout: layout)
    }

    public func release(database: String, _ grant: MemtableArenaGrant) throws {
        let database = Self.named(database)
        let request = MemoryRelease(
            database: database, epoch: grant.arena.epoch, arena: MemoryArena(index: UInt32(grant.index), tag: grant.logNumber))
        _ = try call(MemoryOpcode.release, request.encoded())
    }

    /// A database's name as the node knows it: without trailing slashes, so `db/` and `db` are
    /// one database (the engine may be given either; the log file system derives `db`).
    static func named(_ database: String) -> String {
        var name = Substring(database)
        while name.count > 1 && name.hasSuffix("/") { name = name.dropLast() }
        return String(name)
    }

    // MARK: Write logs by request (MemoryLogFileSystem)

    /// Forgets what this process knew of `database`'s logs (its lock was taken or given up: an
    /// owner's session begins or ends, and the next listing asks the node until it adopts).
    public func forgetOwnedLogs(database: String) {
        let database = Self.named(database)
        ownedLogs.withLock { $0[database] = nil }
    }

    /// The write logs `database` holds in the node's arenas, by tag. For a database this process
    /// adopted, from what it knows unless `fresh` (which asks, for the lengths); else asked.
    public func logs(database: String, fresh: Bool = false) throws -> [MemoryArena] {
        let database = Self.named(database)
        if !fresh, let known = ownedLogs.withLock({ $0[database] }) { return known.values.sorted { $0.tag < $1.tag } }
        return try MemoryArenaList.decode(try call(MemoryOpcode.list, MemoryAdopt(database: database, epoch: 0).encoded())).arenas
            .filter { $0.kind == .log }
    }

    /// A fresh arena made a write log (empty) for `database`'s log `tag`.
    /// - Throws: `busy` when every arena is granted, `fenced` for a superseded owner.
    public func createLog(database: String, tag: UInt64) throws -> MemoryArena {
        let database = Self.named(database)
        let epoch = epoch(database)
        let granted = try MemoryArenaGrant.decode(
            try call(MemoryOpcode.allocate, MemoryAllocate(database: database, epoch: epoch, tag: tag).encoded()))
        let arena = MemoryArena(index: granted.index, tag: tag, kind: .log)
        do {
            // Made a log at once, so a list never shows it as an arena nothing was written to.
            _ = try appendLog(database: database, arena: arena, offset: 0, bytes: [])
        } catch {
            try? releaseLog(database: database, arena: arena)
            throw error
        }
        ownedLogs.withLock { owned in if owned[database] != nil { owned[database]![tag] = arena } }
        return arena
    }

    /// Appends `bytes` to the write log in `arena` at `offset` (where the sender expects it to
    /// end; a retry of an append the log holds changes nothing); durable in the region on return.
    /// - Returns: the log's length.
    /// - Throws: `fenced` for a superseded owner, `noSpace` past the arena, `unavailable`.
    public func appendLog(database: String, arena: MemoryArena, offset: UInt64, bytes: [UInt8]) throws -> UInt64 {
        let database = Self.named(database)
        let request = MemoryLogAppend(database: database, epoch: epoch(database), arena: arena, offset: offset, bytes: bytes)
        return try MemoryLogLength.decode(try call(MemoryOpcode.logAppend, request.encoded())).length
    }

    /// Up to `count` bytes of the write log in `arena` from `offset` (fewer at its end).
    public func readLog(database: String, arena: MemoryArena, offset: UInt64, count: Int) throws -> [UInt8] {
        let database = Self.named(database)
        return try call(MemoryOpcode.logRead, MemoryLogRead(database: database, arena: arena, offset: offset, count: UInt32(count)).encoded())
    }

    /// Gives a write log's arena back (the log is deleted).
    public func releaseLog(database: String, arena: MemoryArena) throws {
        let database = Self.named(database)
        _ = try call(MemoryOpcode.release, MemoryRelease(database: database, epoch: epoch(database), arena: arena).encoded())
        ownedLogs.withLock { owned in if owned[database] != nil { owned[database]![arena.tag] = nil } }
    }

    /// Whether memtables of this process are written in the region in place (it maps here), or
    /// their writes go to a log in an arena by request; asks the node once.
    public var writesInPlace: Bool {
        get throws {
            if case .mapped = try reach() { return true }
            return false
        }
    }

    /// Bytes a write log in one arena holds at most.
    public var logCapacity: UInt64 {
        get throws {
            switch try reach() {
            case .mapped(_, let layout): return UInt64(layout.arenaBytes - RegionArenaLayout.headerBytes)
            case .byRequest(let info, _): return info.arenaBytes - UInt64(RegionArenaLayout.headerBytes)
            }
        }
    }

    /// A grant for arena `index`, after checking that the region says the same.
    private func grant(index: Int, tag: UInt64, epoch: UInt64, region: PmemRegion, layout: MemoryRegionLayout) throws -> MemtableArenaGrant {
        guard index < layout.arenaCount else {
            throw MoraineError(.corruption, "the memory node named arena \(index) of a region of \(layout.arenaCount)")
        }
        let offset = layout.arenaOffset(index)
        let database = region.loadWord(at: offset + RegionArenaLayout.databaseOffset)
        guard region.loadWord(at: offset + RegionArenaLayout.magicOffset) == MemoryRegionLayout.arenaMagic,
            region.loadWord(at: offset + RegionArenaLayout.tagOffset) == tag
        else {
            throw MoraineError(
                .corruption, "arena \(index) of \(region.path) does not carry tag \(tag) the memory node granted (database \(database))")
        }
        return MemtableArenaGrant(
            arena: MemTableRegionArena(region: region, offset: offset, bytes: layout.arenaBytes, epoch: epoch), index: index, logNumber: tag)
    }

    /// The region's geometry as `info` describes it.
    private static func layout(_ info: MemoryRegionInfo) -> MemoryRegionLayout {
        MemoryRegionLayout(
            arenaBytes: Int(info.arenaBytes), arenaCount: Int(info.arenaCount), cacheSlots: Int(info.cacheSlots),
            slotBytes: Int(info.slotBytes))
    }

    /// The region, mapped on first use and checked against the node's description of it.
    /// - Throws: `unavailable` when it is reached by request only (`reach`).
    func mapped() throws -> (PmemRegion, MemoryRegionLayout) {
        switch try reach() {
        case .mapped(let region, let layout): return (region, layout)
        case .byRequest(_, let reason):
            throw MoraineError(
                .unavailable, "\(reason); memtables are written in place only where the region maps (across boxes their logs go there "
                    + "by request: open through the cluster)")
        }
    }

    /// How the region is reached: mapped when its file is here and carries the identity the node
    /// reports, else by request. Decided on first use and kept.
    func reach() throws -> Reach {
        let known = state.withLock { state -> Reach? in
            if let region = state.region, let info = state.info { return .mapped(region, Self.layout(info)) }
            if let reason = state.byRequest, let info = state.info { return .byRequest(info, reason: reason) }
            return nil
        }
        if let known { return known }
        let info = try MemoryRegionInfo.decode(try call(MemoryOpcode.regionInfo, []))
        guard info.layoutVersion == MemoryRegionLayout.version else {
            throw MoraineError(.invalid, "the memory node's region has layout version \(info.layoutVersion); this build reads \(MemoryRegionLayout.version)")
        }
        func byRequest(_ reason: String) -> Reach {
            state.withLock { state in
                if state.info == nil {
                    state.info = info
                    state.byRequest = reason
                }
            }
            return .byRequest(info, reason: reason)
        }
        if !info.mappable { return byRequest("the memory node serves its region \(info.path) by request only") }
        let layout = Self.layout(info)
        // What keeps the file here from being the node's region for good: missing, not ours to
        // open, too small to be a region. Anything else (out of memory, of descriptors) is thrown
        // and asked again later.
        var status = stat()
        guard stat(info.path, &status) == 0 else { return byRequest("the memory node's region \(info.path) is not on this machine") }
        guard access(info.path, R_OK | W_OK) == 0 else {
            return byRequest("the memory node's region \(info.path) cannot be opened here for reading and writing")
        }
        guard status.st_size >= 64 else {
            return byRequest("\(info.path) on this machine is not the memory node's region (\(status.st_size) bytes)")
        }
        let region: PmemRegion
        do {
            region = try PmemRegion.mapping(path: info.path, sizeBytes: 0, create: false)
        } catch let error as MoraineError where error.kind == .notFound {
            return byRequest("the memory node's region \(info.path) is not on this machine")
        }
        // A file of that name here that is not the node's region (another box's node, a region
        // made again since): never written or read as the node's.
        guard region.sizeBytes >= 64, region.loadWord(at: MemoryRegion.identityOffset) == info.identity else {
            return byRequest("\(info.path) on this machine is not the memory node's region (another identity: the node is on another box)")
        }
        guard region.sizeBytes >= layout.regionBytes, layout.regionBytes == Int(info.regionBytes),
            region.loadWord(at: 0) == MemoryRegionLayout.magic, Int(region.loadWord(at: 24)) == layout.arenaBytes,
            Int(region.loadWord(at: 32)) == layout.arenaCount, Int(region.loadWord(at: 40)) == layout.cacheSlots
        else {
            throw MoraineError(
                .invalid, "\(info.path) (\(region.sizeBytes) bytes) is not the region the memory node describes "
                    + "(\(info.arenaCount) arenas of \(info.arenaBytes) bytes, \(info.regionBytes) bytes)")
        }
        state.withLock { state in
            if state.region == nil && state.byRequest == nil {
                state.region = region
                state.info = info
            }
        }
        return .mapped(region, layout)
    }

    /// One request, on a connection opened on first use and again after a failure.
    /// - Throws: the node's error response, or `unavailable` when it cannot be reached, as a
    ///   MoraineError of the same kind.
    private func call(_ opcode: UInt8, _ bytes: [UInt8]) throws -> [UInt8] {
        do throws(TransportError) {
            return try state.withLock { state throws(TransportError) -> [UInt8] in
                for attempt in 0..<2 {
                    do throws(TransportError) {
                        if state.client == nil { state.client = try endpoint().connect(key: key) }
                        guard case .bytes(let reply) = try state.client!.call(opcode, bytes, timeoutNanos: Self.callTimeoutNanos) else {
                            throw TransportError(.malformed, "the memory node answered with a reference")
                        }
                        return reply
                    } catch {
                        guard error.code == .unavailable || error.code == .closed || error.code == .timedOut else { throw error }
                        state.client?.close()
                        state.client = nil
                        if attempt == 1 { throw TransportError(.unavailable, "memory node: \(error.message)") }
                    }
                }
                throw TransportError(.unavailable, "memory node: no answer")
            }
        } catch {
            throw error.moraineError
        }
    }
}
