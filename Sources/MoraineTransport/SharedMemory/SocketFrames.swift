// Frames over the Unix socket that sets up a shared-memory connection. Only the handshake and
// the attach message travel here; once both ends map the rings, the socket carries nothing and
// serves as the liveness signal (its hang-up means the peer is gone).
import MoraineSystem

extension UnixSocket {
    /// Sends one frame, optionally passing a descriptor with it.
    func sendFrame(
        opcode: UInt8, flags: FrameFlags = [], requestID: UInt64 = 0, payload: [UInt8], passing fd: Int32 = -1
    ) throws(TransportError) {
        let frame = payload.withUnsafeBytes {
            FrameHeader.encode(version: ProtocolVersion.maximum, opcode: opcode, flags: flags, requestID: requestID, payload: $0)
        }
        do {
            try frame.withUnsafeBytes { bytes in try send(bytes, passing: fd) }
        } catch let error as MoraineError {
            throw TransportError(.unavailable, "\(path): \(error.message)")
        } catch {
            throw TransportError(.internalError, "\(path): \(error)")
        }
    }

    /// Receives one frame of at most `limit` payload bytes, and a descriptor if one came with it.
    /// - Throws: `.unavailable` when the peer closed or sent nothing in time; `.malformed`,
    ///   `.frameTooLarge` or `.badChecksum` for bad bytes (checked before the payload is read).
    func receiveFrame(limit: Int) throws(TransportError) -> (FrameHeader, [UInt8], Int32) {
        var raw = (UInt64(0), UInt64(0), UInt64(0))
        var fd: Int32 = -1
        do {
            fd = try withUnsafeMutableBytes(of: &raw) { bytes throws(MoraineError) in try receive(exactly: bytes) }
            let header = try withUnsafeBytes(of: &raw) { bytes throws(TransportError) in
                try FrameHeader.parse(bytes, limitBytes: limit)
            }
            var payload = [UInt8](repeating: 0, count: Int(header.payloadByteCount))
            let more = try payload.withUnsafeMutableBytes { bytes throws(MoraineError) in
                bytes.count == 0 ? -1 : try receive(exactly: bytes)
            }
            if more >= 0 {
                if fd >= 0 { closeDescriptor(fd) }
                fd = more
            }
            try withBytes(of: &raw) { headerBytes throws(TransportError) in
                try withBytes(payload) { bytes throws(TransportError) in
                    try header.verify(header: headerBytes.baseAddress!, payload: bytes)
                }
            }
            return (header, payload, fd)
        } catch let error as MoraineError {
            if fd >= 0 { closeDescriptor(fd) }
            throw TransportError(.unavailable, error.message)
        } catch let error as TransportError {
            if fd >= 0 { closeDescriptor(fd) }
            throw error
        } catch {
            if fd >= 0 { closeDescriptor(fd) }
            throw TransportError(.internalError, "\(error)")
        }
    }
}

/// The shared file of one connection: a header page, then the client→server ring, then the
/// server→client ring.
///
///   0  magic u64 "MRNSHM01", ring capacity u64 (data bytes of each ring)
///   4096               request ring  (SharedRing layout)
///   4096 + ring span   response ring
enum SharedConnectionLayout {
    static let magic: UInt64 = 0x3130_4D48_534E_524D
    static let headerBytes = 4096
    static let capacityRange = (64 << 10)...(256 << 20)

    static func ringSpan(_ capacity: Int) -> Int { (SharedRing.footprint(capacity: capacity) + 4095) & ~4095 }
    static func totalBytes(_ capacity: Int) -> Int { headerBytes + 2 * ringSpan(capacity) }

    /// The attach payload: ring capacity u64 (the memfd travels with it).
    static func attachPayload(capacity: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt64(capacity).littleEndian) { Array($0) }
    }

    /// Checks a capacity a peer proposed.
    static func validate(capacity: Int, limits: TransportLimits) throws(TransportError) {
        guard capacityRange.contains(capacity), capacity & (capacity - 1) == 0,
            capacity >= limits.framePayloadBytesMax + FrameHeader.byteCount
        else {
            throw TransportError(
                .invalid,
                "ring capacity \(capacity) must be a power of two in \(capacityRange) and hold a frame of "
                    + "\(limits.framePayloadBytesMax) bytes")
        }
    }

    static func rings(in memory: SharedMemory, capacity: Int) -> (requests: SharedRing, responses: SharedRing) {
        (
            SharedRing(at: memory.base + headerBytes, capacity: capacity),
            SharedRing(at: memory.base + headerBytes + ringSpan(capacity), capacity: capacity)
        )
    }
}

#if canImport(Glibc)
    import Glibc
    func closeDescriptor(_ fd: Int32) { _ = Glibc.close(fd) }
#endif
