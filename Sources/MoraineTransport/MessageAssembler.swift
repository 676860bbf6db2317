// Joins chunked messages back together and turns checked frames into payloads. A message larger
// than the chunk size travels as frames flagged `more` under one request id, then a last frame
// without it. The assembler bounds the number of messages being joined and each one's size
// before it appends anything, and each half-joined message waits for its next chunk at most
// `chunkTimeoutNanos`; a server's side also counts what it holds against the process's budget.
import MoraineSystem

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
    private var partial: [UInt64: (opcode: UInt8, bytes: [UInt8], lastChunkNanos: Int64)] = [:]
    /// Bytes held in `partial` (bounded by `limits.partialBytesMax`), and their share of the
    /// process's budget, given back when the connection's assembler goes.
    private let held: HeldBytes

    /// - Parameter budget: the budget shared with other connections (a server's side), or nil
    ///   (a client joining the replies it asked for).
    init(limits: TransportLimits, budget: MessageBudget? = nil) {
        self.limits = limits
        held = HeldBytes(budget: budget)
    }

    /// Takes one checked frame; returns the message it completes, or nil when more chunks follow.
    /// - Throws: `.frameTooLarge` when the joined message would pass the limit, `.malformed`
    ///   for a reference or error frame that is chunked or has the wrong size, `.tooManyInFlight`
    ///   when too many messages are half-joined, `.busy` when the process's budget for
    ///   half-joined bytes has no room for the chunk.
    mutating func add(_ header: FrameHeader, payload: [UInt8]) throws(TransportError) -> ReceivedMessage? {
        let id = header.requestID
        if header.flags.contains(.more) || partial[id] != nil {
            if header.flags.contains(.reference) || header.flags.contains(.error) {
                throw TransportError(.malformed, "request \(id): a reference or error frame cannot be chunked")
            }
            var entry = partial.removeValue(forKey: id) ?? (header.opcode, [], 0)
            held.give(entry.bytes.count)
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
                let joined = entry.bytes.count + payload.count
                guard held.bytes + joined <= limits.partialBytesMax else {
                    throw TransportError(
                        .frameTooLarge,
                        "half-joined messages pass the connection's limit of \(limits.partialBytesMax) bytes")
                }
                guard held.take(joined) else {
                    throw TransportError(
                        .busy,
                        "half-joined messages of all connections would pass the process's budget of "
                            + "\(held.budget?.bytesMax ?? 0) bytes")
                }
                entry.bytes.append(contentsOf: payload)
                entry.lastChunkNanos = monotonicNanos()
                partial[id] = entry
                return nil
            }
            entry.bytes.append(contentsOf: payload)
            return ReceivedMessage(opcode: header.opcode, flags: header.flags, requestID: id, payload: .success(.bytes(entry.bytes)))
        }
        return try Self.decode(header, payload: payload)
    }

    /// When the longest-waiting half-joined message must have its next chunk, or nil when none
    /// is half-joined.
    var nextChunkDeadlineNanos: Int64? {
        partial.values.lazy.map(\.lastChunkNanos).min().map { $0 + limits.chunkTimeoutNanos }
    }

    /// Starts the chunk clocks again (while the receiver itself holds reads back, no chunk can
    /// arrive, so the wait is not the peer's).
    mutating func restartChunkClocks(now: Int64) {
        for id in partial.keys { partial[id]?.lastChunkNanos = now }
    }

    /// Throws when a half-joined message has waited longer than the chunk timeout.
    /// - Throws: `.timedOut` naming the request and how long it waited.
    func checkChunkDeadline(now: Int64) throws(TransportError) {
        guard let (id, entry) = partial.min(by: { $0.value.lastChunkNanos < $1.value.lastChunkNanos }) else { return }
        let waited = now - entry.lastChunkNanos
        guard waited > limits.chunkTimeoutNanos else { return }
        throw TransportError(
            .timedOut,
            "request \(id): a chunked message waited \(waited / 1_000_000) ms for its next chunk "
                + "(\(entry.bytes.count) bytes held; the limit is \(limits.chunkTimeoutNanos / 1_000_000) ms)")
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

/// The bytes one connection's half-joined messages hold, and their share of a budget; the
/// share goes back to the budget when the connection's assembler is dropped.
private final class HeldBytes {
    let budget: MessageBudget?
    private(set) var bytes = 0

    init(budget: MessageBudget?) { self.budget = budget }

    deinit { budget?.release(bytes) }

    /// Counts `count` more bytes; false (nothing counted) when the budget has no room.
    func take(_ count: Int) -> Bool {
        if let budget, !budget.reserve(count) { return false }
        bytes += count
        return true
    }

    func give(_ count: Int) {
        budget?.release(count)
        bytes -= count
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
    if bytes.count <= chunkBytes || !flags.isDisjoint(with: [.error, .reference]) {
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
