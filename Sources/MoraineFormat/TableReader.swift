// Opens an SST through a RandomAccessFile: reads and checks the footer, then keeps the index
// block, the bloom filter and the properties pinned in memory for the reader's lifetime. Data
// blocks come from the block cache or are read, CRC-checked and decompressed on a miss.
// Immutable after open; shared by all threads.
import MoraineSystem

/// An open, immutable table.
public final class TableReader: @unchecked Sendable {
    public let file: any RandomAccessFile
    public let name: String
    public let tableID: UInt64
    public let fileSizeBytes: UInt64
    public let properties: TableProperties
    let indexBlock: Block
    /// The index as dense arrays (nil for an index block of another layout).
    private let indexSearch: IndexSearch?
    private let filter: UnsafeRawBufferPointer?
    private let cache: BlockCache?
    /// The second tier, and this table's file number there.
    private let secondary: (any SecondaryBlockCache)?
    private let fileNumber: UInt64

    /// Opens and validates a table.
    /// - Parameter secondary: a second block-cache tier, which knows this table as `fileNumber`.
    /// - Throws: `.corruption` naming the file when the footer, index, filter or properties fail
    ///   their checks.
    public init(
        file: any RandomAccessFile, name: String, cache: BlockCache?, secondary: (any SecondaryBlockCache)? = nil,
        fileNumber: UInt64 = 0
    ) throws {
        self.file = file
        self.name = name
        self.cache = cache
        self.secondary = secondary
        self.fileNumber = fileNumber
        self.tableID = BlockCache.newTableID()
        let size = file.size
        self.fileSizeBytes = size
        guard size >= UInt64(tableFooterBytes) else {
            throw MoraineError.corruption("file too short for a table (\(size) bytes)", file: name)
        }
        var footerBytes = [UInt8](repeating: 0, count: tableFooterBytes)
        try footerBytes.withUnsafeMutableBytes {
            try file.readExactly(at: size - UInt64(tableFooterBytes), into: $0, name: name)
        }
        let footer = try footerBytes.withUnsafeBytes { try TableFooter.decode($0, file: name) }
        let limit = size - UInt64(tableFooterBytes)
        for (what, handle) in [("index", footer.index), ("filter", footer.filter), ("properties", footer.properties)]
        where handle.offset > limit || handle.size > limit - handle.offset {
            throw MoraineError.corruption("\(what) handle out of bounds", file: name)
        }
        indexBlock = try Self.readBlock(file: file, handle: footer.index, name: name, what: "index block")
        indexSearch = try IndexSearch.build(index: indexBlock, fileSize: size, name: name)
        let propertiesBlock = try Self.readBlockContents(
            file: file, handle: footer.properties, name: name, what: "properties block")
        defer { propertiesBlock.deallocate() }
        properties = try TableProperties.decode(UnsafeRawBufferPointer(propertiesBlock), file: name)
        if footer.filter.size > 0 {
            let filterBytes = try Self.readBlockContents(
                file: file, handle: footer.filter, name: name, what: "filter block")
            filter = UnsafeRawBufferPointer(filterBytes)
        } else {
            filter = nil
        }
    }

    deinit {
        filter.map { UnsafeMutableRawBufferPointer(mutating: $0).deallocate() }
        indexSearch?.deallocate()
    }

    /// Bytes pinned by this reader (index, its search arrays, and filter).
    public var pinnedBytes: Int { indexBlock.bytes.count + (indexSearch?.count ?? 0) * 24 + (filter?.count ?? 0) }

    /// The first index entry whose separator is at or after `target` (an internal key), or
    /// the entry count; nil when the index has no search arrays.
    @inline(__always)
    func firstIndexEntry(atOrAfter target: UnsafeRawBufferPointer) throws -> Int? {
        guard let indexSearch else { return nil }
        return try indexSearch.firstEntry(atOrAfter: target) { [indexBlock, name] entry in
            do {
                return try indexBlock.restartKey(entry)
            } catch {
                throw MoraineError.corruption((error as? MoraineError)?.message ?? "\(error)", file: name)
            }
        }
    }

    /// Reads a block's payload and trailer, checks the CRC, and decompresses.
    /// - Returns: owned contents; the caller deallocates.
    static func readBlockContents(
        file: any RandomAccessFile, handle: BlockHandle, name: String, what: String
    ) throws -> UnsafeMutableRawBufferPointer {
        let raw = try allocateRawBlock(handle, name: name, what: what)
        do {
            try file.readExactly(at: handle.offset, into: raw, name: name)
        } catch {
            raw.deallocate()
            throw error
        }
        return try decodeRawBlock(taking: raw, handle: handle, name: name, what: what)
    }

    /// A buffer for a block's payload and trailer.
    static func allocateRawBlock(_ handle: BlockHandle, name: String, what: String) throws -> UnsafeMutableRawBufferPointer {
        guard handle.size < UInt64(1 << 31) else {
            throw MoraineError.corruption("\(what) size \(handle.size) too large", file: name)
        }
        return .allocate(byteCount: Int(handle.size) + blockTrailerBytes, alignment: 8)
    }

    /// Checks the CRC of a block read into `raw` (payload and trailer) and decompresses it.
    /// Takes ownership of `raw` whatever the outcome.
    /// - Returns: owned contents; the caller deallocates.
    /// Checks a stored block's checksum (over its payload and type byte); returns the type byte.
    static func verifiedType(_ raw: UnsafeRawBufferPointer, handle: BlockHandle, name: String, what: String) throws -> UInt8 {
        let size = Int(handle.size)
        let stored = CRC32C.unmask(loadFixed32(raw, size + 1))
        let actual = CRC32C.extend(
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<size])), UnsafeRawBufferPointer(rebasing: raw[size..<size + 1]))
        guard stored == actual else {
            throw MoraineError.corruption("checksum mismatch in \(what) at offset \(handle.offset)", file: name)
        }
        return raw[size]
    }

    static func decodeRawBlock(
        taking raw: UnsafeMutableRawBufferPointer, handle: BlockHandle, name: String, what: String
    ) throws -> UnsafeMutableRawBufferPointer {
        var keep = false
        defer { if !keep { raw.deallocate() } }
        let payload = UnsafeRawBufferPointer(rebasing: raw[0..<Int(handle.size)])
        let typeByte = try verifiedType(UnsafeRawBufferPointer(raw), handle: handle, name: name, what: what)
        switch BlockCompression(rawValue: typeByte) {
        case .some(.none):
            keep = true
            return UnsafeMutableRawBufferPointer(rebasing: raw[0..<Int(handle.size)])
        case .some(.lz4):
            var offset = 0
            guard let rawSize = decodeVarint(payload, &offset), rawSize < UInt64(1 << 31) else {
                throw MoraineError.corruption("bad LZ4 size in \(what) at offset \(handle.offset)", file: name)
            }
            let output = UnsafeMutableRawBufferPointer.allocate(byteCount: max(Int(rawSize), 1), alignment: 8)
            do {
                try LZ4.decompress(
                    UnsafeRawBufferPointer(rebasing: payload[offset...]),
                    into: UnsafeMutableRawBufferPointer(rebasing: output[0..<Int(rawSize)]))
            } catch {
                output.deallocate()
                throw MoraineError.corruption("\(error) (\(what) at offset \(handle.offset))", file: name)
            }
            return UnsafeMutableRawBufferPointer(rebasing: output[0..<Int(rawSize)])
        case nil:
            throw MoraineError.corruption(
                "unknown compression type \(typeByte) in \(what) at offset \(handle.offset)", file: name)
        }
    }

    static func readBlock(file: any RandomAccessFile, handle: BlockHandle, name: String, what: String) throws -> Block {
        let contents = try readBlockContents(file: file, handle: handle, name: name, what: what)
        return try Block(taking: contents, origin: BlockOrigin(what, offset: handle.offset, file: name))
    }

    /// A data block, from the cache when present.
    /// - Parameter fillCache: false for scans (compaction) that should not evict hot blocks.
    /// - Parameter readahead: serves sequential loads from larger reads (see Readahead).
    public func dataBlock(_ handle: BlockHandle, fillCache: Bool = true, readahead: Readahead? = nil) throws -> Block {
        // Before the cache: such a block is never cached, so a lookup could only miss.
        if let block = try mappedUncompressedBlock(handle) { return block }
        let key = BlockCacheKey(tableID: tableID, offset: handle.offset)
        if let cache, let block = cache.lookup(key) { return block }
        // A scan reading ahead does not wait a round trip per block for a tier reached by request.
        let byRequest = secondary?.lookupIsRequest == true
        let skipsSecondary = byRequest && readahead?.readsAhead(handle) == true
        if !skipsSecondary, let block = secondaryBlock(handle) {
            if byRequest { readahead?.note(handle) }
            if fillCache, let cache { cacheSecondaryHit(cache, key, block, byRequest: byRequest) }
            return block
        }
        let block: Block
        if let readahead, let raw = try readahead.rawBlock(handle, file: file) {
            let contents = try Self.decodeRawBlock(taking: raw, handle: handle, name: name, what: "data block")
            block = try Block(taking: contents, origin: BlockOrigin("data block", offset: handle.offset, file: name))
        } else {
            block = try Self.readBlock(file: file, handle: handle, name: name, what: "data block")
        }
        if fillCache {
            cache?.insert(key, block)
            // A block a scan skipped the tier for is most likely there already: not offered again.
            if !skipsSecondary { secondary?.insert(file: fileNumber, offset: handle.offset, bytes: block.bytes) }
        }
        return block
    }

    /// The uncompressed data block at `handle`, used where it lies in the file's mapping:
    /// checked on every read but neither copied nor cached, since the page cache (or the
    /// persistent memory) already holds it, as LevelDB does with its mapped tables. Nil where the
    /// file is not mapped or the block is compressed (that one is read, decompressed and cached
    /// as from any file).
    public func mappedUncompressedBlock(_ handle: BlockHandle) throws -> Block? {
        guard let raw = file.mappedBytes(at: handle.offset, count: Int(handle.size) + blockTrailerBytes),
            raw[Int(handle.size)] == BlockCompression.none.rawValue
        else { return nil }
        _ = try Self.verifiedType(raw, handle: handle, name: name, what: "data block")
        return try Block(
            borrowing: UnsafeRawBufferPointer(rebasing: raw[0..<Int(handle.size)]), owner: file,
            origin: BlockOrigin("data block", offset: handle.offset, file: name))
    }

    /// The data block at `handle` from the second tier; nil when the tier does not hold it, or
    /// holds something that is not a block (then the file is read).
    private func secondaryBlock(_ handle: BlockHandle) -> Block? {
        guard let secondary, let contents = secondary.lookup(file: fileNumber, offset: handle.offset) else { return nil }
        return try? Block(taking: contents, origin: BlockOrigin("data block", offset: handle.offset, file: name))
    }

    /// Whether the bloom filter admits `userKey` (true when there is no filter).
    @inlinable
    public func mayContain(userKey: UnsafeRawBufferPointer) -> Bool {
        mayContain(hash: hashBytes(userKey))
    }

    /// Whether the bloom filter admits a user key with this hash.
    public func mayContain(hash: UInt64) -> Bool {
        guard let filter else { return true }
        return BloomFilter.mayContain(filter, hash: hash)
    }

    /// Finds the first entry at or after `lookupKey` (an internal key) whose user key equals the
    /// lookup's; calls `found` with that entry's internal key and value.
    /// - Returns: false when the table has no entry for the user key.
    public func get(
        _ lookupKey: UnsafeRawBufferPointer, hash: UInt64, fillCache: Bool = true,
        _ found: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws -> Bool {
        guard let handle = try candidateBlock(lookupKey, hash: hash) else { return false }
        return try get(lookupKey, in: try dataBlock(handle, fillCache: fillCache), found)
    }

    /// The data block that would hold `lookupKey` (an internal key), or nil when the bloom filter
    /// or the index rules the key out. The first step of a batched lookup.
    public func candidateBlock(_ lookupKey: UnsafeRawBufferPointer, hash: UInt64) throws -> BlockHandle? {
        if !mayContain(hash: hash) { return nil }
        if let indexSearch, let entry = try firstIndexEntry(atOrAfter: lookupKey) {
            return entry < indexSearch.count ? indexSearch.handle(entry) : nil
        }
        let index = indexBlock.makeIterator()
        try index.seek(lookupKey)
        guard index.isValid else { return nil }
        return try decodeHandle(index.value)
    }

    /// The cached data block at `handle`, if the cache holds it.
    public func cachedDataBlock(_ handle: BlockHandle) -> Block? {
        let key = BlockCacheKey(tableID: tableID, offset: handle.offset)
        if let block = cache?.lookup(key) { return block }
        guard let block = secondaryBlock(handle) else { return nil }
        if let cache { cacheSecondaryHit(cache, key, block, byRequest: secondary?.lookupIsRequest == true) }
        return block
    }

    /// The key this table's data block at `handle` has in the second tier (for a batched lookup).
    public func secondaryKey(_ handle: BlockHandle) -> SecondaryBlockKey { SecondaryBlockKey(file: fileNumber, offset: handle.offset) }

    /// A data block the second tier returned for `handle` (a batched lookup), put in the block
    /// cache; takes ownership of `contents`. Nil when it is not a block (then read the file).
    public func dataBlock(fromSecondary contents: UnsafeMutableRawBufferPointer, handle: BlockHandle, fillCache: Bool) -> Block? {
        guard let block = try? Block(taking: contents, origin: BlockOrigin("data block", offset: handle.offset, file: name)) else { return nil }
        if fillCache, let cache {
            cacheSecondaryHit(cache, BlockCacheKey(tableID: tableID, offset: handle.offset), block, byRequest: secondary?.lookupIsRequest == true)
        }
        return block
    }

    /// A second-tier hit into the block cache: on its second hit for a tier read in place
    /// (BlockCache.offerSecondHit), at once for one reached by request (a second hit there costs a
    /// round trip, far more than the eviction it would save).
    private func cacheSecondaryHit(_ cache: BlockCache, _ key: BlockCacheKey, _ block: Block, byRequest: Bool) {
        if byRequest { cache.insert(key, block) } else { cache.offerSecondHit(key, block) }
    }

    /// The data block at `handle` if the block cache holds it (neither the second tier, which may
    /// be another process, nor the file is asked).
    public func blockCacheDataBlock(_ handle: BlockHandle) -> Block? {
        cache?.lookup(BlockCacheKey(tableID: tableID, offset: handle.offset))
    }

    /// A buffer to read the data block at `handle` into (payload and trailer); pass it to
    /// `dataBlock(fromRead:handle:fillCache:)` afterwards, which takes ownership.
    public func allocateDataBlockRead(_ handle: BlockHandle) throws -> UnsafeMutableRawBufferPointer {
        try Self.allocateRawBlock(handle, name: name, what: "data block")
    }

    /// Checks and decodes a data block read by the caller into `raw`, and caches it.
    /// Takes ownership of `raw`.
    /// - Throws: `.corruption` naming the file and offset.
    public func dataBlock(fromRead raw: UnsafeMutableRawBufferPointer, handle: BlockHandle, fillCache: Bool) throws -> Block {
        let contents = try Self.decodeRawBlock(taking: raw, handle: handle, name: name, what: "data block")
        let block = try Block(taking: contents, origin: BlockOrigin("data block", offset: handle.offset, file: name))
        if fillCache {
            cache?.insert(BlockCacheKey(tableID: tableID, offset: handle.offset), block)
            secondary?.insert(file: fileNumber, offset: handle.offset, bytes: block.bytes)
        }
        return block
    }

    /// Looks `lookupKey` up inside one data block (the last step of a batched lookup).
    /// - Returns: false when the block has no entry for the user key.
    public func get(
        _ lookupKey: UnsafeRawBufferPointer, in block: Block,
        _ found: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws -> Bool {
        let iterator = block.makeIterator()
        try iterator.seek(lookupKey)
        guard iterator.isValid,
            compareBytes(MoraineFormat.userKey(iterator.key), MoraineFormat.userKey(lookupKey)) == 0
        else { return false }
        try found(iterator.key, iterator.value)
        return true
    }

    func decodeHandle(_ bytes: UnsafeRawBufferPointer) throws -> BlockHandle {
        // A literal, not "…of \(name)": this runs for every lookup, and an interpolation
        // allocates. The file is named when an error is thrown.
        var reader = ByteReader(bytes, what: "index entry")
        let handle: BlockHandle
        do {
            handle = try BlockHandle.decode(&reader)
        } catch {
            throw MoraineError.corruption((error as? MoraineError)?.message ?? "\(error)", file: name)
        }
        guard handle.offset <= fileSizeBytes, handle.size <= fileSizeBytes - handle.offset else {
            throw MoraineError.corruption("block handle out of bounds in index", file: name)
        }
        return handle
    }

    /// An iterator over every entry.
    /// - Parameter readahead: how sequential block loads are batched; nil reads block by block.
    public func makeIterator(fillCache: Bool = true, readahead: Readahead? = nil) -> TableIterator {
        TableIterator(table: self, fillCache: fillCache, readahead: readahead)
    }
}

/// A two-level iterator: the pinned index block picks data blocks, loaded as the cursor moves.
///
/// The data block's iterator is made once and moved from block to block, and it is a `let`: a
/// call through a `let` of a class borrows the reference, where an optional `var` was retained
/// and released around every step (two atomic operations per entry of a scan).
public final class TableIterator: InternalIterator {
    private let table: TableReader
    private let index: BlockIterator
    /// Iterates the current data block while `dataLoaded`; before the first load it sits,
    /// unpositioned, on the index block.
    private let data: BlockIterator
    @exclusivity(unchecked) private var dataLoaded = false
    @exclusivity(unchecked) private var dataOffset: UInt64 = .max
    private let fillCache: Bool
    /// This iterator's readahead, if any.
    public let readahead: Readahead?

    init(table: TableReader, fillCache: Bool, readahead: Readahead?) {
        self.table = table
        self.index = table.indexBlock.makeIterator()
        self.data = table.indexBlock.makeIterator()
        self.fillCache = fillCache
        self.readahead = readahead
    }

    public var isValid: Bool { dataLoaded && data.isValid }
    public var key: UnsafeRawBufferPointer { data.key }
    public var value: UnsafeRawBufferPointer { data.value }
    public var valueOwner: AnyObject? { data.valueOwner }

    /// Loads the block the index is on. A load that throws leaves the iterator invalid (not on
    /// the previous block while the index has moved on).
    private func loadDataBlock() throws {
        let wasLoaded = dataLoaded
        dataLoaded = false
        guard index.isValid else {
            release()
            return
        }
        let handle = try table.decodeHandle(index.value)
        if wasLoaded && handle.offset == dataOffset {
            dataLoaded = true
            return
        }
        let block = try table.dataBlock(handle, fillCache: fillCache, readahead: readahead)
        data.reset(to: block)
        dataLoaded = true
        dataOffset = handle.offset
    }

    /// Lets go of the last data block (and, for a mapped table, what keeps the mapping) once the
    /// iterator has run off its table.
    private func release() {
        dataLoaded = false
        dataOffset = .max
        data.reset(to: table.indexBlock)
    }

    /// Whether the current block is used up (or none is loaded while the index has more).
    private var needsAnotherBlock: Bool { dataLoaded ? !data.isValid : index.isValid }

    private func skipEmptyForward() throws {
        while needsAnotherBlock {
            guard index.isValid else {
                release()
                return
            }
            try index.next()
            try loadDataBlock()
            if dataLoaded { try data.seekToFirst() }
        }
    }

    private func skipEmptyBackward() throws {
        while needsAnotherBlock {
            guard index.isValid else {
                release()
                return
            }
            try index.prev()
            try loadDataBlock()
            if dataLoaded { try data.seekToLast() }
        }
    }

    public func seekToFirst() throws {
        try index.seekToFirst()
        try loadDataBlock()
        if dataLoaded { try data.seekToFirst() }
        try skipEmptyForward()
    }

    public func seekToLast() throws {
        try index.seekToLast()
        try loadDataBlock()
        if dataLoaded { try data.seekToLast() }
        try skipEmptyBackward()
    }

    public func seek(_ target: UnsafeRawBufferPointer) throws {
        if let entry = try table.firstIndexEntry(atOrAfter: target) {
            try index.seek(toRestart: entry)
        } else {
            try index.seek(target)
        }
        try loadDataBlock()
        if dataLoaded { try data.seek(target) }
        try skipEmptyForward()
    }

    public func next() throws {
        precondition(dataLoaded, "next() on an invalid table iterator")
        try data.next()
        try skipEmptyForward()
    }

    public func prev() throws {
        precondition(dataLoaded, "prev() on an invalid table iterator")
        try data.prev()
        try skipEmptyBackward()
    }
}
