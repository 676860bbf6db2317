// The server end of the TCP carrier, on SwiftNIO. Each connection's pipeline is the frame decoder
// and a handler that runs the handshake, then the same ServerSession the shared-memory carrier
// uses. Requests are handled on the connection's event loop and the replies written in one flush
// per read burst (or sooner, once 2 MiB are waiting). Back-pressure: while the channel is not
// writable (the peer does not read its replies), the handler holds the requests already decoded
// without running them and stops asking NIO to read, so what a client can make the server keep is
// one read burst of requests, not their replies. A client that goes away (the end of its stream,
// or a reset) still has every whole request the server received from it run, held ones
// included, their replies dropped: a quiet request is in the server's hands once received. A connection that breaks the protocol, fails the
// handshake or does not finish it in time, or stops in the middle of a frame for longer than the
// frame timeout is logged and closed; the others are unaffected.
//
// Admission (ConnectionAdmission): a connection holds a handshake slot until it proves the key
// and a session slot after, so strangers cannot take the slots of authenticated clients. The
// caps are fitted under the process's descriptor limit (raised to the hard limit at start); when
// accept still runs out of descriptors (EMFILE, ENFILE), accepting pauses for 200 ms at a time
// instead of spinning, with one log line when it starts and one when it ends. Refusals are logged
// through a LogThrottle: a few lines per 10 s, then a count with a sample.
//
// Thread-safety: `close`, `port` and `connectionCount` may be used from any thread.
import MoraineSystem
import NIOCore
import NIOPosix
import Synchronization

/// Serves a `RequestRouter` over TCP.
public final class TCPServer: @unchecked Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let connections: ConnectionSet
    private let admission: ConnectionAdmission
    private let refusals: LogThrottle
    private let throttleFlush: RepeatedTask
    /// The limits this server runs with: those asked for, with the connection caps fitted
    /// under the descriptor limit.
    public let limits: TransportLimits
    /// The bound port (useful when 0 was asked for).
    public let port: Int

    /// Binds and starts serving.
    /// - Parameters:
    ///   - host: the address to bind; 127.0.0.1 unless the operator asks for another.
    ///   - regions: where references in replies are resolved; TCP always sends the bytes.
    ///   - tls: TLS settings, or nil for plain TCP.
    ///   - link: the emulated link requests travel over (LinkEmulation), none by default; the
    ///     welcome asks the client to emulate it on responses too.
    ///   - peerLinks: the link for clients presenting a role label (TransportIdentity), in
    ///     place of `link`: one emulated link per pair of roles.
    ///   - budget: the bytes of half-joined messages this server's connections may hold,
    ///     shared with every server given the same budget (by default, the whole process).
    /// - Throws: `.unavailable` when the address cannot be bound.
    public init(
        host: String = "127.0.0.1", port: Int, key: ClusterKey, limits asked: TransportLimits = TransportLimits(),
        regions: SharedRegionTable? = nil, tls: TransportTLS? = nil, eventLoopThreads: Int = 1,
        link: LinkEmulation = .none, peerLinks: [String: LinkEmulation] = [:], budget: MessageBudget = .process, router: RequestRouter
    ) throws(TransportError) {
        try asked.check()
        let (limits, note) = asked.fitted(toDescriptors: DescriptorLimit.raised.soft)
        if let note { SystemLog.infoOnce("transport: \(note)") }
        let tlsContext = try tls?.makeServerContext()  // before any thread exists to leak
        let group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoopThreads)
        let connections = ConnectionSet()
        let admission = ConnectionAdmission(limits: limits)
        let refusals = LogThrottle(
            subject: "refused or dropped TCP connections", intervalNanos: limits.refusalLogIntervalNanos,
            burst: limits.refusalLogBurst)
        let acceptFailures = AcceptFailures()
        var bootstrap = ServerBootstrap(group: group)
        for (option, value) in TCPKeepalive.options(idleSeconds: limits.keepaliveIdleSeconds) {
            bootstrap = bootstrap.childChannelOption(option, value: value)
        }
        bootstrap = bootstrap
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // NIO's default high mark (64 KiB) is one large reply: the channel would turn
            // unwritable, and hold requests back, after nearly every flush.
            .childChannelOption(.writeBufferWaterMark, value: .init(low: Self.writeLowMark, high: Self.writeHighMark))
            .serverChannelInitializer { channel in
                // Without a pause, accept failing with EMFILE is retried at once, for ever, at
                // 100% of a core (AcceptFailures.swift says why NIO's own back-off does not help).
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(failures: acceptFailures))
                }
            }
            .childChannelInitializer { channel in
                acceptFailures.accepted()
                return channel.eventLoop.makeCompletedFuture {
                    let limit = FrameLimit(Handshake.framePayloadLimit)
                    if let tlsContext { try tlsContext.addServerHandler(to: channel) }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(limit: limit)))
                    try channel.pipeline.syncOperations.addHandler(
                        ServerConnectionHandler(
                            key: key, limits: limits, limit: limit, regions: regions, router: router, link: link, peerLinks: peerLinks,
                            connections: connections, admission: admission, refusals: refusals, budget: budget))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw TransportError(.unavailable, "cannot listen on \(host):\(port): \(error)")
        }
        self.group = group
        self.connections = connections
        self.admission = admission
        self.refusals = refusals
        self.limits = limits
        self.port = channel.localAddress?.port ?? port
        throttleFlush = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            refusals.flush()
        }
    }

    /// Replies queued on one connection beyond which it counts as not writable, and below which
    /// it counts as writable again (see "Back-pressure" in docs/TRANSPORT.md).
    static let writeHighMark = 2 << 20
    static let writeLowMark = 512 << 10

    deinit { close() }

    /// Connections open now: authenticated, and still in their handshake.
    public var connectionCount: Int { connections.count }

    /// Connections in their handshake now, and authenticated ones.
    public var admissionCounts: (handshaking: Int, authenticated: Int) {
        let counts = admission.counts
        return (counts.strangers, counts.sessions)
    }

    /// Stops listening, closes every connection, and stops the event loops. Idempotent.
    public func close() {
        guard connections.markClosed() else { return }
        throttleFlush.cancel()
        try? channel.close().wait()
        for child in connections.all() { try? child.close().wait() }
        try? group.syncShutdownGracefully()
    }
}

/// The open connections of a server (for closing them and counting them).
final class ConnectionSet: @unchecked Sendable {
    private let state = Mutex<(channels: [ObjectIdentifier: Channel], closed: Bool)>(([:], false))

    var count: Int { state.withLock { $0.channels.count } }
    func add(_ channel: Channel) { state.withLock { $0.channels[ObjectIdentifier(channel)] = channel } }
    func remove(_ channel: Channel) { _ = state.withLock { $0.channels.removeValue(forKey: ObjectIdentifier(channel)) } }
    func all() -> [Channel] { state.withLock { Array($0.channels.values) } }
    /// Returns false when already closed.
    func markClosed() -> Bool {
        state.withLock {
            if $0.closed { return false }
            $0.closed = true
            return true
        }
    }
}

/// One server connection: handshake, then requests.
final class ServerConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = TCPFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case awaitingHello(ServerHandshake, attempts: Int)
        case awaitingProof(ServerHandshake)
        case ready(ServerSession)
        case closing
    }

    private var state: State
    private let limits: TransportLimits
    private let limit: FrameLimit
    private let regions: SharedRegionTable?
    private let connections: ConnectionSet
    private let admission: ConnectionAdmission
    private let refusals: LogThrottle
    private let budget: MessageBudget
    private var ticket: ConnectionAdmission.Ticket = 0
    private var pendingRead = false
    private var output: ByteBuffer? = nil
    private var peer = "unknown peer"
    private var handshakeTimer: Scheduled<Void>? = nil
    private var stallTimer: RepeatedTask? = nil
    /// Requests decoded while the channel was not writable, run once it is again.
    private var held: [TCPFrame] = []
    /// A quiet request ran since the router was last told the connection drained.
    private var quietRan = false
    private var draining = false
    /// The connection has ended: held requests run whether or not the channel is writable.
    private var ended = false
    /// Replies waiting in `output` beyond this are flushed at once, so writability reflects them.
    /// Flushing earlier costs throughput: 256 KiB took 16 × 64 KiB echoes from 11K to 7.5K ops/s.
    private static let flushBytes = TCPServer.writeHighMark

    /// The emulated link for clients without a label of `peerLinks`, and the links per label.
    private let link: LinkEmulation
    private let peerLinks: [String: LinkEmulation]

    init(
        key: ClusterKey, limits: TransportLimits, limit: FrameLimit, regions: SharedRegionTable?, router: RequestRouter,
        link: LinkEmulation, peerLinks: [String: LinkEmulation], connections: ConnectionSet, admission: ConnectionAdmission,
        refusals: LogThrottle, budget: MessageBudget
    ) {
        state = .awaitingHello(ServerHandshake(key: key), attempts: 0)
        self.link = link
        self.peerLinks = peerLinks
        self.limits = limits
        self.limit = limit
        self.regions = regions
        self.connections = connections
        self.admission = admission
        self.refusals = refusals
        self.budget = budget
        self.router = router
    }

    private let router: RequestRouter

    func channelActive(context: ChannelHandlerContext) {
        peer = "\(Self.text(context.remoteAddress)) to \(Self.text(context.localAddress))"
        connections.add(context.channel)
        let channel = context.channel
        let (peer, refusals) = (self.peer, self.refusals)
        ticket = admission.admit(address: context.remoteAddress?.ipAddress ?? "unknown address") {
            refusals.info("transport: dropped TCP connection from \(peer) in its handshake, to admit a newer one")
            channel.close(promise: nil)
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: .nanoseconds(limits.handshakeNanos)) {
            let (handler, context) = loopBound.value
            if case .ready = handler.state { return }
            handler.refuse(context, TransportError(.authenticationFailed, "no handshake within the time allowed"))
        }
        let period = max(10_000_000, min(1_000_000_000, min(limits.frameTimeoutNanos, limits.chunkTimeoutNanos) / 4))
        stallTimer = context.eventLoop.scheduleRepeatedTask(initialDelay: .nanoseconds(period), delay: .nanoseconds(period)) { _ in
            let (handler, context) = loopBound.value
            handler.checkStall(context)
        }
        context.fireChannelActive()
    }

    private static func text(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress, let port = address.port else { return "unknown address" }
        return "\(ip):\(port)"
    }

    /// Closes the connection when a frame has been incomplete for longer than the frame timeout,
    /// or a chunked message has waited for its next chunk longer than the chunk timeout. The
    /// clocks do not run while the server itself holds reads back.
    private func checkStall(_ context: ChannelHandlerContext) {
        let now = monotonicNanos()
        let holding = pendingRead || !held.isEmpty
        if case .ready(var session) = state, session.assembler.nextChunkDeadlineNanos != nil {
            if holding {
                session.assembler.restartChunkClocks(now: now)
                state = .ready(session)
            } else {
                do {
                    try session.assembler.checkChunkDeadline(now: now)
                } catch {
                    refuse(context, error)
                    return
                }
            }
        }
        guard limit.partialSinceNanos != 0 else { return }
        if holding {
            limit.partialSinceNanos = now
            return
        }
        let waited = now - limit.partialSinceNanos
        guard waited > limits.frameTimeoutNanos else { return }
        refuse(context, TransportError(.timedOut, "a frame stayed incomplete for \(waited / 1_000_000) ms"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A client that went away has every request it sent run, as over shared memory: a
        // writer whose process died right after sending a quiet append has handed its bytes
        // over (its kernel delivers them, then the end of the stream). Requests held back for
        // back-pressure are among them; their replies go nowhere.
        runHeldAtEnd(context)
        handshakeTimer?.cancel()
        stallTimer?.cancel()
        admission.remove(ticket)
        connections.remove(context.channel)
        context.fireChannelInactive()
    }

    /// Runs the requests held back, at the end of the connection (their replies go nowhere),
    /// and tells the router the connection drained. Inside `runHeld` (a close it caused ended
    /// the connection) it only marks the end, and `runHeld` runs the rest: each request once.
    private func runHeldAtEnd(_ context: ChannelHandlerContext) {
        ended = true
        if draining { return }
        runHeld(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if ended {
            // Decoded after the end (a write that failed closed the channel while the decoder
            // was mid-burst, and it delivers its leftovers after channelInactive): run it now.
            if case .ready = state {
                held.append(frame)
                runHeldAtEnd(context)
            }
            return
        }
        if case .ready = state, !held.isEmpty || !context.channel.isWritable {
            held.append(frame)
            return
        }
        do {
            try handle(frame, context: context)
        } catch {
            refuse(context, error)
        }
    }

    private func handle(_ frame: TCPFrame, context: ChannelHandlerContext) throws(TransportError) {
        let header = frame.header
        switch state {
        case .closing:
            return
        case .awaitingHello(var handshake, let attempts):
            guard header.opcode == Opcode.hello else {
                throw TransportError(.authenticationFailed, "expected a hello, got opcode 0x\(String(header.opcode, radix: 16))")
            }
            admission.spoke(ticket)
            do {
                let challenge = try handshake.challenge(hello: frame.payload)
                state = .awaitingProof(handshake)
                send(Opcode.challenge, [.response], header.requestID, challenge, version: ProtocolVersion.maximum)
            } catch where error.code == .unsupportedVersion && attempts < 3 {
                state = .awaitingHello(handshake, attempts: attempts + 1)
                send(Opcode.hello, [.response, .error], header.requestID, error.wirePayload, version: ProtocolVersion.maximum)
            }
        case .awaitingProof(let handshake):
            guard header.opcode == Opcode.proof else {
                throw TransportError(.authenticationFailed, "expected a proof, got opcode 0x\(String(header.opcode, radix: 16))")
            }
            let label = try handshake.verify(proof: frame.payload)
            try admission.authenticate(ticket)
            handshakeTimer?.cancel()
            limit.bytes = limits.framePayloadBytesMax
            // Frames from now on pass through this client's emulated link (its pair's, by label).
            let emulation = Handshake.link(forLabel: label, peerLinks: peerLinks, otherwise: link)
            if emulation.isActive {
                do {
                    try context.pipeline.syncOperations.addHandler(LinkEmulationHandler(emulation), position: .before(self))
                } catch {
                    throw TransportError(.internalError, "cannot emulate the link of \(peer): \(error)")
                }
            }
            state = .ready(ServerSession(limits: limits, version: handshake.version, router: router, budget: budget))
            send(Opcode.welcome, [.response], header.requestID, Handshake.welcome(emulation), version: handshake.version)
            // The link's handler now before this one holds read-completes back until it delivers
            // frames, so this read's completion (which would flush the welcome) never comes here.
            if emulation.isActive { flush(context) }
        case .ready(var session):
            guard !header.flags.contains(.reference) else {
                // A reference names memory on this machine; a remote peer has no business there.
                throw TransportError(.malformed, "a reference request over TCP (request \(header.requestID))")
            }
            state = .closing  // the session is moved out while it runs
            let outcome: ServerSession.Outcome
            do {
                outcome = try session.handle(header, frame.payload)
            } catch {
                state = .ready(session)  // so that refuse() logs and closes
                throw error
            }
            state = .ready(session)
            switch outcome {
            case .none: break
            case .quiet: quietRan = true
            case .goodbye:
                state = .closing  // before the flush, whose failure may end the connection
                flush(context)
                context.close(promise: nil)
            case .reply(let result):
                reply(to: header, materialize(result), version: session.version)
                session.router.drained?()
                if let output, output.readableBytes >= Self.flushBytes { flush(context) }
            }
        }
    }

    /// TCP cannot carry a reference: the bytes it names go instead.
    private func materialize(_ result: Result<Payload, TransportError>) -> Result<Payload, TransportError> {
        guard case .success(.reference(let reference)) = result else { return result }
        guard let regions else {
            return .failure(TransportError(.notFound, "reference reply but no regions are mapped here"))
        }
        do {
            return .success(.bytes(Array(try regions.resolve(reference))))
        } catch {
            return .failure(error)
        }
    }

    private func reply(to request: FrameHeader, _ result: Result<Payload, TransportError>, version: UInt8) {
        let (flags, bytes) = framePlan(result, chunkBytes: limits.chunkBytes)
        var buffer = output ?? ByteBufferAllocator().buffer(capacity: FrameHeader.byteCount + bytes.count)
        buffer.writeMessage(
            version: version, opcode: request.opcode, flags: flags.union(.response), requestID: request.requestID, bytes: bytes,
            chunkBytes: limits.chunkBytes)
        output = buffer
    }

    private func send(_ opcode: UInt8, _ flags: FrameFlags, _ requestID: UInt64, _ payload: [UInt8], version: UInt8) {
        reply(to: FrameHeader(version: version, opcode: opcode, flags: [], requestID: requestID, payloadByteCount: 0),
              flags.contains(.error) ? .failure(payload.withUnsafeBytes { TransportError(wirePayload: $0) }) : .success(.bytes(payload)),
              version: version)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context)
        routerDrained()
        context.fireChannelReadComplete()
    }

    /// Tells the router the connection ran what it had, after quiet requests (replied ones
    /// tell it as they are answered).
    private func routerDrained() {
        guard quietRan else { return }
        quietRan = false
        router.drained?()
    }

    private func flush(_ context: ChannelHandlerContext) {
        guard let buffer = output else { return }
        output = nil
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    // Back-pressure: hold reads while the peer is not taking our replies.
    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable && held.isEmpty {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { runHeld(context) }
        context.fireChannelWritabilityChanged()
    }

    /// Runs the requests held back while the channel was not writable, until it is not writable
    /// again (unless the connection ended) or none are left; then reads again if NIO asked to.
    /// A request that closes the connection (a goodbye, a refusal, a failed write) may end it
    /// inside this loop; `runHeldAtEnd` then leaves the rest to it, so `held` changes only here.
    private func runHeld(_ context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        var next = 0
        while next < held.count, ended || context.channel.isWritable {
            if case .closing = state { break }
            let frame = held[next]
            next += 1
            do {
                try handle(frame, context: context)
            } catch {
                refuse(context, error)
            }
        }
        held.removeFirst(next)
        draining = false
        if case .closing = state { held.removeAll() }
        if ended { held.removeAll() }
        flush(context)
        routerDrained()
        if !ended && held.isEmpty && pendingRead && context.channel.isWritable {
            pendingRead = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A connection the peer reset (an I/O error, not a protocol one) is closed as one that
        // ended: what it sent still runs (channelInactive). A protocol error refuses it.
        if case .ready = state, !(error is TransportError) {
            refusals.info("transport: closed TCP connection from \(peer): \(error)")
            context.close(promise: nil)
            return
        }
        refuse(context, error)
    }

    private func refuse(_ context: ChannelHandlerContext, _ error: any Error) {
        if case .closing = state { return }
        let wasReady: Bool
        if case .ready = state { wasReady = true } else { wasReady = false }
        state = .closing
        let reason = (error as? TransportError)?.description ?? "\(error)"
        refusals.info("transport: \(wasReady ? "closed" : "refused") TCP connection from \(peer): \(reason)")
        if !wasReady, let error = error as? TransportError, error.code == .authenticationFailed || error.code == .busy {
            send(Opcode.welcome, [.response, .error], 0, error.wirePayload, version: ProtocolVersion.maximum)
        }
        flush(context)
        context.close(promise: nil)
    }
}
