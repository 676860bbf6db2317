// The public entry point. Today a Database is always embedded (every role in this process);
// later issues add opening a database served by a cluster behind the same type. Thread-safe:
// any number of threads may read and write one Database.
@_exported import MoraineEngine

@_exported import enum MoraineFormat.CompressionType
@_exported import enum MoraineFormat.LogRecoveryMode
@_exported import struct MoraineFormat.TableFileInfo
@_exported import struct MoraineFormat.WriteBatch
@_exported import protocol MoraineFormat.SecondaryBlockCache
@_exported import struct MoraineFormat.SecondaryCacheCounters
@_exported import protocol MoraineSystem.FileSystem
@_exported import struct MoraineSystem.MoraineError
@_exported import class MoraineSystem.PosixFileSystem

/// A Moraine key-value database.
public final class Database: Sendable {
    /// The embedded engine behind this handle.
    public let engine: Engine

    /// Opens the database in `path`.
    /// - Throws: see `Engine.open`.
    public init(path: String, options: Options = Options()) throws {
        engine = try Engine.open(path: path, options: options)
    }

    public func close() throws { try engine.close() }

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
        try engine.put(key, value, options: options)
    }

    public func put(_ key: String, _ value: String, options: WriteOptions = WriteOptions()) throws {
        try engine.put(Array(key.utf8), Array(value.utf8), options: options)
    }

    public func get(_ key: [UInt8], options: ReadOptions = ReadOptions()) throws -> [UInt8]? {
        try engine.get(key, options: options)
    }

    /// The values of `keys` (nil where absent), read as of one moment; the data blocks the
    /// batch needs are read in one submission.
    public func multiGet(_ keys: [[UInt8]], options: ReadOptions = ReadOptions()) throws -> [[UInt8]?] {
        try engine.multiGet(keys, options: options)
    }

    /// The value as UTF-8 text (invalid sequences replaced).
    public func get(_ key: String, options: ReadOptions = ReadOptions()) throws -> String? {
        try engine.get(Array(key.utf8), options: options).map { String(decoding: $0, as: UTF8.self) }
    }

    public func delete(_ key: [UInt8], options: WriteOptions = WriteOptions()) throws {
        try engine.delete(key, options: options)
    }

    public func delete(_ key: String, options: WriteOptions = WriteOptions()) throws {
        try engine.delete(Array(key.utf8), options: options)
    }

    /// Applies every operation of `batch`, or none.
    public func write(_ batch: WriteBatch, options: WriteOptions = WriteOptions()) throws {
        try engine.write(batch, options: options)
    }

    public func makeIterator(options: ReadOptions = ReadOptions()) throws -> DBIterator {
        try engine.makeIterator(options: options)
    }

    public func snapshot() -> Snapshot { engine.snapshot() }
    public func releaseSnapshot(_ snapshot: Snapshot) { engine.releaseSnapshot(snapshot) }
    /// Writes the memtables to tables; waits for that unless `wait` is false.
    public func flush(wait: Bool = true) throws { try engine.flush(wait: wait) }
    public func compactRange(
        begin: [UInt8]? = nil, end: [UInt8]? = nil, bottommost: BottommostCompaction = .ifTombstones
    ) throws {
        try engine.compactRange(begin: begin, end: end, bottommost: bottommost)
    }
    public func stats() -> EngineStats { engine.stats() }
    /// About how many keys the database holds (see `Engine.estimatedKeyCount`).
    public func estimatedKeyCount() -> Int { engine.estimatedKeyCount() }
    /// Stops starting flushes and compactions and waits for running ones (RocksDB's
    /// PauseBackgroundWork); writes wait once the memtables are full. Undo with
    /// `continueBackgroundWork`.
    public func pauseBackgroundWork() { engine.pauseBackgroundWork() }
    public func continueBackgroundWork() { engine.continueBackgroundWork() }
}
