// A flush or compaction worker as a process (the same server: it takes both kinds of job, and the
// role name says which jobs the cluster sends it): pin to a NUMA node (before any thread starts), load the
// cluster key, listen on one endpoint, print it, and serve until SIGTERM, SIGINT or SIGHUP; then
// stop accepting, let the jobs in flight finish, and return. Jobs find the storage node through
// the cluster's run directory, read at every job. The same `CompactionWorker` serves in-process in
// tests.
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

/// What `moraine node --role compaction` was asked to do.
public struct WorkerRoleConfiguration: Sendable {
    /// The cluster's run directory: its endpoints file names the storage node.
    public var runDirectory: String
    public var endpoint: Endpoint
    public var clusterKeyPath: String
    public var slots: Int
    public var numaNode: Int?
    public var link: LinkEmulation = .none
    /// The link per peer role (by the label its connections present), in place of `link`.
    public var peerLinks: [String: LinkEmulation] = [:]
    /// Exports the role's metrics (`--metrics`); nil: none.
    public var metrics: MetricsHook? = nil
    /// The role's name, for its log lines: "flush" or "compaction".
    public var role = "compaction"

    public init(runDirectory: String, endpoint: Endpoint, clusterKeyPath: String, slots: Int, numaNode: Int? = nil) {
        self.runDirectory = runDirectory
        self.endpoint = endpoint
        self.clusterKeyPath = clusterKeyPath
        self.slots = slots
        self.numaNode = numaNode
    }
}

/// Runs a flush or compaction worker in this process.
public enum WorkerRole {
    /// Serves until a stopping signal. Call from the main thread before any other thread
    /// exists. `announce` gets the endpoint once the worker listens.
    /// - Throws: a configuration the worker cannot start with, named.
    public static func run(_ configuration: WorkerRoleConfiguration, announce: (Endpoint) -> Void) throws {
        TerminationSignals.block()
        if let node = configuration.numaNode { try NUMATopology.pinProcess(toNode: node) }
        let key = try ClusterKey.load(path: configuration.clusterKeyPath)
        let run = RunDirectory(configuration.runDirectory)
        let worker = CompactionWorker(slots: configuration.slots, key: key) { () throws(TransportError) -> Endpoint in
            try run.endpoint(of: "storage")
        }
        let server = try configuration.endpoint.serve(key: key, link: configuration.link, peerLinks: configuration.peerLinks, router: worker.router())
        let stopMetrics: (@Sendable () -> Void)?
        do {
            stopMetrics = try configuration.metrics?({ [worker] in worker.metricSamples() })
        } catch {
            server.close()
            throw error
        }
        announce(server.endpoint)
        let signal = TerminationSignals.wait()
        SystemLog.info("\(configuration.role) worker: \(TerminationSignals.name(signal)): stopping on \(server.endpoint)")
        stopMetrics?()
        server.close()
    }
}
