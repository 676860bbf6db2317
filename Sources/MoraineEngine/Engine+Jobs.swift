// Flush and compaction jobs as the engine dispatches them: each gets output numbers reserved; when
// the job may leave this process the reservation is written to the manifest before it leaves (so
// no later number collides with its outputs, whatever crashes, and the next open deletes what an
// unfinished job left; a job here dies with its process, and the open's planner deals with its
// debris, so it costs no manifest write). The job runs through the options' JobRunner, is
// installed only if its result fits its spec, and the install releases the reservation.
//
// A job whose runner lost sight of it (`JobLost`: its worker died, hung or passed the deadline)
// is run again under a new reservation, and its own range is *abandoned*: outputs may still appear
// in it (a stopped worker resumed) until the job's deadline, so every purge until then removes the
// tables it finds there (ReservationBook), and the reservation is released after. A job that
// failed outright is abandoned the same way with no wait: one sweep, then the release.
//
// Thread-safety: ReservationBook is behind its own mutex; the rest runs on the thread running the
// compaction, without the engine's `mutex`.
import MoraineFormat
import MoraineMemtable
import MoraineSystem
import Synchronization

/// Reservations whose jobs are over but whose outputs may still need removing, and releases
/// waiting for the next manifest edit.
final class ReservationBook: Sendable {
    private struct State {
        /// Abandoned ranges, with the monotonic time until which outputs may still appear, and
        /// whether the manifest holds their reservation (then closing one releases it).
        var abandoned: [(range: Range<UInt64>, untilNanos: Int64, persisted: Bool)] = []
        var lastSweepNanos: Int64 = 0
        /// First numbers of reservations to release in the next edit.
        var releases: [UInt64] = []
    }

    private let state = Mutex<State>(State())
    /// Sweeps of a range still open for outputs are at most this often (each lists the directory).
    static let sweepIntervalNanos: Int64 = 1_000_000_000

    func abandon(_ range: Range<UInt64>, persisted: Bool, outputsMayAppearForNanos: Int64) {
        state.withLock { $0.abandoned.append((range, monotonicNanos() + max(0, outputsMayAppearForNanos), persisted)) }
    }

    func release(_ range: Range<UInt64>) { state.withLock { $0.releases.append(range.lowerBound) } }

    /// Releases for the next edit; `putBack` returns them when that edit failed.
    func takeReleases() -> [UInt64] {
        state.withLock { state in
            defer { state.releases = [] }
            return state.releases
        }
    }

    func putBack(_ releases: [UInt64]) { state.withLock { $0.releases += releases } }

    /// The ranges to sweep now (nil when none is due: none is abandoned, or the last sweep was
    /// less than `sweepIntervalNanos` ago and no range closes), and which of them close after it.
    func dueSweep(ignoringInterval: Bool = false) -> (ranges: [Range<UInt64>], closing: [Range<UInt64>])? {
        let now = monotonicNanos()
        return state.withLock { state in
            guard !state.abandoned.isEmpty else { return nil }
            let closing = state.abandoned.filter { $0.untilNanos <= now }.map(\.range)
            guard ignoringInterval || !closing.isEmpty || now - state.lastSweepNanos >= Self.sweepIntervalNanos else { return nil }
            state.lastSweepNanos = now
            return (state.abandoned.map(\.range), closing)
        }
    }

    /// Forgets closed ranges and queues the releases of those the manifest holds.
    func close(_ ranges: [Range<UInt64>]) {
        state.withLock { state in
            state.releases += state.abandoned.filter { ranges.contains($0.range) && $0.persisted }.map(\.range.lowerBound)
            state.abandoned.removeAll { entry in ranges.contains(entry.range) }
        }
    }

    /// Abandoned ranges still open for outputs.
    var abandonedCount: Int { state.withLock { $0.abandoned.count } }
}

extension Engine {
    /// How many times a compaction is dispatched again after its job was lost.
    static let lostJobRetries = 3

    /// Runs the job of `spec` through the options' runner until it has a result that fits,
    /// re-dispatching a lost job under a new reservation.
    /// - Throws: the job's failure; `unavailable` after `lostJobRetries` lost jobs;
    ///   `corruption` for a result that does not fit its spec (never installed).
    func runJob(for spec: CompactionSpec) throws -> (job: CompactionJobSpec, result: CompactionJobResult, reserved: Bool) {
        var lost: [String] = []
        while true {
            let reserved = options.jobRunner.compactsElsewhere
            let job = try makeJobSpec(spec, persisting: reserved)
            let result: CompactionJobResult
            do {
                result = try options.jobRunner.runCompaction(job, fileSystem: fileSystem)
            } catch let error as JobLost {
                try abandonLost(error, outputs: job.outputFileNumbers, persisted: reserved, what: "compaction", lost: &lost)
                continue
            } catch {
                // The job removed its outputs, or could not (a storage outage): one sweep.
                reservations.abandon(job.outputFileNumbers, persisted: reserved, outputsMayAppearForNanos: 0)
                throw error
            }
            let problems =
                job.problems(in: result) + storedSizeProblems(result.outputs, within: job.outputFileNumbers, tier: job.outputTier)
            guard problems.isEmpty else {
                // Whoever ran it, a result that does not fit its spec is never installed: the
                // outputs it names in range go now, the rest of the range with the sweep.
                for output in result.outputs where job.outputFileNumbers.contains(output.number) {
                    try? fileSystem.remove(tiers.tablePath(output.number, tier: job.outputTier))
                }
                reservations.abandon(job.outputFileNumbers, persisted: reserved, outputsMayAppearForNanos: 0)
                throw MoraineError(
                    .corruption, "compaction job \(job.jobID) returned a result that does not fit its spec: "
                        + problems.joined(separator: "; "))
            }
            counters.update { $0.jobCPUMicros += Int(result.cpuNanos / 1000) }
            return (job, result, reserved)
        }
    }

    /// Outputs whose size on the file system (on `tier`, where the spec sent them) is not what
    /// the result says (each looked up; only those inside `range`: others are refused by the
    /// spec's own check).
    func storedSizeProblems(_ outputs: [TableFileInfo], within range: Range<UInt64>, tier: Int) -> [String] {
        var found: [String] = []
        for output in outputs where range.contains(output.number) {
            do {
                let stored = try fileSystem.fileSize(tiers.tablePath(output.number, tier: tier))
                if stored != output.sizeBytes {
                    found.append("output table \(output.number) is \(stored) bytes as stored, the result says \(output.sizeBytes)")
                }
            } catch {
                found.append("output table \(output.number) cannot be looked up as stored: \(asMoraineError(error).message)")
            }
        }
        return found
    }

    /// The value a job runner gets for `spec`: inputs with their levels, the snapshot and deeper
    /// levels as of now, and output numbers reserved from the version set (burned if unused) and,
    /// when `persisting`, recorded in the manifest before the job leaves.
    /// - Throws: the manifest write's failure.
    func makeJobSpec(_ spec: CompactionSpec, persisting: Bool) throws -> CompactionJobSpec {
        let version = versions.current
        var deeper: [[UserKeyRange]] = []
        if spec.outputLevel + 1 < version.levels.count {
            for level in (spec.outputLevel + 1)..<version.levels.count {
                deeper.append(version.levels[level].map { UserKeyRange(lower: $0.smallestUserKey, upper: $0.largestUserKey) })
            }
        }
        let inputs =
            spec.inputs.map { JobInputTable(level: spec.inputLevel, info: $0.info) }
            + spec.outputLevelInputs.map { JobInputTable(level: spec.outputLevel, info: $0.info) }
        let target = UInt64(options.targetFileSizeBase)
        let count = CompactionJobSpec.outputNumbersToReserve(
            inputBytes: inputs.reduce(0) { $0 + $1.info.sizeBytes }, targetFileSizeBytes: target)
        let outputs = persisting ? try reserveOutputs(count) : versions.reserveFileNumbers(count)
        var job = CompactionJobSpec(
            jobID: nextJobID.wrappingAdd(1, ordering: .relaxed).oldValue, directory: path, epoch: 0, inputs: inputs,
            outputLevel: spec.outputLevel, levelCount: version.levels.count,
            smallestSnapshot: snapshots.oldest ?? lastSequence.load(ordering: .acquiring), deeperLevelRanges: deeper,
            targetFileSizeBytes: target, tableOptions: options.tableOptions, outputFileNumbers: outputs)
        if options.useDirectReads { job.directReadTiers = tiers.mapped.map { !$0 } }
        if tiers.isTiered {
            job.tierDirectories = tiers.directories
            job.outputTier = tiers.outputTier(
                level: spec.outputLevel, incomingBytes: min(target, inputs.reduce(0) { $0 + $1.info.sizeBytes }))
        }
        return job
    }

    /// Gives up on a lost job: its range is swept until its outputs can no longer appear, and
    /// the loss is counted and remembered in `lost`.
    /// - Throws: `unavailable` naming every loss once more than `lostJobRetries` happened.
    private func abandonLost(_ error: JobLost, outputs: Range<UInt64>, persisted: Bool, what: String, lost: inout [String]) throws {
        reservations.abandon(outputs, persisted: persisted, outputsMayAppearForNanos: error.outputsMayAppearForNanos)
        counters.update { $0.lostJobs += 1 }
        sweepAbandonedOutputs(force: true)
        lost.append(error.description)
        if lost.count > Self.lostJobRetries {
            throw MoraineError(.unavailable, "\(what) gave up after \(lost.count) lost jobs: " + lost.joined(separator: "; "))
        }
    }

    /// Reserves `count` output numbers and records them in the manifest (synced) before a job
    /// that writes them leaves.
    func reserveOutputs(_ count: UInt64) throws -> Range<UInt64> {
        let outputs = versions.reserveFileNumbers(count)
        var edit = VersionEdit()
        edit.reservations = [outputs]
        try install(edit)
        return outputs
    }

    /// Runs the flush of `imm` through the options' runner until it has a result that fits,
    /// re-dispatching a lost job under a new number. A flush that may leave this process gets
    /// its number reserved in the manifest (`reserved`: the install must release it).
    /// - Throws: the job's failure; `unavailable` after `lostJobRetries` lost jobs;
    ///   `corruption` for a result that does not fit its spec (never installed).
    func runFlushJob(_ imm: MemTable, arena: MemtableArenaGrant? = nil) throws -> (spec: FlushJobSpec, result: FlushJobResult, reserved: Bool) {
        var lost: [String] = []
        while true {
            let reserved = options.jobRunner.flushesElsewhere
            let number = reserved ? try reserveOutputs(1).lowerBound : versions.newFileNumber()
            var spec = FlushJobSpec(
                jobID: nextJobID.wrappingAdd(1, ordering: .relaxed).oldValue, directory: path, epoch: 0,
                outputNumber: number, tableOptions: options.tableOptions)
            if tiers.isTiered {
                spec.tierDirectories = tiers.directories
                spec.outputTier = tiers.outputTier(level: 0, incomingBytes: UInt64(imm.memoryUsageBytes))
            }
            if let arena {
                // The worker reads the committed entries there (the arena's own state says which).
                spec.arena = FlushArenaReference(
                    regionPath: arena.arena.region.path, offset: UInt64(arena.arena.offset), bytes: UInt64(arena.arena.bytes),
                    logNumber: arena.logNumber)
            }
            let result: FlushJobResult
            do {
                result = try options.jobRunner.runFlush(spec, source: imm.makeIterator(), fileSystem: fileSystem)
            } catch let error as JobLost {
                try abandonLost(error, outputs: number..<number + 1, persisted: reserved, what: "flush", lost: &lost)
                continue
            } catch {
                reservations.abandon(number..<number + 1, persisted: reserved, outputsMayAppearForNanos: 0)
                throw error
            }
            let problems =
                spec.problems(in: result)
                + storedSizeProblems(result.output.map { [$0] } ?? [], within: number..<number + 1, tier: spec.outputTier)
            guard problems.isEmpty else {
                try? fileSystem.remove(tiers.tablePath(number, tier: spec.outputTier))
                reservations.abandon(number..<number + 1, persisted: reserved, outputsMayAppearForNanos: 0)
                throw MoraineError(
                    .corruption, "flush job \(spec.jobID) returned a result that does not fit its spec: " + problems.joined(separator: "; "))
            }
            counters.update { $0.jobCPUMicros += Int(result.cpuNanos / 1000) }
            return (spec, result, reserved)
        }
    }

    /// Removes tables in abandoned ranges that no version names, at most once a second unless
    /// `force` (or a range closes); closed ranges are released with the next edit.
    func sweepAbandonedOutputs(force: Bool = false) {
        guard let due = reservations.dueSweep(ignoringInterval: force) else { return }
        let live = versions.liveTableNumbers
        for (tier, directory) in tiers.directories.enumerated() {
            guard let names = try? fileSystem.children(of: directory) else { return }  // swept again later
            for name in names {
                guard case .table(let n) = DatabaseFile(name: name), !live.contains(n),
                    due.ranges.contains(where: { $0.contains(n) })
                else { continue }
                tableCache.evict(n, tier: tier)
                try? fileSystem.remove(tiers.tablePath(n, tier: tier))
            }
        }
        reservations.close(due.closing)
    }
}
