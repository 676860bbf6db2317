// `--metrics HOST:PORT` for every long-running command (`node` of each role, `serve`): a
// `/metrics` server (MoraineMetrics) fed by the process's sources, and swift-metrics bootstrapped
// into the same registry. The process prints `metrics HOST:PORT` (the bound port, when 0 was
// asked for) after its endpoint line, which is how `moraine up` learns where each role serves.
import ArgumentParser
import MoraineMetrics
import MoraineSystem
import Synchronization

struct MetricsOptions: ParsableArguments {
    @Option(
        help: """
            Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any); the process prints `metrics HOST:PORT` \
            after its endpoint.
            """)
    var metrics: String?

    func validate() throws {
        if let metrics { _ = try RESPFrontEndOptions.address(metrics, flag: "--metrics") }
    }

    /// The exporter and, once started, its server; nil without --metrics.
    func exporter() throws -> MetricsEndpoint? {
        guard let metrics else { return nil }
        let (host, port) = try RESPFrontEndOptions.address(metrics, flag: "--metrics")
        return MetricsEndpoint(host: host, port: port)
    }
}

/// One process's metrics: sources are added as the process builds its parts; `start` listens.
final class MetricsEndpoint: Sendable {
    let exporter = MetricsExporter()
    let host: String
    let port: Int
    private let server = Mutex<MetricsServer?>(nil)

    init(host: String, port: Int) {
        self.host = host
        self.port = port
        exporter.bootstrapSwiftMetrics()
    }

    /// Starts the server (once).
    /// - Throws: the address cannot be bound.
    func start() throws {
        try server.withLock { server in
            if server == nil { server = try MetricsServer(host: host, port: port, exporter: exporter) }
        }
    }

    /// A role's hook: its source joins the exporter, then the server starts.
    var hook: MetricsHook {
        { [self] source in
            exporter.add(source)
            try start()
            return { [self] in stop() }
        }
    }

    func stop() { server.withLock { $0 }?.close() }

    /// The line the process prints once it serves.
    var announcement: String { "metrics \(host):\(server.withLock { $0?.port } ?? port)" }
}
