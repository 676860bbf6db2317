// Where the engine runs its compaction jobs: a `JobRunner` takes a `CompactionJobSpec` (the job
// as a value, MoraineFormat) and returns its `CompactionJobResult`; `LocalJobRunner` runs it on the
// calling thread, a worker's runner elsewhere. Whoever ran it, the engine checks the result
// against the spec before it installs it (Engine+Background).
import MoraineFormat
import MoraineSystem

/// Where the engine runs its compactions: in its own process (`LocalJobRunner`, the default),
/// or elsewhere (a worker reached over the transport). A runner either returns the job's result or
/// throws; a result is checked against its spec before it is installed, whoever ran it.
public protocol JobRunner: Sendable {
    /// Runs `spec` against the files of `fileSystem`, writing outputs only with numbers from the
    /// spec's reserved range.
    func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult
    /// Jobs run elsewhere, and jobs run here because elsewhere could not take them (0 for a
    /// runner that only runs here).
    var remoteJobs: Int { get }
    var fallbacks: Int { get }
}

extension JobRunner {
    public var remoteJobs: Int { 0 }
    public var fallbacks: Int { 0 }
}

/// Runs jobs on the calling thread.
public struct LocalJobRunner: JobRunner {
    public init() {}

    public func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
        try CompactionJob(spec: spec, fileSystem: fileSystem).run()
    }
}
