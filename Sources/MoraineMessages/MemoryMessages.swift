// The memory node's protocol: a compute node learns where the region is (so it can map it on the
// same box), adopts the arenas its database's previous owners left (fencing them), and is granted
// and gives back arenas one memtable at a time. docs/MEMORY.md has the byte layouts; every count
// is bounded before anything is allocated for it.
//
// Value types; no shared state.
import MoraineSystem
import MoraineTransport

/// The memory node's opcodes (0x50–0x5F).
public enum MemoryOpcode {
    /// Where the region is and its geometry: empty → `MemoryRegionInfo`.
    public static let regionInfo: UInt8 = 0x50
    /// Take over a database's arenas with a newer epoch: `MemoryAdopt` → `MemoryArenaList`.
    public static let adopt: UInt8 = 0x51
    /// A free arena for one memtable: `MemoryAllocate` → `MemoryArenaGrant` (`busy`: none free).
    public static let allocate: UInt8 = 0x52
    /// Give an arena back: `MemoryRelease` → empty.
    public static let release: UInt8 = 0x53
    /// Arenas in use, per database: empty → `MemoryStatusReply`.
    public static let status: UInt8 = 0x54
    /// A database's arenas, for a reader that owns nothing (no epoch changes): `MemoryAdopt`
    /// (its epoch ignored) → `MemoryArenaList`.
    public static let list: UInt8 = 0x55
    /// Blocks read from a storage node, for the shared cache: `MemoryCacheInsert` → empty.
    public static let cacheInsert: UInt8 = 0x56
    /// Forget every cached block of a database: `MemoryAdopt` (its epoch ignored) → empty.
    public static let cacheForget: UInt8 = 0x57
    /// Blocks of the shared cache, for a peer that cannot map the region (another box, or a
    /// node that serves by request only): `MemoryCacheLookup` → `MemoryCacheBlocks`.
    public static let cacheLookup: UInt8 = 0x58
    /// Bytes appended to the write log an arena holds for a peer that cannot map the region:
    /// `MemoryLogAppend` → `MemoryLogLength` (durable in the region on the reply).
    public static let logAppend: UInt8 = 0x59
    /// Bytes of an arena's write log: `MemoryLogRead` → the bytes (fewer at its end).
    public static let logRead: UInt8 = 0x5A
}

/// Bytes for the write log in one of a database's arenas, at the offset the sender expects the
/// log to end (a retry of an append the log holds changes nothing; a gap is refused).
public struct MemoryLogAppend: WireMessage, Equatable {
    public static let wireName = "memory log append"
    /// The most bytes one append carries.
    public static let bytesMax = 16 << 20
    public var database: String
    public var epoch: UInt64
    public var arena: MemoryArena
    public var offset: UInt64
    public var bytes: [UInt8]

    public init(database: String, epoch: UInt64, arena: MemoryArena, offset: UInt64, bytes: [UInt8]) {
        self.database = database
        self.epoch = epoch
        self.arena = arena
        self.offset = offset
        self.bytes = bytes
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u64(epoch)
        writer.u32(arena.index)
        writer.u64(arena.tag)
        writer.u64(offset)
        writer.data(bytes)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        epoch = try reader.u64("epoch")
        arena = MemoryArena(index: try reader.u32("arena index"), tag: try reader.u64("arena tag"))
        offset = try reader.u64("offset")
        bytes = try reader.data("bytes")
        guard bytes.count <= Self.bytesMax else { throw TransportError(.malformed, "\(Self.wireName): \(bytes.count) bytes pass \(Self.bytesMax)") }
    }
}

/// How many bytes an arena's write log holds.
public struct MemoryLogLength: WireMessage, Equatable {
    public static let wireName = "memory log length"
    public var length: UInt64

    public init(length: UInt64) { self.length = length }

    public func encode(into writer: inout WireWriter) { writer.u64(length) }

    public init(from reader: inout WireReader) throws(TransportError) { length = try reader.u64("log length") }
}

/// A range of an arena's write log, for whoever holds the database's arenas (any epoch: a
/// successor reads what its predecessor appended).
public struct MemoryLogRead: WireMessage, Equatable {
    public static let wireName = "memory log read"
    /// The most bytes one read returns.
    public static let countMax = 4 << 20
    public var database: String
    public var arena: MemoryArena
    public var offset: UInt64
    public var count: UInt32

    public init(database: String, arena: MemoryArena, offset: UInt64, count: UInt32) {
        self.database = database
        self.arena = arena
        self.offset = offset
        self.count = count
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u32(arena.index)
        writer.u64(arena.tag)
        writer.u64(offset)
        writer.u32(count)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        arena = MemoryArena(index: try reader.u32("arena index"), tag: try reader.u64("arena tag"))
        offset = try reader.u64("offset")
        count = try reader.u32("count")
        guard count <= Self.countMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) bytes pass \(Self.countMax)") }
    }
}

/// Blocks a peer asks the shared cache for, of one database, by table file number and offset.
public struct MemoryCacheLookup: WireMessage, Equatable {
    public static let wireName = "memory cache lookup"
    /// The most blocks one request asks for (a reply stays under 300 KiB with default slots).
    public static let blocksMax = 64

    public struct Key: Sendable, Equatable {
        public var file: UInt64
        public var offset: UInt64

        public init(file: UInt64, offset: UInt64) {
            self.file = file
            self.offset = offset
        }
    }

    public var database: String
    public var blocks: [Key]

    public init(database: String, blocks: [Key]) {
        self.database = database
        self.blocks = blocks
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u32(UInt32(blocks.count))
        for block in blocks {
            writer.u64(block.file)
            writer.u64(block.offset)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        let count = Int(try reader.u32("block count"))
        guard count <= Self.blocksMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) blocks pass \(Self.blocksMax)") }
        blocks = []
        for _ in 0..<count { blocks.append(Key(file: try reader.u64("file"), offset: try reader.u64("offset"))) }
    }
}

/// What the shared cache holds of each block a `MemoryCacheLookup` named, in its order.
public struct MemoryCacheBlocks: WireMessage, Equatable {
    public static let wireName = "memory cache blocks"

    /// One block's answer.
    public enum Found: Sendable, Equatable {
        /// The decoded block, copied out of its slot and checked against the slot's CRC there.
        case hit([UInt8])
        case miss
        /// A slot with the key whose payload failed its CRC (read the file instead).
        case damaged
    }

    public var blocks: [Found]

    public init(blocks: [Found]) { self.blocks = blocks }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(blocks.count))
        for block in blocks {
            switch block {
            case .miss: writer.u8(0)
            case .hit(let bytes):
                writer.u8(1)
                writer.data(bytes)
            case .damaged: writer.u8(2)
            }
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("block count"))
        guard count <= MemoryCacheLookup.blocksMax else {
            throw TransportError(.malformed, "\(Self.wireName): \(count) blocks pass \(MemoryCacheLookup.blocksMax)")
        }
        blocks = []
        for _ in 0..<count {
            switch try reader.u8("block state") {
            case 0: blocks.append(.miss)
            case 1:
                let bytes = try reader.data("block")
                guard bytes.count <= MemoryCacheInsert.blockBytesMax else {
                    throw TransportError(.malformed, "\(Self.wireName): a block of \(bytes.count) bytes")
                }
                blocks.append(.hit(bytes))
            case 2: blocks.append(.damaged)
            case let state: throw TransportError(.malformed, "\(Self.wireName): block state \(state)")
            }
        }
    }
}

/// Blocks for the shared cache, of one database.
public struct MemoryCacheInsert: WireMessage, Equatable {
    public static let wireName = "memory cache insert"
    /// The most blocks, and the most bytes of one block, a request carries.
    public static let blocksMax = 1024
    public static let blockBytesMax = 1 << 20

    public struct Block: Sendable, Equatable {
        public var file: UInt64
        public var offset: UInt64
        public var bytes: [UInt8]

        public init(file: UInt64, offset: UInt64, bytes: [UInt8]) {
            self.file = file
            self.offset = offset
            self.bytes = bytes
        }
    }

    public var database: String
    public var blocks: [Block]

    public init(database: String, blocks: [Block]) {
        self.database = database
        self.blocks = blocks
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u32(UInt32(blocks.count))
        for block in blocks {
            writer.u64(block.file)
            writer.u64(block.offset)
            writer.data(block.bytes)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        let count = Int(try reader.u32("block count"))
        guard count <= Self.blocksMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) blocks pass \(Self.blocksMax)") }
        blocks = []
        for _ in 0..<count {
            let file = try reader.u64("file")
            let offset = try reader.u64("offset")
            let bytes = try reader.data("block")
            guard bytes.count <= Self.blockBytesMax else {
                throw TransportError(.malformed, "\(Self.wireName): a block of \(bytes.count) bytes")
            }
            blocks.append(Block(file: file, offset: offset, bytes: bytes))
        }
    }
}

/// A database's id in the region: FNV-1a (64-bit) of its name, the same in every process.
public enum MemoryDatabaseID {
    public static func of(_ name: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash == 0 ? 1 : hash
    }
}

/// The region a memory node owns.
public struct MemoryRegionInfo: WireMessage, Equatable {
    public static let wireName = "memory region info"
    /// The region file (mapped by peers on the same box).
    public var path: String
    public var layoutVersion: UInt32
    public var regionBytes: UInt64
    public var arenaBytes: UInt64
    public var arenaCount: UInt32
    public var freeArenas: UInt32
    /// Real persistent memory (pmem_is_pmem) or an emulation that persists with msync.
    public var isPersistentMemory: Bool
    /// The shared block cache's slots (0: none) and their bytes.
    public var cacheSlots: UInt64
    public var slotBytes: UInt32
    /// The random word the region was formatted with (header word 56): a peer maps the file at
    /// `path` only when it carries this, so a file of the same name on another box is never
    /// taken for it.
    public var identity: UInt64
    /// False when the node serves its region by request only (`--region-access request`):
    /// peers then do not map it even on the same box, as if it were on another.
    public var mappable: Bool

    public init(
        path: String, layoutVersion: UInt32, regionBytes: UInt64, arenaBytes: UInt64, arenaCount: UInt32, freeArenas: UInt32,
        isPersistentMemory: Bool, cacheSlots: UInt64 = 0, slotBytes: UInt32 = 0, identity: UInt64 = 0, mappable: Bool = true
    ) {
        self.path = path
        self.layoutVersion = layoutVersion
        self.regionBytes = regionBytes
        self.arenaBytes = arenaBytes
        self.arenaCount = arenaCount
        self.freeArenas = freeArenas
        self.isPersistentMemory = isPersistentMemory
        self.cacheSlots = cacheSlots
        self.slotBytes = slotBytes
        self.identity = identity
        self.mappable = mappable
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(path)
        writer.u32(layoutVersion)
        writer.u64(regionBytes)
        writer.u64(arenaBytes)
        writer.u32(arenaCount)
        writer.u32(freeArenas)
        writer.bool(isPersistentMemory)
        writer.u64(cacheSlots)
        writer.u32(slotBytes)
        writer.u64(identity)
        writer.bool(mappable)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        path = try reader.string("region path")
        layoutVersion = try reader.u32("layout version")
        regionBytes = try reader.u64("region bytes")
        arenaBytes = try reader.u64("arena bytes")
        arenaCount = try reader.u32("arena count")
        freeArenas = try reader.u32("free arenas")
        isPersistentMemory = try reader.bool("persistent memory")
        cacheSlots = try reader.u64("cache slots")
        slotBytes = try reader.u32("slot bytes")
        identity = try reader.u64("region identity")
        mappable = try reader.bool("mappable")
    }
}

/// A database and the epoch of the owner asking.
public struct MemoryAdopt: WireMessage, Equatable {
    public static let wireName = "memory adopt request"
    public var database: String
    public var epoch: UInt64

    public init(database: String, epoch: UInt64) {
        self.database = database
        self.epoch = epoch
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u64(epoch)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        epoch = try reader.u64("epoch")
    }
}

/// One arena held by a database: its index in the region and its tag (the memtable's log number).
/// A list also says what the arena holds (`kind`) and, for a write log, its length; a request
/// naming an arena sends only the index and the tag.
public struct MemoryArena: Sendable, Equatable {
    /// What an arena holds, read from its format word.
    public enum Kind: UInt8, Sendable {
        /// Granted, nothing written yet (its owner died between the grant and its first write).
        case unwritten = 0
        /// A memtable's skiplist, written in place by a peer that maps the region.
        case memtable = 1
        /// A write log appended by request (a peer that cannot map the region).
        case log = 2
    }

    public var index: UInt32
    public var tag: UInt64
    public var kind: Kind
    /// Bytes of the write log (0 unless `kind` is `log`).
    public var logLength: UInt64

    public init(index: UInt32, tag: UInt64, kind: Kind = .unwritten, logLength: UInt64 = 0) {
        self.index = index
        self.tag = tag
        self.kind = kind
        self.logLength = logLength
    }
}

/// The arenas a database holds, now under the adopting owner's epoch.
public struct MemoryArenaList: WireMessage, Equatable {
    public static let wireName = "memory arena list"
    /// A region has at most this many arenas.
    public static let arenasMax = 1 << 20
    public var arenas: [MemoryArena]

    public init(arenas: [MemoryArena]) { self.arenas = arenas }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(arenas.count))
        for arena in arenas {
            writer.u32(arena.index)
            writer.u64(arena.tag)
            writer.u8(arena.kind.rawValue)
            writer.u64(arena.logLength)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("arena count"))
        guard count <= Self.arenasMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) arenas") }
        arenas = []
        for _ in 0..<count {
            let index = try reader.u32("arena index")
            let tag = try reader.u64("arena tag")
            let code = try reader.u8("arena kind")
            guard let kind = MemoryArena.Kind(rawValue: code) else {
                throw TransportError(.malformed, "\(Self.wireName): arena \(index) of kind \(code)")
            }
            arenas.append(MemoryArena(index: index, tag: tag, kind: kind, logLength: try reader.u64("log length")))
        }
    }
}

/// A request for an arena, tagged with the memtable's log number.
public struct MemoryAllocate: WireMessage, Equatable {
    public static let wireName = "memory allocate request"
    public var database: String
    public var epoch: UInt64
    public var tag: UInt64

    public init(database: String, epoch: UInt64, tag: UInt64) {
        self.database = database
        self.epoch = epoch
        self.tag = tag
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u64(epoch)
        writer.u64(tag)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        epoch = try reader.u64("epoch")
        tag = try reader.u64("tag")
    }
}

/// The arena granted.
public struct MemoryArenaGrant: WireMessage, Equatable {
    public static let wireName = "memory arena grant"
    public var index: UInt32

    public init(index: UInt32) { self.index = index }

    public func encode(into writer: inout WireWriter) { writer.u32(index) }

    public init(from reader: inout WireReader) throws(TransportError) { index = try reader.u32("arena index") }
}

/// An arena given back by its owner.
public struct MemoryRelease: WireMessage, Equatable {
    public static let wireName = "memory release request"
    public var database: String
    public var epoch: UInt64
    public var arena: MemoryArena

    public init(database: String, epoch: UInt64, arena: MemoryArena) {
        self.database = database
        self.epoch = epoch
        self.arena = arena
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.u64(epoch)
        writer.u32(arena.index)
        writer.u64(arena.tag)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        epoch = try reader.u64("epoch")
        arena = MemoryArena(index: try reader.u32("arena index"), tag: try reader.u64("arena tag"))
    }
}

/// How full the region is, per database (by id).
public struct MemoryStatusReply: WireMessage, Equatable {
    public static let wireName = "memory status reply"
    /// One database's share.
    public struct Holder: Sendable, Equatable {
        public var database: UInt64
        public var epoch: UInt64
        public var arenas: UInt32

        public init(database: UInt64, epoch: UInt64, arenas: UInt32) {
            self.database = database
            self.epoch = epoch
            self.arenas = arenas
        }
    }

    public var arenaCount: UInt32
    public var freeArenas: UInt32
    public var holders: [Holder]

    public init(arenaCount: UInt32, freeArenas: UInt32, holders: [Holder]) {
        self.arenaCount = arenaCount
        self.freeArenas = freeArenas
        self.holders = holders
    }

    public func encode(into writer: inout WireWriter) {
        writer.u32(arenaCount)
        writer.u32(freeArenas)
        writer.u32(UInt32(holders.count))
        for holder in holders {
            writer.u64(holder.database)
            writer.u64(holder.epoch)
            writer.u32(holder.arenas)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        arenaCount = try reader.u32("arena count")
        freeArenas = try reader.u32("free arenas")
        let count = Int(try reader.u32("holder count"))
        guard count <= MemoryArenaList.arenasMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) holders") }
        holders = []
        for _ in 0..<count {
            holders.append(
                Holder(database: try reader.u64("database id"), epoch: try reader.u64("epoch"), arenas: try reader.u32("arenas")))
        }
    }
}
