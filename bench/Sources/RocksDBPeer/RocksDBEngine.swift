// The RocksDB peer: MoraineBench's BenchEngine over RocksDB's C API, configured from the same
// BenchConfiguration Moraine gets, option for option (the mapping is tabled in bench/README.md).
// Thread-safety: one RocksDBEngine (one rocksdb_t, one read and one write options object, all
// created at open and never changed) serves any number of threads at once; close() must come
// after every other call has returned and every cursor is gone. A RocksDBCursor is one thread's.
// Every RocksDB error string is freed and rethrown as MoraineError(.io, "rocksdb: <message>").

import CRocksDB
import Moraine
import MoraineBench
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Opens the RocksDB peer under the name "rocksdb".
public struct RocksDBFactory: BenchEngineFactory {
    public init() {}

    public var engineNames: [String] { ["rocksdb"] }

    public func open(_ name: String, path: String, configuration: BenchConfiguration) throws -> any BenchEngine {
        guard engineNames.contains(name) else {
            throw MoraineError(.invalid, "rocksdb peer: unknown engine '\(name)'")
        }
        return try RocksDBEngine(path: path, configuration: configuration)
    }
}

/// A RocksDB database under test.
///
/// `@unchecked Sendable`: every stored pointer is set once in `init` and only read afterwards, and
/// RocksDB documents `rocksdb_t` (DB) as safe for concurrent use, with the options objects only
/// read by it; the mutable state (`closed`, `liveCursors`) is atomic.
public final class RocksDBEngine: BenchEngine, @unchecked Sendable {
    public let name = "rocksdb"

    fileprivate let db: OpaquePointer
    private let defaultFamily: OpaquePointer
    private let options: OpaquePointer
    private let tableOptions: OpaquePointer
    private let blockCache: OpaquePointer
    fileprivate let readOptions: OpaquePointer
    private let writeOptions: OpaquePointer
    private let closed = Atomic<Bool>(false)
    fileprivate let liveCursors = Atomic<Int>(0)

    /// Opens (creating if missing) the database at `path` with `configuration`'s options.
    public init(path: String, configuration c: BenchConfiguration) throws {
        // Validate before creating anything, so a bad option leaks nothing.
        guard c.durability == "wal" else {
            throw MoraineError(.invalid, "rocksdb peer: --durability \(c.durability) is Moraine's; RocksDB has only its WAL")
        }
        let writeBufferSize = try Self.nonNegative(c.writeBufferSizeBytes, "writeBufferSizeBytes")
        let maxWriteBufferNumber = try Self.int32(c.maxWriteBufferNumber, "maxWriteBufferNumber")
        let l0Compaction = try Self.int32(c.level0FileNumCompactionTrigger, "level0FileNumCompactionTrigger")
        let l0Slowdown = try Self.int32(c.level0SlowdownWritesTrigger, "level0SlowdownWritesTrigger")
        let l0Stop = try Self.int32(c.level0StopWritesTrigger, "level0StopWritesTrigger")
        let targetFileSize = try Self.nonNegative(c.targetFileSizeBaseBytes, "targetFileSizeBaseBytes")
        let maxBytesForLevelBase = try Self.nonNegative(c.maxBytesForLevelBaseBytes, "maxBytesForLevelBaseBytes")
        let maxBackgroundJobs = try Self.int32(c.maxBackgroundJobs, "maxBackgroundJobs")
        let blockSize = try Self.nonNegative(c.blockSizeBytes, "blockSizeBytes")
        let cacheSize = try Self.nonNegative(c.cacheSizeBytes, "cacheSizeBytes")
        let bloomBits = try Self.nonNegative(c.bloomBitsPerKey, "bloomBitsPerKey")

        let options = rocksdb_options_create()!
        rocksdb_options_set_create_if_missing(options, c.createIfMissing ? 1 : 0)
        rocksdb_options_set_write_buffer_size(options, writeBufferSize)
        rocksdb_options_set_max_write_buffer_number(options, maxWriteBufferNumber)
        rocksdb_options_set_level0_file_num_compaction_trigger(options, l0Compaction)
        rocksdb_options_set_level0_slowdown_writes_trigger(options, l0Slowdown)
        rocksdb_options_set_level0_stop_writes_trigger(options, l0Stop)
        rocksdb_options_set_target_file_size_base(options, UInt64(targetFileSize))
        rocksdb_options_set_max_bytes_for_level_base(options, UInt64(maxBytesForLevelBase))
        rocksdb_options_set_max_background_jobs(options, maxBackgroundJobs)
        rocksdb_options_set_allow_mmap_reads(options, c.mmapReads ? 1 : 0)
        rocksdb_options_set_use_direct_reads(options, c.directReads ? 1 : 0)
        let compression = c.compressionLZ4 ? rocksdb_lz4_compression : rocksdb_no_compression
        rocksdb_options_set_compression(options, Int32(compression))
        // Storage tiers as db_paths: each engine's own directory per tier, the tier's budget as
        // the path's target size (the last, unbounded one: as big as can be). The options copy
        // the paths.
        let tiers = c.tiers(for: "rocksdb")
        if !tiers.isEmpty {
            var paths: [OpaquePointer?] = tiers.map { rocksdb_dbpath_create($0.path, $0.budgetBytes ?? UInt64.max) }
            paths.withUnsafeMutableBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: Optional<OpaquePointer>.self, capacity: buffer.count) { base in
                    rocksdb_options_set_db_paths(options, UnsafeMutablePointer(mutating: base), buffer.count)
                }
            }
            for path in paths { rocksdb_dbpath_destroy(path) }
        }

        let tableOptions = rocksdb_block_based_options_create()!
        rocksdb_block_based_options_set_block_size(tableOptions, blockSize)
        let blockCache = rocksdb_cache_create_lru(cacheSize)!
        rocksdb_block_based_options_set_block_cache(tableOptions, blockCache)
        if bloomBits > 0 {
            // The table options take ownership of the policy: it is not destroyed here.
            rocksdb_block_based_options_set_filter_policy(
                tableOptions, rocksdb_filterpolicy_create_bloom_full(Double(bloomBits)))
        }
        // Index and filter blocks live in the table readers' memory, outside the block cache, as
        // Moraine keeps them.
        rocksdb_block_based_options_set_cache_index_and_filter_blocks(tableOptions, 0)
        rocksdb_options_set_block_based_table_factory(options, tableOptions)

        let readOptions = rocksdb_readoptions_create()!
        let writeOptions = rocksdb_writeoptions_create()!
        rocksdb_writeoptions_set_sync(writeOptions, c.sync ? 1 : 0)
        rocksdb_writeoptions_disable_WAL(writeOptions, c.disableWAL ? 1 : 0)

        var error: UnsafeMutablePointer<CChar>?
        // Opened with its column family listed, so the batched MultiGet (which takes a column
        // family handle in the C API) is available to multireadrandom.
        var families: [OpaquePointer?] = [nil]
        let db = "default".withCString { name -> OpaquePointer? in
            var names: [UnsafePointer<CChar>?] = [name]
            var familyOptions: [OpaquePointer?] = [options]
            return rocksdb_open_column_families(options, path, 1, &names, &familyOptions, &families, &error)
        }
        if error != nil || db == nil || families[0] == nil {
            if let family = families[0] { rocksdb_column_family_handle_destroy(family) }
            if let db { rocksdb_close(db) }
            rocksdb_writeoptions_destroy(writeOptions)
            rocksdb_readoptions_destroy(readOptions)
            rocksdb_block_based_options_destroy(tableOptions)
            rocksdb_cache_destroy(blockCache)
            rocksdb_options_destroy(options)
            try Self.check(error)
            throw MoraineError(.io, "rocksdb: open of \(path) returned no database")
        }
        self.db = db!
        self.defaultFamily = families[0]!
        self.options = options
        self.tableOptions = tableOptions
        self.blockCache = blockCache
        self.readOptions = readOptions
        self.writeOptions = writeOptions
    }

    deinit {
        if !closed.load(ordering: .acquiring) { release() }
    }

    public func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_put(db, writeOptions, Self.chars(key), key.count, Self.chars(value), value.count, &error)
        try Self.check(error)
    }

    public func delete(_ key: UnsafeRawBufferPointer) throws {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_delete(db, writeOptions, Self.chars(key), key.count, &error)
        try Self.check(error)
    }

    public func write(keys: UnsafeRawBufferPointer, keySize: Int, values: [UnsafeRawBufferPointer]?) throws {
        try checkOpen()
        let batch = rocksdb_writebatch_create()
        defer { rocksdb_writebatch_destroy(batch) }
        for i in 0..<keys.count / keySize {
            let key = Self.chars(UnsafeRawBufferPointer(rebasing: keys[(i * keySize)...]))
            if let values {
                rocksdb_writebatch_put(batch, key, keySize, Self.chars(values[i]), values[i].count)
            } else {
                rocksdb_writebatch_delete(batch, key, keySize)
            }
        }
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_write(db, writeOptions, batch, &error)
        try Self.check(error)
    }

    /// Reads through a pinnable slice, so the value is neither copied nor malloc'ed.
    public func get(_ key: UnsafeRawBufferPointer) throws -> Int? {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        let pinned = rocksdb_get_pinned(db, readOptions, Self.chars(key), key.count, &error)
        if error != nil {
            if let pinned { rocksdb_pinnableslice_destroy(pinned) }
            try Self.check(error)
        }
        guard let pinned else { return nil }
        var length = 0
        _ = rocksdb_pinnableslice_value(pinned, &length)
        rocksdb_pinnableslice_destroy(pinned)
        return length
    }

    /// Reads the batch through the batched MultiGet (sorted_input false: RocksDB sorts).
    public func multiGet(_ keys: UnsafeRawBufferPointer, keySize: Int, count: Int) throws -> (found: Int, valueBytes: Int) {
        try checkOpen()
        var pointers = (0..<count).map { Self.chars(UnsafeRawBufferPointer(rebasing: keys[($0 * keySize)...])) }
        var sizes = [Int](repeating: keySize, count: count)
        var values = [OpaquePointer?](repeating: nil, count: count)
        var errors = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
        rocksdb_batched_multi_get_cf(db, readOptions, defaultFamily, count, &pointers, &sizes, &values, &errors, false)
        var found = 0
        var bytes = 0
        var firstError: UnsafeMutablePointer<CChar>? = nil
        for i in 0..<count {
            if let error = errors[i] {
                if firstError == nil { firstError = error } else { rocksdb_free(error) }
            }
            if let value = values[i] {
                var length = 0
                _ = rocksdb_pinnableslice_value(value, &length)
                found += 1
                bytes += length
                rocksdb_pinnableslice_destroy(value)
            }
        }
        try Self.check(firstError)
        return (found, bytes)
    }

    public func makeCursor() throws -> any BenchCursor {
        try checkOpen()
        return RocksDBCursor(engine: self)
    }

    /// Flushes the memtable and compacts every level; returns when done. The C call reports no
    /// status.
    public func compactAll() throws {
        try checkOpen()
        rocksdb_compact_range(db, nil, 0, nil, 0)
    }

    /// Polls RocksDB's own counters (running and pending flushes and compactions) until all are
    /// zero, as `moraine-bench --settle` asks of every engine not being measured.
    public func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool {
        guard !closed.load(ordering: .acquiring) else { return true }
        func monotonicNanos() -> Int64 {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        }
        let deadline = monotonicNanos() + timeoutNanos
        let names = [
            "rocksdb.num-running-compactions", "rocksdb.num-running-flushes", "rocksdb.compaction-pending", "rocksdb.mem-table-flush-pending",
        ]
        while true {
            let busy = names.contains { name in
                var value: UInt64 = 0
                return rocksdb_property_int(db, name, &value) == 0 && value > 0
            }
            if !busy { return true }
            if monotonicNanos() >= deadline { return false }
            usleep(10_000)
        }
    }

    /// The tree's shape ("rocksdb.levelstats") and the write-stall counts from "rocksdb.stats".
    public var statistics: String? {
        guard !closed.load(ordering: .acquiring) else { return nil }
        func property(_ name: String) -> String {
            guard let value = rocksdb_property_value(db, name) else { return "" }
            defer { rocksdb_free(value) }
            return String(cString: value)
        }
        // The compaction table's header and its "Sum" row carry RocksDB's write amplification
        // (W-Amp: bytes flushed and compacted over bytes flushed).
        let stalls = property("rocksdb.stats").split(separator: "\n").filter {
            $0.hasPrefix("Stalls(count)") || $0.hasPrefix("Cumulative stall") || $0.hasPrefix("Cumulative compaction") || $0.hasPrefix("Flush(GB)")
                || $0.hasPrefix("Level ") || $0.hasPrefix(" Sum ")
        }
        return (property("rocksdb.levelstats").split(separator: "\n") + stalls).joined(separator: "\n")
    }

    /// Closes the database (waiting for its background work). A second close does nothing.
    public func close() throws {
        let cursors = liveCursors.load(ordering: .acquiring)
        guard cursors == 0 else {
            throw MoraineError(.invalid, "rocksdb peer: close with \(cursors) cursor(s) still alive")
        }
        guard closed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        release()
    }

    private func release() {
        rocksdb_column_family_handle_destroy(defaultFamily)
        rocksdb_close(db)
        rocksdb_writeoptions_destroy(writeOptions)
        rocksdb_readoptions_destroy(readOptions)
        rocksdb_block_based_options_destroy(tableOptions)
        rocksdb_cache_destroy(blockCache)
        rocksdb_options_destroy(options)
    }

    private func checkOpen() throws {
        if closed.load(ordering: .relaxed) { throw MoraineError(.closed, "rocksdb peer: the database is closed") }
    }

    /// Frees a RocksDB error string, if any, and throws it.
    fileprivate static func check(_ error: UnsafeMutablePointer<CChar>?) throws {
        guard let error else { return }
        let message = String(cString: error)
        rocksdb_free(error)
        throw MoraineError(.io, "rocksdb: \(message)")
    }

    /// The buffer as RocksDB's `const char*` (nil for an empty buffer without storage).
    fileprivate static func chars(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<CChar>? {
        buffer.baseAddress?.assumingMemoryBound(to: CChar.self)
    }

    private static func nonNegative(_ value: Int, _ option: String) throws -> Int {
        guard value >= 0 else { throw MoraineError(.invalid, "rocksdb peer: \(option) is negative (\(value))") }
        return value
    }

    private static func int32(_ value: Int, _ option: String) throws -> Int32 {
        guard value >= 0, let narrow = Int32(exactly: value) else {
            throw MoraineError(.invalid, "rocksdb peer: \(option) out of range (\(value))")
        }
        return narrow
    }
}

/// A RocksDB iterator (rocksdb_iterator_t) over the database's state when the cursor was made.
/// Keeps its engine alive; the engine refuses to close while a cursor lives.
public final class RocksDBCursor: BenchCursor {
    private let engine: RocksDBEngine
    private let iterator: OpaquePointer

    fileprivate init(engine: RocksDBEngine) {
        self.engine = engine
        iterator = rocksdb_create_iterator(engine.db, engine.readOptions)!
        engine.liveCursors.add(1, ordering: .relaxed)
    }

    deinit {
        rocksdb_iter_destroy(iterator)
        engine.liveCursors.subtract(1, ordering: .releasing)
    }

    public var isValid: Bool { rocksdb_iter_valid(iterator) != 0 }

    public func seekToFirst() throws {
        rocksdb_iter_seek_to_first(iterator)
        try checkStatus()
    }

    public func seekToLast() throws {
        rocksdb_iter_seek_to_last(iterator)
        try checkStatus()
    }

    public func seek(_ key: UnsafeRawBufferPointer) throws {
        rocksdb_iter_seek(iterator, RocksDBEngine.chars(key), key.count)
        try checkStatus()
    }

    public func next() throws {
        try requireValid("next")
        rocksdb_iter_next(iterator)
        try checkStatus()
    }

    public func prev() throws {
        try requireValid("prev")
        rocksdb_iter_prev(iterator)
        try checkStatus()
    }

    public var entryBytes: Int {
        guard isValid else { return 0 }
        var keyLength = 0
        var valueLength = 0
        _ = rocksdb_iter_key(iterator, &keyLength)
        _ = rocksdb_iter_value(iterator, &valueLength)
        return keyLength + valueLength
    }

    public func keyEquals(_ key: UnsafeRawBufferPointer) -> Bool {
        var length = 0
        guard let current = rocksdb_iter_key(iterator, &length), length == key.count else { return false }
        return memcmp(current, key.baseAddress!, length) == 0
    }

    /// RocksDB's next/prev on an invalid iterator is undefined; refuse instead.
    private func requireValid(_ operation: String) throws {
        guard isValid else { throw MoraineError(.invalid, "rocksdb peer: \(operation) on an invalid cursor") }
    }

    /// An iterator that stopped being valid either ran off the end or hit an error: report the error.
    private func checkStatus() throws {
        if rocksdb_iter_valid(iterator) != 0 { return }
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_iter_get_error(iterator, &error)
        try RocksDBEngine.check(error)
    }
}
