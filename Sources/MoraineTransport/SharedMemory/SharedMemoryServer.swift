// The server end of the shared-memory carrier. It listens on a Unix socket (mode 0600); each
// accepted connection gets a thread that checks the peer's user id (SO_PEERCRED), runs the
// handshake over the socket, maps the rings the client passes (a memfd, SCM_RIGHTS), and then
// serves requests from the request ring until the client says goodbye, the socket hangs up, or a
// frame is malformed. A bad connection is logged and closed; the others never notice.
//
// Admission is the TCP server's (ConnectionAdmission), with the peer's process id as its address:
// a connection holds a handshake slot until it proves the key, so at most `handshakesMax`
// threads serve strangers, and silent connections past it evict each other, not sessions.
// Refusals are logged through a LogThrottle.
//
// Thread-safety: `close` and `connectionCount` may be called from any thread.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Opcode of the message that hands the rings' memfd to the server.
let attachOpcode: UInt8 = 0x07

/// Serves a `RequestRouter` to clients on the same machine through shared memory.
public final class SharedMemoryServer: @unchecked Sendable {
    public let socketPath: String
    private let listener: UnixSocket
    private let key: ClusterKey
    private let router: RequestRouter
    /// The limits this server runs with: those asked for, with the connection caps fitted
    /// under the descriptor limit.
    public let limits: TransportLimits
    private let admission: ConnectionAdmission
    private let refusals: LogThrottle
    private let budget: MessageBudget
    private let allowedUser: UInt32
    private let link: LinkEmulation
    private let peerLinks: [String: LinkEmulation]
    private let state = ConditionLock()
    private var sockets: [ObjectIdentifier: UnixSocket] = [:]
    /// When each connection still in its handshake must have finished it.
    private var handshakeDeadlines: [ObjectIdentifier: Int64] = [:]
    private var threads = 0
    private var stopped = false

    /// Starts listening at `socketPath`.
    /// - Parameters:
    ///   - allowedUser: the only user id whose processes may connect (default: ours).
    ///   - link: the emulated link requests travel over (LinkEmulation), none by default; the
    ///     welcome asks the client to emulate it on responses too.
    ///   - peerLinks: the link for clients presenting a role label (TransportIdentity), in
    ///     place of `link`: one emulated link per pair of roles.
    ///   - budget: the bytes of half-joined messages this server's connections may hold,
    ///     shared with every server given the same budget (by default, the whole process).
    /// - Throws: when the socket cannot be created.
    public init(
        socketPath: String, key: ClusterKey, limits asked: TransportLimits = TransportLimits(),
        allowedUser: UInt32 = getuid(), link: LinkEmulation = .none, peerLinks: [String: LinkEmulation] = [:],
        budget: MessageBudget = .process,
        router: RequestRouter
    ) throws(TransportError) {
        try asked.check()
        let (limits, note) = asked.fitted(toDescriptors: DescriptorLimit.raised.soft)
        if let note { SystemLog.infoOnce("transport: \(note)") }
        do {
            listener = try UnixSocket.listen(path: socketPath)
        } catch {
            throw TransportError(.unavailable, "cannot listen on \(socketPath): \(error.message)")
        }
        self.socketPath = socketPath
        self.key = key
        self.router = router
        self.limits = limits
        admission = ConnectionAdmission(limits: limits)
        refusals = LogThrottle(
            subject: "refused or dropped shared-memory connections on \(socketPath)", intervalNanos: limits.refusalLogIntervalNanos,
            burst: limits.refusalLogBurst)
        self.budget = budget
        self.allowedUser = allowedUser
        self.link = link
        self.peerLinks = peerLinks
        state.withLock { threads += 2 }
        startThread(name: "shm-accept") { [self] in acceptLoop() }
        startThread(name: "shm-watchdog") { [self] in watchHandshakes() }
    }

    deinit { close() }

    /// Connections open now: authenticated, and still in their handshake.
    public var connectionCount: Int { state.withLock { sockets.count } }

    /// Connections in their handshake now, and authenticated ones.
    public var admissionCounts: (handshaking: Int, authenticated: Int) {
        let counts = admission.counts
        return (counts.strangers, counts.sessions)
    }

    /// Stops accepting, hangs up every connection and waits for their threads to finish.
    public func close() {
        let open: [UnixSocket] = state.withLock {
            stopped = true
            return Array(sockets.values)
        }
        listener.close()
        // Each connection's own thread closes its descriptor; from here only shut it down.
        for socket in open { socket.shutdown() }
        state.withLock { while threads > 0 { state.wait() } }
    }

    private var isStopped: Bool { state.withLock { stopped } }

    private func acceptLoop() {
        defer { finishThread() }
        while true {
            let accepted: UnixSocket?
            do {
                accepted = try listener.accept()
            } catch {
                SystemLog.warning("transport: accept on \(socketPath) failed: \(error.message)")
                return
            }
            guard let socket = accepted else { return }
            let id = ObjectIdentifier(socket)
            let admitted: Bool = state.withLock {
                guard !stopped else { return false }
                sockets[id] = socket
                handshakeDeadlines[id] = monotonicNanos() + limits.handshakeNanos
                threads += 1
                return true
            }
            guard admitted else {
                socket.close()
                return
            }
            // The process is the address: one process's flood evicts its own handshakes first.
            let peer = (try? socket.peerCredentials()).map { "pid \($0.pid) uid \($0.uid)" } ?? "unknown peer"
            let address = peer
            let refusals = refusals
            let ticket = admission.admit(address: address) {
                refusals.info("transport: dropped shared-memory connection from \(peer) in its handshake, to admit a newer one")
                socket.shutdown()
            }
            let started = startThreadIfPossible(name: "shm-connection") { [self] in
                defer {
                    // Forgotten before the descriptor closes: its number may be reused by the
                    // next accept at once, and an eviction or the watchdog must not shut down
                    // that newer connection through this one's stale descriptor.
                    admission.remove(ticket)
                    state.withLock {
                        sockets[id] = nil
                        handshakeDeadlines[id] = nil
                    }
                    socket.close()
                    finishThread()
                }
                serve(socket, peer: peer, ticket: ticket)
            }
            if !started {
                refusals.info("transport: refused shared-memory connection from \(peer) on \(socketPath): no thread to serve it")
                admission.remove(ticket)
                state.withLock {
                    sockets[id] = nil
                    handshakeDeadlines[id] = nil
                }
                socket.close()
                finishThread()
            }
        }
    }

    /// Shuts down connections that have not finished their handshake in the time allowed (the
    /// socket's receive timeout restarts with every byte, so a slow drip would evade it alone).
    private func watchHandshakes() {
        defer { finishThread() }
        while !isStopped {
            sleepNanos(min(50_000_000, max(1_000_000, limits.handshakeNanos / 4)))
            let now = monotonicNanos()
            let expired: [UnixSocket] = state.withLock {
                handshakeDeadlines.filter { $0.value <= now }.compactMap { sockets[$0.key] }
            }
            for socket in expired { socket.shutdown() }
            refusals.flush()
        }
    }

    private func finishThread() {
        state.withLock {
            threads -= 1
            state.broadcast()
        }
    }

    /// Authenticates, attaches the rings, then serves until the connection ends.
    private func serve(_ socket: UnixSocket, peer: String, ticket: ConnectionAdmission.Ticket) {
        do {
            let credentials = try socket.peerCredentials()
            guard credentials.uid == allowedUser else {
                throw TransportError(
                    .authenticationFailed, "user \(credentials.uid) is not the allowed user \(allowedUser)")
            }
        } catch let error as TransportError {
            refuse(socket, peer: peer, error)
            return
        } catch {
            refuse(socket, peer: peer, TransportError(.unavailable, "\(error)"))
            return
        }
        socket.setReceiveTimeout(nanos: limits.handshakeNanos)
        let memory: SharedMemory
        let capacity: Int
        let version: UInt8
        let emulation: LinkEmulation
        let deadline = monotonicNanos() + limits.handshakeNanos
        do {
            (version, emulation) = try authenticate(socket, ticket: ticket)
            (memory, capacity) = try attach(socket)
        } catch {
            let late = monotonicNanos() >= deadline
            refuse(socket, peer: peer, late ? TransportError(.authenticationFailed, "no handshake within the time allowed") : error)
            return
        }
        state.withLock { handshakeDeadlines[ObjectIdentifier(socket)] = nil }
        socket.setReceiveTimeout(nanos: 0)
        let rings = SharedConnectionLayout.rings(in: memory, capacity: capacity)
        var connection = ServerRingConnection(
            requests: FrameConsumer(ring: rings.requests, limits: limits),
            responses: FrameProducer(ring: rings.responses),
            session: ServerSession(limits: limits, version: version, router: router, budget: budget),
            chunkBytes: limits.chunkBytes,
            link: emulation)
        let stillWanted = { [self] in !isStopped && !socket.peerHasHungUp() }
        do {
            try connection.run(stillWanted: stillWanted, closing: { [self] in isStopped })
        } catch {
            refusals.info("transport: closed shared-memory connection from \(peer) on \(socketPath): \(error)")
        }
        router.drained?()  // whatever the connection's last requests held back
        withExtendedLifetime(memory) {}
    }

    /// Runs the server side of the handshake; returns the version and the link this client's connection emulates
    /// (its label's entry in `peerLinks`, else `link`).
    private func authenticate(_ socket: UnixSocket, ticket: ConnectionAdmission.Ticket) throws(TransportError) -> (UInt8, LinkEmulation) {
        var handshake = ServerHandshake(key: key)
        var attempts = 0
        while true {
            let (header, payload, fd) = try socket.receiveFrame(limit: Handshake.framePayloadLimit)
            if fd >= 0 { closeDescriptor(fd) }
            admission.spoke(ticket)
            guard header.opcode == Opcode.hello else {
                throw TransportError(.authenticationFailed, "expected a hello, got opcode 0x\(String(header.opcode, radix: 16))")
            }
            do {
                let challenge = try handshake.challenge(hello: payload)
                try socket.sendFrame(opcode: Opcode.challenge, flags: .response, requestID: header.requestID, payload: challenge)
                break
            } catch where error.code == .unsupportedVersion && attempts < 3 {
                // Answer, and let the client offer other versions.
                attempts += 1
                try socket.sendFrame(
                    opcode: Opcode.hello, flags: [.response, .error], requestID: header.requestID, payload: error.wirePayload)
            }
        }
        let (header, payload, fd) = try socket.receiveFrame(limit: Handshake.framePayloadLimit)
        if fd >= 0 { closeDescriptor(fd) }
        guard header.opcode == Opcode.proof else {
            throw TransportError(.authenticationFailed, "expected a proof, got opcode 0x\(String(header.opcode, radix: 16))")
        }
        let label = try handshake.verify(proof: payload)  // refuse() answers a failure, as on TCP
        try admission.authenticate(ticket)  // refuse() answers busy, as on TCP
        let emulation = Handshake.link(forLabel: label, peerLinks: peerLinks, otherwise: link)
        try socket.sendFrame(opcode: Opcode.welcome, flags: .response, requestID: header.requestID, payload: Handshake.welcome(emulation))
        return (handshake.version, emulation)
    }

    /// Receives the memfd holding the rings and maps it.
    private func attach(_ socket: UnixSocket) throws(TransportError) -> (SharedMemory, Int) {
        let (header, payload, fd) = try socket.receiveFrame(limit: Handshake.framePayloadLimit)
        guard header.opcode == attachOpcode, payload.count == 8, fd >= 0 else {
            if fd >= 0 { closeDescriptor(fd) }
            throw TransportError(.malformed, "expected the ring attachment after the handshake")
        }
        let capacity = Int(truncatingIfNeeded: payload.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        do {
            try SharedConnectionLayout.validate(capacity: capacity, limits: limits)
        } catch {
            closeDescriptor(fd)
            throw error
        }
        let memory: SharedMemory
        do {
            memory = try SharedMemory.map(
                descriptor: fd, byteCount: SharedConnectionLayout.totalBytes(capacity), name: "connection rings")
        } catch {
            throw TransportError(.invalid, error.message)
        }
        memory.closeDescriptor()
        let magic = memory.base.load(as: UInt64.self)
        guard magic == SharedConnectionLayout.magic else {
            throw TransportError(.malformed, "shared connection file has magic 0x\(String(magic, radix: 16))")
        }
        try socket.sendFrame(opcode: attachOpcode, flags: .response, requestID: header.requestID, payload: [])
        return (memory, capacity)
    }

    private func refuse(_ socket: UnixSocket, peer: String, _ error: any Error) {
        let reason = (error as? TransportError)?.description ?? "\(error)"
        refusals.info("transport: refused shared-memory connection from \(peer) on \(socketPath): \(reason)")
        if let error = error as? TransportError, error.code == .authenticationFailed || error.code == .busy {
            try? socket.sendFrame(opcode: Opcode.welcome, flags: [.response, .error], payload: error.wirePayload)
        }
        // Shut down, not closed: the connection's thread closes the descriptor once the
        // connection is forgotten (see acceptLoop), so its number cannot be reused meanwhile.
        socket.shutdown()
    }
}

/// The serving loop over one connection's rings (runs on the connection's thread).
struct ServerRingConnection {
    var requests: FrameConsumer
    var responses: FrameProducer
    var session: ServerSession
    let chunkBytes: Int
    let link: LinkEmulation

    /// Serves until goodbye (returns) or a broken connection (throws). A client that went away
    /// still has every request it published served (a writer that dies right after publishing
    /// an append has handed its bytes over); only `closing` (the server stopping) cuts it short.
    mutating func run(stillWanted: () -> Bool, closing: () -> Bool) throws(TransportError) {
        if link.isActive { return try runDelayed(stillWanted: stillWanted, closing: closing) }
        while true {
            let chunkDeadline = session.assembler.nextChunkDeadlineNanos
            let waited = requests.waitForData {
                stillWanted() && (chunkDeadline.map { monotonicNanos() <= $0 } ?? true)
            }
            guard waited else {
                try session.assembler.checkChunkDeadline(now: monotonicNanos())
                throw TransportError(.unavailable, "the client went away")
            }
            var handled = 0
            while let (header, payload) = try requests.next() {
                requests.release()
                guard try serve(header, payload, stillWanted: stillWanted) else { return }
                handled += 1
                // A client that never stops publishing must not keep this thread from noticing
                // the server closing.
                if handled % Self.framesBetweenChecks == 0 {
                    session.router.drained?()
                    responses.publish()
                    guard !closing() else { throw TransportError(.unavailable, "the server is closing") }
                }
            }
            session.router.drained?()
            responses.publish()
        }
    }

    /// Frames handled in a row before the loop asks whether it should go on.
    static let framesBetweenChecks = 1024

    /// The serving loop over an emulated link: every published frame is taken and stamped as it
    /// is seen, and handled at its due time.
    private mutating func runDelayed(stillWanted: () -> Bool, closing: () -> Bool) throws(TransportError) {
        var line = DelayLine<(FrameHeader, [UInt8])>(link)
        while true {
            let now = monotonicNanos()
            while let frame = try requests.next() {
                requests.release()
                line.add(frame, byteCount: FrameHeader.byteCount + frame.1.count, arrivalNanos: now)
            }
            guard let due = line.nextDue else {
                let chunkDeadline = session.assembler.nextChunkDeadlineNanos
                let waited = requests.waitForData {
                    stillWanted() && (chunkDeadline.map { monotonicNanos() <= $0 } ?? true)
                }
                guard waited else {
                    try session.assembler.checkChunkDeadline(now: monotonicNanos())
                    throw TransportError(.unavailable, "the client went away")
                }
                continue
            }
            let requests = self.requests
            guard LinkShaper.wait(until: due, interrupt: { requests.hasData() }) else { continue }
            while let (header, payload) = line.takeReady(now: monotonicNanos()) {
                guard try serve(header, payload, stillWanted: stillWanted) else { return }
            }
            session.router.drained?()
            responses.publish()
            guard stillWanted() else {
                guard !closing() else { throw TransportError(.unavailable, "the server is closing") }
                // The client went away: what it published was on the emulated wire, and a
                // real link delivers that too.
                while let frame = try self.requests.next() {
                    self.requests.release()
                    line.add(frame, byteCount: FrameHeader.byteCount + frame.1.count, arrivalNanos: now)
                }
                while let (header, payload) = line.takeReady(now: .max) {
                    guard try serve(header, payload, stillWanted: stillWanted) else { return }
                }
                session.router.drained?()
                throw TransportError(.unavailable, "the client went away")
            }
        }
    }

    /// Handles one request frame; false after a goodbye (the connection is done).
    private mutating func serve(
        _ header: FrameHeader, _ payload: [UInt8], stillWanted: () -> Bool
    ) throws(TransportError) -> Bool {
        switch try session.handle(header, payload) {
        case .none, .quiet: return true
        case .goodbye:
            responses.publish()
            return false
        case .reply(let result):
            try reply(to: header, result, stillWanted: stillWanted)
            return true
        }
    }

    private mutating func reply(
        to request: FrameHeader, _ result: Result<Payload, TransportError>, stillWanted: () -> Bool
    ) throws(TransportError) {
        let (flags, bytes) = framePlan(result, chunkBytes: chunkBytes)
        let version = session.version
        try withBytes(bytes) { raw throws(TransportError) in
            try forEachChunk(raw, flags: flags.union(.response), chunkBytes: chunkBytes) { chunkFlags, chunk throws(TransportError) in
                try responses.write(
                    version: version, opcode: request.opcode, flags: chunkFlags, requestID: request.requestID,
                    payload: chunk, stillWanted: stillWanted)
            }
        }
    }
}
