// A second tier under the block cache (RocksDB calls it a secondary cache): blocks as they are
// stored in the table (payload and trailer, compressed or not), keyed by table file number and
// offset within one database, so the key means the same in every process. A table reader asks it
// after a miss in its own block cache and offers it what it reads from the file. It is advisory:
// a miss, a damaged slot or an unreachable tier only means reading the file, and every block that
// comes from it is still checked against the table's own CRC.
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

    public init() {}
}

/// A second block-cache tier for one database's tables.
public protocol SecondaryBlockCache: Sendable {
    /// Copies the block at `offset` of table `file` into `buffer` (exactly `buffer.count` bytes:
    /// payload and trailer) when the tier holds it intact.
    func lookup(file: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool
    /// Offers a block just read from the file (copied; may be dropped).
    func insert(file: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer)
    /// Forgets every block of this database (a new database of the same name reuses file numbers).
    func invalidateAll() throws
    var counters: SecondaryCacheCounters { get }
}
