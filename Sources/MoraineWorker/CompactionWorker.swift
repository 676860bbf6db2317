// A compaction worker: stateless. A job names everything it needs (CompactionJobSpec); the worker
// checks the spec, reads the inputs from the cluster's storage node, writes the outputs there
// with numbers from the job's reserved range (exclusive creates) and with the job's lease epoch
// (so the node fences a job of a superseded owner), and answers the job's result. It keeps no
// state between jobs but counters.
//
// Thread-safety: handlers run on the carriers' connection threads, one job per connection at a
// time; `slots` bounds the jobs running at once across connections (one more is refused as
// `busy`, which its sender takes as "run it elsewhere").
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
    private let storage: @Sendable () throws(TransportError) -> Endpoint
    private let key: ClusterKey
    /// Options of the file system each job writes through.
    private let fileSystemOptions: RemoteFileSystem.Options
    public let slots: Int
    private let state = Mutex<(running: Int, finished: UInt64)>((0, 0))

    /// A worker whose jobs reach the storage node `storage` names, with `key`.
    /// - Precondition: `slots` is at least 1.
    public init(
        slots: Int, key: ClusterKey, fileSystemOptions: RemoteFileSystem.Options = RemoteFileSystem.Options(),
        storage: @escaping @Sendable () throws(TransportError) -> Endpoint
    ) {
        precondition(slots >= 1, "a worker needs a slot")
        self.slots = slots
        self.key = key
        self.fileSystemOptions = fileSystemOptions
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
                return .success(.bytes(try compact(.decode(request.payload)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(WorkerOpcode.status) { [self] _ in .success(.bytes(status.encoded())) }
    }

    /// Jobs running and finished.
    public var status: WorkerStatusReply {
        state.withLock { WorkerStatusReply(slots: UInt32(slots), running: UInt32($0.running), finished: $0.finished) }
    }

    /// Runs one job in this thread.
    /// - Throws: `busy` when every slot is taken; `invalid` naming every problem of a spec that
    ///   cannot run; the job's own failure (the storage node's `fenced`, `noSpace`, `unavailable`…).
    func compact(_ request: CompactionJobRequest) throws(TransportError) -> CompactionJobReply {
        let spec = request.spec
        let taken = state.withLock { state -> Bool in
            guard state.running < slots else { return false }
            state.running += 1
            return true
        }
        guard taken else { throw TransportError(.busy, "all \(slots) compaction slots of this worker are running jobs") }
        defer { state.withLock { $0.running -= 1; $0.finished += 1 } }
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw TransportError(.invalid, "compaction job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        let files = RemoteFileSystem(endpoint: try storage(), key: key, options: fileSystemOptions)
        files.write(spec.directory, asEpoch: spec.epoch)
        do {
            let result = try CompactionJob(spec: spec, fileSystem: files).run()
            return CompactionJobReply(result: result)
        } catch let error as MoraineError {
            throw TransportError(error)
        } catch {
            throw TransportError(.internalError, "compaction job \(spec.jobID): \(error)")
        }
    }
}
