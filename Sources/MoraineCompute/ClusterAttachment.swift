// Compute in this process, every other role remote: the options that put a database's files on
// the storage node of a cluster's run directory, its memtables (with `pmem` durability) and
// second-tier block cache on the memory node, and its flushes and compactions on the workers —
// each only when the cluster runs that role. `--cluster RUNDIR`, `Database(path:cluster:)` and
// the compute node all open databases through here.
//
// Value types; no shared state.
import MoraineEngine
import MoraineMemory
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import MoraineWorker

#if canImport(Glibc)
    import Glibc
#endif

/// Wires a cluster's roles into a database's options.
public enum ClusterAttachment {
    /// `options` with the cluster in `runDirectory` wired in for the database `name`.
    /// - Parameter owner: who holds the database's lease, as the storage node shows it.
    /// - Throws: `.notFound` when the run directory lists no storage node, the key's error, …,
    ///   each naming the run directory.
    public static func options(_ base: Options, database name: String, runDirectory: String, owner: String) throws -> Options {
        var options = base
        // This process runs a database's engine: on the cluster's links it is a compute node
        // (its peers apply their compute link to it), unless it already said what it is.
        if TransportIdentity.label == nil { TransportIdentity.label = "compute" }
        let fileSystem = try remoteFileSystem(runDirectory: runDirectory, owner: owner)
        options.fileSystem = fileSystem
        if options.tiers.isEmpty { options.tiers = try tiers(of: fileSystem, database: name) }
        if let memory = try memoryNode(runDirectory: runDirectory, fileSystem: fileSystem) {
            options.memtableRegion = memory
            // The node's shared block cache, under this process's own.
            options.secondaryBlockCache = MemoryNodeBlockCache(database: name, arenas: memory)
            // Write logs an owner across boxes left there are this database's files wherever it
            // opens; `pmem` durability where the region does not map puts new ones there too.
            let logsByRequest = try options.durability == .pmem && !options.readOnly && !memory.writesInPlace
            options.fileSystem = MemoryLogFileSystem(base: fileSystem, arenas: memory, placesNewLogs: logsByRequest)
            if logsByRequest {
                // The region is the log, by request: each write group is appended to the log in an
                // arena of the memory node and durable in the region before it is acknowledged;
                // the memtable stays here (docs/MEMORY.md, "Memtables across boxes").
                options.durability = .wal
                if let note = writeBufferNote(options, logCapacity: try memory.logCapacity, database: name) { SystemLog.infoOnce(note) }
            }
        }
        if let runner = try jobRunner(runDirectory: runDirectory) {
            options.jobRunner = runner
            // Room for compactions side by side on the workers, and a thread for flushes.
            options.maxBackgroundJobs = max(options.maxBackgroundJobs, 4)
        }
        return options
    }

    /// What a write log in one arena means for the memtables: one switches when its log fills
    /// the arena (CommitLog.hasRoom), before `write_buffer_size` when that is larger (a log holds
    /// each entry with a few bytes more, a memtable a skiplist node besides). Nil when the write
    /// buffer fits.
    static func writeBufferNote(_ options: Options, logCapacity: UInt64, database: String) -> String? {
        guard UInt64(options.writeBufferSize) > logCapacity else { return nil }
        return "\(database): a write log in one of the memory node's arenas holds \(logCapacity) bytes, less than write_buffer_size "
            + "\(options.writeBufferSize): memtables switch when their log fills its arena"
    }

    /// The storage tiers a database on `fileSystem`'s node spreads its tables over: the node's
    /// tiers (its directory on tier K is `NAME/@tierK`), or none when the node has none. Tables on
    /// a remote tier are read by request, never mapped.
    public static func tiers(of fileSystem: RemoteFileSystem, database name: String) throws -> [StorageTier] {
        try fileSystem.tiers().enumerated().map { index, tier in
            StorageTier(path: "\(name)/@tier\(index)", budgetBytes: tier.budgetBytes == 0 ? nil : tier.budgetBytes)
        }
    }

    /// Flushes and compactions on the cluster's flush and compaction workers (here when none can
    /// take one), or nil when it runs no worker. The workers are looked up at every job, so a
    /// restarted one is found.
    public static func jobRunner(runDirectory: String) throws -> RemoteJobRunner? {
        let run = RunDirectory(runDirectory)
        do throws(TransportError) {
            guard try run.roles().contains(where: { $0.role == "compaction" || $0.role == "flush" }) else { return nil }
            let key = try ClusterKey.load(path: run.keyPath)
            let flushWorkers: @Sendable () -> [Endpoint] = {
                ((try? run.roles()) ?? []).filter { $0.role == "flush" }.map(\.endpoint)
            }
            return RemoteJobRunner(key: key, flushWorkers: flushWorkers) {
                ((try? run.roles()) ?? []).filter { $0.role == "compaction" }.map(\.endpoint)
            }
        } catch {
            throw MoraineError(error.moraineError.kind, "cluster \(runDirectory): \(error.message)")
        }
    }

    /// The arenas of the cluster's memory node, when it runs one: memtables live there with
    /// `pmem` durability (and arenas an earlier owner left are re-attached in any mode).
    public static func memoryNode(runDirectory: String, fileSystem: RemoteFileSystem) throws -> MemoryNodeArenas? {
        let run = RunDirectory(runDirectory)
        do throws(TransportError) {
            guard try run.roles().contains(where: { $0.role == "memory" }) else { return nil }
            let key = try ClusterKey.load(path: run.keyPath)
            return MemoryNodeArenas(key: key, epoch: { fileSystem.leaseEpoch(of: $0) }) { () throws(TransportError) -> Endpoint in
                try run.endpoint(of: "memory")
            }
        } catch {
            throw MoraineError(error.moraineError.kind, "cluster \(runDirectory): \(error.message)")
        }
    }

    /// The file system of a cluster's storage node, from its run directory.
    public static func remoteFileSystem(runDirectory: String, owner: String) throws -> RemoteFileSystem {
        let run = RunDirectory(runDirectory)
        do throws(TransportError) {
            guard let storage = try run.roles().first(where: { $0.role == "storage" }) else {
                throw TransportError(.notFound, "the cluster in \(run.path) lists no storage node")
            }
            let key = try ClusterKey.load(path: run.keyPath)
            var options = RemoteFileSystem.Options()
            options.owner = owner
            if storage.linkDelayNanos > 0 { options.link = LinkEmulation(delay: .fixed(nanos: storage.linkDelayNanos)) }
            return RemoteFileSystem(endpoint: storage.endpoint, key: key, options: options)
        } catch {
            throw MoraineError(error.moraineError.kind, "cluster \(runDirectory): \(error.message)")
        }
    }
}
