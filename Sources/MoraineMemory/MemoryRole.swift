// The memory node as a process: pin to a NUMA node (before any thread starts), map and check the
// region (bound to that node), load the cluster key, listen on one endpoint, print it, and serve
// until SIGTERM, SIGINT or SIGHUP. The region file outlives the process: a restarted node reads
// its arena table back, and peers keep writing into arenas they hold meanwhile.
import MoraineMessages
import MoraineSystem
import MoraineTransport

/// What `moraine node --role memory` was asked to do.
public struct MemoryRoleConfiguration: Sendable {
    public var regionPath: String
    public var regionBytes: Int
    public var arenaBytes: Int
    /// Bytes of the region for the shared block cache, in slots of `slotBytes` (0: none).
    public var cacheBytes = 0
    public var slotBytes = SharedCacheLayout.defaultSlotBytes
    /// Peers reach the region by request only, even on this box (`--region-access request`).
    public var byRequestOnly = false
    public var endpoint: Endpoint
    public var clusterKeyPath: String
    public var numaNode: Int?
    public var link: LinkEmulation = .none
    /// The link per peer role (by the label its connections present), in place of `link`.
    public var peerLinks: [String: LinkEmulation] = [:]
    /// Exports the role's metrics (`--metrics`); nil: none.
    public var metrics: MetricsHook? = nil

    public init(regionPath: String, regionBytes: Int, arenaBytes: Int, endpoint: Endpoint, clusterKeyPath: String, numaNode: Int? = nil) {
        self.regionPath = regionPath
        self.regionBytes = regionBytes
        self.arenaBytes = arenaBytes
        self.endpoint = endpoint
        self.clusterKeyPath = clusterKeyPath
        self.numaNode = numaNode
    }
}

/// Runs a memory node in this process.
public enum MemoryRole {
    /// An arena's default size: a default 64 MiB memtable and its slack.
    public static let defaultArenaBytes = 66 << 20

    /// Serves until a stopping signal. Call from the main thread before any other thread
    /// exists. `announce` gets the endpoint once the node listens.
    /// - Throws: a region or configuration the node cannot start with, named.
    public static func run(_ configuration: MemoryRoleConfiguration, announce: (Endpoint) -> Void) throws {
        TerminationSignals.block()
        if let node = configuration.numaNode { try NUMATopology.pinProcess(toNode: node) }
        let key = try ClusterKey.load(path: configuration.clusterKeyPath)
        let layout = MemoryRegionLayout(
            regionBytes: configuration.regionBytes, arenaBytes: configuration.arenaBytes, cacheBytes: configuration.cacheBytes,
            slotBytes: configuration.slotBytes)
        let region = try MemoryRegion.open(path: configuration.regionPath, layout: layout, numaNode: configuration.numaNode)
        let node = MemoryNode(region: region, mappable: !configuration.byRequestOnly)
        let held = region.entries()
        SystemLog.info(
            "memory node: region \(region.path), \(layout.arenaCount) arenas of \(layout.arenaBytes >> 10) KiB, \(held.count) held, "
                + "a shared block cache of \(layout.cacheSlots) slots of \(layout.slotBytes) bytes"
                + (configuration.numaNode.map { ", bound to NUMA node \($0)" } ?? "")
                + (configuration.byRequestOnly ? ", reached by request only" : "") + "; \(region.mapping.durabilityDescription)")
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
        SystemLog.info("memory node: \(TerminationSignals.name(signal)): stopping on \(server.endpoint)")
        stopMetrics?()
        server.close()
    }
}
