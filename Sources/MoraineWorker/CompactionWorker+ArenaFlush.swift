// A flush read in place: the memtable lies in an arena of a memory node's region on this machine,
// so the worker maps the region and builds the table from the arena's committed entries, walking
// them with every offset and length checked (MemTable.forEachCommitted), instead of receiving them
// over the transport. Zero copy for the compute node: it sends one request. When the region is not
// here, or the walk does not find the committed entries whole, the answer is `notFound` and the
// sender streams the entries instead.
//
// Thread-safety: as the streamed flush's; region mappings are cached behind a mutex.
import MoraineEngine
import MoraineFormat
import MoraineMemtable
import MoraineMessages
import MoraineSystem
import MoraineTransport

extension CompactionWorker {
    /// Registers the in-place flush opcode.
    func registerArenaFlush(in router: inout RequestRouter) {
        router.register(WorkerOpcode.flushArena) { [self] request in
            do throws(TransportError) {
                return .success(.bytes(FlushJobReply(result: try flushInPlace(.decode(request.payload))).encoded()))
            } catch {
                return .failure(error)
            }
        }
    }

    /// Runs a whole flush from the arena its spec names.
    /// - Throws: `notFound` when the region is not on this machine or the arena does not hold its
    ///   committed entries whole; `busy`, `invalid` and the storage node's errors as a streamed
    ///   flush does.
    func flushInPlace(_ request: FlushJobRequest) throws(TransportError) -> FlushJobResult {
        let spec = request.spec
        guard let reference = spec.arena else { throw TransportError(.invalid, "flush job \(spec.jobID) names no arena") }
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw TransportError(.invalid, "flush job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        let region = try mappedRegion(reference.regionPath)
        guard reference.bytes > UInt64(RegionArenaLayout.headerBytes), reference.bytes <= 1 << 32,
            reference.offset <= UInt64(region.sizeBytes), reference.bytes <= UInt64(region.sizeBytes) - reference.offset,
            region.loadWord(at: Int(reference.offset) + RegionArenaLayout.tagOffset) == reference.logNumber
        else {
            throw TransportError(.notFound, "flush job \(spec.jobID): no arena of log \(reference.logNumber) at \(reference.offset) in \(reference.regionPath)")
        }
        let name = CompactionJobName(jobID: spec.jobID, directory: spec.directory)
        try takeSlot(for: name, kind: "flush")
        defer { releaseSlot(for: name, finished: true) }
        let stream: FlushStream
        do {
            stream = try FlushStream(spec: spec, fileSystem: try fileSystem(for: spec.directory, epoch: spec.epoch))
        } catch {
            throw Self.transportError(error, job: "flush job \(spec.jobID)")
        }
        let arena = MemTableRegionArena(region: region, offset: Int(reference.offset), bytes: Int(reference.bytes), epoch: 0)
        let cpuStarted = threadCPUNanos()
        do {
            _ = try MemTable.forEachCommitted(arena, name: "\(reference.regionPath) arena at \(reference.offset)") { key, value in
                try stream.add(key: key, value: value)
            }
        } catch let error as MoraineError where error.kind == .corruption {
            stream.abandon()
            throw TransportError(.notFound, "flush job \(spec.jobID): \(error.message)")
        } catch {
            stream.abandon()
            throw Self.transportError(error, job: "flush job \(spec.jobID)")
        }
        stream.addCPU(threadCPUNanos() - cpuStarted)
        do {
            return try stream.finish()
        } catch {
            stream.abandon()
            throw Self.transportError(error, job: "flush job \(spec.jobID)")
        }
    }

    /// The region file at `path`, mapped once.
    /// - Throws: `notFound` when it is not on this machine (or cannot be mapped).
    private func mappedRegion(_ path: String) throws(TransportError) -> PmemRegion {
        if let region = regions.withLock({ $0[path] }) { return region }
        let region: PmemRegion
        do {
            region = try PmemRegion.mapping(path: path, sizeBytes: 0, create: false)
        } catch {
            throw TransportError(.notFound, "the region \(path) is not on this machine (\(error))")
        }
        return regions.withLock { cache in
            if let existing = cache[path] { return existing }
            if cache.count >= 16 { cache.removeAll() }
            cache[path] = region
            return region
        }
    }
}
