// Internal keys: the user key followed by an 8-byte little-endian tag, tag = sequence << 8 | type.
// Order: user key ascending (bytewise), then tag descending, so the newest version of a key
// comes first. This order is shared by the memtable, blocks, tables and compaction.
#if canImport(Glibc)
    import Glibc
#endif

/// What an internal entry records about its user key.
public enum ValueType: UInt8, Sendable {
    case deletion = 0
    case value = 1
    /// The type used in lookup keys: sorts before every entry of the same sequence.
    public static let forSeek: ValueType = .value
}

/// Sequence numbers are 56 bits.
public typealias SequenceNumber = UInt64

/// The largest valid sequence number.
public let maxSequenceNumber: SequenceNumber = (1 << 56) - 1

/// Bytes of the tag that ends every internal key.
public let internalKeyTagBytes = 8

@inlinable
public func packTag(_ sequence: SequenceNumber, _ type: ValueType) -> UInt64 {
    (sequence << 8) | UInt64(type.rawValue)
}

/// Bytewise three-way comparison (memcmp order, then length). Short keys, the common case, are
/// compared 8 bytes at a time in registers; long ones go to memcmp.
@inlinable @inline(__always)
public func compareBytes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
    let n = Swift.min(a.count, b.count)
    if n > 64 {
        let r = memcmp(a.baseAddress!, b.baseAddress!, n)
        if r != 0 { return Int(r) }
        return a.count - b.count
    }
    var i = 0
    while i + 8 <= n {
        let x = UInt64(bigEndian: a.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        let y = UInt64(bigEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        if x != y { return x < y ? -1 : 1 }
        i += 8
    }
    while i < n {
        let x = a[i]
        let y = b[i]
        if x != y { return Int(x) - Int(y) }
        i += 1
    }
    return a.count - b.count
}

/// The user-key part of an internal key.
@inlinable @inline(__always)
public func userKey(_ internalKey: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: internalKey[0..<(internalKey.count - internalKeyTagBytes)])
}

/// The tag of an internal key.
@inlinable @inline(__always)
public func tag(_ internalKey: UnsafeRawBufferPointer) -> UInt64 {
    loadFixed64(internalKey, internalKey.count - internalKeyTagBytes)
}

/// The sequence number of an internal key.
@inlinable @inline(__always)
public func sequence(_ internalKey: UnsafeRawBufferPointer) -> SequenceNumber {
    tag(internalKey) >> 8
}

/// The value type of an internal key, or nil for an unknown type byte.
@inlinable @inline(__always)
public func valueType(_ internalKey: UnsafeRawBufferPointer) -> ValueType? {
    ValueType(rawValue: UInt8(truncatingIfNeeded: tag(internalKey)))
}

/// Three-way comparison of internal keys in the order described above.
@inlinable @inline(__always)
public func compareInternalKeys(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
    let r = compareBytes(userKey(a), userKey(b))
    if r != 0 { return r }
    let ta = tag(a)
    let tb = tag(b)
    return ta > tb ? -1 : (ta < tb ? 1 : 0)
}

/// Builds an internal key.
@inlinable
public func makeInternalKey(
    _ user: UnsafeRawBufferPointer, _ sequence: SequenceNumber, _ type: ValueType
) -> [UInt8] {
    var key = [UInt8]()
    key.reserveCapacity(user.count + internalKeyTagBytes)
    key.append(contentsOf: user)
    key.appendFixed64(packTag(sequence, type))
    return key
}

/// Builds an internal key from an array user key.
@inlinable
public func makeInternalKey(_ user: [UInt8], _ sequence: SequenceNumber, _ type: ValueType)
    -> [UInt8]
{
    user.withUnsafeBytes { makeInternalKey($0, sequence, type) }
}

/// A readable rendering of a key for error messages and dumps: printable ASCII as-is,
/// otherwise hex.
public func describeKey(_ bytes: UnsafeRawBufferPointer) -> String {
    if bytes.allSatisfy({ $0 >= 32 && $0 < 127 }) {
        return "'" + String(decoding: bytes, as: UTF8.self) + "'"
    }
    return "x:" + bytes.map { String($0, radix: 16).leftPadded(2) }.joined()
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
