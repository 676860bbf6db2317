// A worker's flush jobs: a sender starts one (`flushStart`, the spec: the output table is created
// at once), streams the memtable's entries in numbered chunks (`flushAppend`: each chunk is added
// to the table as it comes, so a flush holds one chunk in memory, not the memtable), and finishes
// it (`flushFinish`: the table synced, its record answered). Table building — blocks,
// compression, checksums, the bloom filter, writing — happens here, not on the compute node.
//
// Entries from the wire are checked (whole internal keys, each after the one before), chunks must
// come in order, and a flush that breaks a rule, passes its deadline, is cancelled, or hears
// nothing for `unfetchedRetentionNanos` is abandoned: its partial table removed. A flush holds one
// of the worker's slots from start to finish.
//
// Thread-safety: a flush's requests come on one connection, in order; each session has its own
// lock, the table of sessions is behind the worker's mutex.
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

/// One flush in progress on a worker.
final class FlushSession: @unchecked Sendable {
    let lock = ConditionLock()
    let stream: FlushStream
    var nextChunk: UInt32 = 0
    var bytesReceived: UInt64 = 0
    var touchedNanos = monotonicNanos()
    var cancelled = false

    init(stream: FlushStream) { self.stream = stream }
}

extension CompactionWorker {
    /// Registers the flush opcodes in `router`.
    func registerFlush(in router: inout RequestRouter) {
        router.register(WorkerOpcode.flushStart) { [self] request in
            do throws(TransportError) {
                try startFlush(.decode(request.payload))
                return .success(.bytes(CompactionJobAccepted(slots: UInt32(slots)).encoded()))
            } catch {
                return .failure(error)
            }
        }
        router.register(WorkerOpcode.flushAppend) { [self] request in
            guard case .bytes(let bytes) = request.payload else {
                return .failure(TransportError(.malformed, "\(FlushEntries.wireName) must come as bytes"))
            }
            do throws(TransportError) {
                try appendFlush(bytes)
                return .success(.bytes([]))
            } catch {
                return .failure(error)
            }
        }
        router.register(WorkerOpcode.flushFinish) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(FlushJobReply(result: try finishFlush(.decode(request.payload))).encoded()))
            } catch {
                return .failure(error)
            }
        }
    }

    /// Starts a flush: checks the spec, takes a slot, creates the output table.
    /// - Throws: `busy` when every slot is taken; `invalid` naming every problem of a spec, or a
    ///   job this worker already has; the storage node's errors creating the table.
    func startFlush(_ request: FlushJobRequest) throws(TransportError) {
        dropUnfetched()
        let spec = request.spec
        let name = CompactionJobName(jobID: spec.jobID, directory: spec.directory)
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw TransportError(.invalid, "flush job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        try takeSlot(for: name, kind: "flush")
        do {
            let files = try fileSystem(for: spec.directory, epoch: spec.epoch)
            let stream = try FlushStream(spec: spec, fileSystem: files)
            setFlush(FlushSession(stream: stream), for: name)
        } catch {
            releaseSlot(for: name, finished: true)
            throw Self.transportError(error, job: "flush job \(spec.jobID)")
        }
    }

    /// Adds one chunk of entries to its flush.
    /// - Throws: `notFound` for a flush this worker does not have; `invalid` for a chunk out of
    ///   order, an entry that is not after the one before it, a cancelled or late flush;
    ///   `malformed` for bytes that do not parse. Every error but `notFound` abandons the flush.
    func appendFlush(_ bytes: [UInt8]) throws(TransportError) {
        let header = try FlushEntries.header(bytes)
        let session = try flushSession(header.name)
        session.lock.lock()
        defer { session.lock.unlock() }
        do {
            if session.cancelled { throw TransportError(.invalid, "flush job \(header.name.jobID) was cancelled") }
            guard header.chunk == session.nextChunk else {
                throw TransportError(.invalid, "flush job \(header.name.jobID): chunk \(header.chunk) came, chunk \(session.nextChunk) was next")
            }
            try checkDeadline(session.stream.spec)
            let cpuStarted = threadCPUNanos()
            try FlushEntries.forEachEntry(in: bytes, from: header.entriesOffset, count: header.count) { key, value in
                try session.stream.add(key: key, value: value)
            }
            session.stream.addCPU(threadCPUNanos() - cpuStarted)
            session.nextChunk += 1
            session.bytesReceived += UInt64(bytes.count)
            session.touchedNanos = monotonicNanos()
        } catch {
            abandonFlush(header.name, session)
            throw Self.transportError(error, job: "flush job \(header.name.jobID)")
        }
    }

    /// Finishes a flush: syncs its table and answers its record.
    /// - Throws: `notFound` for a flush this worker does not have; the storage node's errors (the
    ///   flush is abandoned).
    func finishFlush(_ name: CompactionJobName) throws(TransportError) -> FlushJobResult {
        let session = try flushSession(name)
        session.lock.lock()
        defer { session.lock.unlock() }
        do {
            if session.cancelled { throw TransportError(.invalid, "flush job \(name.jobID) was cancelled") }
            try checkDeadline(session.stream.spec)
            let result = try session.stream.finish()
            removeFlush(name, finished: true)
            return result
        } catch {
            abandonFlush(name, session)
            throw Self.transportError(error, job: "flush job \(name.jobID)")
        }
    }

    /// Abandons a flush whose sender gave up (`cancel`); false when there is none.
    func cancelFlush(_ name: CompactionJobName) -> Bool {
        guard let session = try? flushSession(name) else { return false }
        session.lock.lock()
        defer { session.lock.unlock() }
        session.cancelled = true
        abandonFlush(name, session)
        return true
    }

    /// Abandons flushes nobody has fed for `unfetchedRetentionNanos`.
    func dropStaleFlushes() {
        let now = monotonicNanos()
        for (name, session) in flushSessions() where now - session.touchedNanos > unfetchedRetentionNanos {
            session.lock.lock()
            SystemLog.info("flush job \(name.jobID) of \(name.directory): nothing came for \(unfetchedRetentionNanos / 1_000_000_000) s; abandoned")
            abandonFlush(name, session)
            session.lock.unlock()
        }
    }

    /// Removes the partial table and frees the slot. Precondition: `session.lock` held.
    private func abandonFlush(_ name: CompactionJobName, _ session: FlushSession) {
        session.stream.abandon()
        removeFlush(name, finished: true)
    }

    private func checkDeadline(_ spec: FlushJobSpec) throws(TransportError) {
        if spec.deadlineUnixNanos != 0 && wallClockNanos() >= spec.deadlineUnixNanos {
            throw TransportError(.invalid, "flush job \(spec.jobID) passed its deadline; its sender has given up on it")
        }
    }

    static func transportError(_ error: any Error, job: String) -> TransportError {
        switch error {
        case let error as TransportError: return error
        case let error as MoraineError: return TransportError(error)
        default: return TransportError(.internalError, "\(job): \(error)")
        }
    }
}
