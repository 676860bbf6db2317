// Options for a database, named after RocksDB's where the concept matches (the RocksDB name is
// given on each). Value types; validated once at open.
import MoraineFormat
import MoraineSystem

/// Where writes become durable before they are acknowledged.
public enum Durability: String, Sendable, CaseIterable {
    /// A write-ahead log file (synced per write when WriteOptions.sync is set).
    case wal
    /// A persistent log in a persistent-memory region: every write is persisted before it is
    /// acknowledged, and no WAL is written.
    case pmem
}

/// How a database is opened and tuned.
public struct Options: Sendable {
    /// Create the database when the directory holds none (`create_if_missing`).
    public var createIfMissing = false
    /// Fail when the database already exists (`error_if_exists`).
    public var errorIfExists = false
    /// Open for reading only (RocksDB's `DB::OpenForReadOnly`): no lock is taken, WALs are
    /// replayed into memory only, nothing is written or deleted, no background work runs, and
    /// writes, flushes and compactions fail with `.invalid`. Such an open may share the database
    /// with a writer in another process and sees the state as of its open. `createIfMissing`
    /// is ignored.
    public var readOnly = false
    /// Bytes of writes gathered in a memtable before it is flushed (`write_buffer_size`).
    public var writeBufferSize = 64 << 20
    /// Keep a point-lookup hash index beside each memtable in private memory (about 1/8 of
    /// `write_buffer_size` more memory): a get answered from the memtable, or a miss there, costs
    /// a probe instead of a skiplist walk. Memtables in a persistent-memory or memory-node region
    /// have none. `memtable_hash_index` in OPTIONS; on by default.
    public var memtableHashIndex = true
    /// Ask for transparent huge pages (`madvise(MADV_HUGEPAGE)`) for memtable arenas and their
    /// hash indexes (RocksDB's `memtable_huge_page_size` asks hugetlbfs instead, off by default
    /// there). Fewer TLB misses when a memtable is walked; but the first write into each 2 MiB
    /// of a fresh arena zeroes all of it in one page fault, slow on a virtual machine whose host
    /// has not backed that memory yet. Measured both ways (docs/PERFORMANCE.md §12): within
    /// noise at 1M keys, so on by default as before. Arenas are recycled, so a long-running
    /// database pays the zeroing for its first memtables only. `memtable_huge_pages` in OPTIONS.
    public var memtableHugePages = true
    /// Memtables (active plus immutable) before writes stop (`max_write_buffer_number`).
    public var maxWriteBufferNumber = 2
    /// L0 files that trigger an L0 compaction (`level0_file_num_compaction_trigger`).
    public var level0FileNumCompactionTrigger = 4
    /// L0 files at which each write is delayed (`level0_slowdown_writes_trigger`).
    public var level0SlowdownWritesTrigger = 20
    /// L0 files at which writes wait for compaction (`level0_stop_writes_trigger`).
    public var level0StopWritesTrigger = 36
    /// Size at which compaction output files are cut (`target_file_size_base`).
    public var targetFileSizeBase = 64 << 20
    /// Byte target of L1; each deeper level is `maxBytesForLevelMultiplier` times larger
    /// (`max_bytes_for_level_base`).
    public var maxBytesForLevelBase = 256 << 20
    /// Growth factor between level targets (`max_bytes_for_level_multiplier`).
    public var maxBytesForLevelMultiplier = 10.0
    /// Uncompressed bytes per data block (`block_size`).
    public var blockSize = 4096
    /// Keys between restart points in a data block (`block_restart_interval`).
    public var blockRestartInterval = 16
    /// Bloom filter bits per key; 0 disables filters (`bloom_bits_per_key` of the filter policy).
    public var bloomBitsPerKey = 10
    /// Bytes of the shared block cache; 0 disables it (`block_cache` capacity).
    public var blockCacheSize = 8 << 20
    /// Bytes of the row cache; 0 (the default) disables it (`row_cache`'s capacity). It keeps, per
    /// user key, what the tables answer at the latest sequence, so a point read the memtables do
    /// not answer skips every level (RowCache.swift). Unlike RocksDB's: it is this database's
    /// own; it also caches that a key is absent; reads at a snapshot neither use nor fill it, and
    /// reads with `fillCache` false use it but do not fill it. An entry larger than a quarter of
    /// a shard (one shard per 64 KiB of budget, at most 64) is not cached, and the hash table's
    /// slots (about 34 bytes per entry, up to twice that right after it grows) are charged at a
    /// fixed 48 bytes per entry, so small entries can take up to about 1.3x the budget.
    public var rowCacheSize = 0
    /// Block compression (`compression`).
    public var compression: CompressionType = .lz4
    /// Background threads for flush and compaction (`max_background_jobs`); with 2 or more, a
    /// flush can run beside a compaction.
    public var maxBackgroundJobs = 2
    /// Size at which a new manifest is started (`max_manifest_file_size`).
    public var maxManifestFileSize = 64 << 20
    /// Open table readers kept in the table cache (`max_open_files`).
    public var maxOpenFiles = 1000
    /// Read tables through read-only mappings instead of read calls (RocksDB's
    /// `allow_mmap_reads`; LevelDB always does on 64-bit): a block-cache miss whose page is in the
    /// page cache costs a copy and no system call. Off by default, as in RocksDB: a media error or
    /// a table truncated by someone else under a mapping is a SIGBUS that ends the process, where
    /// a read call returns an error the engine reports. Tables on a tier marked `mapped` are read
    /// through mappings either way; a file system without mappings (a storage node's) reads. An
    /// uncompressed block of a mapped table is read in place and never enters the block cache
    /// (nor its hit and miss counts).
    public var allowMmapReads = false
    /// Read tables with O_DIRECT (RocksDB's `use_direct_reads`): every block-cache miss reads
    /// the device, no table read (point reads, scans, the compactions and tier moves this engine
    /// runs itself) fills the page cache, and the block cache is the only cache. What a benchmark
    /// of a device or of a cache tier wants; off by default. Writes stay buffered. Refused with
    /// `allowMmapReads` (as RocksDB), and at open when a directory holding tables refuses
    /// O_DIRECT (tmpfs before Linux 6.6; later tmpfs takes it, and its "device" is memory).
    /// Tables on a `mapped` tier are still read through their mappings; the table properties an
    /// open's recovery or a repair reads stay buffered; a storage node's files are read as the
    /// node is told (`moraine node --direct-reads`), whatever the engine asks.
    public var useDirectReads = false
    /// Turn off automatic compactions (`disable_auto_compactions`).
    public var disableAutoCompactions = false
    /// What to do about a damaged WAL record followed by valid ones (`wal_recovery_mode`):
    /// stop with an error (default) or skip it.
    public var walRecoveryMode: LogRecoveryMode = .stop
    /// Longest accepted key. Longer keys are rejected with `.invalid`.
    public var maxKeySize = 64 << 10
    /// Longest accepted value. Longer values are rejected with `.invalid`.
    public var maxValueSize = 256 << 20
    /// Number of levels (`num_levels`).
    public let numLevels = VersionEdit.maxLevels
    /// Storage tiers for tables, fastest first (see `StorageTier`, `TierLayout`); empty: every
    /// table in the database directory. Each tier but the last needs a budget.
    public var tiers: [StorageTier] = []
    /// The file seam: where every file is created and read.
    public var fileSystem: any FileSystem = PosixFileSystem.shared
    /// Where compaction jobs run: in this process (the default), or on a worker. Every result is
    /// checked against its job's spec before it is installed, whoever ran it.
    public var jobRunner: any JobRunner = LocalJobRunner()
    /// Where acknowledged writes are made durable before they reach the memtable: the WAL
    /// (default) or a persistent-memory region (docs/PMEM.md says what survives what).
    public var durability: Durability = .wal
    /// The persistent-memory region for `pmem` durability; nil: a file in /dev/shm named after
    /// the database (`Options.defaultPmemPath(for:)`).
    public var pmemPath: String? = nil
    /// A memory node's arenas for the memtables (MemtableArenas.swift). With `pmem` durability
    /// the memtables are written there in place and the region is the log; the embedded region
    /// (`pmemPath`) is then not used. An open also re-attaches the arenas an earlier owner left.
    public var memtableRegion: (any MemtableArenaProvider)? = nil
    /// A second block-cache tier under the block cache (a memory node's shared cache): blocks
    /// missing from the block cache are looked up there before the file is read, and blocks
    /// read from the file are offered to it. Advisory; nil: none.
    public var secondaryBlockCache: (any SecondaryBlockCache)? = nil
    /// Arenas in a new region; nil: max_write_buffer_number + 2.
    public var pmemArenaCount: Int? = nil
    /// The NUMA node a new region's pages are bound to; nil: no binding.
    public var pmemNumaNode: Int? = nil

    public init() {}

    /// The default region of the database in `directory`: /dev/shm/moraine-<path>.pmem, with
    /// every character other than a letter, digit, '-' or '.' replaced by '_'.
    public static func defaultPmemPath(for directory: String) -> String {
        let name = String(directory.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
        return "/dev/shm/moraine-\(name).pmem"
    }

    /// The geometry of a new region: arenas big enough for one full memtable's log.
    public var pmemLayout: PmemLayout {
        let arenaBytes = (writeBufferSize + (1 << 20) + PmemLayout.arenaHeaderBytes + 4095) & ~4095
        return PmemLayout(arenaBytes: arenaBytes, arenaCount: pmemArenaCount ?? maxWriteBufferNumber + 2)
    }

    /// Byte target of `level` (≥ 1).
    public func maxBytes(forLevel level: Int) -> Double {
        var bytes = Double(maxBytesForLevelBase)
        if level > 1 { for _ in 2...level { bytes *= maxBytesForLevelMultiplier } }
        return bytes
    }

    var tableOptions: TableOptions {
        TableOptions(
            blockSizeBytes: blockSize, restartInterval: blockRestartInterval,
            bloomBitsPerKey: bloomBitsPerKey, compression: compression)
    }

    func validate() throws {
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw MoraineError(.invalid, "invalid option: \(what)") }
        }
        try check(writeBufferSize >= 4096 && writeBufferSize <= 1 << 30, "write_buffer_size must be 4 KiB…1 GiB")
        try check(maxWriteBufferNumber >= 2, "max_write_buffer_number must be at least 2")
        try check(level0FileNumCompactionTrigger >= 1, "level0_file_num_compaction_trigger must be positive")
        try check(
            level0SlowdownWritesTrigger >= level0FileNumCompactionTrigger,
            "level0_slowdown_writes_trigger below the compaction trigger")
        try check(
            level0StopWritesTrigger >= level0SlowdownWritesTrigger,
            "level0_stop_writes_trigger below the slowdown trigger")
        try check(targetFileSizeBase >= 4096, "target_file_size_base must be at least 4 KiB")
        try check(maxBytesForLevelBase >= 4096, "max_bytes_for_level_base must be at least 4 KiB")
        try check(maxBytesForLevelMultiplier > 1, "max_bytes_for_level_multiplier must exceed 1")
        try check(blockSize >= 256 && blockSize <= 64 << 20, "block_size must be 256 B…64 MiB")
        try check(blockRestartInterval >= 1, "block_restart_interval must be positive")
        try check(bloomBitsPerKey >= 0 && bloomBitsPerKey <= 64, "bloom bits per key must be 0…64")
        try check(blockCacheSize >= 0, "block cache size must not be negative")
        try check(!(useDirectReads && allowMmapReads), "use_direct_reads and allow_mmap_reads exclude each other")
        try check(rowCacheSize >= 0, "row cache size must not be negative")
        try check(maxBackgroundJobs >= 1, "max_background_jobs must be positive")
        try check(maxKeySize >= 1 && maxKeySize <= 16 << 20, "max key size must be 1 B…16 MiB")
        try check(maxValueSize >= 1 && maxValueSize <= 512 << 20, "max value size must be 1 B…512 MiB")
        try check(tiers.count <= TableFileInfo.tiersMax, "at most \(TableFileInfo.tiersMax) tiers")
        try check(tiers.allSatisfy { !$0.path.isEmpty }, "a tier needs a directory")
        try check(tiers.dropLast().allSatisfy { $0.budgetBytes != nil }, "every tier but the last needs a size")
        try check(tiers.allSatisfy { ($0.budgetBytes ?? 1) > 0 }, "a tier's size must be positive")
        try check(Set(tiers.map(\.path)).count == tiers.count, "two tiers name one directory")
        try check(
            pmemArenaCount.map { $0 >= maxWriteBufferNumber + 1 } ?? true,
            "pmem arena count must exceed max_write_buffer_number")
    }
}

/// Per-write options.
public struct WriteOptions: Sendable {
    /// fdatasync the WAL before acknowledging (`sync`).
    public var sync = false
    /// Skip the WAL; the write is lost on a crash before the next flush (`disableWAL`).
    public var disableWAL = false
    public init(sync: Bool = false, disableWAL: Bool = false) {
        self.sync = sync
        self.disableWAL = disableWAL
    }
}

/// Per-read options.
public struct ReadOptions: Sendable {
    /// Read as of this snapshot instead of the latest state.
    public var snapshot: Snapshot? = nil
    /// Iterators never return keys below this (inclusive) (`iterate_lower_bound`).
    public var lowerBound: [UInt8]? = nil
    /// Iterators never return keys at or above this (`iterate_upper_bound`).
    public var upperBound: [UInt8]? = nil
    /// Insert blocks read by this operation into the block cache (`fill_cache`).
    public var fillCache = true
    public init(
        snapshot: Snapshot? = nil, lowerBound: [UInt8]? = nil, upperBound: [UInt8]? = nil, fillCache: Bool = true
    ) {
        self.snapshot = snapshot
        self.lowerBound = lowerBound
        self.upperBound = upperBound
        self.fillCache = fillCache
    }
}

/// Whether a manual `compactRange` also rewrites the deepest level in place, after everything
/// above it has been compacted into it (RocksDB's `bottommost_level_compaction`).
public enum BottommostCompaction: Sendable {
    /// Never; as RocksDB's default for a database without a compaction filter.
    case skip
    /// Only when a table there holds tombstones, which a rewrite can drop (the default).
    case ifTombstones
    /// Always (RocksDB's kForce).
    case force
}
