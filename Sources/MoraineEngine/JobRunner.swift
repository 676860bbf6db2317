// Where the engine runs its flush and compaction jobs: a `JobRunner` takes a `CompactionJobSpec`
// (the job as a value, MoraineFormat) and returns its `CompactionJobResult`, or a `FlushJobSpec`
// with the memtable's entries and returns a `FlushJobResult`; `LocalJobRunner` runs it on the
// calling thread, a worker's runner elsewhere. Whoever ran it, the engine checks the result
// against the spec before it installs it (Engine+Background). A runner that loses sight of a job
// it handed off throws `JobLost`: the engine then runs the compaction again under a new
// reservation and sweeps the lost job's range until its outputs can no longer appear.
import MoraineFormat
import MoraineSystem

/// Where the engine runs its compactions: in its own process (`LocalJobRunner`, the default),
/// or elsewhere (a worker reached over the transport). A runner either returns the job's result or
/// throws; a result is checked against its spec before it is installed, whoever ran it.
public protocol JobRunner: Sendable {
    /// Runs `spec` against the files of `fileSystem`, writing outputs only with numbers from the
    /// spec's reserved range.
    /// - Throws: the job's failure (its outputs removed), or `JobLost` when it ran elsewhere and
    ///   its end was not seen.
    func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult
    /// Jobs run elsewhere, and jobs run here because elsewhere could not take them (0 for a
    /// runner that only runs here).
    var remoteJobs: Int { get }
    var fallbacks: Int { get }
    /// How many jobs it can run at once: the engine runs up to this many compactions of
    /// disjoint tables side by side (bounded by its background threads). Read under the
    /// engine's mutex: must not block.
    var parallelism: Int { get }

    /// Writes `source` (a memtable's entries, in key order) to the one table `spec` names, with
    /// the file system's files.
    /// - Throws: the job's failure (its output removed), or `JobLost` when it ran elsewhere and
    ///   its end was not seen.
    func runFlush(_ spec: FlushJobSpec, source: any InternalIterator, fileSystem: any FileSystem) throws -> FlushJobResult
    /// Whether flushes, and compactions, may leave this process: their output numbers are then
    /// reserved in the manifest before they leave (a job here dies with the process, and the
    /// open's planner deals with what it left, so it costs no manifest write).
    var flushesElsewhere: Bool { get }
    var compactsElsewhere: Bool { get }
    /// Flushes run elsewhere, and flushes run here because elsewhere could not take them.
    var remoteFlushes: Int { get }
    var flushFallbacks: Int { get }
}

extension JobRunner {
    public var remoteJobs: Int { 0 }
    public var fallbacks: Int { 0 }
    public var parallelism: Int { 1 }
    public var flushesElsewhere: Bool { false }
    public var compactsElsewhere: Bool { false }
    public var remoteFlushes: Int { 0 }
    public var flushFallbacks: Int { 0 }

    public func runFlush(_ spec: FlushJobSpec, source: any InternalIterator, fileSystem: any FileSystem) throws -> FlushJobResult {
        try LocalJobRunner.flush(spec, source: source, fileSystem: fileSystem)
    }
}

/// A job handed to someone else whose end nobody saw: the worker died, hung, or went silent.
/// Outputs in its reserved range may still appear until `outputsMayAppearForNanos` from now
/// (the job's deadline, when the worker stops it, plus a margin); the engine re-runs the
/// compaction with a fresh reservation and removes whatever appears in the lost one.
public struct JobLost: Error, CustomStringConvertible {
    public var jobID: UInt64
    public var reason: String
    public var outputsMayAppearForNanos: Int64

    public init(jobID: UInt64, reason: String, outputsMayAppearForNanos: Int64) {
        self.jobID = jobID
        self.reason = reason
        self.outputsMayAppearForNanos = outputsMayAppearForNanos
    }

    public var description: String { "job \(jobID) lost: \(reason)" }
}

/// Runs jobs on the calling thread.
public struct LocalJobRunner: JobRunner {
    public init() {}

    public func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
        try CompactionJob(spec: spec, fileSystem: fileSystem).run()
    }

    /// The flush of `source` on the calling thread (no checks of the source's order: it is a
    /// memtable of this process).
    public static func flush(_ spec: FlushJobSpec, source: any InternalIterator, fileSystem: any FileSystem) throws -> FlushJobResult {
        let started = monotonicNanos()
        let cpuStarted = threadCPUNanos()
        var result = FlushJobResult(jobID: spec.jobID)
        result.output = try FlushJob(
            source: source, fileNumber: spec.outputNumber, directory: spec.tableDirectory(tier: spec.outputTier), tier: spec.outputTier,
            fileSystem: fileSystem,
            tableOptions: spec.tableOptions
        ).run()
        result.wallNanos = monotonicNanos() - started
        result.cpuNanos = threadCPUNanos() - cpuStarted
        return result
    }
}
