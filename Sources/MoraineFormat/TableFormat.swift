// Shared pieces of the SST format: block handles, the block trailer (compression type and
// masked CRC32C), the fixed 64-byte footer, and the properties record. Layouts are in
// docs/FORMAT.md. Value types, thread-safe.
import MoraineSystem

/// Where a block sits in a table file (size excludes the 5-byte trailer).
public struct BlockHandle: Sendable, Equatable {
    public var offset: UInt64
    public var size: UInt64

    public init(offset: UInt64, size: UInt64) {
        self.offset = offset
        self.size = size
    }

    public func encode(into bytes: inout [UInt8]) {
        bytes.appendVarint(offset)
        bytes.appendVarint(size)
    }

    public static func decode(_ reader: inout ByteReader) throws -> BlockHandle {
        BlockHandle(offset: try reader.varint(), size: try reader.varint())
    }
}

/// How a block's payload is stored.
public enum BlockCompression: UInt8, Sendable {
    case none = 0
    /// Payload is a varint uncompressed size followed by an LZ4 block.
    case lz4 = 1
}

/// Compression choice for new tables.
public enum CompressionType: String, Sendable, CaseIterable {
    case none
    case lz4
}

public let blockTrailerBytes = 5
public let tableFooterBytes = 64
public let tableMagic: UInt64 = 0x3165_6e69_6172_6f4d  // "Moraine1" little-endian
public let tableFormatVersion: UInt32 = 1

/// The fixed-size record at the end of every table file.
public struct TableFooter: Sendable, Equatable {
    public var index: BlockHandle
    public var filter: BlockHandle
    public var properties: BlockHandle
    public var formatVersion: UInt32 = tableFormatVersion

    public init(index: BlockHandle, filter: BlockHandle, properties: BlockHandle) {
        self.index = index
        self.filter = filter
        self.properties = properties
    }

    public func encode() -> [UInt8] {
        var bytes = [UInt8]()
        for handle in [index, filter, properties] {
            bytes.appendFixed64(handle.offset)
            bytes.appendFixed64(handle.size)
        }
        bytes.appendFixed32(formatVersion)
        let crc = bytes.withUnsafeBytes { CRC32C.mask(CRC32C.checksum($0)) }
        bytes.appendFixed32(crc)
        bytes.appendFixed64(tableMagic)
        return bytes
    }

    /// Parses and checks magic, checksum and version.
    public static func decode(_ bytes: UnsafeRawBufferPointer, file: String) throws -> TableFooter {
        guard bytes.count == tableFooterBytes else {
            throw MoraineError.corruption("footer of \(bytes.count) bytes", file: file)
        }
        guard loadFixed64(bytes, 56) == tableMagic else {
            throw MoraineError.corruption("bad table magic (not a Moraine SST)", file: file)
        }
        let stored = CRC32C.unmask(loadFixed32(bytes, 52))
        let actual = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<52]))
        guard stored == actual else {
            throw MoraineError.corruption("footer checksum mismatch", file: file)
        }
        let version = loadFixed32(bytes, 48)
        guard version == tableFormatVersion else {
            throw MoraineError.corruption("unsupported table format version \(version)", file: file)
        }
        func handle(_ at: Int) -> BlockHandle {
            BlockHandle(offset: loadFixed64(bytes, at), size: loadFixed64(bytes, at + 8))
        }
        return TableFooter(index: handle(0), filter: handle(16), properties: handle(32))
    }
}

/// Facts about a table, stored in its properties block.
public struct TableProperties: Sendable, Equatable {
    public var entryCount: UInt64 = 0
    public var deletionCount: UInt64 = 0
    public var dataBlockCount: UInt64 = 0
    public var dataBytes: UInt64 = 0
    public var indexBytes: UInt64 = 0
    public var filterBytes: UInt64 = 0
    public var rawKeyBytes: UInt64 = 0
    public var rawValueBytes: UInt64 = 0
    public var smallestSequence: SequenceNumber = maxSequenceNumber
    public var largestSequence: SequenceNumber = 0
    /// Smallest and largest internal keys.
    public var smallestKey: [UInt8] = []
    public var largestKey: [UInt8] = []
    public var compression: CompressionType = .none

    public init() {}

    public func encode() -> [UInt8] {
        var bytes: [UInt8] = [1]  // record version
        for field in [
            entryCount, deletionCount, dataBlockCount, dataBytes, indexBytes, filterBytes,
            rawKeyBytes, rawValueBytes, smallestSequence, largestSequence,
        ] { bytes.appendVarint(field) }
        bytes.appendLengthPrefixed(smallestKey)
        bytes.appendLengthPrefixed(largestKey)
        bytes.append(compression == .lz4 ? 1 : 0)
        return bytes
    }

    public static func decode(_ raw: UnsafeRawBufferPointer, file: String) throws -> TableProperties {
        var reader = ByteReader(raw, what: "properties block of \(file)")
        guard try reader.byte() == 1 else {
            throw MoraineError.corruption("unknown properties version", file: file)
        }
        var p = TableProperties()
        p.entryCount = try reader.varint()
        p.deletionCount = try reader.varint()
        p.dataBlockCount = try reader.varint()
        p.dataBytes = try reader.varint()
        p.indexBytes = try reader.varint()
        p.filterBytes = try reader.varint()
        p.rawKeyBytes = try reader.varint()
        p.rawValueBytes = try reader.varint()
        p.smallestSequence = try reader.varint()
        p.largestSequence = try reader.varint()
        p.smallestKey = try reader.lengthPrefixed()
        p.largestKey = try reader.lengthPrefixed()
        p.compression = try reader.byte() == 1 ? .lz4 : .none
        return p
    }
}

/// Options that shape a new table.
public struct TableOptions: Sendable, Equatable {
    public var blockSizeBytes: Int = 4096
    public var restartInterval: Int = 16
    public var bloomBitsPerKey: Int = 10
    public var compression: CompressionType = .lz4

    public init(
        blockSizeBytes: Int = 4096, restartInterval: Int = 16, bloomBitsPerKey: Int = 10,
        compression: CompressionType = .lz4
    ) {
        self.blockSizeBytes = blockSizeBytes
        self.restartInterval = restartInterval
        self.bloomBitsPerKey = bloomBitsPerKey
        self.compression = compression
    }
}
