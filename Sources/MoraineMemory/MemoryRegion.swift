// The memory node's region: a header, a table of arenas, and the arenas themselves, each holding
// one compute node's memtable (MemTable+Region.swift owns an arena's inside). docs/MEMORY.md has
// the byte map:
//   header   magic "MORMEMN1", layout version, header bytes, region bytes, arena bytes, arena count,
//            cache slots, slot bytes, identity (a random nonzero word: which region this is, so a
//            peer never maps a same-named file on another box for it; 0 in a region formatted
//            before it existed, set at the node's next start)
//   table    at 64, one 32-byte entry per arena: tag (0: free; 2^64-1: in quarantine; else the
//            memtable's log number, the word that publishes the entry), database id, owner epoch,
//            and 0, or 1 once a newer owner adopted it, or in quarantine when it was given back
//   arenas   from `header bytes` on, `arena bytes` each; an arena's first 32 bytes repeat its
//            entry (magic "MORMEMT1", tag, database id, epoch), so a reader that maps the region
//            can tell whose arena it is without asking
//   cache    after the arenas: the shared block cache's slots (SharedCache.swift)
// The memory node is the only writer of the header, the table and an arena's first 32 bytes.
// Crash consistency (8-byte stores are the only atomic unit):
// - format: every field and the zeroed table, persisted, then the magic, persisted;
// - grant: the arena's header (its skiplist format word zeroed, so nothing of a former tenant
//   can be re-attached) is persisted, then the entry's database and epoch, then its tag;
//   a crash before the tag leaves the arena free;
// - adopt: the entry's epoch and the adopted mark, then the arena's copy, each persisted;
// - release: the tag is zeroed and persisted; an adopted arena (not a write log) instead gets
//   its release time, persisted, then the quarantine tag, persisted (a crash between leaves it
//   granted, and adopted).
// Open checks the geometry against what was asked (a region of another layout or size is
// refused with what differs) and every allocated entry against its arena's header.
// Thread-safety: not thread-safe; MemoryNode calls it under its lock.
import MoraineMemtable
import MoraineMessages
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The geometry of a memory node's region.
public struct MemoryRegionLayout: Sendable, Equatable {
    public static let magic: UInt64 = 0x314E_4D45_4D52_4F4D  // "MORMEMN1"
    public static let arenaMagic: UInt64 = 0x3154_4D45_4D52_4F4D  // "MORMEMT1"
    public static let version: UInt32 = 1
    static let tableOffset = 64
    static let entryBytes = 32

    public let arenaBytes: Int
    public let arenaCount: Int
    /// The shared block cache after the arenas: `cacheSlots` slots of `slotBytes` (0: none).
    public let cacheSlots: Int
    public let slotBytes: Int

    public init(arenaBytes: Int, arenaCount: Int, cacheSlots: Int = 0, slotBytes: Int = SharedCacheLayout.defaultSlotBytes) {
        self.arenaBytes = arenaBytes
        self.arenaCount = arenaCount
        self.cacheSlots = cacheSlots
        self.slotBytes = slotBytes
    }

    /// The most arenas of `arenaBytes` a region of `regionBytes` holds beside a cache of
    /// `cacheBytes` (whole sets of slots).
    public init(regionBytes: Int, arenaBytes: Int, cacheBytes: Int = 0, slotBytes: Int = SharedCacheLayout.defaultSlotBytes) {
        let sets = cacheBytes / (64 + SharedCacheLayout.ways * slotBytes)
        let slots = sets * SharedCacheLayout.ways
        let room = regionBytes - sets * (64 + SharedCacheLayout.ways * slotBytes)
        var count = max(0, room / arenaBytes)
        while count > 0 && Self.headerBytes(arenaCount: count) + count * arenaBytes > room { count -= 1 }
        self.init(arenaBytes: arenaBytes, arenaCount: count, cacheSlots: slots, slotBytes: slotBytes)
    }

    static func headerBytes(arenaCount: Int) -> Int { (tableOffset + entryBytes * arenaCount + 4095) & ~4095 }
    public var headerBytes: Int { Self.headerBytes(arenaCount: arenaCount) }
    public var regionBytes: Int { cacheOffset + cache.bytes }
    public func arenaOffset(_ index: Int) -> Int { headerBytes + index * arenaBytes }
    /// Where the shared block cache starts.
    public var cacheOffset: Int { headerBytes + arenaBytes * arenaCount }
    public var cache: SharedCacheLayout { SharedCacheLayout(offset: cacheOffset, slots: cacheSlots, slotBytes: slotBytes) }
    func entryOffset(_ index: Int) -> Int { Self.tableOffset + Self.entryBytes * index }
}

/// One arena's table entry.
public struct MemoryRegionEntry: Sendable, Equatable {
    public var index: Int
    public var tag: UInt64
    public var database: UInt64
    public var epoch: UInt64
}

/// A memory node's mapped region and its arena table.
public final class MemoryRegion: @unchecked Sendable {
    public let mapping: PmemRegion
    public let layout: MemoryRegionLayout
    public var path: String { mapping.path }

    private init(mapping: PmemRegion, layout: MemoryRegionLayout) {
        self.mapping = mapping
        self.layout = layout
    }

    /// Opens the region at `path`, creating and formatting it with `layout` when the file does
    /// not exist (it appears at `path` formatted, so a crash while creating leaves nothing);
    /// an existing file of zeros big enough for `layout` (a device) is formatted in place.
    /// - Throws: `.invalid` for a region of another layout version or geometry (naming what
    ///   differs) or a file that is not a region; `.corruption` for a damaged table.
    public static func open(
        path: String, layout: MemoryRegionLayout, numaNode: Int? = nil, tracer: PersistenceTracer? = nil
    ) throws -> MemoryRegion {
        guard layout.arenaCount > 0, layout.arenaBytes >= 128 << 10, layout.arenaBytes % 4096 == 0,
            layout.arenaBytes <= 1 << 31
        else {
            throw MoraineError(
                .invalid, "a memory region needs arenas of 128 KiB…2 GiB in whole pages and at least one of them "
                    + "(asked: \(layout.arenaCount) arenas of \(layout.arenaBytes) bytes)")
        }
        // A region created here arrives formatted, and is checked as any other.
        let mapping = try PmemRegion.mapping(path: path, sizeBytes: layout.regionBytes, create: true, numaNode: numaNode, tracer: tracer) {
            try MemoryRegion(mapping: $0, layout: layout).format()
        }
        let region = MemoryRegion(mapping: mapping, layout: layout)
        if mapping.sizeBytes >= 8 && mapping.loadWord(at: 0) == MemoryRegionLayout.magic {
            try region.checkHeader()
            try region.checkTable()
        } else {
            if mapping.sizeBytes >= 8 && mapping.loadWord(at: 0) != 0 {
                throw MoraineError(.invalid, "\(path) is not a memory region (its first word is not the region magic); refusing to format it")
            }
            guard mapping.sizeBytes >= layout.regionBytes else {
                throw MoraineError(
                    .invalid, "\(path) holds \(mapping.sizeBytes) bytes and no memory-region header; a new region needs \(layout.regionBytes)")
            }
            try region.format()
        }
        try region.ensureIdentity()
        return region
    }

    static let identityOffset = 56

    /// The region's identity (header word 56), nonzero once opened.
    public var identity: UInt64 { mapping.loadWord(at: Self.identityOffset) }

    /// Gives a region formatted without an identity one, durably.
    private func ensureIdentity() throws {
        guard identity == 0 else { return }
        var random = SystemRandomNumberGenerator()
        mapping.storeWord(UInt64.random(in: 1...UInt64.max, using: &random), at: Self.identityOffset)
        try mapping.persist(Self.identityOffset, 8)
    }

    private func checkHeader() throws {
        let versionWord = mapping.loadWord(at: 8)
        let version = UInt32(truncatingIfNeeded: versionWord)
        let headerBytes = Int(versionWord >> 32)
        let regionBytes = Int(truncatingIfNeeded: mapping.loadWord(at: 16))
        let arenaBytes = Int(truncatingIfNeeded: mapping.loadWord(at: 24))
        let arenaCount = Int(truncatingIfNeeded: mapping.loadWord(at: 32))
        guard version == MemoryRegionLayout.version else {
            throw MoraineError(.invalid, "\(path): memory region layout version \(version); this build reads \(MemoryRegionLayout.version)")
        }
        let cacheSlots = Int(truncatingIfNeeded: mapping.loadWord(at: 40))
        let slotBytes = Int(truncatingIfNeeded: mapping.loadWord(at: 48))
        var differences: [String] = []
        if arenaBytes != layout.arenaBytes { differences.append("arenas of \(arenaBytes) bytes, not \(layout.arenaBytes)") }
        if arenaCount != layout.arenaCount { differences.append("\(arenaCount) arenas, not \(layout.arenaCount)") }
        if cacheSlots != layout.cacheSlots || (cacheSlots > 0 && slotBytes != layout.slotBytes) {
            differences.append("a cache of \(cacheSlots) slots of \(slotBytes) bytes, not \(layout.cacheSlots) of \(layout.slotBytes)")
        }
        if headerBytes != layout.headerBytes || regionBytes != layout.regionBytes {
            differences.append("\(regionBytes) region bytes with a \(headerBytes)-byte header, not \(layout.regionBytes) and \(layout.headerBytes)")
        }
        guard differences.isEmpty else {
            throw MoraineError(
                .invalid, "\(path) is a memory region of another geometry: " + differences.joined(separator: ", ")
                    + " (start the node with the region's own --region-size and --arena-size, or another --region)")
        }
        guard mapping.sizeBytes >= regionBytes else {
            throw MoraineError.corruption("the region header says \(regionBytes) bytes; the file holds \(mapping.sizeBytes)", file: path)
        }
    }

    private func format() throws {
        mapping.storeWord(UInt64(MemoryRegionLayout.version) | UInt64(layout.headerBytes) << 32, at: 8)
        mapping.storeWord(UInt64(layout.regionBytes), at: 16)
        mapping.storeWord(UInt64(layout.arenaBytes), at: 24)
        mapping.storeWord(UInt64(layout.arenaCount), at: 32)
        mapping.storeWord(UInt64(layout.cacheSlots), at: 40)
        mapping.storeWord(UInt64(layout.slotBytes), at: 48)
        for index in 0..<layout.arenaCount {
            for word in 0..<4 { mapping.storeWord(0, at: layout.entryOffset(index) + 8 * word) }
        }
        try mapping.persist(0, layout.headerBytes)
        mapping.storeWord(MemoryRegionLayout.magic, at: 0)
        try mapping.persist(0, 8)
    }

    private func checkTable() throws {
        for entry in entries() {
            let arena = layout.arenaOffset(entry.index)
            let magic = mapping.loadWord(at: arena + RegionArenaLayout.magicOffset)
            let tag = mapping.loadWord(at: arena + RegionArenaLayout.tagOffset)
            let database = mapping.loadWord(at: arena + RegionArenaLayout.databaseOffset)
            guard magic == MemoryRegionLayout.arenaMagic, tag == entry.tag, database == entry.database else {
                throw MoraineError.corruption(
                    "arena \(entry.index) is granted to database \(entry.database) for tag \(entry.tag), but its header says "
                        + "database \(database), tag \(tag) (magic \(magic == MemoryRegionLayout.arenaMagic ? "ok" : "bad"))",
                    file: path)
            }
        }
    }

    /// The entry of arena `index`.
    public func entry(_ index: Int) -> MemoryRegionEntry {
        let offset = layout.entryOffset(index)
        return MemoryRegionEntry(
            index: index, tag: mapping.loadWord(at: offset), database: mapping.loadWord(at: offset + 8),
            epoch: mapping.loadWord(at: offset + 16))
    }

    /// The tag of an arena in quarantine: given back after a newer owner adopted it, so the
    /// owner it was taken from may still be writing into it (docs/MEMORY.md, section 2). Word 24
    /// of its entry holds when (wall-clock nanoseconds) it was given back, for a reader; how long
    /// the quarantine lasts is the node's to say (`grant`'s `mayTakeQuarantined`).
    public static let quarantineTag = UInt64.max

    /// Every granted arena, in table order.
    public func entries() -> [MemoryRegionEntry] {
        (0..<layout.arenaCount).map(entry).filter { $0.tag != 0 && $0.tag != Self.quarantineTag }
    }

    /// The arenas in quarantine (each keeps its database id and epoch).
    public func quarantined() -> [MemoryRegionEntry] {
        (0..<layout.arenaCount).map(entry).filter { $0.tag == Self.quarantineTag }
    }

    /// Arenas never granted or given back free (not those in quarantine).
    public var freeArenaCount: Int { (0..<layout.arenaCount).count { mapping.loadWord(at: layout.entryOffset($0)) == 0 } }

    /// Grants a free arena to `database` under `epoch` for `tag` (nonzero, not the quarantine's);
    /// durable on return. A free arena goes first, then a quarantined one `mayTakeQuarantined`
    /// lets go.
    /// - Returns: nil when every arena is granted or in quarantine.
    public func grant(
        database: UInt64, epoch: UInt64, tag: UInt64, mayTakeQuarantined: (Int) -> Bool
    ) throws -> MemoryRegionEntry? {
        precondition(tag != 0 && tag != Self.quarantineTag, "arena tags are nonzero and not the quarantine's")
        let candidates = 0..<layout.arenaCount
        guard
            let index = candidates.first(where: { mapping.loadWord(at: layout.entryOffset($0)) == 0 })
                ?? candidates.first(where: { mapping.loadWord(at: layout.entryOffset($0)) == Self.quarantineTag && mayTakeQuarantined($0) })
        else {
            return nil
        }
        let arena = layout.arenaOffset(index)
        mapping.storeWord(MemoryRegionLayout.arenaMagic, at: arena + RegionArenaLayout.magicOffset)
        mapping.storeWord(tag, at: arena + RegionArenaLayout.tagOffset)
        mapping.storeWord(database, at: arena + RegionArenaLayout.databaseOffset)
        mapping.storeWord(epoch, at: arena + RegionArenaLayout.epochOffset)
        for word in stride(from: 32, to: RegionArenaLayout.headerBytes, by: 8) { mapping.storeWord(0, at: arena + word) }
        try mapping.persist(arena, RegionArenaLayout.headerBytes)
        let entry = layout.entryOffset(index)
        mapping.storeWord(database, at: entry + 8)
        mapping.storeWord(epoch, at: entry + 16)
        mapping.storeWord(0, at: entry + 24)
        try mapping.persist(entry + 8, 24)
        mapping.storeWord(tag, at: entry)
        try mapping.persist(entry, 8)
        return MemoryRegionEntry(index: index, tag: tag, database: database, epoch: epoch)
    }

    /// Moves arena `index` to `epoch` (a new owner of the same database); durable on return.
    public func adopt(_ index: Int, epoch: UInt64) throws {
        let entry = layout.entryOffset(index)
        // Marked adopted first (the owner it was taken from may still write into it, so it goes
        // to quarantine when given back): a crash after the new epoch is durable finds the mark.
        if mapping.loadWord(at: entry + 24) == 0 {
            mapping.storeWord(1, at: entry + 24)
            try mapping.persist(entry + 24, 8)
        }
        mapping.storeWord(epoch, at: entry + 16)
        try mapping.persist(entry + 16, 8)
        let arena = layout.arenaOffset(index)
        mapping.storeWord(epoch, at: arena + RegionArenaLayout.epochOffset)
        try mapping.persist(arena + RegionArenaLayout.epochOffset, 8)
    }

    /// What arena `index` holds, from its format word.
    public func kind(_ index: Int) -> MemoryArena.Kind {
        switch mapping.loadWord(at: layout.arenaOffset(index) + RegionArenaLayout.formatOffset) {
        case RegionArenaLayout.logFormat: return .log
        case 0: return .unwritten
        default: return .memtable  // a skiplist, or damage its re-attach reports
        }
    }

    /// Arena `index` as a list names it: its tag, what it holds, its log's length.
    public func listed(_ entry: MemoryRegionEntry) -> MemoryArena {
        let kind = kind(entry.index)
        return MemoryArena(index: UInt32(entry.index), tag: entry.tag, kind: kind, logLength: kind == .log ? UInt64(logLength(entry.index)) : 0)
    }

    /// The bytes a write log in arena `index` holds (0 for an arena not yet written as one).
    public func logLength(_ index: Int) -> Int {
        let arena = layout.arenaOffset(index)
        guard mapping.loadWord(at: arena + RegionArenaLayout.formatOffset) == RegionArenaLayout.logFormat else { return 0 }
        return Int(mapping.loadWord(at: arena + RegionArenaLayout.logLengthOffset))
    }

    /// Appends `bytes` at `offset` of the write log in arena `index` (making the arena one at
    /// offset 0); durable on return: the bytes, then the length. An append the log already holds
    /// (a retry after a lost reply) changes nothing.
    /// - Returns: the log's length.
    /// - Throws: `.invalid` for an arena that holds a skiplist, a gap, or an overlap with other
    ///   bytes; `.noSpace` past the arena.
    public func logAppend(_ index: Int, offset: Int, bytes: UnsafeRawBufferPointer) throws -> Int {
        let arena = layout.arenaOffset(index)
        let capacity = layout.arenaBytes - RegionArenaLayout.headerBytes
        let format = mapping.loadWord(at: arena + RegionArenaLayout.formatOffset)
        if format != RegionArenaLayout.logFormat {
            guard format == 0, mapping.loadWord(at: arena + RegionArenaLayout.logLengthOffset) == 0 else {
                throw MoraineError(.invalid, "arena \(index) holds a memtable written in place, not a write log")
            }
            mapping.storeWord(UInt64(capacity), at: arena + RegionArenaLayout.capacityOffset)
            mapping.storeWord(RegionArenaLayout.logFormat, at: arena + RegionArenaLayout.formatOffset)
            try mapping.persist(arena + RegionArenaLayout.formatOffset, 16)
        }
        let length = Int(mapping.loadWord(at: arena + RegionArenaLayout.logLengthOffset))
        guard offset >= 0, offset <= length else {
            throw MoraineError(.invalid, "arena \(index): an append at \(offset) would leave a gap after the log's \(length) bytes")
        }
        let start = arena + RegionArenaLayout.headerBytes
        let overlap = min(bytes.count, length - offset)
        if overlap > 0, memcmp(mapping.base + start + offset, bytes.baseAddress!, overlap) != 0 {
            throw MoraineError(.invalid, "arena \(index): an append at \(offset) differs from the \(overlap) bytes the log holds there")
        }
        guard offset + bytes.count <= capacity else {
            throw MoraineError(.noSpace, "arena \(index): \(offset + bytes.count) bytes pass the write log's \(capacity)")
        }
        let added = bytes.count - overlap
        if added > 0 {
            (mapping.base + start + length).copyMemory(from: bytes.baseAddress! + overlap, byteCount: added)
            try mapping.persist(start + length, added)
            mapping.storeWord(UInt64(length + added), at: arena + RegionArenaLayout.logLengthOffset)
            try mapping.persist(arena + RegionArenaLayout.logLengthOffset, 8)
        }
        return length + added
    }

    /// Up to `count` bytes of the write log in arena `index` from `offset` (fewer at its end;
    /// none from an arena not yet written).
    /// - Throws: `.invalid` for an arena holding a memtable written in place (never read as an
    ///   empty log).
    public func logRead(_ index: Int, offset: Int, count: Int) throws -> [UInt8] {
        if mapping.loadWord(at: layout.arenaOffset(index) + RegionArenaLayout.formatOffset) == RegionArenaLayout.format {
            throw MoraineError(.invalid, "arena \(index) holds a memtable written in place, not a write log: open it where the region maps")
        }
        let length = logLength(index)
        guard offset >= 0, offset < length, count > 0 else { return [] }
        let start = layout.arenaOffset(index) + RegionArenaLayout.headerBytes + offset
        return Array(mapping.bytes(start, min(count, length - offset)))
    }

    /// The epoch arena `index`'s own header carries (its copy of the entry's).
    public func arenaEpoch(_ index: Int) -> UInt64 {
        mapping.loadWord(at: layout.arenaOffset(index) + RegionArenaLayout.epochOffset)
    }

    /// Frees arena `index`; durable on return. One that was adopted from an earlier owner goes to
    /// quarantine instead (given back at wall-clock `nowNanos`, for a reader of the table).
    /// - Returns: whether it went to quarantine.
    @discardableResult
    public func release(_ index: Int, nowNanos: Int64) throws -> Bool {
        let entry = layout.entryOffset(index)
        // A write log is written by the node alone, under its lock and the epoch check: no
        // owner it was taken from can touch it, so it needs no quarantine.
        let log = mapping.loadWord(at: layout.arenaOffset(index) + RegionArenaLayout.formatOffset) == RegionArenaLayout.logFormat
        if mapping.loadWord(at: entry + 24) != 0 && !log {
            mapping.storeWord(UInt64(max(nowNanos, 2)), at: entry + 24)
            try mapping.persist(entry + 24, 8)
            mapping.storeWord(Self.quarantineTag, at: entry)
            try mapping.persist(entry, 8)
            return true
        }
        mapping.storeWord(0, at: entry)
        try mapping.persist(entry, 8)
        return false
    }
}
