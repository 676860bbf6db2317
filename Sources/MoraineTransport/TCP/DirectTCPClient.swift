// The TCP client that does its socket I/O on the caller's thread. `TCPClient` (SwiftNIO) hands
// each send to its event loop and each response back through a condition variable: two thread
// wake-ups per round trip, which on a small virtual machine cost as much as the loopback trip
// itself. This client writes a request with one `send` call and reads responses with `recv` in
// `receive`, so a round trip wakes no thread but the server's. It speaks the same protocol to the
// same `TCPServer` and follows the same rules (TransportClient), but supports no TLS: use
// `TCPClient` with `tls:` for that.
//
// Back-pressure: the socket is non-blocking. A send that finds the socket buffer full waits in
// poll for writability *and* readability, reading responses into the stash meanwhile (a server
// blocked writing our replies stops reading our requests, so waiting only to write could wait for
// ever); after `sendTimeoutNanos` without progress it gives up the connection with `timedOut`.
// A lost connection fails every request in flight with `unavailable`, and the next send reconnects
// with backoff (ReconnectPolicy), as `TCPClient` does.
//
// Thread-safety: one thread at a time (see TransportClient).
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A connection to a `TCPServer` whose I/O runs on the calling thread.
public final class DirectTCPClient: TransportClient {
    private let host: String
    private let port: Int
    private let key: ClusterKey
    private let limits: TransportLimits
    private let regions: SharedRegionTable?
    private let reconnect: ReconnectPolicy
    private let link: LinkEmulation
    /// The role label this client presents (TransportIdentity).
    private let label: String?
    /// The link in use: `link`, else the one the server's welcome asked for.
    private var emulation = LinkEmulation.none
    private var stream: TCPStream? = nil
    private var input = InputBuffer()
    private var assembler: MessageAssembler
    private var output: [UInt8] = []
    /// Responses held for the emulated link (nil without one).
    private var delayed: DelayLine<(FrameHeader, [UInt8])>?
    private var version: UInt8 = ProtocolVersion.maximum
    private var nextID: UInt64 = 1
    private var pending = Set<UInt64>()
    /// Requests the lost connection took with them, answered `unavailable` when asked for.
    private var lost = Set<UInt64>()
    private var stash = ResponseStash()
    /// Why the current connection ended, told to the first caller that meets it.
    private var failure: TransportError? = nil
    private var closed = false
    /// How many times this client has (re)connected.
    public private(set) var connectCount = 0

    public var inFlightCount: Int { pending.count }

    /// Connects and authenticates both ways. `link` emulates the link responses travel over;
    /// without one, the server's welcome says which. `label` is the role this process presents.
    /// - Throws: `.unavailable` when nothing listens, `.authenticationFailed` when either side
    ///   lacks the key, `.invalid` for limits that do not fit together.
    public init(
        host: String = "127.0.0.1", port: Int, key: ClusterKey, limits: TransportLimits = TransportLimits(),
        regions: SharedRegionTable? = nil, reconnect: ReconnectPolicy = ReconnectPolicy(), link: LinkEmulation = .none,
        label: String? = TransportIdentity.label
    ) throws(TransportError) {
        self.label = label
        self.host = host
        self.port = port
        self.key = key
        self.limits = limits
        self.regions = regions
        self.reconnect = reconnect
        self.link = link
        assembler = MessageAssembler(limits: limits)
        try limits.check()
        try connect()
    }

    deinit { close() }

    // MARK: Connecting

    private func connect() throws(TransportError) {
        let stream = try TCPStream.connect(
            host: host, port: port, timeoutNanos: limits.handshakeNanos, keepaliveIdleSeconds: limits.keepaliveIdleSeconds)
        input = InputBuffer()
        assembler = MessageAssembler(limits: limits)
        self.stream = stream
        failure = nil
        do {
            let welcome: LinkEmulation
            (version, welcome) = try handshake(deadline: monotonicNanos() + limits.handshakeNanos)
            emulation = link.isActive ? link : welcome
            delayed = emulation.isActive ? DelayLine(emulation) : nil
        } catch {
            stream.close()
            self.stream = nil
            throw error
        }
        connectCount += 1
    }

    /// Hello, challenge, proof, welcome; before the welcome frames are limited to 256 bytes.
    private func handshake(deadline: Int64) throws(TransportError) -> (UInt8, LinkEmulation) {
        var handshake = ClientHandshake(key: key, label: label)
        try writeFrame(opcode: Opcode.hello, payload: handshake.hello(), version: ProtocolVersion.maximum, deadline: deadline)
        var answered = false
        while true {
            let (header, payload) = try nextFrame(limit: Handshake.framePayloadLimit, deadline: deadline)
            if header.flags.contains(.error) { throw payload.withUnsafeBytes { TransportError(wirePayload: $0) } }
            switch header.opcode {
            case Opcode.challenge:
                guard !answered else { throw TransportError(.malformed, "a second challenge in the handshake") }
                let proof = try handshake.answer(challenge: payload)
                try writeFrame(opcode: Opcode.proof, payload: proof, version: ProtocolVersion.maximum, deadline: deadline)
                answered = true
            case Opcode.welcome:
                guard answered else {
                    throw TransportError(.authenticationFailed, "the server welcomed us before proving it holds the key")
                }
                return (handshake.version, try Handshake.link(fromWelcome: payload))
            default:
                throw TransportError(.malformed, "unexpected opcode 0x\(String(header.opcode, radix: 16)) in the handshake")
            }
        }
    }

    private func writeFrame(opcode: UInt8, payload: [UInt8], version: UInt8, deadline: Int64) throws(TransportError) {
        let frame = payload.withUnsafeBytes {
            FrameHeader.encode(version: version, opcode: opcode, flags: [], requestID: 0, payload: $0)
        }
        try withBytes(frame) { bytes throws(TransportError) in try writeAll(bytes, deadline: deadline, drain: false) }
    }

    /// The next whole frame, reading and waiting as needed.
    private func nextFrame(limit: Int, deadline: Int64) throws(TransportError) -> (FrameHeader, [UInt8]) {
        while true {
            if let frame = try input.takeFrame(limit: limit) { return frame }
            guard let stream else { throw TransportError(.unavailable, "not connected") }
            guard stream.wait(events: Int16(POLLIN), deadline: deadline) else {
                throw TransportError(.timedOut, "no handshake within \(limits.handshakeNanos / 1_000_000) ms")
            }
            try input.fill(from: stream)
        }
    }

    /// Reconnects with backoff after the connection was lost.
    private func reconnectWithBackoff() throws(TransportError) {
        try reconnect.retry { () throws(TransportError) in try connect() }
    }

    // MARK: Requests

    public func send(opcode: UInt8, payload: Payload) throws(TransportError) -> UInt64 {
        if closed { throw TransportError(.closed, "the client was closed") }
        guard pending.count < limits.inFlightMax else {
            throw TransportError(.tooManyInFlight, "\(pending.count) requests in flight; the limit is \(limits.inFlightMax)")
        }
        if stream == nil {
            try reconnectWithBackoff()
        }
        let id = try write(opcode: opcode, flags: [], payload: payload)
        pending.insert(id)
        return id
    }

    /// Encodes and writes one request under a fresh id.
    private func write(opcode: UInt8, flags: FrameFlags, payload: Payload) throws(TransportError) -> UInt64 {
        let id = nextID
        nextID &+= 1
        try withPayloadBytes(payload) { bytes throws(TransportError) in
            guard bytes.count <= limits.messageBytesMax else {
                throw TransportError(
                    .frameTooLarge, "request of \(bytes.count) bytes exceeds the limit of \(limits.messageBytesMax)")
            }
            encode(opcode: opcode, flags: flags, requestID: id, bytes: bytes)
        }
        do {
            try withBytes(output) { bytes throws(TransportError) in try writeAll(bytes, deadline: nil, drain: true) }
        } catch {
            // The connection is given up (a message may be half written): later calls hear
            // `unavailable`, and only this send reports the timeout itself.
            dropConnection(
                error.code == .timedOut ? TransportError(.unavailable, "connection given up: \(error.message)") : error)
            throw error
        }
        return id
    }

    /// Whether this connection takes quiet requests (it settled on protocol version 2 or later).
    public var acceptsQuietRequests: Bool { version >= ProtocolVersion.quietRequests }

    /// Sends a quiet request (`FrameFlags.quiet`): the server runs it and answers nothing, not
    /// even an error, so the caller learns of its outcome only through a later request it asks
    /// an answer to. Requests on one connection run in order: an answered request sent after
    /// quiet ones answers after they ran. Once written into the socket it is in the server's
    /// hands even if this process dies (the kernel delivers it; the server runs what it got),
    /// as long as no response is left unread on the connection: with one, the kernel of a dying
    /// process resets the connection and drops what it had not sent (docs/TRANSPORT.md).
    /// Never reconnects: quiet requests sent before a lost connection may be lost with it, and
    /// the caller must hear of that, so a send without a connection throws `unavailable`.
    /// - Throws: `.unavailable` without a connection (or when it breaks), `.invalid` on a
    ///   connection that does not take quiet requests, `.frameTooLarge`, `.closed`.
    public func sendQuiet(opcode: UInt8, payload: Payload) throws(TransportError) {
        if closed { throw TransportError(.closed, "the client was closed") }
        guard stream != nil else { throw failure ?? TransportError(.unavailable, "not connected") }
        guard acceptsQuietRequests else {
            throw TransportError(.invalid, "the server speaks protocol version \(version), which has no quiet requests")
        }
        _ = try write(opcode: opcode, flags: .quiet, payload: payload)
    }

    /// Whether the server's end of the connection has gone (it ended or reset the connection:
    /// its process exited or was killed), or there is no connection. One poll(2), no waiting.
    public var serverHasGone: Bool { stream?.peerHasHungUp() ?? true }

    private func withPayloadBytes(
        _ payload: Payload, _ body: (UnsafeRawBufferPointer) throws(TransportError) -> Void
    ) throws(TransportError) {
        switch payload {
        case .bytes(let array):
            try withBytes(array, body)
        case .reference(let reference):
            guard let regions else { throw TransportError(.notFound, "a reference needs the region table it points into") }
            try body(try regions.resolve(reference))
        }
    }

    /// The whole message, every chunk, into `output` (encoded in place, no zero-filling).
    private func encode(opcode: UInt8, flags: FrameFlags, requestID: UInt64, bytes: UnsafeRawBufferPointer) {
        let chunks = max(1, (bytes.count + limits.chunkBytes - 1) / limits.chunkBytes)
        let total = bytes.count + chunks * FrameHeader.byteCount
        let (version, chunkBytes) = (self.version, limits.chunkBytes)
        output = [UInt8](unsafeUninitializedCapacity: total) { target, count in
            var at = 0
            // forEachChunk only throws what its body throws; this body does not throw.
            try? forEachChunk(bytes, flags: flags, chunkBytes: chunkBytes) { flags, chunk in
                FrameHeader.encode(
                    into: UnsafeMutableRawPointer(target.baseAddress!) + at, version: version, opcode: opcode, flags: flags,
                    requestID: requestID, payload: chunk)
                at += FrameHeader.byteCount + chunk.count
            }
            count = at
        }
    }

    /// Writes all of `bytes`. While the socket is full, waits for it to drain; with `drain`, it
    /// takes arriving responses off the socket meanwhile. Without progress for
    /// `sendTimeoutNanos` (or past `deadline`) it throws `timedOut`.
    private func writeAll(_ bytes: UnsafeRawBufferPointer, deadline: Int64?, drain: Bool) throws(TransportError) {
        guard let stream else { throw TransportError(.unavailable, "not connected") }
        var offset = 0
        var stalledSince: Int64? = nil
        while offset < bytes.count {
            let wrote = try stream.write(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
            offset += wrote
            if wrote > 0 {
                stalledSince = nil
                continue
            }
            let now = monotonicNanos()
            if stalledSince == nil { stalledSince = now }
            let giveUp = min(deadline ?? Int64.max, stalledSince! + limits.sendTimeoutNanos)
            if now >= giveUp {
                throw TransportError(
                    .timedOut, "the server read no request for \(limits.sendTimeoutNanos / 1_000_000) ms; connection given up")
            }
            _ = stream.wait(events: Int16(POLLOUT) | (drain ? Int16(POLLIN) : 0), deadline: min(giveUp, now + 50_000_000))
            if drain, stream.readable() {
                try input.fill(from: stream)
                try takeFrames(wanted: Self.noRequest)
            }
        }
    }

    /// A request id never sent (ids start at 1): asking for it stashes every response.
    private static let noRequest: UInt64 = 0

    // MARK: Responses

    public func receive(requestID: UInt64?, timeoutNanos: Int64?) throws(TransportError) -> Response {
        if let response = stash.take(requestID) { return response }
        if closed { throw TransportError(.closed, "the client was closed") }
        if let requestID, lost.remove(requestID) != nil {
            throw TransportError(.unavailable, "request \(requestID) was lost with the connection")
        }
        if let requestID { precondition(pending.contains(requestID), "request \(requestID) is not in flight") }
        let deadline = timeoutNanos.map { monotonicNanos() + $0 }
        do throws(TransportError) {
            while true {
                if let response = try takeFrames(wanted: requestID) { return response }
                guard let stream else { throw failure ?? TransportError(.unavailable, "not connected") }
                if let deadline, monotonicNanos() >= deadline {
                    // Take what has arrived before giving up (a zero timeout polls).
                    if stream.readable() {
                        try input.fill(from: stream)
                        if let response = try takeFrames(wanted: requestID) { return response }
                    }
                    throw TransportError(.timedOut, "no response within \(timeoutNanos ?? 0) ns")
                }
                let arrived: Bool
                if let due = delayed?.nextDue {
                    // Responses are held for the emulated link: wait for the oldest to come due,
                    // or for new ones to stamp as they arrive.
                    arrived = !LinkShaper.wait(until: deadline.map { min($0, due) } ?? due, interrupt: { stream.readable() })
                } else {
                    arrived = stream.wait(events: Int16(POLLIN), deadline: deadline)
                }
                if arrived { try input.fill(from: stream) }
            }
        } catch {
            if error.code != .timedOut { dropConnection(error) }
            throw error
        }
    }

    /// Takes every whole frame that has arrived (through the emulated link, when there is one);
    /// returns the wanted response once complete and stashes the others.
    @discardableResult
    private func takeFrames(wanted requestID: UInt64?) throws(TransportError) -> Response? {
        let now = monotonicNanos()
        while let frame = try input.takeFrame(limit: limits.framePayloadBytesMax) {
            if delayed != nil {
                delayed!.add(frame, byteCount: FrameHeader.byteCount + frame.1.count, arrivalNanos: now)
            } else if let response = try accept(frame, wanted: requestID) {
                return response
            }
        }
        while delayed != nil, let frame = delayed!.takeReady(now: monotonicNanos()) {
            if let response = try accept(frame, wanted: requestID) { return response }
        }
        return nil
    }

    /// Joins a frame into its message; returns the response when it is complete and wanted.
    private func accept(_ frame: (FrameHeader, [UInt8]), wanted requestID: UInt64?) throws(TransportError) -> Response? {
        guard frame.0.flags.contains(.response) else { throw TransportError(.malformed, "the server sent a request frame") }
        guard let message = try assembler.add(frame.0, payload: frame.1), pending.remove(message.requestID) != nil else {
            return nil
        }
        let response = Response(requestID: message.requestID, result: message.payload)
        if requestID == nil || requestID == message.requestID { return response }
        stash.put(response)
        return nil
    }

    /// Ends the current connection: requests in flight are answered `unavailable` when asked
    /// for, and the next send reconnects.
    private func dropConnection(_ error: TransportError) {
        lost.formUnion(pending)
        pending.removeAll()
        stream?.close()
        stream = nil
        failure = error
        // What was read from the old connection (perhaps the bad frame that ended it) goes too.
        input = InputBuffer()
        assembler = MessageAssembler(limits: limits)
        delayed = emulation.isActive ? DelayLine(emulation) : nil
    }

    public func close() {
        guard !closed else { return }
        closed = true
        if let stream {
            let goodbye = FrameHeader.encode(
                version: version, opcode: Opcode.goodbye, flags: [], requestID: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
            _ = goodbye.withUnsafeBytes { try? stream.write($0) }
            stream.close()
        }
        stream = nil
    }
}

/// Bytes read from the socket and not yet taken as frames.
private final class InputBuffer {
    private var storage = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 8)
    private var start = 0
    private var end = 0

    deinit { storage.deallocate() }

    /// Reads what the socket has, making room for at least 64 KiB first (moving the unread
    /// bytes to the front, or doubling the buffer).
    func fill(from stream: TCPStream) throws(TransportError) {
        if start == end {
            start = 0
            end = 0
        }
        if storage.count - end < 64 << 10 {
            let unread = end - start
            if start > 0 && storage.count - unread >= 64 << 10 {
                storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: unread)
            } else {
                let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: max(storage.count * 2, unread + (64 << 10)), alignment: 8)
                grown.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: unread)
                storage.deallocate()
                storage = grown
            }
            start = 0
            end = unread
        }
        end += try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]))
    }

    /// The next whole, checked frame, or nil when it has not all arrived. The header is checked
    /// (magic, flags, length against `limit`) before the payload is waited for.
    func takeFrame(limit: Int) throws(TransportError) -> (FrameHeader, [UInt8])? {
        guard end - start >= FrameHeader.byteCount else { return nil }
        let raw = UnsafeRawBufferPointer(storage)
        let header = try FrameHeader.parse(UnsafeRawBufferPointer(rebasing: raw[start..<start + FrameHeader.byteCount]), limitBytes: limit)
        let frameEnd = start + FrameHeader.byteCount + Int(header.payloadByteCount)
        guard frameEnd <= end else { return nil }
        let payload = UnsafeRawBufferPointer(rebasing: raw[start + FrameHeader.byteCount..<frameEnd])
        try header.verify(header: raw.baseAddress! + start, payload: payload)
        start = frameEnd
        return (header, Array(payload))
    }
}
