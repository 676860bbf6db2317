// A search structure over a table's index block, built once when the table opens: for each
// index entry, 8 bytes of its separator's user key (after the prefix every separator in the table
// shares) as a big-endian number, and the block handle the entry points to. A lookup
// binary-searches that dense array instead of the index block itself, where each step reads
// the restart array and then jumps to the entry: two cache misses per step once the table is
// larger than the CPU cache (a point lookup spent a quarter of its time there). Entries whose
// 8 bytes tie with the target's are settled on the full internal key from the index block.
// Immutable; shared by all threads.
import MoraineSystem

struct IndexSearch: @unchecked Sendable {
    /// The user-key prefix every separator shares.
    private let commonPrefix: [UInt8]
    private let prefixes: UnsafeMutableBufferPointer<UInt64>
    private let offsets: UnsafeMutableBufferPointer<UInt64>
    private let sizes: UnsafeMutableBufferPointer<UInt64>

    var count: Int { prefixes.count }

    /// Reads every entry of `index` (a block with one entry per restart point, as TableBuilder
    /// writes index blocks). Returns nil for any other layout; lookups then search the block.
    /// - Throws: `.corruption` for an entry that does not decode or a handle past `fileSize`.
    static func build(index: Block, fileSize: UInt64, name: String) throws -> IndexSearch? {
        let iterator = index.makeIterator()
        // Sorted keys: what the first and last share, every key between shares.
        try iterator.seekToLast()
        guard iterator.isValid else { return nil }
        let last = Array(userKey(iterator.key))
        try iterator.seekToFirst()
        let first = userKey(iterator.key)
        let common = Array(first.prefix(zip(first, last).prefix { $0 == $1 }.count))
        let search = IndexSearch(commonPrefix: common, capacity: index.restartCount)
        var count = 0
        do {
            while iterator.isValid {
                guard count < index.restartCount else {
                    search.deallocate()
                    return nil
                }
                var reader = ByteReader(iterator.value, what: "index entry")
                let handle = try BlockHandle.decode(&reader)
                guard handle.offset <= fileSize, handle.size <= fileSize - handle.offset else {
                    throw MoraineError(.corruption, "block handle out of bounds in index")
                }
                let user = userKey(iterator.key)
                guard user.count >= common.count else { throw MoraineError(.corruption, "index keys out of order") }
                search.prefixes[count] = Self.prefix(UnsafeRawBufferPointer(rebasing: user[common.count...]))
                search.offsets[count] = handle.offset
                search.sizes[count] = handle.size
                count += 1
                try iterator.next()
            }
        } catch {
            search.deallocate()
            throw MoraineError.corruption((error as? MoraineError)?.message ?? "\(error)", file: name)
        }
        guard count == index.restartCount else {
            search.deallocate()
            return nil
        }
        return search
    }

    private init(commonPrefix: [UInt8], capacity: Int) {
        self.commonPrefix = commonPrefix
        prefixes = .allocate(capacity: capacity)
        offsets = .allocate(capacity: capacity)
        sizes = .allocate(capacity: capacity)
    }

    /// Frees the arrays (TableReader's deinit).
    func deallocate() {
        prefixes.deallocate()
        offsets.deallocate()
        sizes.deallocate()
    }

    /// The first 8 bytes as a big-endian number, zero-padded: a ≤ b bytewise implies
    /// prefix(a) ≤ prefix(b).
    @inline(__always)
    private static func prefix(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        if bytes.count >= 8 { return UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)) }
        var value: UInt64 = 0
        for i in 0..<8 { value = value << 8 | UInt64(i < bytes.count ? bytes[i] : 0) }
        return value
    }

    func handle(_ entry: Int) -> BlockHandle { BlockHandle(offset: offsets[entry], size: sizes[entry]) }

    /// The first entry whose separator is at or after `target` (an internal key), or `count`.
    /// `indexKey(i)` returns entry i's internal key, for ties.
    @inline(__always)
    func firstEntry(
        atOrAfter target: UnsafeRawBufferPointer, indexKey: (Int) throws -> UnsafeRawBufferPointer
    ) throws -> Int {
        let user = userKey(target)
        let shared = min(user.count, commonPrefix.count)
        let order = commonPrefix.withUnsafeBytes {
            compareBytes(UnsafeRawBufferPointer(rebasing: user[0..<shared]), UnsafeRawBufferPointer(rebasing: $0[0..<shared]))
        }
        if order < 0 || (order == 0 && user.count < commonPrefix.count) { return 0 }
        if order > 0 { return count }
        let wanted = Self.prefix(UnsafeRawBufferPointer(rebasing: user[shared...]))
        // [low, high): the entries whose prefix equals the target's.
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if prefixes[mid] < wanted { low = mid + 1 } else { high = mid }
        }
        var end = count
        high = low
        while high < end {
            let mid = (high + end) / 2
            if prefixes[mid] <= wanted { high = mid + 1 } else { end = mid }
        }
        while low < high {
            let mid = (low + high) / 2
            if compareInternalKeys(try indexKey(mid), target) < 0 { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
