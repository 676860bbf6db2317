// The frame: the unit both carriers move. A fixed 24-byte little-endian header, then the
// payload. docs/TRANSPORT.md gives the byte layout; this file is its one implementation.
//
//   0  magic          u32  0x544E524D ("MRNT" in memory order)
//   4  version        u8   protocol version the sender speaks on this connection
//   5  opcode         u8   0x01–0x0F transport control, 0x10–0xFF the roles' requests
//   6  flags          u16  FrameFlags
//   8  request id     u64  chosen by the requester; the response carries it back
//  16  payload bytes  u32  at most the receiver's frame limit, checked before any allocation
//  20  checksum       u32  masked CRC32C over header bytes 0..<20, then the payload
//
// Everything here is a value type with no I/O; both carriers and the fuzz tests share it.
import MoraineSystem

/// Bits of the header's flags field.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The frame answers a request (same request id).
    public static let response = FrameFlags(rawValue: 1 << 0)
    /// The payload is an error: u16 code, then a UTF-8 message.
    public static let error = FrameFlags(rawValue: 1 << 1)
    /// More chunks of the same message follow under the same request id.
    public static let more = FrameFlags(rawValue: 1 << 2)
    /// The payload is a 32-byte `RegionReference`, not the bytes themselves.
    public static let reference = FrameFlags(rawValue: 1 << 3)
    /// A request the sender wants no response to, not even an error (protocol version 2): the
    /// server runs it and answers nothing. On every chunk of a chunked request.
    public static let quiet = FrameFlags(rawValue: 1 << 4)
    /// Every flag this build defines; a frame with any other bit set is malformed.
    public static let known: FrameFlags = [.response, .error, .more, .reference, .quiet]
}

/// Operation codes. Values below `firstApplication` belong to the transport itself.
public enum Opcode {
    /// Client → server: supported versions and a fresh nonce.
    public static let hello: UInt8 = 0x01
    /// Server → client: the chosen version, the server's nonce and its proof of the key.
    public static let challenge: UInt8 = 0x02
    /// Client → server: the client's proof of the key.
    public static let proof: UInt8 = 0x03
    /// Server → client: authentication done; requests may follow.
    public static let welcome: UInt8 = 0x04
    /// Client → server: a liveness check, answered with an empty response.
    public static let ping: UInt8 = 0x05
    /// Client → server: the client will send nothing more (graceful close).
    public static let goodbye: UInt8 = 0x06
    /// The first opcode a role may use.
    public static let firstApplication: UInt8 = 0x10
}

/// The fixed header in front of every payload.
public struct FrameHeader: Sendable, Equatable {
    public static let byteCount = 24
    public static let magic: UInt32 = 0x544E_524D
    public var version: UInt8
    public var opcode: UInt8
    public var flags: FrameFlags
    public var requestID: UInt64
    public var payloadByteCount: UInt32
    public var checksum: UInt32 = 0

    public init(version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64, payloadByteCount: UInt32) {
        self.version = version
        self.opcode = opcode
        self.flags = flags
        self.requestID = requestID
        self.payloadByteCount = payloadByteCount
    }

    /// Writes the header with `checksum` into the first 24 bytes of `target`.
    @inlinable
    public func write(to target: UnsafeMutableRawPointer) {
        target.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        target.storeBytes(of: version, toByteOffset: 4, as: UInt8.self)
        target.storeBytes(of: opcode, toByteOffset: 5, as: UInt8.self)
        target.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 6, as: UInt16.self)
        target.storeBytes(of: requestID.littleEndian, toByteOffset: 8, as: UInt64.self)
        target.storeBytes(of: payloadByteCount.littleEndian, toByteOffset: 16, as: UInt32.self)
        target.storeBytes(of: checksum.littleEndian, toByteOffset: 20, as: UInt32.self)
    }

    /// The checksum a frame with this header and `payload` must carry.
    @inlinable
    public static func checksum(header: UnsafeRawPointer, payload: UnsafeRawBufferPointer) -> UInt32 {
        let crc = CRC32C.extend(0, UnsafeRawBufferPointer(start: header, count: 20))
        return CRC32C.mask(CRC32C.extend(crc, payload))
    }

    /// Parses and checks a header (not yet the checksum, which needs the payload).
    /// - Throws: `TransportError.malformed` for a wrong magic or unknown flag bits,
    ///   `.frameTooLarge` when the payload exceeds `limitBytes`. Nothing is allocated.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limitBytes: Int) throws(TransportError) -> FrameHeader {
        precondition(bytes.count >= byteCount, "a header needs \(byteCount) bytes")
        let magic = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard magic == Self.magic else {
            throw TransportError(.malformed, "bad frame magic 0x\(String(magic, radix: 16))")
        }
        var header = FrameHeader(
            version: bytes[4], opcode: bytes[5],
            flags: FrameFlags(rawValue: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self))),
            requestID: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            payloadByteCount: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        header.checksum = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        guard header.flags.isSubset(of: .known) else {
            throw TransportError(.malformed, "unknown frame flags 0x\(String(header.flags.rawValue, radix: 16))")
        }
        guard Int(header.payloadByteCount) <= limitBytes else {
            throw TransportError(
                .frameTooLarge, "frame payload of \(header.payloadByteCount) bytes exceeds the limit of \(limitBytes)")
        }
        return header
    }

    /// Checks the checksum of a parsed header against its payload.
    /// - Throws: `TransportError.badChecksum`.
    public func verify(header raw: UnsafeRawPointer, payload: UnsafeRawBufferPointer) throws(TransportError) {
        let expected = Self.checksum(header: raw, payload: payload)
        guard expected == checksum else {
            throw TransportError(
                .badChecksum,
                "frame checksum mismatch (opcode 0x\(String(opcode, radix: 16)), request \(requestID), "
                    + "\(payloadByteCount) payload bytes)")
        }
    }
}

extension FrameHeader {
    /// Encodes a whole frame (header with checksum, then payload) into a new array.
    public static func encode(
        version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64, payload: UnsafeRawBufferPointer
    ) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: byteCount + payload.count) { buffer, count in
            let base = UnsafeMutableRawPointer(buffer.baseAddress!)
            encode(
                into: base, version: version, opcode: opcode, flags: flags, requestID: requestID, payload: payload)
            count = byteCount + payload.count
        }
    }

    /// Encodes a whole frame into `target`, which has room for 24 + payload bytes.
    @inlinable
    public static func encode(
        into target: UnsafeMutableRawPointer, version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64,
        payload: UnsafeRawBufferPointer
    ) {
        var header = FrameHeader(
            version: version, opcode: opcode, flags: flags, requestID: requestID,
            payloadByteCount: UInt32(payload.count))
        header.write(to: target)
        if let source = payload.baseAddress, payload.count > 0 {
            (target + byteCount).copyMemory(from: source, byteCount: payload.count)
        }
        header.checksum = checksum(header: target, payload: UnsafeRawBufferPointer(start: target + byteCount, count: payload.count))
        target.storeBytes(of: header.checksum.littleEndian, toByteOffset: 20, as: UInt32.self)
    }
}
