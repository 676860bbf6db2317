// An endpoint's carrier, reached or served: the one place that turns `shm:` and `tcp:` into a
// shared-memory or TCP client or server, so every role and client connects and listens alike.
import MoraineTransport

/// A server listening on an endpoint, until `close`.
public struct EndpointServer: Sendable {
    /// Where it listens (a TCP port 0 resolved to the port it got).
    public let endpoint: Endpoint
    private let stop: @Sendable () -> Void

    init(endpoint: Endpoint, stop: @escaping @Sendable () -> Void) {
        self.endpoint = endpoint
        self.stop = stop
    }

    /// Stops accepting and closes every connection (each finishes the request it runs).
    public func close() { stop() }
}

extension Endpoint {
    /// A new authenticated connection to the role at this endpoint.
    /// - Throws: `unavailable` when nothing answers there, `authenticationFailed` on a wrong key.
    public func connect(
        key: ClusterKey, limits: TransportLimits = TransportLimits(), link: LinkEmulation = .none
    ) throws(TransportError) -> any TransportClient {
        switch self {
        case .sharedMemory(let path): try SharedMemoryClient(socketPath: path, key: key, limits: limits, link: link)
        case .tcp(let host, let port): try DirectTCPClient(host: host, port: port, key: key, limits: limits, link: link)
        }
    }

    /// Serves `router` on this endpoint; `link` is emulated with every client, or the entry
    /// of `peerLinks` for the role label a client presents (one link per pair of roles).
    /// - Throws: why it cannot listen there (a socket path in use, a port taken, …).
    public func serve(
        key: ClusterKey, link: LinkEmulation = .none, peerLinks: [String: LinkEmulation] = [:], router: RequestRouter
    ) throws(TransportError) -> EndpointServer {
        switch self {
        case .sharedMemory(let path):
            let server = try SharedMemoryServer(socketPath: path, key: key, link: link, peerLinks: peerLinks, router: router)
            return EndpointServer(endpoint: self, stop: { server.close() })
        case .tcp(let host, let port):
            let server = try TCPServer(host: host, port: port, key: key, link: link, peerLinks: peerLinks, router: router)
            return EndpointServer(endpoint: .tcp(host: host, port: server.port), stop: { server.close() })
        }
    }
}
