// The RESP front end's network side, on SwiftNIO: each connection's bytes are framed by a
// RESPParser; the commands framed from one read run as one batch, and the batch's replies go out
// in one write, in order. Where a batch runs (docs/RESP.md): a batch of reads on the connection's
// event loop (one per core; where files are remote, only when memory answers it, else on the
// pool); a batch of writes only prepared on the loop and queued into the engine's group commit
// without sleeping (`RESPService.Settings`), its replies written when the write lands; any other
// batch that writes on a thread pool (a write waits for its group commit). A connection runs one
// batch at a time, so its commands run in the order sent (pipelining keeps its meaning); while a
// batch runs, further bytes wait, and past `pendingBytesMax` of them the connection stops reading
// until the batch is done, so a client cannot make the server hold more than one bounded request
// and a bounded backlog.
//
// A request that breaks the protocol gets `-ERR Protocol error: …` and the connection closes (its
// later bytes cannot be framed); a command error gets `-ERR …` and the connection goes on.
//
// Thread-safety: a connection's handler runs on its event loop; batches run on the pool, or are
// completed by the thread that led their group commit, and hand their replies back to the loop.
// `close` may be called from any thread; it waits for queued writes before stopping the loops.
import MoraineSystem
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Serves a RESPService over TCP.
public final class RESPServer: @unchecked Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let pool: NIOThreadPool
    private let channel: Channel
    private let children = ChildChannels()
    /// Batches of writes queued into the group commit and not yet answered: `close` waits for
    /// them before it stops the event loops their replies go to.
    private let queuedWrites = QueuedWrites()
    private let closed = Atomic<Bool>(false)
    /// The bound port (useful when 0 was asked for).
    public let port: Int

    /// Bytes a connection may have waiting behind its running batch before it stops reading.
    static let pendingBytesMax = 1 << 20

    /// Binds `host:port` and starts serving `service`.
    /// - Throws: `unavailable` when the address cannot be bound.
    public init(
        host: String = "127.0.0.1", port: Int, service: RESPService, limits: RESPLimits = RESPLimits(), eventLoopThreads: Int = System.coreCount,
        poolThreads: Int = 16
    ) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoopThreads)
        let pool = NIOThreadPool(numberOfThreads: poolThreads)
        pool.start()
        let children = self.children
        let queuedWrites = self.queuedWrites
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let address = channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
                    let handler = RESPConnectionHandler(
                        service: service, pool: pool, limits: limits, address: address, queuedWrites: queuedWrites)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    let id = ObjectIdentifier(channel)
                    children.channels.withLock { $0[id] = channel }
                    channel.closeFuture.whenComplete { _ in _ = children.channels.withLock { $0.removeValue(forKey: id) } }
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? pool.syncShutdownGracefully()
            try? group.syncShutdownGracefully()
            throw MoraineError(.unavailable, "cannot listen on \(host):\(port): \(error)")
        }
        self.group = group
        self.pool = pool
        self.port = channel.localAddress?.port ?? port
        service.boundPort.store(self.port, ordering: .relaxed)
    }

    deinit { close() }

    /// Stops accepting, closes every connection (after the batch each is running), and stops the
    /// threads. Idempotent.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? channel.close().wait()
        for child in children.channels.withLock({ Array($0.values) }) { try? child.close().wait() }
        // A queued write completes on its event loop: let those in flight land first (a group
        // commit takes milliseconds; a stalled engine gets ten seconds).
        let deadline = monotonicNanos() + 10_000_000_000
        while queuedWrites.count.load(ordering: .acquiring) > 0 && monotonicNanos() < deadline { usleep(1000) }
        try? pool.syncShutdownGracefully()
        try? group.syncShutdownGracefully()
    }

    /// Waits until the listening socket closes (by `close`, from another thread).
    public func waitUntilClosed() { try? channel.closeFuture.wait() }
}

/// The open connections, for closing them.
final class ChildChannels: Sendable {
    let channels = Mutex<[ObjectIdentifier: Channel]>([:])
}

/// Batches of writes queued and not yet answered.
final class QueuedWrites: Sendable {
    let count = Atomic<Int>(0)
}

/// One connection: frames requests, runs them a batch at a time, writes the replies.
final class RESPConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let service: RESPService
    let pool: NIOThreadPool
    let address: String
    private var parser: RESPParser
    private var session: RESPSession? = nil
    /// Received bytes not yet framed.
    private var unframed: [UInt8] = []
    /// Commands framed, waiting for the running batch.
    private var waiting: [[[UInt8]]] = []
    private var waitingBytes = 0
    private var running = false
    private var closing = false

    let queuedWrites: QueuedWrites

    init(service: RESPService, pool: NIOThreadPool, limits: RESPLimits, address: String, queuedWrites: QueuedWrites) {
        self.service = service
        self.pool = pool
        self.address = address
        self.queuedWrites = queuedWrites
        parser = RESPParser(limits: limits)
    }

    func channelActive(context: ChannelHandlerContext) {
        guard let session = service.open(address: address) else {
            send(context, RESPReply.error("ERR max number of clients reached"), thenClose: true)
            return
        }
        self.session = session
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let session { service.close(session) }
        session = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing, session != nil else { return }
        let buffer = unwrapInboundIn(data)
        do {
            // Framed in place from the read's buffer when no partial command waits (the usual
            // case); only the unframed rest is copied and kept.
            let commands: [[[UInt8]]]
            if unframed.isEmpty {
                (commands, unframed) = try buffer.withUnsafeReadableBytes { raw throws(RESPProtocolError) in
                    let (commands, consumed) = try parser.parse(raw)
                    return (commands, consumed == raw.count ? [] : Array(raw[consumed...]))
                }
            } else {
                buffer.withUnsafeReadableBytes { unframed.append(contentsOf: $0) }
                let consumed: Int
                (commands, consumed) = try unframed.withUnsafeBytes { raw throws(RESPProtocolError) in try parser.parse(raw) }
                if consumed > 0 { unframed.removeFirst(consumed) }
            }
            for command in commands {
                waitingBytes += command.reduce(0) { $0 + $1.count }
                waiting.append(command)
            }
        } catch let error as RESPProtocolError {
            // Run what came before the bad bytes, then answer the error and close.
            closing = true
            let reply = RESPReply.error("ERR \(error.description)")
            runBatch(context, then: reply)
            return
        } catch {
            closing = true
            let reply = RESPReply.error("ERR \(error)")
            runBatch(context, then: reply)
            return
        }
        if waitingBytes + unframed.count > RESPServer.pendingBytesMax { context.channel.setOption(.autoRead, value: false).whenComplete { _ in } }
        if !running { runBatch(context, then: nil) }
    }

    /// Runs every waiting command as one batch on the pool, writes their replies (and `final`,
    /// then closes, when given).
    private func runBatch(_ context: ChannelHandlerContext, then final: RESPReply?) {
        guard let session else { return }
        let batch = waiting
        waiting = []
        waitingBytes = 0
        if batch.isEmpty && final == nil { return }
        running = true
        let service = self.service
        let loop = context.eventLoop
        // A batch of reads runs here on the event loop: no hop to the pool and back (two
        // wake-ups across CPUs). Reads block only on a block-cache miss. Writes wait for their
        // group commit, so they go to the pool, unless the service runs plain writes here while
        // the database expects no stall (`RESPService.Settings.writesOnEventLoop`).
        // Where files are remote, a batch of reads runs here only if memory answers it.
        let work: EventLoopFuture<[UInt8]>
        if final == nil && RESPService.readsOnly(batch) {
            if !service.settings.memoryOnlyReadsOnEventLoop {
                work = loop.makeSucceededFuture(service.execute(batch, session: session))
            } else if let out = service.executeFromMemory(batch, session: session) {
                work = loop.makeSucceededFuture(out)
            } else {
                work = pool.runIfActive(eventLoop: loop) { service.execute(batch, session: session) }
            }
        } else if final == nil, let lead = service.writesFromEventLoop(batch), let writes = service.prepareWrites(batch, session: session) {
            // Writes only: their reads done here, the batch queued without waiting for another
            // loop's group commit; the replies go out once it is applied (its leader completes
            // the promise).
            let promise = loop.makePromise(of: [UInt8].self)
            let pool = self.pool
            let queuedWrites = self.queuedWrites
            queuedWrites.count.add(1, ordering: .relaxed)
            service.apply(writes, lead: lead) { out in
                if let out {
                    promise.succeed(out)
                } else {
                    promise.completeWith(pool.runIfActive(eventLoop: loop) { service.execute(batch, session: session) })
                }
                queuedWrites.count.subtract(1, ordering: .releasing)
            }
            work = promise.futureResult
        } else if final == nil && service.runsOnEventLoop(batch) {
            work = loop.makeSucceededFuture(service.execute(batch, session: session))
        } else {
            work = pool.runIfActive(eventLoop: loop) { service.execute(batch, session: session) }
        }
        work.whenComplete { [self] result in
            running = false
            var out = (try? result.get()) ?? []
            if case .failure = result { RESPReply.error("ERR the server is stopping").encode(into: &out) }
            if let final { final.encode(into: &out) }
            let close = final != nil || session.closeAfterReply || (try? result.get()) == nil
            var buffer = context.channel.allocator.buffer(capacity: out.count)
            buffer.writeBytes(out)
            if close {
                closing = true
                context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in context.close(promise: nil) }
                return
            }
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
            context.channel.setOption(.autoRead, value: true).whenComplete { _ in }
            if !waiting.isEmpty { runBatch(context, then: nil) }
        }
    }

    private func send(_ context: ChannelHandlerContext, _ reply: RESPReply, thenClose: Bool) {
        var out: [UInt8] = []
        reply.encode(into: &out)
        var buffer = context.channel.allocator.buffer(capacity: out.count)
        buffer.writeBytes(out)
        closing = thenClose
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in if thenClose { context.close(promise: nil) } }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
