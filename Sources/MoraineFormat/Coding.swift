// Little-endian fixed-width and LEB128 varint encodings, shared by every on-disk format.
// Encoders append to [UInt8]; decoders read from raw buffers with bounds checks and throw
// `.corruption` instead of reading past the end. Stateless.
import MoraineSystem

extension Array where Element == UInt8 {
    /// Appends a little-endian UInt32.
    @inlinable
    public mutating func appendFixed32(_ value: UInt32) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Appends a little-endian UInt64.
    @inlinable
    public mutating func appendFixed64(_ value: UInt64) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Appends a LEB128 varint (1–10 bytes).
    @inlinable
    public mutating func appendVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        append(UInt8(v))
    }

    /// Appends a varint length followed by the bytes.
    @inlinable
    public mutating func appendLengthPrefixed(_ bytes: UnsafeRawBufferPointer) {
        appendVarint(UInt64(bytes.count))
        append(contentsOf: bytes)
    }

    /// Appends a varint length followed by the bytes.
    @inlinable
    public mutating func appendLengthPrefixed(_ bytes: [UInt8]) {
        appendVarint(UInt64(bytes.count))
        append(contentsOf: bytes)
    }
}

/// Reads a little-endian UInt32 at `offset`. Precondition: in bounds.
@inlinable @inline(__always)
public func loadFixed32(_ buffer: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
    UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
}

/// Reads a little-endian UInt64 at `offset`. Precondition: in bounds.
@inlinable @inline(__always)
public func loadFixed64(_ buffer: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
    UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
}

/// Decodes a varint at `offset`, advancing it. Returns nil when malformed or out of bounds.
@inlinable
@inline(__always)
public func decodeVarint(_ buffer: UnsafeRawBufferPointer, _ offset: inout Int) -> UInt64? {
    // Most varints in a block (shared and unshared key lengths, small values) are one byte.
    if offset < buffer.count {
        let first = buffer[offset]
        if first < 0x80 {
            offset += 1
            return UInt64(first)
        }
    }
    return decodeLongVarint(buffer, &offset)
}

/// The general case of `decodeVarint`, kept out of line.
@usableFromInline @inline(never)
func decodeLongVarint(_ buffer: UnsafeRawBufferPointer, _ offset: inout Int) -> UInt64? {
    var result: UInt64 = 0
    var shift: UInt64 = 0
    var i = offset
    while i < buffer.count && shift <= 63 {
        let byte = buffer[i]
        i += 1
        result |= UInt64(byte & 0x7f) << shift
        if byte < 0x80 {
            offset = i
            return result
        }
        shift += 7
    }
    return nil
}

/// A bounds-checked cursor over bytes for decoding records; every read throws `.corruption`
/// naming `what` when the input is short or malformed.
public struct ByteReader {
    public let buffer: UnsafeRawBufferPointer
    public var offset: Int
    public let what: String

    public init(_ buffer: UnsafeRawBufferPointer, what: String) {
        self.buffer = buffer
        self.offset = 0
        self.what = what
    }

    public var isAtEnd: Bool { offset >= buffer.count }
    public var remaining: Int { buffer.count - offset }

    public mutating func varint() throws -> UInt64 {
        guard let v = decodeVarint(buffer, &offset) else {
            throw MoraineError(.corruption, "bad varint at offset \(offset) in \(what)")
        }
        return v
    }

    public mutating func varintInt(max: Int = Int(Int32.max)) throws -> Int {
        let v = try varint()
        guard v <= UInt64(max) else {
            throw MoraineError(.corruption, "value \(v) over limit \(max) in \(what)")
        }
        return Int(v)
    }

    public mutating func fixed32() throws -> UInt32 {
        guard remaining >= 4 else { throw short(4) }
        defer { offset += 4 }
        return loadFixed32(buffer, offset)
    }

    public mutating func fixed64() throws -> UInt64 {
        guard remaining >= 8 else { throw short(8) }
        defer { offset += 8 }
        return loadFixed64(buffer, offset)
    }

    public mutating func byte() throws -> UInt8 {
        guard remaining >= 1 else { throw short(1) }
        defer { offset += 1 }
        return buffer[offset]
    }

    public mutating func bytes(_ count: Int) throws -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw short(count) }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + count])
    }

    public mutating func lengthPrefixed() throws -> [UInt8] {
        let count = try varintInt()
        return Array(try bytes(count))
    }

    private func short(_ count: Int) -> MoraineError {
        MoraineError(
            .corruption, "truncated \(what): need \(count) bytes at offset \(offset), have \(remaining)")
    }
}
