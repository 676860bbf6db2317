// A parsed, immutable block in owned memory, and the iterator over it. Entries are decoded in
// place with bounds checks: damaged bytes throw `.corruption` and never read out of bounds.
// A Block is immutable after init and shared across threads (the block cache hands it out);
// each BlockIterator belongs to one thread.
import MoraineSystem

/// Where a block came from, for error messages. The message is built only when one is needed:
/// building it for every block read (string interpolation, an allocation) cost about 3% of a
/// point lookup.
public struct BlockOrigin: Sendable, CustomStringConvertible {
    /// What the block is ("data block"); a literal, so storing it allocates nothing.
    public let what: String
    public let offset: UInt64?
    public let file: String

    public init(_ what: String, offset: UInt64? = nil, file: String = "") {
        self.what = what
        self.offset = offset
        self.file = file
    }

    public var description: String {
        let place = offset.map { " at offset \($0)" } ?? ""
        return file.isEmpty ? what + place : "\(what)\(place) of \(file)"
    }
}

/// The decoded contents of one block (after decompression and checksum verification).
public final class Block: @unchecked Sendable {
    /// The block contents: owned, or borrowed from `owner` (a mapped file).
    public let bytes: UnsafeRawBufferPointer
    let restartsOffset: Int
    let restartCount: Int
    /// Where the block came from, for error messages.
    public let origin: BlockOrigin
    /// What keeps borrowed bytes alive (nil: the block owns them).
    private let owner: AnyObject?

    private init(bytes: UnsafeRawBufferPointer, owner: AnyObject?, origin: BlockOrigin) throws {
        self.bytes = bytes
        self.owner = owner
        self.origin = origin
        guard bytes.count >= 4 else {
            throw MoraineError(.corruption, "block too short (\(bytes.count) bytes) in \(origin)")
        }
        let count = Int(loadFixed32(bytes, bytes.count - 4))
        let maxRestarts = (bytes.count - 4) / 4
        guard count >= 1, count <= maxRestarts else {
            throw MoraineError(.corruption, "bad restart count \(count) in block in \(origin)")
        }
        restartCount = count
        restartsOffset = bytes.count - 4 - 4 * count
    }

    /// Takes ownership of `owned` (allocated with `UnsafeMutableRawBufferPointer.allocate`).
    /// - Throws: `.corruption` when the restart array does not fit (`owned` is freed).
    public convenience init(taking owned: UnsafeMutableRawBufferPointer, origin: BlockOrigin) throws {
        do {
            try self.init(bytes: UnsafeRawBufferPointer(owned), owner: nil, origin: origin)
        } catch {
            owned.deallocate()
            throw error
        }
    }

    /// Reads `bytes` in place, keeping `owner` (a mapped file) alive as long as the block lives.
    /// - Throws: `.corruption` when the restart array does not fit.
    public convenience init(borrowing bytes: UnsafeRawBufferPointer, owner: AnyObject, origin: BlockOrigin) throws {
        try self.init(bytes: bytes, owner: owner, origin: origin)
    }

    /// Takes ownership of `owned`; `origin` describes it in error messages.
    public convenience init(taking owned: UnsafeMutableRawBufferPointer, origin: String) throws {
        try self.init(taking: owned, origin: BlockOrigin(origin))
    }

    /// Copies `contents` into a new block.
    public convenience init(copying contents: [UInt8], origin: String) throws {
        let owned = UnsafeMutableRawBufferPointer.allocate(byteCount: max(contents.count, 1), alignment: 8)
        contents.withUnsafeBytes { owned.copyMemory(from: $0) }
        try self.init(taking: UnsafeMutableRawBufferPointer(rebasing: owned[0..<contents.count]), origin: BlockOrigin(origin))
    }

    deinit {
        if owner == nil { UnsafeMutableRawBufferPointer(mutating: bytes).deallocate() }
    }

    /// Bytes this block holds (for the cache's budget).
    public var chargeBytes: Int { bytes.count + 64 }

    func restartPoint(_ index: Int) -> Int { Int(loadFixed32(bytes, restartsOffset + 4 * index)) }

    /// The key of the entry at restart point `index` (stored whole: nothing shared).
    /// - Throws: `.corruption` when the entry does not decode.
    @inline(__always)
    func restartKey(_ index: Int) throws -> UnsafeRawBufferPointer {
        var p = restartPoint(index)
        let limit = UnsafeRawBufferPointer(rebasing: bytes[0..<restartsOffset])
        guard p < restartsOffset, let shared = decodeVarint(limit, &p), let nonShared = decodeVarint(limit, &p),
            decodeVarint(limit, &p) != nil, shared == 0,
            nonShared <= UInt64(restartsOffset - p), nonShared >= UInt64(internalKeyTagBytes)
        else {
            throw MoraineError(.corruption, "bad restart entry \(index) in a block in \(origin)")
        }
        return UnsafeRawBufferPointer(rebasing: bytes[p..<(p + Int(nonShared))])
    }

    public func makeIterator() -> BlockIterator { BlockIterator(self) }
}

/// A cursor over one block's entries, forward and backward.
///
/// Its mutable fields are `@exclusivity(unchecked)`: an iterator belongs to one thread and never
/// hands out references to them, and the runtime's dynamic checks (each `&field` passed inout
/// begins and ends an access) cost about 8% of a point lookup.
public final class BlockIterator: InternalIterator {
    // The block and its layout; replaced by `reset(to:)`, which keeps the buffers.
    @exclusivity(unchecked) private var block: Block
    @exclusivity(unchecked) private var data: UnsafeRawBufferPointer
    @exclusivity(unchecked) private var restartsOffset: Int
    @exclusivity(unchecked) private var restartCount: Int
    @exclusivity(unchecked) private var currentOffset: Int
    @exclusivity(unchecked) private var nextOffset: Int
    @exclusivity(unchecked) private var restartIndex: Int
    @exclusivity(unchecked) private var keyBuffer = KeyBuffer()
    @exclusivity(unchecked) private var valueRange: Range<Int> = 0..<0

    /// One decoded entry of the restart run cached for backward steps (RocksDB's block
    /// iterator keeps the same cache).
    private struct RunEntry {
        let keyStart: Int
        let keyCount: Int
        let value: Range<Int>
        let offset: Int
        let next: Int
    }
    @exclusivity(unchecked) private var runKeys: [UInt8] = []
    @exclusivity(unchecked) private var runEntries: [RunEntry] = []
    /// The current entry's index in `runEntries` while walking backward; -1 otherwise.
    @exclusivity(unchecked) private var runPosition = -1

    init(_ block: Block) {
        self.block = block
        self.data = block.bytes
        self.restartsOffset = block.restartsOffset
        self.restartCount = block.restartCount
        self.currentOffset = block.restartsOffset
        self.nextOffset = block.restartsOffset
        self.restartIndex = block.restartCount
    }

    /// Moves the iterator to another block, unpositioned, keeping its buffers (a table
    /// iterator steps through thousands of blocks; a new iterator for each cost two to four
    /// allocations).
    public func reset(to newBlock: Block) {
        block = newBlock
        data = newBlock.bytes
        restartsOffset = newBlock.restartsOffset
        restartCount = newBlock.restartCount
        currentOffset = restartsOffset
        nextOffset = restartsOffset
        restartIndex = restartCount
        runPosition = -1
    }

    @inline(__always) private func restartPoint(_ index: Int) -> Int {
        Int(loadFixed32(data, restartsOffset + 4 * index))
    }

    public var isValid: Bool { currentOffset < restartsOffset }
    public var key: UnsafeRawBufferPointer { keyBuffer.bytes }
    public var value: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: data[valueRange]) }
    public var valueOwner: AnyObject? { block }

    private func corrupt(_ what: String) -> MoraineError {
        currentOffset = restartsOffset
        return MoraineError(.corruption, "\(what) at offset \(nextOffset) of a block in \(block.origin)")
    }

    /// Decodes the entry at `nextOffset` into key and value; returns false at the end.
    private func parseNext() throws -> Bool {
        currentOffset = nextOffset
        if currentOffset >= restartsOffset {
            currentOffset = restartsOffset
            return false
        }
        var p = currentOffset
        let limit = UnsafeRawBufferPointer(rebasing: data[0..<restartsOffset])
        guard let shared = decodeVarint(limit, &p), let nonShared = decodeVarint(limit, &p),
            let valueLength = decodeVarint(limit, &p)
        else { throw corrupt("bad entry header") }
        guard shared <= UInt64(keyBuffer.count),
            nonShared <= UInt64(restartsOffset - p),
            valueLength <= UInt64(restartsOffset - p) - nonShared
        else { throw corrupt("entry out of bounds") }
        let keyEnd = p + Int(nonShared)
        keyBuffer.set(prefix: Int(shared), suffix: UnsafeRawBufferPointer(rebasing: data[p..<keyEnd]))
        valueRange = keyEnd..<(keyEnd + Int(valueLength))
        nextOffset = valueRange.upperBound
        while restartIndex + 1 < restartCount && restartPoint(restartIndex + 1) < currentOffset {
            restartIndex += 1
        }
        // Every block holds internal keys; a shorter key would break the comparator.
        if keyBuffer.count < internalKeyTagBytes { throw corrupt("key shorter than its tag") }
        return true
    }

    private func seekToRestart(_ index: Int) throws {
        keyBuffer.clear()
        restartIndex = index
        let offset = restartPoint(index)
        guard offset <= restartsOffset else { throw corrupt("restart point out of bounds") }
        nextOffset = offset
    }

    /// Positions at the entry at restart point `index` (in an index block, entry `index`);
    /// `index == restartCount` leaves the iterator invalid.
    public func seek(toRestart index: Int) throws {
        runPosition = -1
        guard index < restartCount else {
            currentOffset = restartsOffset
            return
        }
        try seekToRestart(index)
        _ = try parseNext()
    }

    public func seekToFirst() throws {
        runPosition = -1
        try seekToRestart(0)
        _ = try parseNext()
    }

    public func seekToLast() throws {
        runPosition = -1
        try seekToRestart(restartCount - 1)
        while try parseNext() && nextOffset < restartsOffset {}
    }

    public func next() throws {
        precondition(isValid)
        runPosition = -1
        _ = try parseNext()
    }

    public func prev() throws {
        precondition(isValid)
        if runPosition > 0 {
            runPosition -= 1
            restoreRunEntry(runPosition)
            return
        }
        let original = currentOffset
        while restartPoint(restartIndex) >= original {
            if restartIndex == 0 {
                currentOffset = restartsOffset
                runPosition = -1
                return
            }
            restartIndex -= 1
        }
        // Decode the restart run before `original` once, keeping every entry, so the next
        // prev() calls in this run step back through the cache instead of re-parsing it.
        try seekToRestart(restartIndex)
        runKeys.removeAll(keepingCapacity: true)
        runEntries.removeAll(keepingCapacity: true)
        while try parseNext() {
            runEntries.append(
                RunEntry(keyStart: runKeys.count, keyCount: keyBuffer.count, value: valueRange, offset: currentOffset, next: nextOffset))
            runKeys.append(contentsOf: keyBuffer.bytes)
            if nextOffset >= original { break }
        }
        runPosition = runEntries.count - 1
    }

    private func restoreRunEntry(_ index: Int) {
        let entry = runEntries[index]
        runKeys.withUnsafeBytes { keys in
            keyBuffer.set(UnsafeRawBufferPointer(rebasing: keys[entry.keyStart..<(entry.keyStart + entry.keyCount)]))
        }
        valueRange = entry.value
        currentOffset = entry.offset
        nextOffset = entry.next
    }

    /// Seeks to the first entry at or after `target` under `compare`.
    public func seek(_ target: UnsafeRawBufferPointer) throws {
        try seek(target, compare: compareInternalKeys)
    }

    /// Seeks with an explicit ordering (index blocks of user keys use bytewise order).
    public func seek(
        _ target: UnsafeRawBufferPointer,
        compare: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Int
    ) throws {
        runPosition = -1
        let block = self.block
        var low = 0
        var high = restartCount - 1
        while low < high {
            let mid = (low + high + 1) / 2
            let midKey: UnsafeRawBufferPointer
            do {
                midKey = try block.restartKey(mid)
            } catch {
                throw corrupt("bad restart entry")
            }
            if compare(midKey, target) < 0 { low = mid } else { high = mid - 1 }
        }
        try seekToRestart(low)
        while try parseNext() {
            if compare(keyBuffer.bytes, target) >= 0 { return }
        }
    }
}
