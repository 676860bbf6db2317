// The public entry point, one type for the three ways to run a database:
//   - embedded: the engine and every file in this process (`Database(path:)`, the default);
//   - compute in the application: the engine here, every other role of a cluster remote (its
//     storage node, memory node and workers; `Database(path:cluster:)`, CLI `--cluster`);
//   - connected: a thin client of a compute node that runs the engine (`Database(connect:…)`,
//     CLI `--connect`).
// The handle holds what it runs on as an enum, not the engine object: a switch per call costs
// nothing measurable on the embedded hot path, where a protocol existential would add a dynamic
// dispatch to every get and put. Behaviour is the same in every mode; what differs is named
// where it does (a connected database's errors can be `unavailable`; its snapshots and iterators
// are leases on the compute node, which expire if this process stops renewing them).
// Thread-safe: any number of threads may read and write one Database.
@_exported import MoraineEngine

import MoraineCompute
import MoraineMessages
import MoraineTransport

@_exported import enum MoraineFormat.CompressionType
@_exported import enum MoraineFormat.LogRecoveryMode
@_exported import struct MoraineFormat.TableFileInfo
@_exported import struct MoraineFormat.WriteBatch
@_exported import protocol MoraineFormat.SecondaryBlockCache
@_exported import struct MoraineFormat.SecondaryCacheCounters
@_exported import protocol MoraineSystem.FileSystem
@_exported import struct MoraineSystem.MoraineError
@_exported import class MoraineSystem.PosixFileSystem
@_exported import class MoraineCompute.ComputeClient

/// A Moraine key-value database.
public final class Database: Sendable {
    enum Backend: Sendable {
        case engine(Engine)
        case remote(ComputeClient)
    }

    let backend: Backend

    /// The engine behind an embedded or compute-in-the-application database; nil for a
    /// connected one (its engine runs on the compute node).
    public var engine: Engine? {
        if case .engine(let engine) = backend { return engine }
        return nil
    }

    /// Whether a write might now wait for more than its group commit (`Engine.writesMayWait`);
    /// always true for a connected database (every write is a round trip).
    public var writesMayWait: Bool { engine?.writesMayWait ?? true }

    /// Whether this handle is a client of a compute node.
    public var isConnected: Bool { engine == nil }

    /// Opens the database in `path` (embedded, or wherever `options.fileSystem` keeps files).
    /// - Throws: see `Engine.open`.
    public init(path: String, options: Options = Options()) throws {
        backend = .engine(try Engine.open(path: path, options: options))
    }

    /// A handle on an engine this process opened another way (a compute node's database, served
    /// by its Redis front end too). The engine's owner closes it; `close()` here closes it as well.
    public init(hosting engine: Engine) {
        backend = .engine(engine)
    }

    /// Opens the database `name` of the cluster running in `runDirectory`, with the engine in
    /// this process: its files on the cluster's storage node, its memtables (with `pmem`
    /// durability) and second-tier block cache on the memory node, flushes and compactions on
    /// the workers — each when the cluster runs that role.
    /// - Throws: `.notFound` when the run directory lists no storage node, an unreachable role
    ///   as `.unavailable`, then what `Engine.open` throws.
    public init(path name: String, cluster runDirectory: String, options: Options = Options()) throws {
        let options = try ClusterAttachment.options(options, database: name, runDirectory: runDirectory, owner: "a Moraine application")
        backend = .engine(try Engine.open(path: name, options: options))
    }

    /// Connects to the database `name` on a compute node: `target` is the run directory of a
    /// cluster that runs one (its key and endpoint are read from there) or the node's endpoint
    /// (`shm:PATH` or `tcp:HOST:PORT`, with `clusterKey` the key file's path). Only
    /// `createIfMissing` and `errorIfExists` of `options` apply; the node opens the database with
    /// its own options.
    /// - Throws: `.unavailable` when the node does not answer, `.notFound` for a missing
    ///   database without `createIfMissing` (or a run directory without a compute node), `.invalid`
    ///   for a bad name or a wrong key.
    public init(
        connect target: String, database name: String, clusterKey: String? = nil, options: Options = Options(),
        settings: ComputeClient.Settings = ComputeClient.Settings()
    ) throws {
        let (endpoint, key) = try Self.computeNode(target, clusterKey: clusterKey)
        backend = .remote(
            try ComputeClient(
                endpoint: endpoint, key: key, database: name, createIfMissing: options.createIfMissing, errorIfExists: options.errorIfExists,
                settings: settings))
    }

    /// Removes the database `name` of the cluster running in `runDirectory` (its files on the
    /// storage node, its arenas on the memory node), as `destroy(path:options:)` does embedded.
    @discardableResult
    public static func destroy(path name: String, cluster runDirectory: String, options: Options = Options()) throws -> Int {
        let options = try ClusterAttachment.options(options, database: name, runDirectory: runDirectory, owner: "a Moraine application")
        return try Engine.destroy(path: name, options: options)
    }

    /// Removes the database `name` of a compute node (RocksDB's DestroyDB through the node):
    /// `target` as for `init(connect:)`. Returns how many files were removed (0 when there was
    /// no such database).
    /// - Throws: `.busy` while another client holds a snapshot or an iterator of it,
    ///   `.unavailable` when the node does not answer.
    @discardableResult
    public static func destroy(connect target: String, database name: String, clusterKey: String? = nil) throws -> Int {
        let (endpoint, key) = try computeNode(target, clusterKey: clusterKey)
        return try ComputeClient.destroy(endpoint: endpoint, key: key, database: name)
    }

    /// The compute node's endpoint and the cluster key for `--connect TARGET`.
    private static func computeNode(_ target: String, clusterKey: String?) throws -> (Endpoint, ClusterKey) {
        let endpoint: Endpoint
        let keyPath: String
        if target.hasPrefix("shm:") || target.hasPrefix("tcp:") {
            do {
                endpoint = try Endpoint(parsing: target)
            } catch {
                throw MoraineError(.invalid, "--connect \(target): \(error.message)")
            }
            guard let clusterKey else { throw MoraineError(.invalid, "connecting to the endpoint \(target) needs the cluster key's file") }
            keyPath = clusterKey
        } else {
            let run = RunDirectory(target)
            do {
                endpoint = try run.endpoint(of: "compute")
            } catch {
                throw MoraineError(error.moraineError.kind, "--connect \(target): \(error.message)")
            }
            keyPath = clusterKey ?? run.keyPath
        }
        let key: ClusterKey
        do {
            key = try ClusterKey.load(path: keyPath)
        } catch {
            throw MoraineError(error.moraineError.kind, "--connect \(target): \(error.message)")
        }
        return (endpoint, key)
    }

    /// Closes the database (embedded) or ends the session with the compute node (connected).
    public func close() throws {
        switch backend {
        case .engine(let engine): try engine.close()
        case .remote(let client): client.close()
        }
    }

    /// Rebuilds the manifest of the database in `path` from the tables and logs found there,
    /// moving what cannot be read to `path/lost/` (LevelDB's RepairDB). Open it afterwards.
    /// - Throws: see `Engine.repair`.
    public static func repair(path: String, options: Options = Options()) throws -> RepairReport {
        try Engine.repair(path: path, options: options)
    }

    /// Removes the database in `path` through `options.fileSystem` (RocksDB's DestroyDB):
    /// its tables, WALs, manifests, CURRENT and lost-and-found; other files stay. Returns the
    /// number of files removed.
    /// - Throws: see `Engine.destroy` (`.busy` while the database is open).
    @discardableResult
    public static func destroy(path: String, options: Options = Options()) throws -> Int {
        try Engine.destroy(path: path, options: options)
    }

    public func put(_ key: [UInt8], _ value: [UInt8], options: WriteOptions = WriteOptions()) throws {
        switch backend {
        case .engine(let engine): try engine.put(key, value, options: options)
        case .remote(let client): try client.put(key, value, options: options)
        }
    }

    public func put(_ key: String, _ value: String, options: WriteOptions = WriteOptions()) throws {
        try put(Array(key.utf8), Array(value.utf8), options: options)
    }

    /// `put` from borrowed bytes (no array on the embedded path).
    public func put(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, options: WriteOptions = WriteOptions()) throws {
        switch backend {
        case .engine(let engine): try engine.put(key: key, value: value, options: options)
        case .remote(let client): try client.put(Array(key), Array(value), options: options)
        }
    }

    public func get(_ key: [UInt8], options: ReadOptions = ReadOptions()) throws -> [UInt8]? {
        switch backend {
        case .engine(let engine): try engine.get(key, options: options)
        case .remote(let client): try client.get(key, options: options)
        }
    }

    /// `get` of borrowed key bytes.
    public func get(key: UnsafeRawBufferPointer, options: ReadOptions = ReadOptions()) throws -> [UInt8]? {
        switch backend {
        case .engine(let engine): try engine.get(key: key, options: options)
        case .remote(let client): try client.get(Array(key), options: options)
        }
    }

    /// The values of `keys` (nil where absent), read as of one moment; the data blocks the
    /// batch needs are read in one submission (connected: one request per 4096 keys).
    public func multiGet(_ keys: [[UInt8]], options: ReadOptions = ReadOptions()) throws -> [[UInt8]?] {
        switch backend {
        case .engine(let engine): try engine.multiGet(keys, options: options)
        case .remote(let client): try client.multiGet(keys, options: options)
        }
    }

    /// The value as UTF-8 text (invalid sequences replaced).
    public func get(_ key: String, options: ReadOptions = ReadOptions()) throws -> String? {
        try get(Array(key.utf8), options: options).map { String(decoding: $0, as: UTF8.self) }
    }

    public func delete(_ key: [UInt8], options: WriteOptions = WriteOptions()) throws {
        switch backend {
        case .engine(let engine): try engine.delete(key, options: options)
        case .remote(let client): try client.delete(key, options: options)
        }
    }

    public func delete(_ key: String, options: WriteOptions = WriteOptions()) throws {
        try delete(Array(key.utf8), options: options)
    }

    /// `multiGet` from memory only (`Engine.multiGetFromMemory`): nil when a key would need a
    /// read from a file; always nil for a connected database (every read is a round trip).
    public func multiGetFromMemory(_ keys: [[UInt8]], options: ReadOptions = ReadOptions()) throws -> [[UInt8]?]? {
        switch backend {
        case .engine(let engine): try engine.multiGetFromMemory(keys, options: options)
        case .remote: nil
        }
    }

    /// Applies every operation of `batch`, or none. The batch is consumed: a caller that passes
    /// its last use of it spares the engine a copy of the whole batch when it stamps the
    /// sequence (a caller that goes on using it keeps its own copy, as before).
    public func write(_ batch: consuming WriteBatch, options: WriteOptions = WriteOptions()) throws {
        switch backend {
        case .engine(let engine): try engine.write(consume batch, options: options)
        case .remote(let client): try client.write(batch, options: options)
        }
    }

    /// Applies `batch` without waiting for another thread's group commit (`Engine.write(_:options:
    /// lead:completion:)`; with `lead` false this thread never applies it, the engine's write
    /// helper does); `completion` gets nil or the error. A connected database writes at once and
    /// then calls `completion`.
    public func write(
        _ batch: consuming WriteBatch, options: WriteOptions = WriteOptions(), lead: Bool = true,
        completion: @escaping @Sendable (MoraineError?) -> Void
    ) {
        switch backend {
        case .engine(let engine): engine.write(consume batch, options: options, lead: lead, completion: completion)
        case .remote(let client):
            do {
                try client.write(batch, options: options)
                completion(nil)
            } catch {
                completion(error)
            }
        }
    }

    public func makeIterator(options: ReadOptions = ReadOptions()) throws -> DatabaseIterator {
        switch backend {
        case .engine(let engine): DatabaseIterator(.engine(try engine.makeIterator(options: options)))
        case .remote(let client): DatabaseIterator(.remote(try client.makeIterator(options: options)))
        }
    }

    /// A consistent view of now. Connected, it is a lease on the compute node: `.unavailable`
    /// when the node does not answer.
    public func snapshot() throws -> Snapshot {
        switch backend {
        case .engine(let engine): engine.snapshot()
        case .remote(let client): try client.snapshot()
        }
    }

    public func releaseSnapshot(_ snapshot: Snapshot) { snapshot.release() }

    /// Writes the memtables to tables; waits for that unless `wait` is false (connected: always
    /// waits).
    public func flush(wait: Bool = true) throws {
        switch backend {
        case .engine(let engine): try engine.flush(wait: wait)
        case .remote(let client): try client.flush()
        }
    }

    public func compactRange(
        begin: [UInt8]? = nil, end: [UInt8]? = nil, bottommost: BottommostCompaction = .ifTombstones
    ) throws {
        switch backend {
        case .engine(let engine): try engine.compactRange(begin: begin, end: end, bottommost: bottommost)
        case .remote(let client): try client.compactRange(begin: begin, end: end, bottommost: bottommost)
        }
    }

    /// Waits until no flush or compaction runs or is due (RocksDB's WaitForCompact); false
    /// when `timeoutNanos` passed first, background work is paused, or it failed. Connected,
    /// answers true at once: the compute node's background work is its own.
    public func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool {
        switch backend {
        case .engine(let engine): engine.waitForBackgroundIdle(timeoutNanos: timeoutNanos)
        case .remote: true
        }
    }

    /// The tree's shape and counters. Connected, a node that does not answer gives empty
    /// statistics whose `backgroundError` says why (`fetchStats` throws instead).
    public func stats() -> EngineStats {
        do {
            return try fetchStats().stats
        } catch {
            var stats = EngineStats()
            stats.backgroundError = "statistics unavailable: \(error)"
            return stats
        }
    }

    /// The statistics and the estimated key count, or why they could not be read.
    public func fetchStats() throws -> (stats: EngineStats, estimatedKeys: Int) {
        switch backend {
        case .engine(let engine): (engine.stats(), engine.estimatedKeyCount())
        case .remote(let client): try client.stats()
        }
    }

    /// About how many keys the database holds (see `Engine.estimatedKeyCount`); 0 when a
    /// connected database's node does not answer.
    public func estimatedKeyCount() -> Int {
        switch backend {
        case .engine(let engine): engine.estimatedKeyCount()
        case .remote(let client): (try? client.stats().estimatedKeys) ?? 0
        }
    }

    /// Stops starting flushes and compactions and waits for running ones (RocksDB's
    /// PauseBackgroundWork); writes wait once the memtables are full. Undo with
    /// `continueBackgroundWork`.
    public func pauseBackgroundWork() throws {
        switch backend {
        case .engine(let engine): engine.pauseBackgroundWork()
        case .remote(let client): try client.setBackgroundWork(paused: true)
        }
    }

    public func continueBackgroundWork() throws {
        switch backend {
        case .engine(let engine): engine.continueBackgroundWork()
        case .remote(let client): try client.setBackgroundWork(paused: false)
        }
    }
}

/// An iterator over user keys and values, forward and backward, as of its creation (or its
/// snapshot), within optional bounds. Single-threaded. A step that throws leaves it invalid
/// until the next seek.
public final class DatabaseIterator {
    enum Backend {
        case engine(DBIterator)
        case remote(RemoteIterator)
    }

    /// Exactly one is set. Two optional `let`s rather than the enum: a call through a `let` is
    /// borrowed, a payload bound out of an enum is retained and released around every step.
    private let local: DBIterator?
    private let remote: RemoteIterator?

    init(_ backend: Backend) {
        switch backend {
        case .engine(let iterator):
            local = iterator
            remote = nil
        case .remote(let iterator):
            local = nil
            remote = iterator
        }
    }

    /// Whether the iterator is on an entry.
    public var isValid: Bool {
        if let remote { return remote.isValid }
        return local!.isValid
    }

    public var key: [UInt8] {
        if let remote { return remote.key }
        return local!.key
    }

    public var value: [UInt8] {
        if let remote { return remote.value }
        return local!.value
    }

    /// Runs `body` on the current key and value in place (valid only during the call).
    public func withCurrent<T>(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        if let remote { return try remote.withCurrent(body) }
        return try local!.withCurrent(body)
    }

    public func seekToFirst() throws {
        if let remote { return try remote.seekToFirst() }
        return try local!.seekToFirst()
    }

    public func seekToLast() throws {
        if let remote { return try remote.seekToLast() }
        return try local!.seekToLast()
    }

    /// To the first key at or after `target`.
    public func seek(_ target: [UInt8]) throws {
        if let remote { return try remote.seek(target) }
        return try local!.seek(target)
    }

    /// To the last key at or before `target`.
    public func seekForPrev(_ target: [UInt8]) throws {
        if let remote { return try remote.seekForPrev(target) }
        return try local!.seekForPrev(target)
    }

    public func next() throws {
        if let remote { return try remote.next() }
        return try local!.next()
    }

    public func prev() throws {
        if let remote { return try remote.prev() }
        return try local!.prev()
    }
}
