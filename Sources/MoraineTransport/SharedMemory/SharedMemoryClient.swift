// The client end of the shared-memory carrier: it connects to the server's Unix socket,
// authenticates, creates the connection's memfd with both rings and passes it over, then talks
// through the rings only. The socket stays open as the liveness signal: its hang-up means the
// server is gone, and every waiting call then fails with `unavailable` within one sleep slice.
//
// Thread-safety: one thread at a time (see TransportClient).
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A connection to a `SharedMemoryServer` on this machine.
public final class SharedMemoryClient: TransportClient {
    private let socket: UnixSocket
    private let memory: SharedMemory
    private var requests: FrameProducer
    private var responses: FrameConsumer
    private var assembler: MessageAssembler
    private let limits: TransportLimits
    private let version: UInt8
    private var nextID: UInt64 = 1
    private var pending = Set<UInt64>()
    private var stash = ResponseStash()
    private var failure: TransportError? = nil
    /// Where the request ring's tail stood before the latest request was written.
    private var latestRequestStart: UInt64 = 0
    /// When `serverHasGone(pollingAfter:)` last found the socket up.
    private var livenessPolledNanos: Int64? = nil
    /// The request ring's head as `serverHasGone(pollingAfter:)` last read it.
    private var headAtLastLook: UInt64 = 0
    /// Responses held for the emulated link (nil without one).
    private var delayed: DelayLine<(FrameHeader, [UInt8])>?
    /// Default ring size per direction.
    public static let defaultRingCapacity = 4 << 20

    public var inFlightCount: Int { pending.count }

    /// Connects, authenticates both ways, and attaches the rings. `link` emulates the link
    /// responses travel over (LinkEmulation); without one, the server's welcome says which.
    /// `label` is the role this process presents (TransportIdentity).
    /// - Throws: `.unavailable` when no server listens, `.timedOut` when one accepted but did not
    ///   finish the handshake within `limits.handshakeNanos`, `.authenticationFailed` when either
    ///   side lacks the key, `.unsupportedVersion` when no version is shared.
    public init(
        socketPath: String, key: ClusterKey, limits: TransportLimits = TransportLimits(),
        ringCapacity: Int = SharedMemoryClient.defaultRingCapacity, link: LinkEmulation = .none, label: String? = TransportIdentity.label
    ) throws(TransportError) {
        try limits.check()
        try SharedConnectionLayout.validate(capacity: ringCapacity, limits: limits)
        do {
            socket = try UnixSocket.connect(path: socketPath)
        } catch {
            throw TransportError(.unavailable, error.message)
        }
        socket.setReceiveTimeout(nanos: limits.handshakeNanos)
        var handshake = ClientHandshake(key: key, label: label)
        var welcome = LinkEmulation.none
        let started = monotonicNanos()
        do {
            try socket.sendFrame(opcode: Opcode.hello, payload: handshake.hello())
            let challenge = try Self.expect(Opcode.challenge, on: socket)
            try socket.sendFrame(opcode: Opcode.proof, payload: try handshake.answer(challenge: challenge))
            welcome = try Handshake.link(fromWelcome: try Self.expect(Opcode.welcome, on: socket))
        } catch where error.code == .unavailable && monotonicNanos() - started >= limits.handshakeNanos {
            // A server that accepted but did not answer (stopped, or stuck) is not a server that
            // is gone: say so, as the TCP carrier does.
            throw TransportError(.timedOut, "no handshake within \(limits.handshakeNanos / 1_000_000) ms on \(socketPath)")
        }
        version = handshake.version
        do {
            memory = try SharedMemory.create(
                name: "moraine-connection", byteCount: SharedConnectionLayout.totalBytes(ringCapacity))
        } catch {
            throw TransportError(.unavailable, error.message)
        }
        memory.base.storeBytes(of: SharedConnectionLayout.magic, as: UInt64.self)
        (memory.base + 8).storeBytes(of: UInt64(ringCapacity), as: UInt64.self)
        let rings = SharedConnectionLayout.rings(in: memory, capacity: ringCapacity)
        rings.requests.format()
        rings.responses.format()
        try socket.sendFrame(
            opcode: attachOpcode, payload: SharedConnectionLayout.attachPayload(capacity: ringCapacity),
            passing: memory.descriptor)
        _ = try Self.expect(attachOpcode, on: socket)
        memory.closeDescriptor()
        socket.setReceiveTimeout(nanos: 0)
        requests = FrameProducer(ring: rings.requests)
        responses = FrameConsumer(ring: rings.responses, limits: limits)
        assembler = MessageAssembler(limits: limits)
        // The caller's emulation, else the one the server's welcome asks for (its pair's link).
        let emulation = link.isActive ? link : welcome
        delayed = emulation.isActive ? DelayLine(emulation) : nil
        self.limits = limits
    }

    deinit { close() }

    private static func expect(_ opcode: UInt8, on socket: UnixSocket) throws(TransportError) -> [UInt8] {
        let (header, payload, fd) = try socket.receiveFrame(limit: Handshake.framePayloadLimit)
        if fd >= 0 { closeDescriptor(fd) }
        if header.flags.contains(.error) { throw payload.withUnsafeBytes { TransportError(wirePayload: $0) } }
        guard header.opcode == opcode, header.flags.contains(.response) else {
            throw TransportError(.malformed, "expected opcode 0x\(String(opcode, radix: 16)) in the handshake, got 0x\(String(header.opcode, radix: 16))")
        }
        return payload
    }

    /// Whether the server's end of the socket has hung up (it exited or was killed): a request
    /// published now would sit in a ring no process drains. One poll(2), no waiting.
    public var serverHasGone: Bool { socket.peerHasHungUp() }

    /// `serverHasGone`, with the poll skipped while the server is seen at work: the socket was
    /// found up less than `intervalNanos` ago, and since the previous call the server has taken
    /// requests off the ring or has taken every one published before the latest (one load of
    /// shared memory). A server killed since is found by a call that polls: once it takes
    /// nothing between two calls with a request outstanding, or once the interval has passed.
    public func serverHasGone(pollingAfter intervalNanos: Int64) -> Bool {
        let now = monotonicNanos()
        let head = requests.ring.loadHead()
        let progressing = head >= latestRequestStart || head != headAtLastLook
        headAtLastLook = head
        if progressing, let polled = livenessPolledNanos, now - polled < intervalNanos { return false }
        if socket.peerHasHungUp() { return true }
        livenessPolledNanos = now
        return false
    }

    public func send(opcode: UInt8, payload: Payload) throws(TransportError) -> UInt64 {
        if let failure { throw failure }
        guard pending.count < limits.inFlightMax else {
            throw TransportError(.tooManyInFlight, "\(pending.count) requests in flight; the limit is \(limits.inFlightMax)")
        }
        let id = nextID
        nextID &+= 1
        let start = requests.tail
        let (flags, bytes) = framePlan(.success(payload), chunkBytes: limits.chunkBytes)
        guard bytes.count <= limits.messageBytesMax else {
            throw TransportError(.frameTooLarge, "request of \(bytes.count) bytes exceeds the limit of \(limits.messageBytesMax)")
        }
        do {
            try withBytes(bytes) { raw throws(TransportError) in
                try forEachChunk(raw, flags: flags, chunkBytes: limits.chunkBytes) { chunkFlags, chunk throws(TransportError) in
                    try makeRoom(payloadBytes: chunk.count)
                    try requests.write(
                        version: version, opcode: opcode, flags: chunkFlags, requestID: id, payload: chunk,
                        stillWanted: { !socket.peerHasHungUp() })
                }
            }
        } catch {
            // A timed-out send gives the connection up (a chunked message may be half written):
            // later calls hear `unavailable`; only this send reports the timeout.
            fail(error.code == .timedOut ? TransportError(.unavailable, "connection given up: \(error.message)") : error)
            throw error
        }
        requests.publish()
        pending.insert(id)
        latestRequestStart = start
        return id
    }

    public func receive(requestID: UInt64?, timeoutNanos: Int64?) throws(TransportError) -> Response {
        if let response = stash.take(requestID) { return response }
        if let failure { throw failure }
        if let requestID { precondition(pending.contains(requestID), "request \(requestID) is not in flight") }
        let deadline = timeoutNanos.map { monotonicNanos() + $0 }
        while true {
            if let response = try takeArrived(wanted: requestID) { return response }
            var timedOut = false
            let stillWanted = {
                if let deadline, monotonicNanos() >= deadline {
                    timedOut = true
                    return false
                }
                return !self.socket.peerHasHungUp()
            }
            let ready: Bool
            if let due = delayed?.nextDue {
                // Frames are held for the emulated link: wait for the oldest, or for new ones
                // to stamp as they arrive.
                let responses = self.responses
                let reached = LinkShaper.wait(until: deadline.map { min($0, due) } ?? due, interrupt: { responses.hasData() })
                ready = !reached || due <= monotonicNanos() || stillWanted()
            } else {
                ready = responses.waitForData(stillWanted: stillWanted)
            }
            if !ready {
                if timedOut { throw TransportError(.timedOut, "no response within \(timeoutNanos ?? 0) ns") }
                let error = TransportError(.unavailable, "the server on \(socket.path) went away")
                fail(error)
                throw error
            }
        }
    }

    /// The response to `requestID` (or to any request, when nil) if it has arrived, without
    /// waiting: nil otherwise. A pipelining caller reaps acknowledgements with it between sends.
    /// - Throws: as `receive`, once the connection has failed.
    public func receiveIfArrived(requestID: UInt64?) throws(TransportError) -> Response? {
        if let response = stash.take(requestID) { return response }
        if let failure { throw failure }
        return try takeArrived(wanted: requestID)
    }

    /// Waits until the request ring has room for a frame, taking responses off the response
    /// ring meanwhile (into the stash): a server blocked on a full response ring stops reading
    /// requests, so a client that only waited for room could wait forever.
    /// - Throws: `.timedOut` when no room appears within `limits.sendTimeoutNanos` (the server is
    ///   alive but not taking requests), `.unavailable` when the server is gone.
    private func makeRoom(payloadBytes: Int) throws(TransportError) {
        var idle = 0
        var deadline: Int64? = nil
        while !requests.hasRoom(payloadBytes: payloadBytes) {
            requests.publish()
            let before = responses.head
            _ = try takeArrived(wanted: Self.noRequest)
            if responses.head != before {
                idle = 0
                deadline = nil  // the server is making progress: the timeout counts from now
                continue
            }
            idle += 1
            if idle < SharedRing.spinCount {
                cpuRelax()
            } else {
                sleepNanos(20_000)
                if socket.peerHasHungUp() { throw TransportError(.unavailable, "the server on \(socket.path) went away") }
                let now = monotonicNanos()
                if deadline == nil { deadline = now + limits.sendTimeoutNanos }
                if now >= deadline! {
                    throw TransportError(
                        .timedOut,
                        "the server on \(socket.path) took no request for \(limits.sendTimeoutNanos / 1_000_000) ms; connection given up")
                }
            }
        }
    }

    /// A request id never sent (ids start at 1): asking for it stashes every response.
    private static let noRequest: UInt64 = 0

    /// Takes every published frame (through the emulated link, when there is one); returns the
    /// wanted response once complete and stashes the others.
    private func takeArrived(wanted requestID: UInt64?) throws(TransportError) -> Response? {
        let now = delayed == nil ? 0 : monotonicNanos()  // arrival stamps for the emulated link only
        while true {
            let frame: (FrameHeader, [UInt8])?
            do {
                frame = try responses.next()
            } catch {
                fail(TransportError(.unavailable, "connection closed: \(error)"))
                throw error
            }
            guard let frame else { break }
            responses.release()
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
        let message: ReceivedMessage?
        do {
            message = try assembler.add(frame.0, payload: frame.1)
        } catch {
            fail(TransportError(.unavailable, "connection closed: \(error)"))
            throw error
        }
        guard let message, pending.remove(message.requestID) != nil else { return nil }
        let response = Response(requestID: message.requestID, result: message.payload)
        if requestID == nil || requestID == message.requestID { return response }
        stash.put(response)
        return nil
    }

    private func fail(_ error: TransportError) {
        if failure == nil { failure = error }
        socket.close()
    }

    public func close() {
        if failure == nil {
            try? requests.write(
                version: version, opcode: Opcode.goodbye, flags: [], requestID: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0),
                stillWanted: { false })
            requests.publish()
            failure = TransportError(.closed, "the client was closed")
        }
        socket.close()
    }
}

