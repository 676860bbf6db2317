// A compaction worker: stateless. A job names everything it needs (CompactionJobSpec); the worker
// checks the spec, reads the inputs from the cluster's storage node, writes the outputs there
// with numbers from the job's reserved range (exclusive creates) and with the job's lease epoch
// (so the node fences a job of a superseded owner), and keeps the job's outcome until its sender
// fetches it. It keeps no state between jobs but counters.
//
// Jobs run on the worker's own threads, not the connection's: `compact` answers once the job has
// started, `poll` tells how it is doing (its bytes merged, so a sender tells a slow job from a
// stuck one) and hands out its outcome once, `cancel` stops it, and a job stops by itself at its
// spec's deadline; a stopped job removes its outputs. So every request is answered at once, on
// either carrier (a TCP connection's handler runs on an event loop other connections share). An
// outcome nobody fetches within `unfetchedRetentionNanos` is dropped, and a result's outputs are
// removed with it: its sender gave up on the job, so nothing will install them. A job is known by
// its directory and id (ids are unique per database, not per worker).
//
// Thread-safety: any thread may call in; the job table is behind one mutex, and `slots` bounds
// the jobs running at once (one more is refused as `busy`, which its sender takes as "run it
// elsewhere").
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import Synchronization

/// Serves compaction jobs.
public final class CompactionWorker: Sendable {
    /// Where jobs find their files: the storage node's endpoint is looked up per job, so a node
    /// restarted on another endpoint is found.
    let storage: @Sendable () throws(TransportError) -> Endpoint
    let key: ClusterKey
    /// Options of the file system each job writes through.
    let fileSystemOptions: RemoteFileSystem.Options
    public let slots: Int
    /// How long an outcome waits for its sender before it is dropped.
    public let unfetchedRetentionNanos: Int64

    private struct Job {
        let spec: CompactionJobSpec
        let control: JobControl
        var outcome: CompactionPollReply.State? = nil
        var finishedAt: Int64 = 0
    }

    private struct State {
        var jobs: [CompactionJobName: Job] = [:]
        /// Flushes holding a slot: nil while one starts.
        var flushes: [CompactionJobName: FlushSession?] = [:]
        var finished: UInt64 = 0
        var running: Int { jobs.values.count { $0.outcome == nil } + flushes.count }
    }

    private let state = Mutex<State>(State())
    /// File systems reaching the storage node, one per endpoint, database and epoch, kept between
    /// jobs so a job does not pay for a new connection and cold caches (at most `fileSystemsMax`).
    private let fileSystems = Mutex<[String: RemoteFileSystem]>([:])
    /// Memory nodes' regions mapped for in-place flushes, by path.
    let regions = Mutex<[String: PmemRegion]>([:])
    private static let fileSystemsMax = 16

    /// A worker whose jobs reach the storage node `storage` names, with `key`.
    /// - Precondition: `slots` is at least 1.
    public init(
        slots: Int, key: ClusterKey, fileSystemOptions: RemoteFileSystem.Options = RemoteFileSystem.Options(),
        unfetchedRetentionNanos: Int64 = 60_000_000_000, storage: @escaping @Sendable () throws(TransportError) -> Endpoint
    ) {
        precondition(slots >= 1, "a worker needs a slot")
        self.slots = slots
        self.key = key
        self.fileSystemOptions = fileSystemOptions
        self.unfetchedRetentionNanos = unfetchedRetentionNanos
        self.storage = storage
    }

    /// A router that serves the workers' protocol.
    public func router() -> RequestRouter {
        var router = RequestRouter()
        register(in: &router)
        return router
    }

    /// Registers the worker opcodes in `router`.
    public func register(in router: inout RequestRouter) {
        router.register(WorkerOpcode.compact) { [self] request in
            do throws(TransportError) {
                try start(.decode(request.payload))
                return .success(.bytes(CompactionJobAccepted(slots: UInt32(slots)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(WorkerOpcode.status) { [self] _ in .success(.bytes(status.encoded())) }
        router.register(WorkerOpcode.cancel) { [self] request in
            do throws(TransportError) {
                try cancel(.decode(request.payload))
                return .success(.bytes([]))
            } catch {
                return .failure(error)
            }
        }
        router.register(WorkerOpcode.poll) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(try poll(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        registerFlush(in: &router)
        registerArenaFlush(in: &router)
    }

    /// Jobs running (with their progress) and finished.
    public var status: WorkerStatusReply {
        dropUnfetched()
        return state.withLock { state in
            let jobs =
                state.jobs.filter { $0.value.outcome == nil }.map {
                    WorkerJobStatus(jobID: $0.key.jobID, directory: $0.key.directory, bytesDone: $0.value.control.bytesDone)
                }
                + state.flushes.map {
                    WorkerJobStatus(jobID: $0.key.jobID, directory: $0.key.directory, bytesDone: $0.value?.bytesReceived ?? 0)
                }
            return WorkerStatusReply(
                slots: UInt32(slots), running: UInt32(jobs.count), finished: state.finished,
                jobs: jobs.sorted { ($0.directory, $0.jobID) < ($1.directory, $1.jobID) })
        }
    }

    /// Starts one job on a thread of its own.
    /// - Throws: `busy` when every slot is taken (or no thread can start); `invalid` naming every
    ///   problem of a spec that cannot run, or a job this worker already has.
    func start(_ request: CompactionJobRequest) throws(TransportError) {
        dropUnfetched()
        let spec = request.spec
        let name = CompactionJobName(jobID: spec.jobID, directory: spec.directory)
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw TransportError(.invalid, "compaction job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        let control = JobControl(deadlineUnixNanos: spec.deadlineUnixNanos)
        let refusal = state.withLock { state -> TransportError? in
            guard state.running < slots else {
                return TransportError(.busy, "all \(slots) slots of this worker are running jobs")
            }
            guard state.jobs[name] == nil, state.flushes[name] == nil else {
                return TransportError(.invalid, "job \(spec.jobID) of \(spec.directory) is here already")
            }
            state.jobs[name] = Job(spec: spec, control: control)
            return nil
        }
        if let refusal { throw refusal }
        let started = startThreadIfPossible(name: "moraine-job\(spec.jobID % 1000)") { [self] in
            let outcome = run(spec, control: control)
            state.withLock {
                $0.jobs[name]?.outcome = outcome
                $0.jobs[name]?.finishedAt = monotonicNanos()
                $0.finished += 1
            }
        }
        if !started {
            _ = state.withLock { $0.jobs.removeValue(forKey: name) }
            throw TransportError(.busy, "no thread could start for compaction job \(spec.jobID)")
        }
    }

    /// Runs `spec` to its outcome.
    private func run(_ spec: CompactionJobSpec, control: JobControl) -> CompactionPollReply.State {
        do {
            let files = try fileSystem(for: spec.directory, epoch: spec.epoch)
            return .done(try CompactionJob(spec: spec, fileSystem: files, control: control).run())
        } catch let error as MoraineError {
            return .failed(error.kind, error.message)
        } catch let error as TransportError {
            return .failed(error.moraineError.kind, "compaction job \(spec.jobID): \(error.message)")
        } catch {
            return .failed(.internalError, "compaction job \(spec.jobID): \(error)")
        }
    }

    /// How job `name` is doing; once it has an outcome, the outcome (handed out once).
    /// - Throws: `notFound` when this worker does not have the job (it never came, its outcome
    ///   was fetched or dropped, or the worker restarted since).
    func poll(_ name: CompactionJobName) throws(TransportError) -> CompactionPollReply {
        let job = state.withLock { state -> Job? in
            guard let job = state.jobs[name] else { return nil }
            if job.outcome != nil { state.jobs[name] = nil }
            return job
        }
        guard let job else { throw TransportError(.notFound, "no compaction job \(name.jobID) of \(name.directory) is here") }
        return CompactionPollReply(job.outcome ?? .running(bytesDone: job.control.bytesDone))
    }

    /// Stops job `name`: a running one at its next check (it removes its outputs and fails), a
    /// finished one whose outcome nobody fetched at once (its outputs removed).
    /// - Throws: `notFound` when this worker does not have the job.
    func cancel(_ name: CompactionJobName) throws(TransportError) {
        if cancelFlush(name) {
            SystemLog.info("flush job \(name.jobID) of \(name.directory): cancelled by its sender")
            return
        }
        let job = state.withLock { state -> Job? in
            guard let job = state.jobs[name] else { return nil }
            if job.outcome != nil { state.jobs[name] = nil }
            return job
        }
        guard let job else { throw TransportError(.notFound, "no compaction job \(name.jobID) of \(name.directory) is here") }
        SystemLog.info("compaction job \(name.jobID) of \(name.directory): cancelled by its sender")
        job.control.cancel()
        if case .done(let result) = job.outcome { removeOutputs(of: result, spec: job.spec) }
    }

    /// Takes a slot for flush `name` (its session is set once its table exists).
    /// - Throws: `busy` when every slot is taken; `invalid` for a job this worker already has.
    func takeSlot(for name: CompactionJobName, kind: String) throws(TransportError) {
        let refusal = state.withLock { state -> TransportError? in
            guard state.running < slots else { return TransportError(.busy, "all \(slots) slots of this worker are running jobs") }
            guard state.jobs[name] == nil, state.flushes[name] == nil else {
                return TransportError(.invalid, "\(kind) job \(name.jobID) of \(name.directory) is here already")
            }
            state.flushes[name] = .some(nil)
            return nil
        }
        if let refusal { throw refusal }
    }

    func releaseSlot(for name: CompactionJobName, finished: Bool) { removeFlush(name, finished: finished) }

    func setFlush(_ session: FlushSession, for name: CompactionJobName) { state.withLock { $0.flushes[name] = session } }

    /// The flush `name`, started.
    /// - Throws: `notFound` when this worker does not have it.
    func flushSession(_ name: CompactionJobName) throws(TransportError) -> FlushSession {
        guard let session = state.withLock({ $0.flushes[name] ?? nil }) else {
            throw TransportError(.notFound, "no flush job \(name.jobID) of \(name.directory) is here")
        }
        return session
    }

    func flushSessions() -> [(CompactionJobName, FlushSession)] {
        state.withLock { $0.flushes.compactMap { name, session in session.map { (name, $0) } } }
    }

    func removeFlush(_ name: CompactionJobName, finished: Bool) {
        state.withLock {
            if $0.flushes.removeValue(forKey: name) != nil && finished { $0.finished += 1 }
        }
    }

    /// Drops outcomes nobody fetched in time, removing the outputs of results, and flushes
    /// nobody feeds.
    func dropUnfetched() {
        dropStaleFlushes()
        let now = monotonicNanos()
        let dropped = state.withLock { state -> [Job] in
            let stale = state.jobs.filter { $0.value.outcome != nil && now - $0.value.finishedAt > unfetchedRetentionNanos }
            for name in stale.keys { state.jobs[name] = nil }
            return Array(stale.values)
        }
        for job in dropped {
            guard case .done(let result) = job.outcome else { continue }
            SystemLog.info(
                "compaction job \(job.spec.jobID) of \(job.spec.directory): result not fetched within "
                    + "\(unfetchedRetentionNanos / 1_000_000_000) s; its outputs are removed")
            removeOutputs(of: result, spec: job.spec)
        }
    }

    /// The file system a job of `directory` under `epoch` writes through: its mutations carry
    /// the epoch, so the storage node fences them as it would the owner's.
    /// - Throws: when the run directory names no storage node.
    func fileSystem(for directory: String, epoch: UInt64) throws(TransportError) -> RemoteFileSystem {
        let endpoint = try storage()
        let name = "\(endpoint)#\(directory)#\(epoch)"
        return fileSystems.withLock { cache in
            if let files = cache[name] { return files }
            if cache.count >= Self.fileSystemsMax { cache.removeAll() }
            let files = RemoteFileSystem(endpoint: endpoint, key: key, options: fileSystemOptions)
            files.write(directory, asEpoch: epoch)
            cache[name] = files
            return files
        }
    }

    /// Best effort: a storage node that cannot be reached now leaves them to the owner's sweep.
    private func removeOutputs(of result: CompactionJobResult, spec: CompactionJobSpec) {
        guard let files = try? fileSystem(for: spec.directory, epoch: spec.epoch) else { return }
        for output in result.outputs where spec.outputFileNumbers.contains(output.number) {
            try? files.remove(spec.tablePath(output.number, tier: spec.outputTier))
        }
    }
}
