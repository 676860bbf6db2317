// The compute node's side of the workers: a JobRunner that sends each compaction to a worker and
// falls back to running it here when no worker can take it.
//
// Fallback rule: a job runs here only when it provably never started on a worker: no worker could
// be reached, or every one answered `busy`. Once a worker has the job, its outcome is the job's:
// its result (checked against the spec by the engine), its error, or — when the connection breaks
// or the deadline passes mid-job — `unavailable`, which the engine treats as an outage and retries
// later with a new spec and a new range of output numbers (a fresh reservation, so outputs a
// late worker still writes can never collide with the retry's; no manifest names them, and the
// next open deletes them).
//
// Thread-safety: any thread may run jobs; counters are atomic.
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import Synchronization

/// Runs compactions on workers, here when none can take one.
public final class RemoteJobRunner: JobRunner {
    /// The workers, tried in turn from a rotating start.
    private let workers: @Sendable () -> [Endpoint]
    private let key: ClusterKey
    /// How long a job may run on a worker before its sender gives up on it.
    public let jobTimeoutNanos: Int64
    private let limits: TransportLimits
    private let next = Atomic<Int>(0)
    private let remoteCount = Atomic<Int>(0)
    private let fallbackCount = Atomic<Int>(0)
    private let local = LocalJobRunner()

    /// A runner for the workers `workers` lists (asked at every job, so a restarted worker's new
    /// endpoint is found).
    public init(
        key: ClusterKey, jobTimeoutNanos: Int64 = 600_000_000_000, limits: TransportLimits = TransportLimits(),
        workers: @escaping @Sendable () -> [Endpoint]
    ) {
        self.key = key
        self.jobTimeoutNanos = jobTimeoutNanos
        self.limits = limits
        self.workers = workers
    }

    /// Jobs a worker ran.
    public var remoteJobs: Int { remoteCount.load(ordering: .relaxed) }
    /// Jobs run here because no worker could take them.
    public var fallbacks: Int { fallbackCount.load(ordering: .relaxed) }

    public func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
        var spec = spec
        if let remote = fileSystem as? RemoteFileSystem { spec.epoch = remote.leaseEpoch(of: spec.directory) }
        let endpoints = workers()
        var refusals: [String] = []
        if !endpoints.isEmpty {
            let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
            for offset in 0..<endpoints.count {
                let endpoint = endpoints[(start + offset) % endpoints.count]
                switch try send(spec, to: endpoint) {
                case .done(let result):
                    remoteCount.add(1, ordering: .relaxed)
                    return result
                case .notStarted(let why):
                    refusals.append("\(endpoint): \(why)")
                }
            }
        }
        let count = fallbackCount.add(1, ordering: .relaxed).newValue
        if count == 1 || count.isMultiple(of: 100) {
            let why = refusals.isEmpty ? "the cluster lists no compaction worker" : refusals.joined(separator: "; ")
            SystemLog.info("compaction job \(spec.jobID) runs locally (fallback \(count)): \(why)")
        }
        return try local.runCompaction(spec, fileSystem: fileSystem)
    }

    private enum Outcome {
        case done(CompactionJobResult)
        /// The worker never had the job: another may take it.
        case notStarted(String)
    }

    /// Sends `spec` to one worker.
    /// - Throws: the worker's error for a job it took, as a MoraineError; `unavailable` when the
    ///   connection broke or the deadline passed while the job was with the worker.
    private func send(_ spec: CompactionJobSpec, to endpoint: Endpoint) throws -> Outcome {
        let client: any TransportClient
        do {
            client = try endpoint.connect(key: key, limits: limits)
        } catch {
            return .notStarted(error.description)
        }
        defer { client.close() }
        let reply: Payload
        do {
            reply = try client.call(
                WorkerOpcode.compact, .bytes(CompactionJobRequest(spec: spec).encoded()), timeoutNanos: jobTimeoutNanos)
        } catch {
            switch error.code {
            case .busy: return .notStarted(error.message)
            case .unavailable, .closed, .timedOut:
                throw MoraineError(
                    .unavailable, "compaction job \(spec.jobID) on worker \(endpoint) did not finish: \(error.message)")
            default:
                throw MoraineError(error.moraineError.kind, "compaction job \(spec.jobID) failed on worker \(endpoint): \(error.message)")
            }
        }
        guard case .bytes(let bytes) = reply else {
            throw MoraineError(.corruption, "worker \(endpoint) answered compaction job \(spec.jobID) with a reference")
        }
        do {
            return .done(try CompactionJobReply.decode(bytes).result)
        } catch {
            throw MoraineError(.corruption, "worker \(endpoint) answered compaction job \(spec.jobID): \(error.message)")
        }
    }
}
