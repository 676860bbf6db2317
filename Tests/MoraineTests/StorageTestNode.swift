// A storage node served in this process over one carrier, with a RemoteFileSystem that reaches
// it: the fixture of the tests that run the engine with its files on a storage node. It can be
// stopped and started again on the same endpoint and data directory, as a restart would.
import Foundation
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import MoraineFormat
@testable import MoraineWorker

final class StorageTestNode: @unchecked Sendable {
    let carrier: Carrier
    let dataDirectory: TempDir
    /// Where the shared-memory socket lives: the data directory, or with direct reads a short
    /// temporary path (a device-backed directory may be deep, and a socket path has 107 bytes).
    private let socketDirectory: TempDir
    let key = TestService.defaultKey()
    private(set) var endpoint: Endpoint
    private var server: EndpointServer?

    /// The node's own file system (POSIX, or a fault-injecting wrapper of it).
    let nodeFileSystem: any FileSystem

    /// The node's storage tiers (directories beside the data directory).
    let tiers: [StorageNodeTier]
    /// The node reads with O_DIRECT (its data directory is then on a device-backed file system).
    let directReads: Bool

    /// A node over `carrier`; with `tierBudgets`, one storage tier per budget (nil: unbounded),
    /// in directories beside its data directory, the first marked persistent memory.
    init(
        _ carrier: Carrier, options: RemoteFileSystem.Options = StorageTestNode.fastOptions,
        nodeFileSystem: any FileSystem = PosixFileSystem.shared, tierBudgets: [UInt64?] = [], directReads: Bool = false
    ) throws {
        self.carrier = carrier.server
        self.nodeFileSystem = nodeFileSystem
        self.directReads = directReads
        let data = directReads ? deviceBackedTempDir("moraine-storage") : TempDir("moraine-storage")
        dataDirectory = data
        socketDirectory = directReads ? TempDir("moraine-sock") : data
        // The first tier is persistent memory: the node serves its tables from mappings.
        tiers = tierBudgets.enumerated().map {
            StorageNodeTier(path: "\(data.path).tier\($0.offset)", budgetBytes: $0.element, mapped: $0.offset == 0)
        }
        for tier in tiers { try PosixFileSystem.shared.createDirectory(tier.path) }
        endpoint =
            carrier == .sharedMemory
            ? .sharedMemory(socketPath: socketDirectory.file("node.sock")) : .tcp(host: "127.0.0.1", port: 0)
        try start()
        fileSystemBox = RemoteFileSystem(endpoint: endpoint, key: key, options: options)
    }

    private var fileSystemBox: RemoteFileSystem?
    /// The file system the engine uses (set once the node listens, when the TCP port is known).
    var remote: RemoteFileSystem { fileSystemBox! }

    /// Calls fail fast and leases are short, so tests that wait for them stay short.
    static var fastOptions: RemoteFileSystem.Options {
        var options = RemoteFileSystem.Options()
        options.callTimeoutNanos = 3_000_000_000
        options.leaseTTLMillis = 1_500
        return options
    }

    /// Starts serving (again) on the same endpoint.
    func start() throws {
        let node = try StorageNode(dataDirectory: dataDirectory.path, tiers: tiers, fileSystem: nodeFileSystem, directReads: directReads)
        let server = try endpoint.serve(key: key, router: node.router())
        endpoint = server.endpoint
        self.server = server
    }

    /// Stops serving: every connection is closed, and new ones are refused until `start`.
    func stop() {
        server?.close()
        server = nil
    }

    func remove() {
        stop()
        dataDirectory.remove()
        socketDirectory.remove()
        for tier in tiers { PosixFileSystem.shared.removeTree(tier.path) }
    }

    deinit { remove() }
}

/// A compaction worker served in this process, reaching `node`, over the node's carrier.
final class TestWorker: @unchecked Sendable {
    let worker: CompactionWorker
    let directory = TempDir("moraine-worker")
    private(set) var endpoint: Endpoint
    private var server: EndpointServer?

    /// A worker whose jobs reach `node` (or `storage`, when given: a node that may not be there).
    init(
        for node: StorageTestNode, slots: Int = 2, storage: Endpoint? = nil,
        fileSystemOptions: RemoteFileSystem.Options = StorageTestNode.fastOptions
    ) throws {
        worker = CompactionWorker(slots: slots, key: node.key, fileSystemOptions: fileSystemOptions) {
            () throws(TransportError) -> Endpoint in storage ?? node.endpoint
        }
        endpoint =
            node.carrier == .sharedMemory
            ? .sharedMemory(socketPath: directory.file("worker.sock")) : .tcp(host: "127.0.0.1", port: 0)
        try start(key: node.key)
    }

    /// Serves (again) on the same endpoint.
    func start(key: ClusterKey) throws {
        let server = try endpoint.serve(key: key, router: worker.router())
        endpoint = server.endpoint
        self.server = server
    }

    func stop() {
        server?.close()
        server = nil
    }

    /// How tests wait for jobs: a 30 s deadline, progress asked every 200 ms, a job given up
    /// after 3 s without progress.
    static let timing: RemoteJobRunner.Timing = {
        var timing = RemoteJobRunner.Timing()
        timing.jobTimeoutNanos = 30_000_000_000
        timing.progressIntervalNanos = 200_000_000
        timing.stallTimeoutNanos = 3_000_000_000
        timing.sweepMarginNanos = 1_000_000_000
        return timing
    }()

    /// Runs `spec` on this worker (in this process) and waits up to 30 s for its outcome.
    func run(_ spec: CompactionJobSpec) throws -> CompactionPollReply.State {
        try worker.start(CompactionJobRequest(spec: spec))
        let name = CompactionJobName(jobID: spec.jobID, directory: spec.directory)
        let deadline = monotonicNanos() + 30_000_000_000
        while monotonicNanos() < deadline {
            let state = try worker.poll(name).state
            if case .running = state {
                sleepNanos(5_000_000)
                continue
            }
            return state
        }
        throw MoraineError(.unavailable, "compaction job \(spec.jobID) did not end within 30 s")
    }

    deinit {
        stop()
        directory.remove()
    }
}
