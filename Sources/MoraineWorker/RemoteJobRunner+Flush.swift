// Flushes on flush workers: the compute node streams the memtable's entries, in key order, to a
// worker that builds the table (blocks, compression, checksums, bloom filter) and writes it to the
// storage node. Why streamed entries and not the retired WAL segment: the stream also carries
// writes made with `disableWAL` (they are in no log), needs no sort on the worker (a WAL is in
// arrival order, so a worker would rebuild the memtable before it could write a table), and sends
// about the table's raw size once; docs/WORKERS.md has the measurements.
//
// Chunks of `flushChunkBytes` are pipelined, `flushWindow` in flight, each answered once its
// entries are in the table, so a flush costs the compute node one pass over its memtable and a
// copy into the transport. The fallback rule is the compactions': a flush runs here only when no
// worker took it; once one has, a broken connection or a stall is `JobLost`, and the engine runs
// the flush again under a new number.
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

extension RemoteJobRunner {
    /// Entries per chunk, in bytes (the chunk is one transport message).
    static let flushChunkBytes = 512 << 10
    /// Chunks in flight before the sender waits for the oldest's answer.
    static let flushWindow = 4

    public var flushesElsewhere: Bool { !flushWorkers().isEmpty }

    public func runFlush(_ spec: FlushJobSpec, source: any InternalIterator, fileSystem: any FileSystem) throws -> FlushJobResult {
        var spec = spec
        if let remote = fileSystem as? any LeasedFileSystem { spec.epoch = remote.leaseEpoch(of: spec.directory) }
        let endpoints = flushWorkers()
        var refusals: [String] = []
        if !endpoints.isEmpty {
            let start = nextFlushWorker()
            for offset in 0..<endpoints.count {
                let endpoint = endpoints[(start + offset) % endpoints.count]
                spec.deadlineUnixNanos = wallClockNanos() + timing.jobTimeoutNanos
                if spec.arena != nil, case .sharedMemory = endpoint {
                    // Same box: the worker reads the memtable in the region itself.
                    switch try flushInPlace(spec, on: endpoint) {
                    case .done(let result):
                        countRemoteFlush()
                        countInPlaceFlush()
                        return result
                    case .notStarted(let why):
                        refusals.append("\(endpoint): \(why)")
                        if !why.hasPrefix("streamed:") { continue }
                    }
                }
                var streamed = spec
                streamed.arena = nil
                switch try stream(streamed, source: source, to: endpoint) {
                case .done(let result):
                    countRemoteFlush()
                    return result
                case .notStarted(let why):
                    refusals.append("\(endpoint): \(why)")
                }
            }
        }
        spec.deadlineUnixNanos = 0
        let count = countFlushFallback()
        if !endpoints.isEmpty && (count == 1 || count.isMultiple(of: 100)) {
            SystemLog.warning("flush job \(spec.jobID) runs locally (fallback \(count)): \(refusals.joined(separator: "; "))")
        }
        return try LocalJobRunner.flush(spec, source: source, fileSystem: fileSystem)
    }

    private enum FlushOutcome {
        case done(FlushJobResult)
        case notStarted(String)
    }

    /// Streams one flush to one worker.
    /// - Throws: the worker's error, as a MoraineError; `JobLost` when the connection broke or
    ///   an answer did not come within the stall timeout once the worker had the job.
    private func stream(_ spec: FlushJobSpec, source: any InternalIterator, to endpoint: Endpoint) throws -> FlushOutcome {
        let client: any TransportClient
        do {
            client = try endpoint.connect(key: key, limits: limits)
        } catch {
            return .notStarted(error.message)
        }
        defer { client.close() }
        let name = CompactionJobName(jobID: spec.jobID, directory: spec.directory)
        let wait = max(timing.stallTimeoutNanos, 1_000_000_000)
        do {
            _ = try client.call(WorkerOpcode.flushStart, FlushJobRequest(spec: spec).encoded(), timeoutNanos: wait)
        } catch {
            switch error.code {
            case .busy: return .notStarted(error.message)
            case .timedOut, .unavailable, .closed:
                throw lostFlush(spec, endpoint, "no answer to the flush request (\(error.message))", alive: error.code == .timedOut)
            default: throw MoraineError(error.moraineError.kind, "flush job \(spec.jobID) refused by worker \(endpoint): \(error.message)")
            }
        }
        var inFlight: [UInt64] = []
        // Waits for the oldest chunk's answer.
        func reap() throws {
            let id = inFlight.removeFirst()
            let response: Response
            do {
                response = try client.receive(requestID: id, timeoutNanos: wait)
            } catch {
                throw lostFlush(spec, endpoint, "a chunk was not answered (\(error.message))", alive: error.code == .timedOut)
            }
            do {
                _ = try response.get()
            } catch {
                throw MoraineError(error.moraineError.kind, "flush job \(spec.jobID) failed on worker \(endpoint): \(error.message)")
            }
        }
        func send(_ bytes: [UInt8]) throws {
            do {
                inFlight.append(try client.send(opcode: WorkerOpcode.flushAppend, payload: .bytes(bytes)))
            } catch {
                throw lostFlush(spec, endpoint, "a chunk could not be sent (\(error.message))", alive: error.code == .timedOut)
            }
            if inFlight.count >= Self.flushWindow { try reap() }
        }
        var chunk: UInt32 = 0
        var builder = FlushEntries.Builder(name: name, chunk: chunk, capacity: Self.flushChunkBytes)
        try source.seekToFirst()
        while source.isValid {
            builder.append(key: source.key, value: source.value)
            if builder.bytes.count >= Self.flushChunkBytes {
                try send(builder.finished())
                chunk += 1
                builder = FlushEntries.Builder(name: name, chunk: chunk, capacity: Self.flushChunkBytes)
            }
            try source.next()
        }
        if builder.count > 0 { try send(builder.finished()) }
        while !inFlight.isEmpty { try reap() }
        let reply: Payload
        do {
            reply = try client.call(WorkerOpcode.flushFinish, name.encoded(), timeoutNanos: wait)
        } catch {
            switch error.code {
            case .timedOut, .unavailable, .closed:
                throw lostFlush(spec, endpoint, "no answer to finish (\(error.message))", alive: error.code == .timedOut)
            default: throw MoraineError(error.moraineError.kind, "flush job \(spec.jobID) failed on worker \(endpoint): \(error.message)")
            }
        }
        guard case .bytes(let bytes) = reply, let result = try? FlushJobReply.decode(bytes).result else {
            throw MoraineError(.corruption, "worker \(endpoint) answered flush job \(spec.jobID) with bytes that do not decode")
        }
        return .done(result)
    }

    /// Asks one worker to flush the memtable from its arena in place (one request; the worker
    /// answers once the table is written).
    /// - Returns: `.notStarted` for a busy worker, or one that cannot read the arena (prefixed
    ///   "streamed:": the caller streams the entries to it instead).
    /// - Throws: the worker's error, as a MoraineError; `JobLost` when the connection broke or the
    ///   answer did not come before the job's deadline.
    private func flushInPlace(_ spec: FlushJobSpec, on endpoint: Endpoint) throws -> FlushOutcome {
        let client: any TransportClient
        do {
            client = try endpoint.connect(key: key, limits: limits)
        } catch {
            return .notStarted(error.message)
        }
        defer { client.close() }
        let reply: Payload
        do {
            reply = try client.call(
                WorkerOpcode.flushArena, FlushJobRequest(spec: spec).encoded(), timeoutNanos: max(timing.jobTimeoutNanos, 1_000_000_000))
        } catch {
            switch error.code {
            case .busy: return .notStarted(error.message)
            case .notFound, .unknownOpcode: return .notStarted("streamed: \(error.message)")
            case .timedOut, .unavailable, .closed:
                throw lostFlush(spec, endpoint, "no answer to the in-place flush (\(error.message))", alive: error.code == .timedOut)
            default: throw MoraineError(error.moraineError.kind, "flush job \(spec.jobID) failed on worker \(endpoint): \(error.message)")
            }
        }
        guard case .bytes(let bytes) = reply, let result = try? FlushJobReply.decode(bytes).result else {
            throw MoraineError(.corruption, "worker \(endpoint) answered flush job \(spec.jobID) with bytes that do not decode")
        }
        return .done(result)
    }

    /// Gives up on a flush: cancels it on its worker when it may be alive (best effort, on a
    /// connection of its own) and says for how long its output may still appear.
    private func lostFlush(_ spec: FlushJobSpec, _ endpoint: Endpoint, _ reason: String, alive: Bool) -> JobLost {
        countLostJob()
        if alive, let client = try? endpoint.connect(key: key, limits: limits) {
            _ = try? client.call(
                WorkerOpcode.cancel, CompactionJobName(jobID: spec.jobID, directory: spec.directory).encoded(),
                timeoutNanos: 1_000_000_000)
            client.close()
        }
        SystemLog.info("flush job \(spec.jobID) on worker \(endpoint) given up: \(reason); it runs again")
        let remaining = alive ? max(0, spec.deadlineUnixNanos - wallClockNanos()) : 0
        return JobLost(jobID: spec.jobID, reason: "on worker \(endpoint): \(reason)", outputsMayAppearForNanos: remaining + timing.sweepMarginNanos)
    }
}
