// The layout inside a persistent-memory region (docs/PMEM.md has the byte map):
//   header    magic "MORPMEM1", format version, header bytes, region bytes, arena bytes,
//             arena count, then the arena table: one 8-byte word per arena, 0 when free,
//             else the arena's owner tag (a nonzero number chosen by the allocator's caller)
//   arenas    fixed-size, each opening with its own 64-byte header: magic "MORARENA", the
//             owner tag, and one 8-byte word the owner uses as it likes (the log tail)
// Crash consistency, with 8-byte stores as the only atomic unit:
// - create: the file is sized and formatted under a temporary name, then linked into place
//   (PmemRegion.create), so a crash while creating leaves no file, never a headerless one;
// - format: every field but the magic is written and persisted, then the magic; a region
//   whose first word is still zero is formatted afresh (nothing can be in it yet), one with
//   another first word is a foreign file and refused;
// - allocate: the arena header (magic, tag, zeroed word) is persisted first, then the table
//   word is published and persisted; a crash in between leaves the arena free;
// - free: the table word is set to 0 and persisted.
// On open, an allocated table word whose arena header does not carry the same tag means the
// ordering above was broken: reported as corruption.
// Thread-safety: allocate and free are called under the owner's lock.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The geometry of a region.
public struct PmemLayout: Sendable, Equatable {
    public static let magic: UInt64 = 0x314D_454D_5052_4F4D  // "MORPMEM1" little-endian
    public static let arenaMagic: UInt64 = 0x414E_4552_4152_4F4D  // "MORARENA"
    public static let formatVersion: UInt32 = 1
    /// Bytes of an arena's own header; the arena's payload starts after it.
    public static let arenaHeaderBytes = 64
    static let tableOffset = 64

    public let arenaBytes: Int
    public let arenaCount: Int
    public var headerBytes: Int { Self.headerBytes(arenaCount: arenaCount) }
    public var regionBytes: Int { headerBytes + arenaBytes * arenaCount }

    public init(arenaBytes: Int, arenaCount: Int) {
        self.arenaBytes = arenaBytes
        self.arenaCount = arenaCount
    }

    static func headerBytes(arenaCount: Int) -> Int {
        (tableOffset + 8 * arenaCount + 4095) & ~4095
    }

    /// Where arena `index` starts.
    public func arenaOffset(_ index: Int) -> Int { headerBytes + index * arenaBytes }
    func tableWordOffset(_ index: Int) -> Int { Self.tableOffset + 8 * index }
}

/// One allocated arena: where it is and whose it is.
public struct PmemArena: Sendable, Equatable {
    public let index: Int
    public let tag: UInt64
    /// Offset of the arena in the region.
    public let offset: Int
    /// Offset of the arena's payload (after its header) in the region.
    public var payloadOffset: Int { offset + PmemLayout.arenaHeaderBytes }
    /// Offset of the arena's owner word in the region.
    public var wordOffset: Int { offset + 16 }
}

extension PmemRegion {
    /// Opens the region at `path`, creating and formatting it with `layout` when it does not
    /// exist; an existing file of zeros (a device, or a file made for it) big enough for
    /// `layout` is formatted in place. An existing region keeps its own geometry.
    /// - Parameter numaNode: binds the region's pages to this node when given.
    /// - Parameter formatIfNeeded: false opens only an existing, formatted region.
    /// - Throws: `.corruption` for a damaged header or arena table, `.invalid` for a file that
    ///   is not a region, `.io`/`.noSpace` when mapping fails.
    public static func open(
        path: String, layout requested: PmemLayout, numaNode: Int? = nil, tracer: PersistenceTracer? = nil,
        formatIfNeeded: Bool = true
    ) throws -> PmemRegion {
        precondition(requested.arenaCount > 0 && requested.arenaBytes >= 4096 && requested.arenaBytes % 4096 == 0)
        if access(path, F_OK) != 0 {
            guard formatIfNeeded else { throw MoraineError(.notFound, "no persistent-memory region at \(path)") }
            if let created = try create(
                path: path, sizeBytes: requested.regionBytes, sparse: false, numaNode: numaNode, tracer: tracer, layout: requested,
                prepare: { try $0.format() })
            {
                return created
            }
        }
        let region = try bound(path: path, try map(path: path), tracer: tracer, layout: requested, numaNode: numaNode)
        let mapped = region.sizeBytes
        if mapped >= 8 && region.loadWord(at: 0) == PmemLayout.magic {
            region.layout = try region.readLayout()
        } else {
            guard formatIfNeeded else { throw MoraineError(.invalid, "\(path) is not a persistent-memory region") }
            if mapped >= 8 && region.loadWord(at: 0) != 0 {
                throw MoraineError(.invalid, "\(path) is not a persistent-memory region (its first word is not the region magic); refusing to format it")
            }
            guard mapped >= requested.regionBytes else {
                throw MoraineError(
                    .invalid, "\(path) holds \(mapped) bytes and no region header; a new region needs \(requested.regionBytes) "
                        + "(a file this build creates appears whole, so this one came from elsewhere: remove it if nothing uses it)")
            }
            try region.format()
        }
        try region.checkArenaTable()
        return region
    }

    private func readLayout() throws -> PmemLayout {
        let version = UInt32(truncatingIfNeeded: loadWord(at: 8))
        let headerBytes = Int(loadWord(at: 8) >> 32)
        let regionBytes = Int(truncatingIfNeeded: loadWord(at: 16))
        let arenaBytes = Int(truncatingIfNeeded: loadWord(at: 24))
        let arenaCount = Int(truncatingIfNeeded: loadWord(at: 32))
        guard version == PmemLayout.formatVersion else {
            throw MoraineError(.invalid, "\(path): region format version \(version), this build reads \(PmemLayout.formatVersion)")
        }
        guard arenaCount > 0, arenaCount < 1 << 20, arenaBytes >= 4096, arenaBytes % 4096 == 0 else {
            throw MoraineError.corruption("region header names \(arenaCount) arenas of \(arenaBytes) bytes", file: path)
        }
        let layout = PmemLayout(arenaBytes: arenaBytes, arenaCount: arenaCount)
        guard layout.headerBytes == headerBytes, layout.regionBytes == regionBytes, regionBytes <= sizeBytes else {
            throw MoraineError.corruption(
                "region header (\(headerBytes) header bytes, \(regionBytes) region bytes) does not match its geometry or the file's \(sizeBytes) bytes",
                file: path)
        }
        return layout
    }

    /// Writes a fresh header: every field and a zeroed table first, the magic last.
    private func format() throws {
        let headerBytes = UInt64(layout.headerBytes)
        storeWord(UInt64(PmemLayout.formatVersion) | headerBytes << 32, at: 8)
        storeWord(UInt64(layout.regionBytes), at: 16)
        storeWord(UInt64(layout.arenaBytes), at: 24)
        storeWord(UInt64(layout.arenaCount), at: 32)
        for index in 0..<layout.arenaCount { storeWord(0, at: layout.tableWordOffset(index)) }
        try persist(0, layout.headerBytes)
        storeWord(PmemLayout.magic, at: 0)
        try persist(0, 8)
    }

    private func checkArenaTable() throws {
        for arena in allocatedArenas() {
            let magic = loadWord(at: arena.offset)
            let tag = loadWord(at: arena.offset + 8)
            guard magic == PmemLayout.arenaMagic, tag == arena.tag else {
                throw MoraineError.corruption(
                    "arena \(arena.index) is allocated to \(arena.tag) but its header says \(tag) (magic \(magic == PmemLayout.arenaMagic ? "ok" : "bad"))",
                    file: path)
            }
        }
    }

    /// Every allocated arena, in table order.
    public func allocatedArenas() -> [PmemArena] {
        (0..<layout.arenaCount).compactMap { index in
            let tag = loadWord(at: layout.tableWordOffset(index))
            return tag == 0 ? nil : PmemArena(index: index, tag: tag, offset: layout.arenaOffset(index))
        }
    }

    /// How many arenas are free.
    public var freeArenaCount: Int { layout.arenaCount - allocatedArenas().count }

    /// Allocates a free arena for `tag` (nonzero), with its owner word zeroed; durable on return.
    /// - Returns: nil when every arena is taken.
    public func allocateArena(tag: UInt64) throws -> PmemArena? {
        precondition(tag != 0, "arena tags are nonzero")
        guard let index = (0..<layout.arenaCount).first(where: { loadWord(at: layout.tableWordOffset($0)) == 0 }) else {
            return nil
        }
        let arena = PmemArena(index: index, tag: tag, offset: layout.arenaOffset(index))
        storeWord(PmemLayout.arenaMagic, at: arena.offset)
        storeWord(tag, at: arena.offset + 8)
        storeWord(0, at: arena.wordOffset)
        try persist(arena.offset, PmemLayout.arenaHeaderBytes)
        storeWord(tag, at: layout.tableWordOffset(index))
        try persist(layout.tableWordOffset(index), 8)
        return arena
    }

    /// Returns an arena to the free pool; durable on return.
    public func freeArena(_ arena: PmemArena) throws {
        precondition(loadWord(at: layout.tableWordOffset(arena.index)) == arena.tag, "freeing an arena not held")
        storeWord(0, at: layout.tableWordOffset(arena.index))
        try persist(layout.tableWordOffset(arena.index), 8)
    }
}
