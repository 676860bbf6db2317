// A storage node as a process: pin to a NUMA node (before any thread starts, so every thread
// and page follows), open the data directory, listen on one endpoint, print it, and serve until
// SIGTERM, SIGINT or SIGHUP; then stop accepting, let every connection finish the request it is
// running, and return. The same `StorageNode` serves in-process in tests.
import MoraineMessages
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// What `moraine node --role storage` was asked to do.
public struct StorageRoleConfiguration: Sendable {
    public var dataDirectory: String
    public var endpoint: Endpoint
    public var clusterKeyPath: String
    public var numaNode: Int?
    public var link: LinkEmulation = .none
    /// The link per peer role (by the label its connections present), in place of `link`.
    public var peerLinks: [String: LinkEmulation] = [:]
    /// Exports the role's metrics (`--metrics`); nil: none.
    public var metrics: MetricsHook? = nil
    /// Storage tiers for the databases' tables (`--tiers`); empty: none.
    public var tiers: [StorageNodeTier] = []
    /// Read files with O_DIRECT (`--direct-reads`).
    public var directReads = false

    public init(dataDirectory: String, endpoint: Endpoint, clusterKeyPath: String, numaNode: Int? = nil) {
        self.dataDirectory = dataDirectory
        self.endpoint = endpoint
        self.clusterKeyPath = clusterKeyPath
        self.numaNode = numaNode
    }
}

/// Runs a storage node in this process.
public enum StorageRole {
    /// Serves until a stopping signal. Call from the main thread before any other thread
    /// exists. `announce` gets the endpoint once the node listens (a TCP port of 0 resolved).
    /// - Throws: a configuration the node cannot start with, named (a missing data directory, a
    ///   NUMA node the machine lacks, an endpoint already in use, a bad key file).
    public static func run(_ configuration: StorageRoleConfiguration, announce: (Endpoint) -> Void) throws {
        TerminationSignals.block()
        if let node = configuration.numaNode { try NUMATopology.pinProcess(toNode: node) }
        let key = try ClusterKey.load(path: configuration.clusterKeyPath)
        let node = try StorageNode(
            dataDirectory: configuration.dataDirectory, tiers: configuration.tiers, directReads: configuration.directReads)
        let server = try configuration.endpoint.serve(key: key, link: configuration.link, peerLinks: configuration.peerLinks, router: node.router())
        let stopMetrics: (@Sendable () -> Void)?
        do {
            stopMetrics = try configuration.metrics?({ [node] in node.metricSamples() })
        } catch {
            server.close()
            throw error
        }
        announce(server.endpoint)
        let signal = TerminationSignals.wait()
        SystemLog.info("storage: \(TerminationSignals.name(signal)): stopping the node on \(server.endpoint)")
        stopMetrics?()
        server.close()
    }
}
