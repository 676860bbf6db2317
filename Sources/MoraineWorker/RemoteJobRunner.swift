// The compute node's side of the workers: a JobRunner that sends each compaction to a worker and
// falls back to running it here when no worker can take it.
//
// Fallback rule: a job runs here only when it provably never started on a worker: no worker could
// be reached, or every one answered `busy`. Once a worker has the job, its outcome is the job's:
// its result (checked against the spec by the engine), its error, or `JobLost` when its end was
// not seen: the connection broke (the worker died), the job made no progress for
// `stallTimeoutNanos` (the worker hung or was stopped: its status stopped answering or the
// job's bytes stopped moving), or the deadline passed. A lost job is cancelled (best effort: a
// stopped worker hears it when it resumes) and the engine runs the compaction again under a new
// reservation, sweeping the lost one (Engine+Jobs).
//
// Every spec sent carries a deadline (`jobTimeoutNanos` from now, on the wall clock): the worker
// refuses a spec past it and stops a job that reaches it, removing its outputs, so a zombie cannot
// write for longer than that.
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
    /// How long a runner waits for a job, and how it watches it.
    public struct Timing: Sendable {
        /// How long a job may run on a worker before its sender gives up on it (the spec's
        /// deadline).
        public var jobTimeoutNanos: Int64 = 600_000_000_000
        /// How often a job's progress is asked for while its sender waits.
        public var progressIntervalNanos: Int64 = 1_000_000_000
        /// How long a job may go without progress (or its worker without answering) before its
        /// sender gives up on it.
        public var stallTimeoutNanos: Int64 = 30_000_000_000
        /// How long past the deadline a lost job's outputs are still looked for.
        public var sweepMarginNanos: Int64 = 5_000_000_000

        public init() {}
    }

    /// The compaction workers, tried in turn from a rotating start.
    private let workers: @Sendable () -> [Endpoint]
    /// The flush workers, the same way.
    let flushWorkers: @Sendable () -> [Endpoint]
    let key: ClusterKey
    public let timing: Timing
    let limits: TransportLimits
    private let next = Atomic<Int>(0)
    private let nextFlush = Atomic<Int>(0)
    private let remoteCount = Atomic<Int>(0)
    private let fallbackCount = Atomic<Int>(0)
    private let lostCount = Atomic<Int>(0)
    private let remoteFlushCount = Atomic<Int>(0)
    private let inPlaceFlushCount = Atomic<Int>(0)
    private let flushFallbackCount = Atomic<Int>(0)
    /// Each worker's slots, as its last accepted job told (by endpoint); a worker that cannot be
    /// reached drops out.
    private let slots = Mutex<[String: Int]>([:])
    private let local = LocalJobRunner()

    /// A runner for the compaction workers `workers` lists and the flush workers `flushWorkers`
    /// lists (each asked at every job, so a restarted worker's new endpoint is found; with no
    /// flush worker, flushes run here and count as nothing).
    public init(
        key: ClusterKey, timing: Timing = Timing(), limits: TransportLimits = TransportLimits(),
        flushWorkers: @escaping @Sendable () -> [Endpoint] = { [] }, workers: @escaping @Sendable () -> [Endpoint]
    ) {
        self.key = key
        self.timing = timing
        self.limits = limits
        self.flushWorkers = flushWorkers
        self.workers = workers
    }

    /// Flushes a worker ran.
    public var remoteFlushes: Int { remoteFlushCount.load(ordering: .relaxed) }
    /// Flushes run here although the cluster lists flush workers (none could take them).
    public var flushFallbacks: Int { flushFallbackCount.load(ordering: .relaxed) }

    func nextFlushWorker() -> Int { nextFlush.wrappingAdd(1, ordering: .relaxed).oldValue }
    func countRemoteFlush() { remoteFlushCount.add(1, ordering: .relaxed) }
    func countInPlaceFlush() { inPlaceFlushCount.add(1, ordering: .relaxed) }
    /// Flushes a worker read in place from a memory node's region (part of `remoteFlushes`).
    public var inPlaceFlushes: Int { inPlaceFlushCount.load(ordering: .relaxed) }
    func countFlushFallback() -> Int {
        flushWorkers().isEmpty ? 0 : flushFallbackCount.add(1, ordering: .relaxed).newValue
    }
    func countLostJob() { lostCount.add(1, ordering: .relaxed) }

    public var compactsElsewhere: Bool { !workers().isEmpty }

    /// Jobs a worker ran.
    public var remoteJobs: Int { remoteCount.load(ordering: .relaxed) }
    /// Jobs run here because no worker could take them.
    public var fallbacks: Int { fallbackCount.load(ordering: .relaxed) }
    /// Jobs given up on mid-way (the worker died, hung or passed the deadline).
    public var lostJobs: Int { lostCount.load(ordering: .relaxed) }

    /// The slots of the workers that took jobs lately (1 before any did): how many compactions
    /// the engine runs at once.
    public var parallelism: Int { max(1, slots.withLock { $0.values.reduce(0, +) }) }

    public func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
        var spec = spec
        if let remote = fileSystem as? any LeasedFileSystem { spec.epoch = remote.leaseEpoch(of: spec.directory) }
        let endpoints = workers()
        var refusals: [String] = []
        if !endpoints.isEmpty {
            let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
            for offset in 0..<endpoints.count {
                let endpoint = endpoints[(start + offset) % endpoints.count]
                spec.deadlineUnixNanos = wallClockNanos() + timing.jobTimeoutNanos
                switch try send(spec, to: endpoint) {
                case .done(let result):
                    remoteCount.add(1, ordering: .relaxed)
                    return result
                case .notStarted(let why):
                    refusals.append("\(endpoint): \(why)")
                }
            }
        }
        spec.deadlineUnixNanos = 0
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

    /// Starts `spec` on one worker and polls it until it ends: every millisecond at first, then
    /// every 1/32 of the job's age up to `progressIntervalNanos`, so a job is collected within
    /// about 3% of its length after it ends and a long one costs a request a second.
    /// - Throws: the worker's error for a job it took, as a MoraineError; `JobLost` when the
    ///   worker went away (its endpoint refuses connections, or it forgot the job: it restarted),
    ///   the job stalled, or the deadline passed while the worker had it.
    private func send(_ spec: CompactionJobSpec, to endpoint: Endpoint) throws -> Outcome {
        var watch = JobWatch(spec: spec, endpoint: endpoint, key: key, limits: limits, timing: timing)
        defer { watch.close() }
        do {
            try watch.connect()
        } catch {
            _ = slots.withLock { $0.removeValue(forKey: endpoint.description) }
            return .notStarted(error.message)
        }
        do {
            let accepted = try watch.call(WorkerOpcode.compact, CompactionJobRequest(spec: spec).encoded())
            if case .bytes(let bytes) = accepted, let reply = try? CompactionJobAccepted.decode(bytes) {
                slots.withLock { $0[endpoint.description] = Int(clamping: reply.slots) }
            }
        } catch {
            switch error.code {
            case .busy:
                return .notStarted(error.message)
            case .timedOut, .unavailable:
                // Sent, but no answer: the job may have started, so it must not run anywhere
                // else under the same reservation. The engine re-runs it under a new one.
                throw lost(spec, on: endpoint, "no answer to the job request (\(error.message))", alive: true, watch: &watch)
            default:
                throw MoraineError(error.moraineError.kind, "compaction job \(spec.jobID) refused by worker \(endpoint): \(error.message)")
            }
        }
        let started = monotonicNanos()
        while true {
            // A poll every 1/32 of the time the job has run so far (1 ms at least, at most the
            // progress interval): the end of a job is seen within about 3% of its length.
            sleepNanos(min(max((monotonicNanos() - started) / 32, 1_000_000), timing.progressIntervalNanos))
            switch watch.poll() {
            case .running:
                continue
            case .done(let result):
                return .done(result)
            case .failed(let kind, let message):
                throw MoraineError(kind, "compaction job \(spec.jobID) failed on worker \(endpoint): \(message)")
            case .lost(let reason, let alive):
                throw lost(spec, on: endpoint, reason, alive: alive, watch: &watch)
            }
        }
    }

    /// Gives up on a job: cancels it on its worker (best effort) and says for how long its
    /// outputs may still appear: until the deadline while the worker may be alive, else only
    /// while writes it sent before it died may still land.
    private func lost(_ spec: CompactionJobSpec, on endpoint: Endpoint, _ reason: String, alive: Bool, watch: inout JobWatch) -> JobLost {
        lostCount.add(1, ordering: .relaxed)
        if alive { watch.cancel() }
        let remaining = alive ? max(0, spec.deadlineUnixNanos - wallClockNanos()) : 0
        SystemLog.info("compaction job \(spec.jobID) on worker \(endpoint) given up: \(reason); it runs again elsewhere")
        return JobLost(
            jobID: spec.jobID, reason: "on worker \(endpoint): \(reason)",
            outputsMayAppearForNanos: remaining + timing.sweepMarginNanos)
    }
}

/// One job on its worker, seen from its sender: starts it, asks how it is doing, tells when it
/// has stalled or run past its deadline, and cancels it.
struct JobWatch {
    enum Seen {
        case running
        case done(CompactionJobResult)
        case failed(MoraineError.Kind, String)
        /// Given up, and why; `alive` when the worker may still be running it (it stalled or
        /// went silent), not when it is provably gone (its endpoint refuses connections, or a
        /// restarted worker no longer knows the job).
        case lost(String, alive: Bool)
    }

    let spec: CompactionJobSpec
    let endpoint: Endpoint
    let key: ClusterKey
    let limits: TransportLimits
    let timing: RemoteJobRunner.Timing
    private var client: (any TransportClient)? = nil
    private var bytesDone: UInt64 = 0
    private var progressAt = monotonicNanos()

    init(spec: CompactionJobSpec, endpoint: Endpoint, key: ClusterKey, limits: TransportLimits, timing: RemoteJobRunner.Timing) {
        self.spec = spec
        self.endpoint = endpoint
        self.key = key
        self.limits = limits
        self.timing = timing
    }

    private var name: CompactionJobName { CompactionJobName(jobID: spec.jobID, directory: spec.directory) }

    /// Asks the worker how the job is doing. A worker that does not answer, or a job whose
    /// bytes do not move, counts against `stallTimeoutNanos`; a worker whose endpoint refuses
    /// connections (it died) or that no longer knows the job (it restarted) loses it at once.
    mutating func poll() -> Seen {
        if spec.deadlineUnixNanos != 0 && wallClockNanos() >= spec.deadlineUnixNanos {
            return .lost("it passed its deadline (\(timing.jobTimeoutNanos / 1_000_000_000) s)", alive: true)
        }
        do throws(TransportError) {
            let reply = try call(WorkerOpcode.poll, name.encoded())
            guard case .bytes(let bytes) = reply else { return .lost("the worker answered a poll with a reference", alive: true) }
            switch try CompactionPollReply.decode(bytes).state {
            case .running(let done):
                if done > bytesDone {
                    bytesDone = done
                    progressAt = monotonicNanos()
                }
            case .done(let result): return .done(result)
            case .failed(let kind, let message): return .failed(kind, message)
            }
        } catch {
            switch error.code {
            case .notFound: return .lost("the worker no longer knows the job (it restarted)", alive: false)
            case .unavailable:
                // The connection broke or could not open: gone unless a new one opens.
                do throws(TransportError) {
                    try connect()
                } catch where error.code == .unavailable {
                    return .lost("the worker is gone (\(error.message))", alive: false)
                } catch {}
            default: break  // no answer this time: counts as no progress
            }
        }
        let quiet = monotonicNanos() - progressAt
        if quiet >= timing.stallTimeoutNanos {
            return .lost(
                "no progress for \(quiet / 1_000_000) ms (stuck at \(bytesDone) bytes, or the worker stopped answering)", alive: true)
        }
        return .running
    }

    /// Asks the worker to stop the job (it removes its outputs); errors are dropped: a worker that
    /// does not hear it stops the job at its deadline, and drops a result nobody fetches.
    mutating func cancel() {
        _ = try? call(WorkerOpcode.cancel, name.encoded())
    }

    /// Opens the watch's connection if it has none.
    /// - Throws: `unavailable` when the worker cannot be reached (`timedOut` when it does not
    ///   finish the handshake: it may be stopped).
    mutating func connect() throws(TransportError) {
        guard client == nil else { return }
        do {
            client = try endpoint.connect(key: key, limits: limits)
        } catch {
            throw error.code == .timedOut ? error : TransportError(.unavailable, error.message)
        }
    }

    /// One request on the watch's connection, opened on first use and again after a failure.
    /// - Throws: the error response; `unavailable` when the worker cannot be reached or the
    ///   connection broke; `timedOut` when it does not answer within `progressIntervalNanos` (at
    ///   least a second).
    mutating func call(_ opcode: UInt8, _ bytes: [UInt8]) throws(TransportError) -> Payload {
        try connect()
        do {
            return try client!.call(opcode, bytes, timeoutNanos: max(timing.progressIntervalNanos, 1_000_000_000))
        } catch {
            if error.code == .timedOut || error.code == .unavailable || error.code == .closed {
                // A timed-out call leaves an answer in flight, a broken one nothing: start afresh.
                client?.close()
                client = nil
            }
            throw error.code == .closed ? TransportError(.unavailable, error.message) : error
        }
    }

    mutating func close() {
        client?.close()
        client = nil
    }
}
