// The seam between the benchmark workloads and the engine under test. Moraine implements it in
// this package; the RocksDB peer implements it in bench/ (its own package, so Moraine never
// needs RocksDB to build). Both are configured from the same BenchConfiguration, so each
// engine runs with exactly the options the other gets.
import Moraine
import MoraineSystem

/// Options every engine under test receives (db_bench's names in comments).
public struct BenchConfiguration: Sendable {
    public var sync = false  // --sync
    public var disableWAL = false  // --disable_wal
    /// false with --use_existing_db: opening a missing database is then an error, as in db_bench.
    public var createIfMissing = true
    /// "wal" or "pmem" (--durability; Moraine only).
    public var durability = "wal"
    /// The persistent-memory region for pmem durability; nil: the default under /dev/shm.
    public var pmemPath: String? = nil
    /// "io_uring" or "pread" (--io_backend); nil: the process default.
    public var ioBackend: String? = nil
    /// Read tables through mappings (--mmap_read; RocksDB's allow_mmap_reads; LevelDB always does).
    public var mmapReads = false
    /// Read tables with O_DIRECT (--use_direct_reads; RocksDB's use_direct_reads; LevelDB has none).
    public var directReads = false
    /// Moraine's memtables in transparent huge pages (--memtable_huge_pages; Moraine only).
    public var memtableHugePages = true
    /// Moraine's memtables keep a point-lookup hash index (--memtable_hash_index; Moraine only).
    public var memtableHashIndex = true
    public var cacheSizeBytes = 8 << 20  // --cache_size
    public var bloomBitsPerKey = 10  // --bloom_bits
    public var compressionLZ4 = true  // --compression_type lz4|none
    public var writeBufferSizeBytes = 64 << 20  // --write_buffer_size
    public var maxWriteBufferNumber = 2  // --max_write_buffer_number
    public var level0FileNumCompactionTrigger = 4  // --level0_file_num_compaction_trigger
    public var level0SlowdownWritesTrigger = 20
    public var level0StopWritesTrigger = 36
    public var targetFileSizeBaseBytes = 64 << 20  // --target_file_size_base
    public var maxBytesForLevelBaseBytes = 256 << 20  // --max_bytes_for_level_base
    public var maxBackgroundJobs = 2  // --max_background_jobs
    public var blockSizeBytes = 4096  // --block_size
    /// Storage tiers (--tiers): each engine's tables under `path/<engine>` on each tier.
    public var tiers: [StorageTier] = []

    /// The tiers of engine `name`: its own directory on each tier.
    public func tiers(for name: String) -> [StorageTier] {
        tiers.map { StorageTier(path: $0.path + "/" + name, budgetBytes: $0.budgetBytes, mapped: $0.mapped) }
    }
    public init() {}
}

/// A database under test. One instance is used by several threads at once (readwhilewriting).
public protocol BenchEngine: AnyObject, Sendable {
    /// The name printed before each result line.
    var name: String { get }
    func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws
    func delete(_ key: UnsafeRawBufferPointer) throws
    /// Applies one batch atomically, as one write: `keys` holds keys of `keySize` bytes one after
    /// another; with `values`, each key is put with its value, without, each is deleted
    /// (db_bench's --batch_size for fills and deletes).
    func write(keys: UnsafeRawBufferPointer, keySize: Int, values: [UnsafeRawBufferPointer]?) throws
    /// Reads a key; returns the value's size, or nil when absent.
    func get(_ key: UnsafeRawBufferPointer) throws -> Int?
    /// Reads `count` keys of `keySize` bytes packed one after another in `keys`, as one batch
    /// (db_bench's multireadrandom); returns how many were found and their values' bytes.
    func multiGet(_ keys: UnsafeRawBufferPointer, keySize: Int, count: Int) throws -> (found: Int, valueBytes: Int)
    func makeCursor() throws -> any BenchCursor
    /// Compacts the whole key range and waits (db_bench's `compact`).
    func compactAll() throws
    func close() throws
    /// The engine's own counters as text (db_bench's --statistics), or nil if it has none.
    var statistics: String? { get }
    /// Requests sent to a storage node so far, for an engine whose files live on one (nil
    /// otherwise): the runner reports their count per operation.
    var storageRequests: Int? { get }
    /// Block-cache misses so far (nil: not counted), reported beside storage requests: a read
    /// should cost one request per block it misses.
    var blockCacheMisses: Int? { get }
    /// The engine's background-work counters so far (nil: not counted): what the runner reports
    /// beside a workload's CPU time.
    var backgroundCounters: BackgroundCounters? { get }
    /// Waits until no flush or compaction runs or is due; false when `timeoutNanos` passed
    /// first (or the engine cannot tell: a client of a compute node answers true at once).
    func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool
}

/// Background work an engine did, cumulative: compaction bytes and time, write stalls, and the
/// jobs that ran on workers.
public struct BackgroundCounters: Sendable {
    public var compactionBytes = 0
    public var compactionMicros = 0
    public var stallMicros = 0
    public var remoteJobs = 0
    /// Lookups in a second block-cache tier that hit and that missed (zero without one).
    public var secondaryHits = 0
    public var secondaryMisses = 0

    public init() {}

    /// What happened between two readings (nil unless both exist).
    static func delta(from before: BackgroundCounters?, to after: BackgroundCounters?) -> BackgroundCounters? {
        guard let before, let after else { return nil }
        var delta = BackgroundCounters()
        delta.compactionBytes = after.compactionBytes - before.compactionBytes
        delta.compactionMicros = after.compactionMicros - before.compactionMicros
        delta.stallMicros = after.stallMicros - before.stallMicros
        delta.remoteJobs = after.remoteJobs - before.remoteJobs
        delta.secondaryHits = after.secondaryHits - before.secondaryHits
        delta.secondaryMisses = after.secondaryMisses - before.secondaryMisses
        return delta
    }
}

extension BenchEngine {
    public var storageRequests: Int? { nil }
    public var blockCacheMisses: Int? { nil }
    public var backgroundCounters: BackgroundCounters? { nil }
    public func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool { true }
}

/// An iterator of a database under test; used by one thread.
public protocol BenchCursor: AnyObject {
    var isValid: Bool { get }
    func seekToFirst() throws
    func seekToLast() throws
    func seek(_ key: UnsafeRawBufferPointer) throws
    func next() throws
    func prev() throws
    /// Bytes of the current key plus value (for MB/s).
    var entryBytes: Int { get }
    /// Whether the current key is `key`. Precondition: isValid.
    func keyEquals(_ key: UnsafeRawBufferPointer) -> Bool
}

/// Opens engines by name.
public protocol BenchEngineFactory: Sendable {
    /// Names this factory opens (e.g. ["moraine"] or ["rocksdb"]).
    var engineNames: [String] { get }
    /// Opens engine `name`'s database in `path`, creating it (and the directory) when
    /// `configuration.createIfMissing`; otherwise a missing database is an error.
    func open(_ name: String, path: String, configuration: BenchConfiguration) throws -> any BenchEngine
    /// Where engine `name` keeps its database when the run's directory is `base`.
    func databasePath(_ name: String, base: String) -> String
    /// Removes what an earlier run left in engine `name`'s `path`, so the next open is fresh.
    func removeDatabase(_ name: String, path: String, configuration: BenchConfiguration) throws
}

extension BenchEngineFactory {
    /// A subdirectory of the run's directory per engine.
    public func databasePath(_ name: String, base: String) -> String { base + "/" + name }

    /// Removes the local directory (and the engine's directory on each tier) and makes it anew.
    public func removeDatabase(_ name: String, path: String, configuration: BenchConfiguration) throws {
        PosixFileSystem.shared.removeTree(path)
        try PosixFileSystem.shared.createDirectory(path)
        for tier in configuration.tiers(for: name) {
            PosixFileSystem.shared.removeTree(tier.path)
            try PosixFileSystem.shared.createDirectory(tier.path)  // RocksDB does not create db_paths' directories
        }
    }
}
