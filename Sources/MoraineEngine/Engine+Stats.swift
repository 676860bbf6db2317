// A point-in-time report of the tree's shape and the engine's counters, for tools and tests.
import MoraineFormat
import MoraineSystem

/// Per-level shape.
public struct LevelStats: Sendable, Equatable {
    public var level: Int
    public var fileCount: Int
    public var sizeBytes: UInt64
    /// Compaction score (≥ 1 means due); 0 for the last level.
    public var score: Double

    public init(level: Int, fileCount: Int, sizeBytes: UInt64, score: Double) {
        self.level = level
        self.fileCount = fileCount
        self.sizeBytes = sizeBytes
        self.score = score
    }
}

/// What one storage tier holds.
public struct TierStats: Sendable, Equatable {
    public var tier: Int
    /// The tier's directory ("" where it was not reported, as over a compute node's wire).
    public var path: String
    /// The tier's budget; nil: unbounded.
    public var budgetBytes: UInt64?
    public var fileCount: Int
    public var sizeBytes: UInt64

    public init(tier: Int, path: String, budgetBytes: UInt64?, fileCount: Int, sizeBytes: UInt64) {
        self.tier = tier
        self.path = path
        self.budgetBytes = budgetBytes
        self.fileCount = fileCount
        self.sizeBytes = sizeBytes
    }
}

/// The engine's state and counters.
public struct EngineStats: Sendable {
    public var levels: [LevelStats] = []
    /// Files and bytes per storage tier (empty for a database without tiers).
    public var tiers: [TierStats] = []
    /// Tables moved one tier down, their bytes, and moves that failed (tried again later).
    public var tierMoves = 0
    public var tierMoveBytes = 0
    public var tierMoveFailures = 0
    public var memtableBytes = 0
    public var immutableMemtables = 0
    public var lastSequence: UInt64 = 0
    public var liveSnapshots = 0
    public var openTables = 0
    public var pinnedIndexAndFilterBytes = 0
    public var blockCacheCapacityBytes = 0
    public var blockCacheUsageBytes = 0
    public var blockCacheHits = 0
    public var blockCacheMisses = 0
    /// The row cache's budget, bytes held, entries, and point reads it answered or missed (zero
    /// without one).
    public var rowCacheCapacityBytes = 0
    public var rowCacheUsageBytes = 0
    public var rowCacheEntries = 0
    public var rowCacheHits = 0
    public var rowCacheMisses = 0
    public var flushes = 0
    public var compactions = 0
    public var trivialMoves = 0
    public var compactionBytesRead = 0
    public var compactionBytesWritten = 0
    public var flushBytesWritten = 0
    public var entriesDropped = 0
    public var writes = 0
    public var writeGroups = 0
    public var walSyncs = 0
    public var walBytes = 0
    public var stallSlowdowns = 0
    public var stallStops = 0
    /// Wall time writers spent delayed (slowdowns) or stopped, in microseconds.
    public var stallMicros = 0
    /// Wall time flushes and compactions ran, in microseconds.
    public var flushMicros = 0
    public var compactionMicros = 0
    public var manifestRolls = 0
    /// Batched reads issued by multiGet, and the data blocks they read.
    public var multiGetBatches = 0
    public var multiGetBlockReads = 0
    /// Times writes resumed after the storage could not be reached (Engine+Resume).
    public var resumes = 0
    /// Compactions a worker ran, and those run here because no worker could take them.
    public var remoteCompactions = 0
    public var compactionFallbacks = 0
    /// Flush and compaction jobs given up on mid-way and run again (their worker died, hung or
    /// passed the deadline).
    public var lostJobs = 0
    /// Flushes a worker ran, and flushes run here because no flush worker could take them.
    public var remoteFlushes = 0
    public var flushFallbacks = 0
    /// CPU time of flush and compaction jobs, wherever they ran (workers report theirs).
    public var jobCPUMicros = 0
    /// Memtables the last open re-attached from a memory node's region (no log replayed for
    /// them), and region arenas held now.
    public var reattachedMemtables = 0
    public var regionArenas = 0
    /// The second block-cache tier's counters (zero without one).
    public var secondaryCache = SecondaryCacheCounters()
    public var backgroundError: String? = nil

    public init() {}

    /// The counters by their names in `json` (and on the compute node's wire), in that order.
    public static let counters: [(name: String, field: WritableKeyPath<EngineStats, Int> & Sendable)] = [
        ("memtable_bytes", \.memtableBytes), ("immutable_memtables", \.immutableMemtables),
        ("live_snapshots", \.liveSnapshots), ("open_tables", \.openTables),
        ("pinned_index_filter_bytes", \.pinnedIndexAndFilterBytes),
        ("block_cache_capacity", \.blockCacheCapacityBytes), ("block_cache_usage", \.blockCacheUsageBytes),
        ("block_cache_hits", \.blockCacheHits), ("block_cache_misses", \.blockCacheMisses), ("flushes", \.flushes),
        ("compactions", \.compactions), ("trivial_moves", \.trivialMoves),
        ("compaction_bytes_read", \.compactionBytesRead), ("compaction_bytes_written", \.compactionBytesWritten),
        ("flush_bytes_written", \.flushBytesWritten), ("entries_dropped", \.entriesDropped), ("writes", \.writes),
        ("write_groups", \.writeGroups), ("wal_syncs", \.walSyncs), ("wal_bytes", \.walBytes),
        ("stall_slowdowns", \.stallSlowdowns), ("stall_stops", \.stallStops), ("stall_micros", \.stallMicros),
        ("flush_micros", \.flushMicros), ("compaction_micros", \.compactionMicros), ("manifest_rolls", \.manifestRolls),
        ("multiget_batches", \.multiGetBatches), ("multiget_block_reads", \.multiGetBlockReads), ("resumes", \.resumes),
        ("remote_compactions", \.remoteCompactions), ("compaction_fallbacks", \.compactionFallbacks),
        ("lost_jobs", \.lostJobs), ("remote_flushes", \.remoteFlushes), ("flush_fallbacks", \.flushFallbacks),
        ("job_cpu_micros", \.jobCPUMicros), ("reattached_memtables", \.reattachedMemtables), ("region_arenas", \.regionArenas),
        ("secondary_cache_hits", \.secondaryCache.hits), ("secondary_cache_misses", \.secondaryCache.misses),
        ("secondary_cache_corrupt", \.secondaryCache.corrupt), ("secondary_cache_inserts", \.secondaryCache.inserts),
        ("secondary_cache_dropped", \.secondaryCache.dropped), ("secondary_cache_requests", \.secondaryCache.requests),
        ("tier_moves", \.tierMoves),
        ("tier_move_bytes", \.tierMoveBytes), ("tier_move_failures", \.tierMoveFailures),
        ("row_cache_capacity", \.rowCacheCapacityBytes), ("row_cache_usage", \.rowCacheUsageBytes),
        ("row_cache_entries", \.rowCacheEntries), ("row_cache_hits", \.rowCacheHits), ("row_cache_misses", \.rowCacheMisses),
    ]

    /// One line of JSON.
    public var json: String {
        var fields: [String] = []
        let levelJSON = levels.map {
            "{\"level\":\($0.level),\"files\":\($0.fileCount),\"bytes\":\($0.sizeBytes),\"score\":\(String(format2: $0.score))}"
        }
        fields.append("\"levels\":[\(levelJSON.joined(separator: ","))]")
        if !tiers.isEmpty {
            let tierJSON = tiers.map {
                "{\"tier\":\($0.tier),\"path\":\"\($0.path.replacingAll("\\", "\\\\").replacingAll("\"", "\\\""))\","
                    + "\"budget\":\($0.budgetBytes.map(String.init) ?? "null"),\"files\":\($0.fileCount),\"bytes\":\($0.sizeBytes)}"
            }
            fields.append("\"tiers\":[\(tierJSON.joined(separator: ","))]")
        }
        fields.append("\"last_sequence\":\(lastSequence)")
        let numbers = Self.counters.map { ($0.name, self[keyPath: $0.field]) }
        for (name, value) in numbers { fields.append("\"\(name)\":\(value)") }
        if let backgroundError {
            let escaped = backgroundError.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"")
            fields.append("\"background_error\":\"\(escaped)\"")
        }
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// The LSM shape as a few human-readable lines.
    public var shape: String {
        var lines: [String] = ["memtable: \(memtableBytes) bytes, \(immutableMemtables) immutable"]
        for l in levels where l.fileCount > 0 || l.level == 0 {
            lines.append("L\(l.level): \(l.fileCount) files, \(l.sizeBytes) bytes, score \(String(format2: l.score))")
        }
        for t in tiers {
            let budget = t.budgetBytes.map { " of \($0)" } ?? " (unbounded)"
            lines.append("tier \(t.tier)\(t.path.isEmpty ? "" : " " + t.path): \(t.fileCount) files, \(t.sizeBytes) bytes\(budget)")
        }
        return lines.joined(separator: "\n")
    }
}

extension String {
    init(format2 value: Double) {
        let scaled = (value * 100).rounded()
        let whole = Int(scaled) / 100
        let fraction = abs(Int(scaled) % 100)
        self = "\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    func replacingAll(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

extension Engine {
    /// The tree's shape and the engine's counters.
    public func stats() -> EngineStats {
        var s = EngineStats()
        let version = versions.current
        let scores = CompactionPicker.scores(version: version, options: options)
        for (level, files) in version.levels.enumerated() {
            s.levels.append(
                LevelStats(
                    level: level, fileCount: files.count, sizeBytes: version.bytes(level: level),
                    score: level < scores.count ? scores[level] : 0))
        }
        mutex.withLock {
            s.memtableBytes = mem.memoryUsageBytes
            s.immutableMemtables = imms.count
            s.regionArenas = heldArenas.count
            s.backgroundError = backgroundError?.description
        }
        s.lastSequence = lastSequence.load(ordering: .acquiring)
        s.liveSnapshots = snapshots.count
        s.openTables = tableCache.openCount
        s.pinnedIndexAndFilterBytes = tableCache.pinnedBytes
        if let blockCache {
            s.blockCacheCapacityBytes = blockCache.capacityBytes
            s.blockCacheUsageBytes = blockCache.usageBytes
            s.blockCacheHits = blockCache.hits
            s.blockCacheMisses = blockCache.misses
        }
        if let rowCache {
            s.rowCacheCapacityBytes = rowCache.capacityBytes
            s.rowCacheUsageBytes = rowCache.usageBytes
            s.rowCacheEntries = rowCache.entryCount
            s.rowCacheHits = rowCache.hits
            s.rowCacheMisses = rowCache.misses
        }
        if tiers.isTiered {
            var files = [Int](repeating: 0, count: tiers.count)
            var bytes = [UInt64](repeating: 0, count: tiers.count)
            for file in version.levels.joined() where file.info.tier < tiers.count {
                files[file.info.tier] += 1
                bytes[file.info.tier] += file.sizeBytes
            }
            s.tiers = tiers.directories.indices.map {
                TierStats(tier: $0, path: tiers.directories[$0], budgetBytes: tiers.budgets[$0], fileCount: files[$0], sizeBytes: bytes[$0])
            }
        }
        let c = counters.snapshot
        s.tierMoves = c.tierMoves
        s.tierMoveBytes = c.tierMoveBytes
        s.tierMoveFailures = c.tierMoveFailures
        s.flushes = c.flushes
        s.compactions = c.compactions
        s.trivialMoves = c.trivialMoves
        s.compactionBytesRead = c.compactionBytesRead
        s.compactionBytesWritten = c.compactionBytesWritten
        s.flushBytesWritten = c.flushBytesWritten
        s.entriesDropped = c.entriesDropped
        s.writes = c.writes
        s.writeGroups = c.writeGroups
        s.walSyncs = c.walSyncs
        s.walBytes = c.walBytes
        s.stallSlowdowns = c.stallSlowdowns
        s.stallStops = c.stallStops
        s.stallMicros = c.stallMicros
        s.flushMicros = c.flushMicros
        s.compactionMicros = c.compactionMicros
        s.manifestRolls = c.manifestRolls
        s.multiGetBatches = c.multiGetBatches
        s.multiGetBlockReads = c.multiGetBlockReads
        s.resumes = c.resumes
        s.remoteCompactions = options.jobRunner.remoteJobs
        s.compactionFallbacks = options.jobRunner.fallbacks
        s.lostJobs = c.lostJobs
        s.remoteFlushes = options.jobRunner.remoteFlushes
        s.flushFallbacks = options.jobRunner.flushFallbacks
        s.jobCPUMicros = c.jobCPUMicros
        s.reattachedMemtables = c.reattachedMemtables
        if let secondary = options.secondaryBlockCache { s.secondaryCache = secondary.counters }
        return s
    }

    /// Every table of the current version as (level, file record), for tools.
    /// About how many keys the database holds (RocksDB's estimate-num-keys): the memtables'
    /// entries plus the tables' entries, less twice their deletions (a tombstone and what it
    /// hides). Overwritten keys count once per version not yet compacted away: an estimate.
    public func estimatedKeyCount() -> Int {
        let current = currentSuperVersion()
        var count = current.mem.entryCount + current.imms.reduce(0) { $0 + $1.entryCount }
        for file in current.version.levels.joined() {
            guard let properties = try? tableCache.reader(file).properties else { continue }
            count += Int(properties.entryCount) - 2 * Int(properties.deletionCount)
        }
        return max(0, count)
    }

    public func liveFiles() -> [(level: Int, file: TableFileInfo)] {
        versions.current.levels.enumerated().flatMap { level, files in files.map { (level, $0.info) } }
    }
}
