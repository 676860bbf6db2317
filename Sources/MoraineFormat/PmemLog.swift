// The persistent log inside one persistent-memory arena: the `pmem` durability mode's WAL.
// Records follow each other from the arena's payload start:
//   length    u32 little-endian, payload bytes
//   checksum  u32, masked CRC32C of the payload
//   payload   a WriteBatch as the WAL stores it
//   padding   to the next 8-byte boundary
// The arena's owner word is the committed tail: the payload bytes (from the payload start) that
// hold complete, durable records. An append stores the record, flushes it, fences, then stores
// the new tail (one 8-byte word, the atomic publish), flushes and fences it. Only then is the
// write acknowledged. Recovery reads records up to the tail and never past it, so a record
// whose publish did not persist is ignored whatever bytes it left; a record inside the tail
// that fails its checksum is corruption (the media lost data), reported with region and offset.
// Thread-safety: one writer (the write-group leader); readers only at recovery.
import MoraineSystem

/// Appends records to one arena.
public final class PmemLogWriter {
    public let region: PmemRegion
    public let arena: PmemArena
    /// Payload bytes used (the committed tail).
    public private(set) var tailBytes: Int
    private let capacityBytes: Int
    private let skipRecordFlush: Bool
    static let recordHeaderBytes = 8

    /// A writer at the arena's committed tail.
    /// - Parameter unsafeSkipRecordFlushForTesting: leaves out the flush of each record (a
    ///   deliberate bug), so tests can show the crash-image checker catches a missing flush.
    public init(region: PmemRegion, arena: PmemArena, unsafeSkipRecordFlushForTesting: Bool = false) {
        self.region = region
        self.arena = arena
        self.capacityBytes = region.layout.arenaBytes - PmemLayout.arenaHeaderBytes
        self.tailBytes = Int(region.loadWord(at: arena.wordOffset))
        self.skipRecordFlush = unsafeSkipRecordFlushForTesting
        precondition(tailBytes <= capacityBytes, "arena tail past its end")
    }

    /// Bytes a record with `payloadBytes` of payload takes.
    public static func recordBytes(payloadBytes: Int) -> Int {
        (recordHeaderBytes + payloadBytes + 7) & ~7
    }

    /// Whether a record of `payloadBytes` still fits.
    public func hasRoom(payloadBytes: Int) -> Bool {
        tailBytes + Self.recordBytes(payloadBytes: payloadBytes) <= capacityBytes
    }

    /// Whether a record of `payloadBytes` fits an empty arena of `arenaBytes`.
    public static func fits(payloadBytes: Int, arenaBytes: Int) -> Bool {
        recordBytes(payloadBytes: payloadBytes) <= arenaBytes - PmemLayout.arenaHeaderBytes
    }

    /// The largest payload an empty arena of this region takes.
    public var maxPayloadBytes: Int { capacityBytes - Self.recordHeaderBytes }

    /// Appends one record and makes it durable (record, fence, tail publish, fence).
    /// - Precondition: `hasRoom(payloadBytes: payload.count)`.
    /// - Throws: `.io` when msync fails; the record is then not published.
    public func append(_ payload: UnsafeRawBufferPointer) throws {
        precondition(hasRoom(payloadBytes: payload.count), "record does not fit the arena")
        let start = arena.payloadOffset + tailBytes
        let total = Self.recordBytes(payloadBytes: payload.count)
        var header = (UInt32(payload.count).littleEndian, CRC32C.mask(CRC32C.checksum(payload)).littleEndian)
        withUnsafeBytes(of: &header) { region.store($0, at: start) }
        region.store(payload, at: start + Self.recordHeaderBytes)
        if !skipRecordFlush { try region.flush(start, total) }
        region.fence()
        tailBytes += total
        region.storeWord(UInt64(tailBytes), at: arena.wordOffset)
        try region.persist(arena.wordOffset, 8)
    }
}

/// Reads the committed records of one arena.
public struct PmemLogReader {
    public let region: PmemRegion
    public let arena: PmemArena
    private var position = 0
    private let tailBytes: Int

    public init(region: PmemRegion, arena: PmemArena) throws {
        self.region = region
        self.arena = arena
        let tail = region.loadWord(at: arena.wordOffset)
        let capacity = UInt64(region.layout.arenaBytes - PmemLayout.arenaHeaderBytes)
        guard tail <= capacity, tail & 7 == 0 else {
            throw MoraineError.corruption("arena \(arena.index) (tag \(arena.tag)) has tail \(tail) of \(capacity)", file: region.path)
        }
        self.tailBytes = Int(tail)
    }

    /// The next record's payload (a view into the region), or nil after the last one.
    /// - Throws: `.corruption` naming the region, arena and offset when a record inside the
    ///   committed tail is damaged.
    public mutating func nextRecord() throws -> UnsafeRawBufferPointer? {
        guard position < tailBytes else { return nil }
        let where_ = "arena \(arena.index) (tag \(arena.tag)) at payload offset \(position)"
        guard tailBytes - position >= PmemLogWriter.recordHeaderBytes else {
            throw MoraineError.corruption("truncated record header in \(where_)", file: region.path)
        }
        let header = region.bytes(arena.payloadOffset + position, PmemLogWriter.recordHeaderBytes)
        let length = Int(loadFixed32(header, 0))
        let stored = CRC32C.unmask(loadFixed32(header, 4))
        let total = PmemLogWriter.recordBytes(payloadBytes: length)
        guard total <= tailBytes - position else {
            throw MoraineError.corruption("record of \(length) bytes runs past the committed tail in \(where_)", file: region.path)
        }
        let payload = region.bytes(arena.payloadOffset + position + PmemLogWriter.recordHeaderBytes, length)
        guard CRC32C.checksum(payload) == stored else {
            throw MoraineError.corruption("checksum mismatch in record in \(where_)", file: region.path)
        }
        position += total
        return payload
    }
}
