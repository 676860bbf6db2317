// The byte codec every role message uses: fixed-width little-endian integers, and strings and
// byte strings prefixed with their length. A reader checks every length against what is left
// before it reads, and a message must use all of its bytes, so a truncated, padded or lying
// payload is `malformed` naming the field, never a trap or an over-read.
//
// Value types; no shared state.
import MoraineTransport

/// Appends fields to a message payload.
public struct WireWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }

    /// A string of at most `WireReader.stringBytesMax` UTF-8 bytes (u16 length first).
    /// - Precondition: the string fits; callers check names before they encode them.
    public mutating func string(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            precondition(utf8.count <= WireReader.stringBytesMax, "a wire string of \(utf8.count) bytes")
            u16(UInt16(utf8.count))
            bytes.append(contentsOf: UnsafeRawBufferPointer(utf8))
        }
    }

    /// A byte string (u32 length first).
    public mutating func data(_ value: UnsafeRawBufferPointer) {
        u32(UInt32(value.count))
        bytes.append(contentsOf: value)
    }

    public mutating func data(_ value: [UInt8]) { value.withUnsafeBytes { data($0) } }

    /// A byte string that may be absent: a presence flag, then the bytes.
    public mutating func optionalData(_ value: [UInt8]?) {
        bool(value != nil)
        if let value { data(value) }
    }
}

/// Reads fields from a received payload, checking each against what is left.
public struct WireReader {
    /// The longest string a message may carry.
    public static let stringBytesMax = 4096

    private let bytes: [UInt8]
    private var offset = 0
    /// What is being decoded, for error messages ("storage append request").
    private let what: String

    public init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    private mutating func take(_ count: Int, _ field: String) throws(TransportError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= bytes.count - offset else {
            throw TransportError(
                .malformed, "\(what): field \(field) needs \(count) bytes, \(bytes.count - offset) are left")
        }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    private mutating func integer<T: FixedWidthInteger>(_ type: T.Type, _ field: String) throws(TransportError) -> T {
        let slice = try take(MemoryLayout<T>.size, field)
        var value: T = 0
        for (shift, byte) in slice.enumerated() { value |= T(byte) << (8 * shift) }
        return value
    }

    public mutating func u8(_ field: String) throws(TransportError) -> UInt8 { try integer(UInt8.self, field) }
    public mutating func u16(_ field: String) throws(TransportError) -> UInt16 { try integer(UInt16.self, field) }
    public mutating func u32(_ field: String) throws(TransportError) -> UInt32 { try integer(UInt32.self, field) }
    public mutating func u64(_ field: String) throws(TransportError) -> UInt64 { try integer(UInt64.self, field) }

    public mutating func bool(_ field: String) throws(TransportError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let other: throw TransportError(.malformed, "\(what): field \(field) is \(other), not a boolean")
        }
    }

    public mutating func string(_ field: String) throws(TransportError) -> String {
        let count = Int(try u16(field))
        guard count <= Self.stringBytesMax else {
            throw TransportError(.malformed, "\(what): field \(field) of \(count) bytes passes \(Self.stringBytesMax)")
        }
        let slice = try take(count, field)
        guard let text = String(validating: slice, as: UTF8.self) else {
            throw TransportError(.malformed, "\(what): field \(field) is not UTF-8")
        }
        return text
    }

    public mutating func data(_ field: String) throws(TransportError) -> [UInt8] {
        Array(try take(Int(try u32(field)), field))
    }

    /// A byte string written by `WireWriter.optionalData`.
    public mutating func optionalData(_ field: String) throws(TransportError) -> [UInt8]? {
        try bool("has \(field)") ? try data(field) : nil
    }

    /// Bytes not read yet.
    public var remainingCount: Int { bytes.count - offset }

    /// Throws unless every byte was read.
    public func finish() throws(TransportError) {
        guard offset == bytes.count else {
            throw TransportError(.malformed, "\(what): \(bytes.count - offset) bytes after the last field")
        }
    }
}

/// A message with a wire form.
public protocol WireMessage: Sendable {
    /// Names the message in errors ("storage append request").
    static var wireName: String { get }
    /// About how many bytes `encode` writes, to size the buffer once (64 unless said).
    var encodedByteCountHint: Int { get }
    func encode(into writer: inout WireWriter)
    init(from reader: inout WireReader) throws(TransportError)
}

extension WireMessage {
    /// The message's bytes.
    public var encodedByteCountHint: Int { 64 }

    public func encoded() -> [UInt8] {
        var writer = WireWriter(capacity: encodedByteCountHint)
        encode(into: &writer)
        return writer.bytes
    }

    /// Decodes a whole payload.
    /// - Throws: `.malformed` naming the field at fault, or trailing bytes.
    public static func decode(_ bytes: [UInt8]) throws(TransportError) -> Self {
        var reader = WireReader(bytes, what: wireName)
        let message = try Self(from: &reader)
        try reader.finish()
        return message
    }

    /// Decodes the bytes of a request or reply payload (a reference is `malformed` here).
    public static func decode(_ payload: Payload) throws(TransportError) -> Self {
        guard case .bytes(let bytes) = payload else {
            throw TransportError(.malformed, "\(wireName): a reference where bytes were expected")
        }
        return try decode(bytes)
    }
}
