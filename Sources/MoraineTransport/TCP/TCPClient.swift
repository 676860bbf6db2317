// The client end of the TCP carrier. A connection is a NIO channel whose handler runs the
// handshake and then hands every decoded response to an inbox the caller's thread waits on.
// Sends are written from the caller's thread; when the channel is not writable (the server is
// not keeping up), `send` waits for writability instead of buffering without bound.
//
// When the connection drops, every request in flight fails with `unavailable`; the next `send`
// reconnects, retrying with exponential backoff (ReconnectPolicy) before it gives up.
//
// Thread-safety: one caller thread at a time (see TransportClient); the inbox is shared with
// the event loop under a lock.
import MoraineSystem
import NIOCore
import NIOPosix
import Synchronization

/// How a TCP client retries a lost connection.
public struct ReconnectPolicy: Sendable {
    /// Attempts before `send` gives up with `unavailable`.
    public var attempts = 6
    /// The first wait; each further wait doubles, up to `maximumDelayNanos`.
    public var initialDelayNanos: Int64 = 10_000_000
    public var maximumDelayNanos: Int64 = 1_000_000_000

    public init() {}

    /// Runs `connect` until it succeeds, waiting between attempts with exponential backoff (both
    /// TCP clients reconnect this way). A wrong key or setup (`authenticationFailed`, `invalid`)
    /// fails the same way every time and is thrown at once.
    /// - Throws: `.unavailable` naming the last failure once every attempt failed.
    func retry(_ connect: () throws(TransportError) -> Void) throws(TransportError) {
        var delay = initialDelayNanos
        var last = TransportError(.unavailable, "not connected")
        for attempt in 0..<attempts {
            if attempt > 0 {
                sleepNanos(delay)
                delay = min(delay * 2, maximumDelayNanos)
            }
            do {
                try connect()
                return
            } catch where error.code == .authenticationFailed || error.code == .invalid {
                throw error
            } catch {
                last = error
            }
        }
        throw TransportError(.unavailable, "gave up after \(attempts) attempts: \(last.message)")
    }
}

/// A connection to a `TCPServer`.
public final class TCPClient: TransportClient {
    private let host: String
    private let port: Int
    private let key: ClusterKey
    private let limits: TransportLimits
    private let regions: SharedRegionTable?
    private let tls: TransportTLS?
    private let reconnect: ReconnectPolicy
    private let link: LinkEmulation
    /// The current connection's inbox (a new one per connection, so a late event of a lost
    /// connection cannot touch the next).
    private var inbox = ClientInbox()
    /// Requests the lost connection took with them, answered `unavailable` when asked for.
    private var lost = Set<UInt64>()
    private var channel: Channel? = nil
    private var version: UInt8 = ProtocolVersion.maximum
    private var nextID: UInt64 = 1
    private var pending = Set<UInt64>()
    private var stash = ResponseStash()
    private var closed = false
    /// How many times this client has (re)connected.
    public private(set) var connectCount = 0

    public var inFlightCount: Int { pending.count }

    /// Connects and authenticates both ways. `link` emulates the link responses travel over.
    /// - Throws: `.unavailable` when nothing listens, `.authenticationFailed` when either side
    ///   lacks the key.
    public init(
        host: String = "127.0.0.1", port: Int, key: ClusterKey, limits: TransportLimits = TransportLimits(),
        regions: SharedRegionTable? = nil, tls: TransportTLS? = nil, reconnect: ReconnectPolicy = ReconnectPolicy(),
        link: LinkEmulation = .none
    ) throws(TransportError) {
        self.host = host
        self.port = port
        self.key = key
        self.limits = limits
        self.regions = regions
        self.tls = tls
        self.reconnect = reconnect
        self.link = link
        try limits.check()
        try connect()
    }

    deinit { close() }

    private func connect() throws(TransportError) {
        let inbox = ClientInbox()
        self.inbox = inbox
        let (key, limits) = (self.key, self.limits)
        let tlsContext = try tls?.makeClientContext()
        let (host, link) = (self.host, self.link)
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
        for (option, value) in TCPKeepalive.options(idleSeconds: limits.keepaliveIdleSeconds) {
            bootstrap = bootstrap.channelOption(option, value: value)
        }
        bootstrap = bootstrap
            .connectTimeout(.nanoseconds(limits.handshakeNanos))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let limit = FrameLimit(Handshake.framePayloadLimit)
                    if let tlsContext { try tlsContext.addClientHandler(to: channel, serverHostname: host) }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(limit: limit)))
                    if link.isActive { try channel.pipeline.syncOperations.addHandler(LinkEmulationHandler(link)) }
                    try channel.pipeline.syncOperations.addHandler(
                        ClientConnectionHandler(key: key, limits: limits, limit: limit, inbox: inbox))
                }
            }
        let channel: Channel
        do {
            channel = try bootstrap.connect(host: host, port: port).wait()
        } catch {
            throw TransportError(.unavailable, "cannot connect to \(host):\(port): \(error)")
        }
        do {
            version = try inbox.waitForHandshake(timeoutNanos: limits.handshakeNanos)
        } catch {
            channel.close(promise: nil)
            throw error
        }
        self.channel = channel
        connectCount += 1
    }

    /// Reconnects with backoff after the connection was lost.
    private func reconnectWithBackoff() throws(TransportError) {
        try reconnect.retry { () throws(TransportError) in try connect() }
    }

    public func send(opcode: UInt8, payload: Payload) throws(TransportError) -> UInt64 {
        if closed { throw TransportError(.closed, "the client was closed") }
        guard pending.count < limits.inFlightMax else {
            throw TransportError(.tooManyInFlight, "\(pending.count) requests in flight; the limit is \(limits.inFlightMax)")
        }
        if channel == nil || inbox.lostConnection != nil {
            failPending()
            try reconnectWithBackoff()
        }
        let bytes: [UInt8]
        switch payload {
        case .bytes(let array): bytes = array
        case .reference(let reference):
            guard let regions else { throw TransportError(.notFound, "a reference needs the region table it points into") }
            bytes = Array(try regions.resolve(reference))
        }
        guard bytes.count <= limits.messageBytesMax else {
            throw TransportError(.frameTooLarge, "request of \(bytes.count) bytes exceeds the limit of \(limits.messageBytesMax)")
        }
        let id = nextID
        nextID &+= 1
        var buffer = ByteBufferAllocator().buffer(capacity: FrameHeader.byteCount + bytes.count)
        buffer.writeMessage(version: version, opcode: opcode, flags: [], requestID: id, bytes: bytes, chunkBytes: limits.chunkBytes)
        guard let channel else { throw TransportError(.unavailable, "not connected") }
        do {
            try inbox.waitForWritability(timeoutNanos: limits.sendTimeoutNanos)
        } catch {
            failPending()
            throw error
        }
        channel.writeAndFlush(buffer, promise: nil)
        pending.insert(id)
        return id
    }

    public func receive(requestID: UInt64?, timeoutNanos: Int64?) throws(TransportError) -> Response {
        if let response = stash.take(requestID) { return response }
        if closed { throw TransportError(.closed, "the client was closed") }
        if let requestID, lost.remove(requestID) != nil {
            throw TransportError(.unavailable, "request \(requestID) was lost with the connection")
        }
        if let requestID { precondition(pending.contains(requestID), "request \(requestID) is not in flight") }
        let deadline = timeoutNanos.map { monotonicNanos() + $0 }
        while true {
            let message: ReceivedMessage
            do {
                message = try inbox.take(deadline: deadline)
            } catch where error.code == .unavailable {
                failPending()
                throw error
            }
            guard pending.remove(message.requestID) != nil else { continue }
            let response = Response(requestID: message.requestID, result: message.payload)
            if requestID == nil || requestID == message.requestID { return response }
            stash.put(response)
        }
    }

    /// Forgets requests the lost connection took with it.
    private func failPending() {
        lost.formUnion(pending)
        pending.removeAll()
        channel?.close(promise: nil)
        channel = nil
    }

    public func close() {
        guard !closed else { return }
        closed = true
        if let channel, inbox.lostConnection == nil {
            var buffer = ByteBufferAllocator().buffer(capacity: FrameHeader.byteCount)
            buffer.writeFrame(
                version: version, opcode: Opcode.goodbye, flags: [], requestID: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        }
        channel = nil
    }
}

/// Where the event loop leaves responses for the caller's thread.
final class ClientInbox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var messages: [ReceivedMessage] = []
    private var head = 0
    private var handshake: Result<UInt8, TransportError>? = nil
    private(set) var lostConnectionError: TransportError? = nil
    private var writable = true

    var lostConnection: TransportError? { lock.withLock { lostConnectionError } }

    func handshakeDone(_ result: Result<UInt8, TransportError>) {
        lock.withLock {
            if handshake == nil { handshake = result }
            lock.broadcast()
        }
    }

    func deliver(_ message: ReceivedMessage) {
        lock.withLock {
            messages.append(message)
            lock.broadcast()
        }
    }

    func connectionLost(_ error: TransportError) {
        lock.withLock {
            if lostConnectionError == nil { lostConnectionError = error }
            if handshake == nil { handshake = .failure(error) }
            lock.broadcast()
        }
    }

    func setWritable(_ value: Bool) {
        lock.withLock {
            writable = value
            lock.broadcast()
        }
    }

    func waitForHandshake(timeoutNanos: Int64) throws(TransportError) -> UInt8 {
        let deadline = monotonicNanos() + timeoutNanos
        let result: Result<UInt8, TransportError> = lock.withLock {
            while handshake == nil {
                let left = deadline - monotonicNanos()
                if left <= 0 { return .failure(TransportError(.timedOut, "no handshake within \(timeoutNanos) ns")) }
                lock.wait(seconds: Double(left) / 1e9)
            }
            return handshake!
        }
        return try result.get()
    }

    /// Waits while the channel is not writable (the server is not reading).
    /// - Throws: the lost connection's error, or `.timedOut` after `timeoutNanos`.
    func waitForWritability(timeoutNanos: Int64) throws(TransportError) {
        let failure: TransportError? = lock.withLock {
            var deadline: Int64? = nil
            while !writable && lostConnectionError == nil {
                let now = monotonicNanos()
                if deadline == nil { deadline = now + timeoutNanos }
                if now >= deadline! {
                    return TransportError(
                        .timedOut, "the server read no request for \(timeoutNanos / 1_000_000) ms; connection given up")
                }
                lock.wait(seconds: min(0.05, Double(deadline! - now) / 1e9))
            }
            return lostConnectionError
        }
        if let failure { throw failure }
    }

    /// The next response; waits until one arrives, the deadline passes, or the connection is lost.
    func take(deadline: Int64?) throws(TransportError) -> ReceivedMessage {
        let result: Result<ReceivedMessage, TransportError> = lock.withLock {
            while head == messages.count {
                if let lostConnectionError { return .failure(lostConnectionError) }
                if let deadline {
                    let left = deadline - monotonicNanos()
                    if left <= 0 { return .failure(TransportError(.timedOut, "no response in time")) }
                    lock.wait(seconds: Double(left) / 1e9)
                } else {
                    lock.wait()
                }
            }
            let message = messages[head]
            head += 1
            if head == messages.count {
                messages.removeAll(keepingCapacity: true)
                head = 0
            }
            return .success(message)
        }
        return try result.get()
    }
}

/// The client's pipeline handler: handshake, then responses to the inbox.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = TCPFrame
    typealias OutboundOut = ByteBuffer

    private var handshake: ClientHandshake
    private var ready = false
    /// Set once the server's challenge proved it holds the key; a welcome before that is refused.
    private var answered = false
    private var assembler: MessageAssembler
    private let limits: TransportLimits
    private let limit: FrameLimit
    private let inbox: ClientInbox

    init(key: ClusterKey, limits: TransportLimits, limit: FrameLimit, inbox: ClientInbox) {
        handshake = ClientHandshake(key: key)
        assembler = MessageAssembler(limits: limits)
        self.limits = limits
        self.limit = limit
        self.inbox = inbox
    }

    func channelActive(context: ChannelHandlerContext) {
        write(context, Opcode.hello, handshake.hello())
        context.fireChannelActive()
    }

    private func write(_ context: ChannelHandlerContext, _ opcode: UInt8, _ payload: [UInt8]) {
        var buffer = context.channel.allocator.buffer(capacity: FrameHeader.byteCount + payload.count)
        payload.withUnsafeBytes {
            buffer.writeFrame(version: ProtocolVersion.maximum, opcode: opcode, flags: [], requestID: 0, payload: $0)
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        do {
            if ready {
                guard frame.header.flags.contains(.response) else {
                    throw TransportError(.malformed, "the server sent a request frame")
                }
                if let message = try assembler.add(frame.header, payload: frame.payload) { inbox.deliver(message) }
                return
            }
            if frame.header.flags.contains(.error) {
                throw frame.payload.withUnsafeBytes { TransportError(wirePayload: $0) }
            }
            switch frame.header.opcode {
            case Opcode.challenge:
                guard !answered else { throw TransportError(.malformed, "a second challenge in the handshake") }
                write(context, Opcode.proof, try handshake.answer(challenge: frame.payload))
                answered = true
            case Opcode.welcome:
                guard answered else {
                    throw TransportError(.authenticationFailed, "the server welcomed us before proving it holds the key")
                }
                ready = true
                limit.bytes = limits.framePayloadBytesMax
                inbox.handshakeDone(.success(handshake.version))
            default:
                throw TransportError(.malformed, "unexpected opcode 0x\(String(frame.header.opcode, radix: 16)) in the handshake")
            }
        } catch let error as TransportError {
            fail(context, error)
        } catch {
            fail(context, TransportError(.internalError, "\(error)"))
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        inbox.setWritable(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbox.connectionLost(TransportError(.unavailable, "the connection to the server was lost"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context, (error as? TransportError) ?? TransportError(.unavailable, "\(error)"))
    }

    private func fail(_ context: ChannelHandlerContext, _ error: TransportError) {
        inbox.connectionLost(error)
        context.close(promise: nil)
    }
}


#if canImport(Glibc)
    import Glibc
#endif
