// A WriteBatch is an ordered list of puts and deletes applied atomically, and its encoding is
// the WAL record payload: an 8-byte starting sequence, a 4-byte count, then per operation a type
// byte, a length-prefixed key and (for puts) a length-prefixed value. Value type; not shared.
import MoraineSystem

/// Puts and deletes applied atomically, in order.
public struct WriteBatch: Sendable {
    /// The encoded form (header + operations).
    public private(set) var rep: [UInt8]
    /// The longest key and value added, so size limits are checked without a pass over the batch.
    public private(set) var maxKeyBytes = 0
    public private(set) var maxValueBytes = 0

    static let headerBytes = 12

    public init() {
        self.init(reservingCapacity: 0)
    }

    /// An empty batch with room for `capacityBytes` of operations.
    public init(reservingCapacity capacityBytes: Int) {
        // An empty array grown in place: `reserveCapacity` and `append` are specialized here,
        // where `Array(unsafeUninitializedCapacity:)` and `Array(repeating:count:)` call the
        // standard library's unspecialized allocation, which looks up the array's generic
        // metadata at run time (about 500 instructions a put, callgrind of fillrandom).
        var rep: [UInt8] = []
        rep.reserveCapacity(Self.headerBytes + max(capacityBytes, 0))
        rep.append(contentsOf: Self.zeroHeader)
        self.rep = rep
    }

    static let zeroHeader: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    /// Wraps an encoded batch read back from a WAL.
    /// - Throws: `.corruption` when the encoding does not parse.
    public init(decoding rep: [UInt8], origin: String) throws {
        guard rep.count >= Self.headerBytes else {
            throw MoraineError(.corruption, "write batch of \(rep.count) bytes is too short in \(origin)")
        }
        self.rep = rep
        var counted = 0
        var longestKey = 0
        var longestValue = 0
        try forEach(origin: origin) { _, key, value in
            counted += 1
            longestKey = max(longestKey, key.count)
            longestValue = max(longestValue, value.count)
        }
        maxKeyBytes = longestKey
        maxValueBytes = longestValue
        guard counted == count else {
            throw MoraineError(
                .corruption, "write batch holds \(counted) operations, header says \(count) in \(origin)")
        }
    }

    /// Number of operations.
    public var count: Int { rep.withUnsafeBytes { Int(loadFixed32($0, 8)) } }
    public var isEmpty: Bool { count == 0 }

    /// Bytes of the encoding.
    public var sizeBytes: Int { rep.count }

    /// The sequence number of the first operation (assigned at write time).
    public var sequence: SequenceNumber {
        get { rep.withUnsafeBytes { loadFixed64($0, 0) } }
        set { rep.withUnsafeMutableBytes { $0.storeBytes(of: newValue.littleEndian, toByteOffset: 0, as: UInt64.self) } }
    }

    private mutating func setCount(_ n: Int) {
        rep.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(n).littleEndian, toByteOffset: 8, as: UInt32.self) }
    }

    public mutating func put(_ key: [UInt8], _ value: [UInt8]) {
        setCount(count + 1)
        maxKeyBytes = max(maxKeyBytes, key.count)
        maxValueBytes = max(maxValueBytes, value.count)
        rep.append(ValueType.value.rawValue)
        rep.appendLengthPrefixed(key)
        rep.appendLengthPrefixed(value)
    }

    /// Adds a put from raw bytes (no intermediate arrays).
    public mutating func put(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        setCount(count + 1)
        maxKeyBytes = max(maxKeyBytes, key.count)
        maxValueBytes = max(maxValueBytes, value.count)
        rep.reserveCapacity(rep.count + key.count + value.count + 11)
        rep.append(ValueType.value.rawValue)
        rep.appendLengthPrefixed(key)
        rep.appendLengthPrefixed(value)
    }

    public mutating func delete(_ key: [UInt8]) {
        setCount(count + 1)
        maxKeyBytes = max(maxKeyBytes, key.count)
        rep.append(ValueType.deletion.rawValue)
        rep.appendLengthPrefixed(key)
    }

    public mutating func clear() { self = WriteBatch() }

    /// Appends another batch's operations.
    public mutating func append(_ other: WriteBatch) {
        setCount(count + other.count)
        maxKeyBytes = max(maxKeyBytes, other.maxKeyBytes)
        maxValueBytes = max(maxValueBytes, other.maxValueBytes)
        rep.append(contentsOf: other.rep[Self.headerBytes...])
    }

    /// Visits each operation in order: (type, key, value — empty for deletes).
    public func forEach(
        origin: String = "write batch",
        _ body: (ValueType, UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        try rep.withUnsafeBytes { raw in
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: raw[Self.headerBytes...]), what: origin)
            while !reader.isAtEnd {
                let typeByte = try reader.byte()
                guard let type = ValueType(rawValue: typeByte) else {
                    throw MoraineError(.corruption, "unknown operation type \(typeByte) in \(origin)")
                }
                let key = try reader.bytes(try reader.varintInt())
                var value = UnsafeRawBufferPointer(start: nil, count: 0)
                if type == .value { value = try reader.bytes(try reader.varintInt()) }
                try body(type, key, value)
            }
        }
    }
}
