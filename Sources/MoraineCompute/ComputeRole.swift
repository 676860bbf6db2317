// The compute node as a process: pin to a NUMA node (before any thread starts), load the cluster
// key, listen on one endpoint, print it, and serve its clients' databases until SIGTERM, SIGINT
// or SIGHUP; then stop accepting, let each connection finish the request it runs, release every
// lease and close every database (a clean close: the next open has nothing to recover but what
// the durability mode keeps in logs or the region).
import MoraineEngine
import MoraineMessages
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// What `moraine node --role compute` was asked to do.
public struct ComputeRoleConfiguration: Sendable {
    /// The cluster whose storage node, memory node and workers hold the databases (nil: the
    /// databases are directories under `dataDirectory` on this machine).
    public var runDirectory: String?
    public var dataDirectory: String?
    public var endpoint: Endpoint
    public var clusterKeyPath: String
    public var numaNode: Int?
    public var link: LinkEmulation = .none
    /// The link per peer role (by the label its connections present), in place of `link`.
    public var peerLinks: [String: LinkEmulation] = [:]
    /// Exports the role's metrics (`--metrics`); nil: none.
    public var metrics: MetricsHook? = nil
    /// The options every database opens with (durability, write buffer, cache, …).
    public var options = Options()
    public var sessionTTLMillis: UInt32 = 10_000

    public init(runDirectory: String?, dataDirectory: String?, endpoint: Endpoint, clusterKeyPath: String, numaNode: Int? = nil) {
        self.runDirectory = runDirectory
        self.dataDirectory = dataDirectory
        self.endpoint = endpoint
        self.clusterKeyPath = clusterKeyPath
        self.numaNode = numaNode
    }

    /// How the node opens a database by name.
    public var nodeConfiguration: ComputeNodeConfiguration {
        let options = self.options
        var configuration: ComputeNodeConfiguration
        if let runDirectory {
            let owner = "compute node pid \(getpid())"
            configuration = ComputeNodeConfiguration { name in
                (name, try ClusterAttachment.options(options, database: name, runDirectory: runDirectory, owner: owner))
            }
        } else {
            configuration = .local(directory: dataDirectory ?? ".", options: options)
        }
        configuration.sessionTTLMillis = sessionTTLMillis
        return configuration
    }
}

/// Runs a compute node in this process.
public enum ComputeRole {
    /// Serves until a stopping signal. Call from the main thread before any other thread
    /// exists. `frontEnd` starts what else serves the node's databases (its Redis front end)
    /// before the node announces itself, and returns how to stop it (called before the node
    /// closes its databases). `announce` gets the endpoint once the node listens.
    /// - Throws: a configuration the node cannot start with, named.
    public static func run(
        _ configuration: ComputeRoleConfiguration, frontEnd: (ComputeNode) throws -> (() -> Void)? = { _ in nil },
        announce: (Endpoint) -> Void
    ) throws {
        TerminationSignals.block()
        if let node = configuration.numaNode { try NUMATopology.pinProcess(toNode: node) }
        let key = try ClusterKey.load(path: configuration.clusterKeyPath)
        let node = ComputeNode(configuration: configuration.nodeConfiguration)
        let server = try configuration.endpoint.serve(key: key, link: configuration.link, peerLinks: configuration.peerLinks, router: node.router())
        let stopFrontEnd: (() -> Void)?
        do {
            stopFrontEnd = try frontEnd(node)
        } catch {
            server.close()
            try? node.close()
            throw error
        }
        SystemLog.info(
            "compute node: serving databases "
                + (configuration.runDirectory.map { "of the cluster in \($0)" } ?? "under \(configuration.dataDirectory ?? ".")")
                + " on \(server.endpoint)")
        let stopMetrics: (@Sendable () -> Void)?
        do {
            stopMetrics = try configuration.metrics?({ [node] in node.metricSamples() })
        } catch {
            stopFrontEnd?()
            server.close()
            try? node.close()
            throw error
        }
        announce(server.endpoint)
        let signal = TerminationSignals.wait()
        SystemLog.info("compute node: \(TerminationSignals.name(signal)): stopping on \(server.endpoint)")
        stopFrontEnd?()
        stopMetrics?()
        server.close()
        try node.close()
    }
}
