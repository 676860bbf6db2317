// A second tier under the block cache (RocksDB calls it a secondary cache): decoded data blocks
// (decompressed, their table CRC checked by the process that read them from the file), keyed by
// table file number and offset within one database, so the key means the same in every process.
// A table reader asks it after a miss in its own block cache and offers it what it reads from the
// file. It is advisory: a miss, a damaged entry or an unreachable tier only means reading the
// file; the tier checks its own CRC of every block it returns, and the block's restart array is
// checked again when it is parsed.
//
// Implemented by the memory node's shared cache (MoraineMemory); thread-safe.

/// What a second tier did, counted since it started.
public struct SecondaryCacheCounters: Sendable, Equatable {
    public var hits = 0
    public var misses = 0
    /// Slots whose CRC failed (or that changed under the reader every time): read from the file.
    public var corrupt = 0
    public var inserts = 0
    /// Offers dropped (the tier's queue full, or unreachable).
    public var dropped = 0
    /// Lookup requests sent, for a tier reached by request (0 for one read in place).
    public var requests = 0

    public init() {}
}

/// A block of one database: its table's file number and its offset there.
public struct SecondaryBlockKey: Sendable, Equatable {
    public var file: UInt64
    public var offset: UInt64

    public init(file: UInt64, offset: UInt64) {
        self.file = file
        self.offset = offset
    }
}

/// A second block-cache tier for one database's tables.
public protocol SecondaryBlockCache: Sendable {
    /// The decoded block at `offset` of table `file`, in a buffer the caller owns (allocated with
    /// `UnsafeMutableRawBufferPointer.allocate`), when the tier holds it intact.
    func lookup(file: UInt64, offset: UInt64) -> UnsafeMutableRawBufferPointer?
    /// `lookup` for many blocks at once (same order; nil where the tier does not hold one): a
    /// tier reached by request asks for them all in one round trip.
    func lookup(batch: [SecondaryBlockKey]) -> [UnsafeMutableRawBufferPointer?]
    /// Offers a decoded block just read from the file (copied; may be dropped).
    func insert(file: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer)
    /// Forgets every block of this database (a new database of the same name reuses file numbers).
    func invalidateAll() throws
    var counters: SecondaryCacheCounters { get }
    /// True when a lookup costs a round trip to another process (a scan reading ahead from the
    /// file then skips the tier).
    var lookupIsRequest: Bool { get }
}

extension SecondaryBlockCache {
    public var lookupIsRequest: Bool { false }

    /// One `lookup` per block (a tier read in place has no round trip to save).
    public func lookup(batch: [SecondaryBlockKey]) -> [UnsafeMutableRawBufferPointer?] {
        batch.map { lookup(file: $0.file, offset: $0.offset) }
    }
}
