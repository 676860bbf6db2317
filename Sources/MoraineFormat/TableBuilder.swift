// Writes one SST: data blocks of ~blockSize bytes, then the filter, properties and index blocks,
// then the footer. Every block gets a trailer (compression type, masked CRC32C) and is LZ4-
// compressed when that saves at least 1/8 of it. Writes only through a WritableFile (the seam).
// Single-threaded; keys must arrive in strictly increasing internal-key order.
import MoraineSystem

/// Streams sorted internal entries into a table file.
public final class TableBuilder {
    private let file: any WritableFile
    private let options: TableOptions
    private let name: String
    // One builder, one thread: the runtime's exclusivity checks on these fields were 8% of a
    // compaction's instructions.
    @exclusivity(unchecked) private var dataBlock: BlockBuilder
    @exclusivity(unchecked) private var indexBlock: BlockBuilder
    @exclusivity(unchecked) private var filterHashes: [UInt64] = []
    @exclusivity(unchecked) private var lastUserKeyHash: UInt64? = nil
    @exclusivity(unchecked) private var lastKey = KeyBuffer()
    @exclusivity(unchecked) private var pendingHandle: BlockHandle? = nil
    @exclusivity(unchecked) private var offset: UInt64 = 0
    @exclusivity(unchecked) private var compressionScratch: [UInt8] = []
    @exclusivity(unchecked) public private(set) var properties = TableProperties()
    @exclusivity(unchecked) private var finished = false

    public init(file: any WritableFile, options: TableOptions, name: String) {
        self.file = file
        self.options = options
        self.name = name
        self.dataBlock = BlockBuilder(restartInterval: options.restartInterval)
        self.indexBlock = BlockBuilder(restartInterval: 1)
        properties.compression = options.compression
    }

    /// Bytes written so far plus the open block: what the file would be if finished now.
    public var estimatedFileSizeBytes: UInt64 { offset + UInt64(dataBlock.estimatedSizeBytes) }

    public var entryCount: UInt64 { properties.entryCount }

    /// Adds an entry. Precondition: `key` sorts after the previous key.
    public func add(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) throws {
        precondition(!finished)
        precondition(key.count >= internalKeyTagBytes)
        if properties.entryCount > 0 {
            let order = compareInternalKeys(lastKey.bytes, key)
            precondition(order < 0, "table keys out of order in \(name)")
        }
        if let handle = pendingHandle {
            addIndexEntry(handle)
            pendingHandle = nil
        }
        let user = userKey(key)
        let hash = hashBytes(user)
        if lastUserKeyHash != hash || properties.entryCount == 0 {
            filterHashes.append(hash)
            lastUserKeyHash = hash
        }
        if properties.entryCount == 0 { properties.smallestKey = Array(key) }
        lastKey.set(key)
        let seq = sequence(key)
        properties.smallestSequence = min(properties.smallestSequence, seq)
        properties.largestSequence = max(properties.largestSequence, seq)
        if valueType(key) == .deletion { properties.deletionCount += 1 }
        properties.entryCount += 1
        properties.rawKeyBytes += UInt64(key.count)
        properties.rawValueBytes += UInt64(value.count)
        dataBlock.add(key: key, value: value)
        if dataBlock.estimatedSizeBytes >= options.blockSizeBytes { try flushDataBlock() }
    }

    /// Adds an entry from arrays.
    public func add(key: [UInt8], value: [UInt8]) throws {
        try key.withUnsafeBytes { k in try value.withUnsafeBytes { v in try add(key: k, value: v) } }
    }

    private func addIndexEntry(_ handle: BlockHandle) {
        // The index key is the block's last key: every key in the block is <= it, and every key
        // in the next block is greater.
        var encoded = [UInt8]()
        handle.encode(into: &encoded)
        encoded.withUnsafeBytes { indexBlock.add(key: lastKey.bytes, value: $0) }
    }

    private func flushDataBlock() throws {
        guard !dataBlock.isEmpty else { return }
        let contents = dataBlock.finish()
        let handle = try writeBlock(contents, compress: options.compression == .lz4)
        properties.dataBlockCount += 1
        properties.dataBytes += handle.size + UInt64(blockTrailerBytes)
        pendingHandle = handle
    }

    /// Writes a block with its trailer; returns its handle.
    private func writeBlock(_ contents: [UInt8], compress: Bool) throws -> BlockHandle {
        var type = BlockCompression.none
        var payload = contents
        if compress, contents.count > 64 {
            compressionScratch.removeAll(keepingCapacity: true)
            compressionScratch.appendVarint(UInt64(contents.count))
            let header = compressionScratch.count
            let bound = LZ4.compressBound(contents.count)
            compressionScratch.append(contentsOf: repeatElement(0, count: bound))
            let size = contents.withUnsafeBytes { src in
                compressionScratch.withUnsafeMutableBytes { dst in
                    LZ4.compress(src, into: UnsafeMutableRawBufferPointer(rebasing: dst[header...]))
                }
            }
            if let size, header + size < contents.count - contents.count / 8 {
                compressionScratch.removeSubrange((header + size)...)
                payload = compressionScratch
                type = .lz4
            }
        }
        let handle = BlockHandle(offset: offset, size: UInt64(payload.count))
        var crc = payload.withUnsafeBytes { CRC32C.checksum($0) }
        var trailer: [UInt8] = [type.rawValue]
        crc = trailer.withUnsafeBytes { CRC32C.extend(crc, $0) }
        trailer.appendFixed32(CRC32C.mask(crc))
        try file.append(payload)
        try file.append(trailer)
        offset += UInt64(payload.count + trailer.count)
        return handle
    }

    /// Writes the remaining blocks and the footer, and flushes (the caller syncs).
    /// - Returns: the table's properties; the file size is `estimatedFileSizeBytes`.
    @discardableResult
    public func finish() throws -> TableProperties {
        precondition(!finished)
        try flushDataBlock()
        finished = true
        properties.largestKey = Array(lastKey.bytes)
        let filterBytes = BloomFilter.build(hashes: filterHashes, bitsPerKey: max(options.bloomBitsPerKey, 1))
        let filterHandle: BlockHandle
        if options.bloomBitsPerKey > 0 {
            filterHandle = try writeBlock(filterBytes, compress: false)
            properties.filterBytes = filterHandle.size
        } else {
            filterHandle = BlockHandle(offset: 0, size: 0)
        }
        if let handle = pendingHandle {
            addIndexEntry(handle)
            pendingHandle = nil
        }
        let indexContents = indexBlock.finish()
        properties.indexBytes = UInt64(indexContents.count)
        let propertiesHandle = try writeBlock(properties.encode(), compress: false)
        let indexHandle = try writeBlock(indexContents, compress: false)
        let footer = TableFooter(index: indexHandle, filter: filterHandle, properties: propertiesHandle)
        try file.append(footer.encode())
        offset += UInt64(tableFooterBytes)
        try file.flush()
        return properties
    }

    /// The file size after `finish`.
    public var fileSizeBytes: UInt64 { offset }
}
