// Where a role listens, written the way every command and topology file spells it:
// `shm:PATH` (a Unix socket, then shared-memory rings, on this machine) or `tcp:HOST:PORT`.
//
// Value type; no shared state.
import MoraineTransport

/// A role's address on one of the two carriers.
public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
    case sharedMemory(socketPath: String)
    case tcp(host: String, port: Int)

    /// Parses `shm:PATH` or `tcp:HOST:PORT` (an IPv6 host in brackets: `tcp:[::1]:7400`).
    /// - Throws: `.invalid` naming what is wrong with the text.
    public init(parsing text: String) throws(TransportError) {
        if text.hasPrefix("shm:") {
            let path = String(text.dropFirst(4))
            guard !path.isEmpty else { throw TransportError(.invalid, "endpoint \(text): no socket path after shm:") }
            self = .sharedMemory(socketPath: path)
            return
        }
        guard text.hasPrefix("tcp:") else {
            throw TransportError(.invalid, "endpoint \(text): expected shm:PATH or tcp:HOST:PORT")
        }
        let rest = text.dropFirst(4)
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (0...65535).contains(port)
        else {
            throw TransportError(.invalid, "endpoint \(text): expected tcp:HOST:PORT with a port from 0 to 65535")
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw TransportError(.invalid, "endpoint \(text): no host") }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .sharedMemory(let path): "shm:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }

    /// The carrier's name, as `moraine status` shows it.
    public var carrier: String {
        switch self {
        case .sharedMemory: "shm"
        case .tcp: "tcp"
        }
    }
}
