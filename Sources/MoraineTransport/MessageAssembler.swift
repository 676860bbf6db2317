// Joins chunked messages back together and turns checked frames into payloads. A message larger
// than the chunk size travels as frames flagged `more` under one request id, then a last frame
// without it. The assembler bounds the number of messages being joined and each one's size
// before it appends anything.

/// A complete message, as the receiving side of a connection sees it.
struct ReceivedMessage {
    let opcode: UInt8
    let flags: FrameFlags
    let requestID: UInt64
    let payload: Result<Payload, TransportError>
}

/// Reassembles chunks for one connection (one per direction).
struct MessageAssembler {
    let limits: TransportLimits
    private var partial: [UInt64: (opcode: UInt8, bytes: [UInt8])] = [:]
    /// Bytes held in `partial`, bounded by `limits.partialBytesMax`.
    private var partialBytes = 0

    init(limits: TransportLimits) { self.limits = limits }

    /// Takes one checked frame; returns the message it completes, or nil when more chunks follow.
    /// - Throws: `.frameTooLarge` when the joined message would pass the limit, `.malformed`
    ///   for a reference or error frame that is chunked or has the wrong size, `.tooManyInFlight`
    ///   when too many messages are half-joined.
    mutating func add(_ header: FrameHeader, payload: [UInt8]) throws(TransportError) -> ReceivedMessage? {
        let id = header.requestID
        if header.flags.contains(.more) || partial[id] != nil {
            if header.flags.contains(.reference) || header.flags.contains(.error) {
                throw TransportError(.malformed, "request \(id): a reference or error frame cannot be chunked")
            }
            var entry = partial.removeValue(forKey: id) ?? (header.opcode, [])
            partialBytes -= entry.bytes.count
            guard entry.opcode == header.opcode else {
                throw TransportError(.malformed, "request \(id): chunk with opcode \(header.opcode) after \(entry.opcode)")
            }
            guard entry.bytes.count + payload.count <= limits.messageBytesMax else {
                throw TransportError(
                    .frameTooLarge,
                    "request \(id): message passes the limit of \(limits.messageBytesMax) bytes while joining chunks")
            }
            if header.flags.contains(.more) {
                guard partial.count < limits.inFlightMax else {
                    throw TransportError(.tooManyInFlight, "more than \(limits.inFlightMax) chunked messages at once")
                }
                guard partialBytes + entry.bytes.count + payload.count <= limits.partialBytesMax else {
                    throw TransportError(
                        .frameTooLarge,
                        "half-joined messages pass the connection's limit of \(limits.partialBytesMax) bytes")
                }
                entry.bytes.append(contentsOf: payload)
                partialBytes += entry.bytes.count
                partial[id] = entry
                return nil
            }
            entry.bytes.append(contentsOf: payload)
            return ReceivedMessage(opcode: header.opcode, flags: header.flags, requestID: id, payload: .success(.bytes(entry.bytes)))
        }
        return try Self.decode(header, payload: payload)
    }

    /// A single-frame message's payload: bytes, a reference, or an error.
    static func decode(_ header: FrameHeader, payload: [UInt8]) throws(TransportError) -> ReceivedMessage {
        let result: Result<Payload, TransportError>
        if header.flags.contains(.error) {
            result = .failure(payload.withUnsafeBytes { TransportError(wirePayload: $0) })
        } else if header.flags.contains(.reference) {
            guard let reference = payload.withUnsafeBytes({ RegionReference(bytes: $0) }) else {
                throw TransportError(.malformed, "reference payload of \(payload.count) bytes, expected 32")
            }
            result = .success(.reference(reference))
        } else {
            result = .success(.bytes(payload))
        }
        return ReceivedMessage(opcode: header.opcode, flags: header.flags, requestID: header.requestID, payload: result)
    }
}

/// How a payload is cut into frames: (flags, byte range) per frame.
func framePlan(_ payload: Result<Payload, TransportError>, chunkBytes: Int) -> (FrameFlags, [UInt8]) {
    switch payload {
    case .success(.bytes(let bytes)): return ([], bytes)
    case .success(.reference(let reference)): return (.reference, reference.bytes)
    case .failure(let error): return (.error, error.wirePayload)
    }
}

/// Calls `body` with each frame's flags and payload slice: one frame, or chunks flagged `more`.
@inline(__always)
func forEachChunk(
    _ bytes: UnsafeRawBufferPointer, flags: FrameFlags, chunkBytes: Int,
    _ body: (FrameFlags, UnsafeRawBufferPointer) throws(TransportError) -> Void
) throws(TransportError) {
    if bytes.count <= chunkBytes || !flags.isEmpty && !flags.isSubset(of: .response) {
        try body(flags, bytes)
        return
    }
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + chunkBytes)
        let last = end == bytes.count
        try body(last ? flags : flags.union(.more), UnsafeRawBufferPointer(rebasing: bytes[offset..<end]))
        offset = end
    }
}

/// `Array.withUnsafeBytes` keeps the error type (the standard one is `rethrows`, which loses it).
@inline(__always)
func withBytes<R>(
    _ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(TransportError) -> R
) throws(TransportError) -> R {
    let result = array.withUnsafeBytes { raw in Result { () throws(TransportError) -> R in try body(raw) } }
    return try result.get()
}

/// `withUnsafeBytes(of:)` for a 24-byte header scratch, keeping the error type.
@inline(__always)
func withBytes<T, R>(
    of value: inout T, _ body: (UnsafeRawBufferPointer) throws(TransportError) -> R
) throws(TransportError) -> R {
    let result = withUnsafeBytes(of: &value) { raw in Result { () throws(TransportError) -> R in try body(raw) } }
    return try result.get()
}
