// A compute node's side of the memory node: asks it for arenas and maps its region, so the engine
// writes its memtables there in place (MemtableArenaProvider). The region is found by the path
// the node reports and mapped once; its header is checked against what the node says before
// any arena is used. Only the same box can map it: a region whose file is not here is refused
// with `unavailable` (memtables across boxes, by request, are a later step).
//
// Thread-safety: one mutex around the connection and the mapping; requests are rare (one per
// memtable), so they are not pipelined.
import MoraineEngine
import MoraineMemtable
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

/// Arenas of a memory node's region for one compute node's memtables.
public final class MemoryNodeArenas: MemtableArenaProvider, Sendable {
    private struct State: ~Copyable {
        var client: (any TransportClient)? = nil
        var region: PmemRegion? = nil
        var info: MemoryRegionInfo? = nil
    }

    let endpoint: @Sendable () throws(TransportError) -> Endpoint
    let key: ClusterKey
    private let epoch: @Sendable (String) -> UInt64
    private let state = Mutex(State())
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
        let epoch = epoch(database)
        let list = try MemoryArenaList.decode(try call(MemoryOpcode.adopt, MemoryAdopt(database: database, epoch: epoch).encoded()))
        let (region, layout) = try mapped()
        return try list.arenas.map { arena in
            try grant(index: Int(arena.index), tag: arena.tag, epoch: epoch, region: region, layout: layout)
        }
    }

    public func list(database: String) throws -> [MemtableArenaGrant] {
        let list = try MemoryArenaList.decode(try call(MemoryOpcode.list, MemoryAdopt(database: database, epoch: 0).encoded()))
        let (region, layout) = try mapped()
        return try list.arenas.map { arena in
            try grant(index: Int(arena.index), tag: arena.tag, epoch: 0, region: region, layout: layout)
        }
    }

    public func allocate(database: String, logNumber: UInt64) throws -> MemtableArenaGrant {
        let epoch = epoch(database)
        let (region, layout) = try mapped()
        let reply = try call(MemoryOpcode.allocate, MemoryAllocate(database: database, epoch: epoch, tag: logNumber).encoded())
        let granted = try MemoryArenaGrant.decode(reply)
        return try grant(index: Int(granted.index), tag: logNumber, epoch: epoch, region: region, layout: layout)
    }

    public func release(database: String, _ grant: MemtableArenaGrant) throws {
        let request = MemoryRelease(
            database: database, epoch: grant.arena.epoch, arena: MemoryArena(index: UInt32(grant.index), tag: grant.logNumber))
        _ = try call(MemoryOpcode.release, request.encoded())
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
    func mapped() throws -> (PmemRegion, MemoryRegionLayout) {
        if let ready = state.withLock({ state in state.region.map { ($0, state.info!) } }) {
            return (ready.0, Self.layout(ready.1))
        }
        let info = try MemoryRegionInfo.decode(try call(MemoryOpcode.regionInfo, []))
        guard info.layoutVersion == MemoryRegionLayout.version else {
            throw MoraineError(.invalid, "the memory node's region has layout version \(info.layoutVersion); this build reads \(MemoryRegionLayout.version)")
        }
        let layout = Self.layout(info)
        let region: PmemRegion
        do {
            region = try PmemRegion.mapping(path: info.path, sizeBytes: 0, create: false)
        } catch let error as MoraineError where error.kind == .notFound {
            throw MoraineError(
                .unavailable, "the memory node's region \(info.path) is not on this machine; memtables across machines are not supported yet")
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
            if state.region == nil {
                state.region = region
                state.info = info
            }
        }
        return (region, layout)
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
