// `/metrics` over HTTP/1.1 on SwiftNIO: GET (or HEAD) /metrics answers the exporter's scrape in
// Prometheus' text format (version 0.0.4); / answers a line pointing there; anything else is 404
// and a method other than GET or HEAD 405. Keep-alive as the client asks. One event loop thread:
// a scrape is a few reads of counters.
//
// Thread-safety: the handler runs on its channel's event loop; `close` may be called from any
// thread.
import MoraineSystem
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

public final class MetricsServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    private let closed = Atomic<Bool>(false)
    public let host: String
    /// The bound port (useful when 0 was asked for).
    public let port: Int
    public let exporter: MetricsExporter

    /// Binds `host:port` (port 0: any) and serves `exporter`.
    /// - Throws: `.unavailable` naming the address when it cannot be bound.
    public init(host: String, port: Int, exporter: MetricsExporter) throws(MoraineError) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(exporter: exporter))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw MoraineError(.unavailable, "metrics: cannot listen on \(host):\(port): \(error)")
        }
        self.group = group
        self.host = host
        self.port = channel.localAddress?.port ?? port
        self.exporter = exporter
    }

    /// Where to scrape.
    public var address: String { "\(host):\(port)" }

    deinit { close() }

    /// Stops listening and closes the connections. Idempotent.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let exporter: MetricsExporter
    private var head: HTTPRequestHead?

    init(exporter: MetricsExporter) { self.exporter = exporter }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context, head)
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        let body: [UInt8]
        if head.method != .GET && head.method != .HEAD {
            (status, contentType, body) = (.methodNotAllowed, "text/plain; charset=utf-8", Array("only GET and HEAD\n".utf8))
        } else if path == "/metrics" {
            (status, contentType, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", exporter.scrape())
        } else if path == "/" {
            (status, contentType, body) = (.ok, "text/plain; charset=utf-8", Array("Moraine metrics: GET /metrics\n".utf8))
        } else {
            (status, contentType, body) = (.notFound, "text/plain; charset=utf-8", Array("not found: \(path) (try /metrics)\n".utf8))
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
