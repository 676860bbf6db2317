// A database's metrics, from the counters `stats()` reads (nothing new on the hot path): the
// LSM shape per level, writes, WAL syncs and bytes, flushes and compactions with their bytes and
// time, write amplification, stalls, memtables, cache hits and misses per tier, remote jobs and
// their fallbacks. Every series carries the database's name as `db`.
import MoraineSystem

extension EngineStats {
    /// The samples of one database, labelled `db`.
    public func metricSamples(database: String) -> [MetricSample] {
        let db = [("db", database)]
        func counter(_ name: String, _ help: String, _ value: Int) -> MetricSample { .counter(name, help, max(0, value), labels: db) }
        func seconds(_ name: String, _ help: String, micros: Int) -> MetricSample {
            .counter(name, help, seconds: Double(max(0, micros)) / 1e6, labels: db)
        }
        func gauge(_ name: String, _ help: String, _ value: Int) -> MetricSample { .gauge(name, help, value, labels: db) }
        var samples: [MetricSample] = []
        for level in levels {
            let labels = db + [("level", String(level.level))]
            samples.append(.gauge("moraine_level_files", "Table files in a level", level.fileCount, labels: labels))
            samples.append(.gauge("moraine_level_bytes", "Bytes of the tables in a level", level.sizeBytes, labels: labels))
            samples.append(.gauge("moraine_level_score", "A level's compaction score (1 or more: due)", value: level.score, labels: labels))
        }
        // Bytes written to tables per byte flushed, as RocksDB's compaction stats count it (the
        // WAL aside): 1 before any compaction.
        let flushed = Double(flushBytesWritten)
        let amplification = flushed > 0 ? (flushed + Double(compactionBytesWritten)) / flushed : 0
        samples += [
            counter("moraine_writes_total", "Write batches committed", writes),
            counter("moraine_write_groups_total", "Group commits (a group writes many batches at once)", writeGroups),
            counter("moraine_wal_syncs_total", "WAL syncs", walSyncs),
            counter("moraine_wal_bytes_total", "Bytes written to the WAL", walBytes),
            counter("moraine_flushes_total", "Memtable flushes", flushes),
            counter("moraine_flush_bytes_total", "Bytes of tables written by flushes", flushBytesWritten),
            seconds("moraine_flush_seconds_total", "Wall time of flushes", micros: flushMicros),
            counter("moraine_compactions_total", "Compactions (trivial moves aside)", compactions),
            counter("moraine_trivial_moves_total", "Tables moved down a level without a rewrite", trivialMoves),
            counter("moraine_compaction_read_bytes_total", "Bytes compactions read", compactionBytesRead),
            counter("moraine_compaction_written_bytes_total", "Bytes compactions wrote", compactionBytesWritten),
            seconds("moraine_compaction_seconds_total", "Wall time of compactions", micros: compactionMicros),
            counter("moraine_entries_dropped_total", "Entries compactions dropped (overwritten or deleted)", entriesDropped),
            .gauge(
                "moraine_write_amplification", "Bytes written to tables per byte flushed (0 before the first flush)", value: amplification,
                labels: db),
            seconds("moraine_stall_seconds_total", "Wall time writers were slowed down or stopped", micros: stallMicros),
            counter("moraine_stall_slowdowns_total", "Writes slowed down by the write controller", stallSlowdowns),
            counter("moraine_stall_stops_total", "Times writes stopped until a flush or compaction caught up", stallStops),
            gauge("moraine_memtable_bytes", "Bytes in the memtables (active and immutable)", memtableBytes),
            gauge("moraine_immutable_memtables", "Memtables waiting to be flushed", immutableMemtables),
            gauge("moraine_live_snapshots", "Snapshots held", liveSnapshots),
            gauge("moraine_open_tables", "Table files open in the table cache", openTables),
            gauge("moraine_block_cache_bytes", "Bytes the block cache holds", blockCacheUsageBytes),
            gauge("moraine_block_cache_capacity_bytes", "The block cache's capacity", blockCacheCapacityBytes),
            .counter("moraine_cache_hits_total", "Block lookups a cache tier answered", max(0, blockCacheHits), labels: db + [("tier", "block")]),
            .counter("moraine_cache_misses_total", "Block lookups a cache tier missed", max(0, blockCacheMisses), labels: db + [("tier", "block")]),
            .counter("moraine_cache_hits_total", "Block lookups a cache tier answered", max(0, secondaryCache.hits), labels: db + [("tier", "shared")]),
            .counter("moraine_cache_misses_total", "Block lookups a cache tier missed", max(0, secondaryCache.misses), labels: db + [("tier", "shared")]),
            counter("moraine_shared_cache_requests_total", "Lookup requests to a shared cache reached by request", secondaryCache.requests),
            gauge("moraine_row_cache_bytes", "Bytes the row cache holds", rowCacheUsageBytes),
            gauge("moraine_row_cache_capacity_bytes", "The row cache's capacity", rowCacheCapacityBytes),
            counter("moraine_row_cache_hits_total", "Point reads the row cache answered", rowCacheHits),
            counter("moraine_row_cache_misses_total", "Point reads the row cache could not answer", rowCacheMisses),
            counter("moraine_manifest_rolls_total", "New manifest files started", manifestRolls),
            counter("moraine_resumes_total", "Times writes resumed after the storage could not be reached", resumes),
            .counter("moraine_remote_jobs_total", "Jobs a worker ran", max(0, remoteFlushes), labels: db + [("kind", "flush")]),
            .counter("moraine_remote_jobs_total", "Jobs a worker ran", max(0, remoteCompactions), labels: db + [("kind", "compaction")]),
            .counter(
                "moraine_job_fallbacks_total", "Jobs run here because no worker could take them", max(0, flushFallbacks),
                labels: db + [("kind", "flush")]),
            .counter(
                "moraine_job_fallbacks_total", "Jobs run here because no worker could take them", max(0, compactionFallbacks),
                labels: db + [("kind", "compaction")]),
            counter("moraine_lost_jobs_total", "Jobs given up on mid-way (worker died, hung or too late) and run again", lostJobs),
            seconds("moraine_job_cpu_seconds_total", "CPU time of flushes and compactions, wherever they ran", micros: jobCPUMicros),
            gauge("moraine_region_arenas", "Memory-node arenas the database's memtables hold", regionArenas),
            gauge("moraine_background_error", "1 while a background error keeps the database read-only", backgroundError == nil ? 0 : 1),
            .gauge("moraine_last_sequence", "The database's last sequence number", value: Double(lastSequence), labels: db),
        ]
        return samples
    }
}
