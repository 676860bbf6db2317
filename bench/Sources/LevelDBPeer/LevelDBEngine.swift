// The LevelDB peer: MoraineBench's BenchEngine over LevelDB's C API (libleveldb-dev), configured
// from the same BenchConfiguration Moraine and RocksDB get, as far as LevelDB has the option (the
// mapping, and what LevelDB fixes in its code, is tabled in bench/README.md).
// Thread-safety: one LevelDBEngine (one leveldb_t, one read and one write options object, all
// created at open and never changed) serves any number of threads at once; close() must come
// after every other call has returned and every cursor is gone. A LevelDBCursor is one thread's.
// Every LevelDB error string is freed and rethrown as MoraineError(.io, "leveldb: <message>").

import CLevelDB
import Moraine
import MoraineBench
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Opens the LevelDB peer under the name "leveldb".
public struct LevelDBFactory: BenchEngineFactory {
    public init() {}

    public var engineNames: [String] { ["leveldb"] }

    public func open(_ name: String, path: String, configuration: BenchConfiguration) throws -> any BenchEngine {
        guard engineNames.contains(name) else {
            throw MoraineError(.invalid, "leveldb peer: unknown engine '\(name)'")
        }
        return try LevelDBEngine(path: path, configuration: configuration)
    }
}

/// A LevelDB database under test.
///
/// `@unchecked Sendable`: every stored pointer is set once in `init` and only read afterwards, and
/// LevelDB documents `leveldb_t` (DB) as safe for concurrent use, with the options objects only
/// read by it; the mutable state (`closed`, `liveCursors`) is atomic.
public final class LevelDBEngine: BenchEngine, @unchecked Sendable {
    public let name = "leveldb"

    /// LevelDB's own constants (db/dbformat.h, db/version_set.cc in 1.23), which its options do
    /// not reach: used to tell whether a compaction is due.
    static let level0CompactionTrigger = 4
    static let levelOneBytes = 10.0 * 1_048_576
    static let levelMultiplier = 10.0

    fileprivate let db: OpaquePointer
    private let options: OpaquePointer
    private let cache: OpaquePointer
    private let filterPolicy: OpaquePointer?
    fileprivate let readOptions: OpaquePointer
    private let writeOptions: OpaquePointer
    private let closed = Atomic<Bool>(false)
    fileprivate let liveCursors = Atomic<Int>(0)

    /// Opens (creating if missing) the database at `path` with `configuration`'s options.
    public init(path: String, configuration c: BenchConfiguration) throws {
        // Validate before creating anything, so a bad option leaks nothing.
        guard c.durability == "wal" else {
            throw MoraineError(.invalid, "leveldb peer: --durability \(c.durability) is Moraine's; LevelDB has only its log")
        }
        guard !c.disableWAL else {
            throw MoraineError(.invalid, "leveldb peer: LevelDB cannot write without its log (--disable_wal)")
        }
        guard !c.directReads else {
            throw MoraineError(.invalid, "leveldb peer: LevelDB reads its tables through mappings and has no direct reads (--use_direct_reads)")
        }
        guard c.tiers.isEmpty else {
            throw MoraineError(.invalid, "leveldb peer: LevelDB keeps every table in one directory (--tiers)")
        }
        let writeBufferSize = try Self.nonNegative(c.writeBufferSizeBytes, "writeBufferSizeBytes")
        let targetFileSize = try Self.nonNegative(c.targetFileSizeBaseBytes, "targetFileSizeBaseBytes")
        let blockSize = try Self.nonNegative(c.blockSizeBytes, "blockSizeBytes")
        let cacheSize = try Self.nonNegative(c.cacheSizeBytes, "cacheSizeBytes")
        let bloomBits = try Self.nonNegative(c.bloomBitsPerKey, "bloomBitsPerKey")
        guard let bloomBitsNarrow = Int32(exactly: bloomBits) else {
            throw MoraineError(.invalid, "leveldb peer: bloomBitsPerKey out of range (\(bloomBits))")
        }

        let options = leveldb_options_create()!
        leveldb_options_set_create_if_missing(options, c.createIfMissing ? 1 : 0)
        leveldb_options_set_write_buffer_size(options, writeBufferSize)
        leveldb_options_set_max_file_size(options, targetFileSize)
        leveldb_options_set_block_size(options, blockSize)
        // LevelDB clamps this to 50,000; as good as RocksDB's -1 (every table open) here.
        leveldb_options_set_max_open_files(options, 50_000)
        // Snappy is LevelDB's only compression: it stands in for LZ4.
        leveldb_options_set_compression(options, Int32(c.compressionLZ4 ? leveldb_snappy_compression : leveldb_no_compression))
        let cache = leveldb_cache_create_lru(cacheSize)!
        leveldb_options_set_cache(options, cache)
        // Unlike RocksDB's table options, LevelDB's options do not own the policy: it is destroyed
        // after the database is closed.
        let filterPolicy = bloomBits > 0 ? leveldb_filterpolicy_create_bloom(bloomBitsNarrow) : nil
        if let filterPolicy { leveldb_options_set_filter_policy(options, filterPolicy) }

        let readOptions = leveldb_readoptions_create()!
        let writeOptions = leveldb_writeoptions_create()!
        leveldb_writeoptions_set_sync(writeOptions, c.sync ? 1 : 0)

        var error: UnsafeMutablePointer<CChar>?
        let db = leveldb_open(options, path, &error)
        if error != nil || db == nil {
            if let db { leveldb_close(db) }
            leveldb_writeoptions_destroy(writeOptions)
            leveldb_readoptions_destroy(readOptions)
            leveldb_options_destroy(options)
            if let filterPolicy { leveldb_filterpolicy_destroy(filterPolicy) }
            leveldb_cache_destroy(cache)
            try Self.check(error)
            throw MoraineError(.io, "leveldb: open of \(path) returned no database")
        }
        self.db = db!
        self.options = options
        self.cache = cache
        self.filterPolicy = filterPolicy
        self.readOptions = readOptions
        self.writeOptions = writeOptions
    }

    deinit {
        if !closed.load(ordering: .acquiring) { release() }
    }

    public func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        leveldb_put(db, writeOptions, Self.chars(key), key.count, Self.chars(value), value.count, &error)
        try Self.check(error)
    }

    public func delete(_ key: UnsafeRawBufferPointer) throws {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        leveldb_delete(db, writeOptions, Self.chars(key), key.count, &error)
        try Self.check(error)
    }

    public func write(keys: UnsafeRawBufferPointer, keySize: Int, values: [UnsafeRawBufferPointer]?) throws {
        try checkOpen()
        let batch = leveldb_writebatch_create()
        defer { leveldb_writebatch_destroy(batch) }
        for i in 0..<keys.count / keySize {
            let key = Self.chars(UnsafeRawBufferPointer(rebasing: keys[(i * keySize)...]))
            if let values {
                leveldb_writebatch_put(batch, key, keySize, Self.chars(values[i]), values[i].count)
            } else {
                leveldb_writebatch_delete(batch, key, keySize)
            }
        }
        var error: UnsafeMutablePointer<CChar>?
        leveldb_write(db, writeOptions, batch, &error)
        try Self.check(error)
    }

    /// LevelDB's C API returns a malloc'ed copy of the value (it has no pinned read): freed here.
    /// That copy is part of what a C caller of LevelDB pays, so it stays in the measurement.
    public func get(_ key: UnsafeRawBufferPointer) throws -> Int? {
        try checkOpen()
        var error: UnsafeMutablePointer<CChar>?
        var length = 0
        let value = leveldb_get(db, readOptions, Self.chars(key), key.count, &length, &error)
        if error != nil {
            if let value { leveldb_free(value) }
            try Self.check(error)
        }
        guard let value else { return nil }
        leveldb_free(value)
        return length
    }

    /// LevelDB has no batched read: one get per key, as db_bench would do with LevelDB.
    public func multiGet(_ keys: UnsafeRawBufferPointer, keySize: Int, count: Int) throws -> (found: Int, valueBytes: Int) {
        var found = 0
        var bytes = 0
        for i in 0..<count {
            if let length = try get(UnsafeRawBufferPointer(rebasing: keys[(i * keySize)..<((i + 1) * keySize)])) {
                found += 1
                bytes += length
            }
        }
        return (found, bytes)
    }

    public func makeCursor() throws -> any BenchCursor {
        try checkOpen()
        return LevelDBCursor(engine: self)
    }

    /// Flushes the memtable and compacts every level into the deepest one holding data; returns
    /// when done. The C call reports no status.
    public func compactAll() throws {
        try checkOpen()
        leveldb_compact_range(db, nil, 0, nil, 0)
    }

    /// LevelDB reports no running or pending work. Idle here means: no level over LevelDB's own
    /// compaction thresholds (L0 files at its fixed trigger of 4, level N's bytes over 10 MiB ×
    /// 10^(N-1)) and its compaction statistics unchanged over 50 ms (no flush or compaction ran).
    public func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool {
        guard !closed.load(ordering: .acquiring) else { return true }
        let deadline = Self.monotonicNanos() + timeoutNanos
        var previous = property("leveldb.stats")
        while true {
            usleep(50_000)
            let stats = property("leveldb.stats")
            if stats == previous && !Self.compactionDue(stats) { return true }
            if Self.monotonicNanos() >= deadline { return false }
            previous = stats
        }
    }

    /// Whether LevelDB's own scoring (VersionSet::Finalize) would pick a compaction, from the
    /// table of "leveldb.stats" (level, files, size in MB, ...).
    static func compactionDue(_ stats: String) -> Bool {
        for line in stats.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, let level = Int(fields[0]), let files = Int(fields[1]),
                let megabytes = Double(fields[2])
            else { continue }
            if level == 0 {
                if files >= level0CompactionTrigger { return true }
            } else if level < 6 {
                let limit = levelOneBytes * pow(levelMultiplier, Double(level - 1))
                if megabytes * 1_048_576 > limit { return true }
            }
        }
        return false
    }

    /// LevelDB's compaction table ("leveldb.stats": files, size and compaction I/O per level).
    public var statistics: String? {
        guard !closed.load(ordering: .acquiring) else { return nil }
        return property("leveldb.stats")
    }

    /// Closes the database (LevelDB waits for its background compaction). A second close does
    /// nothing.
    public func close() throws {
        let cursors = liveCursors.load(ordering: .acquiring)
        guard cursors == 0 else {
            throw MoraineError(.invalid, "leveldb peer: close with \(cursors) cursor(s) still alive")
        }
        guard closed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        release()
    }

    private func release() {
        leveldb_close(db)
        leveldb_writeoptions_destroy(writeOptions)
        leveldb_readoptions_destroy(readOptions)
        leveldb_options_destroy(options)
        if let filterPolicy { leveldb_filterpolicy_destroy(filterPolicy) }
        leveldb_cache_destroy(cache)
    }

    private func property(_ name: String) -> String {
        guard let value = leveldb_property_value(db, name) else { return "" }
        defer { leveldb_free(value) }
        return String(cString: value)
    }

    private func checkOpen() throws {
        if closed.load(ordering: .relaxed) { throw MoraineError(.closed, "leveldb peer: the database is closed") }
    }

    private static func monotonicNanos() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// Frees a LevelDB error string, if any, and throws it.
    fileprivate static func check(_ error: UnsafeMutablePointer<CChar>?) throws {
        guard let error else { return }
        let message = String(cString: error)
        leveldb_free(error)
        throw MoraineError(.io, "leveldb: \(message)")
    }

    /// The buffer as LevelDB's `const char*` (nil for an empty buffer without storage).
    fileprivate static func chars(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<CChar>? {
        buffer.baseAddress?.assumingMemoryBound(to: CChar.self)
    }

    private static func nonNegative(_ value: Int, _ option: String) throws -> Int {
        guard value >= 0 else { throw MoraineError(.invalid, "leveldb peer: \(option) is negative (\(value))") }
        return value
    }
}

/// A LevelDB iterator (leveldb_iterator_t) over the database's state when the cursor was made.
/// Keeps its engine alive; the engine refuses to close while a cursor lives.
public final class LevelDBCursor: BenchCursor {
    private let engine: LevelDBEngine
    private let iterator: OpaquePointer

    fileprivate init(engine: LevelDBEngine) {
        self.engine = engine
        iterator = leveldb_create_iterator(engine.db, engine.readOptions)!
        engine.liveCursors.add(1, ordering: .relaxed)
    }

    deinit {
        leveldb_iter_destroy(iterator)
        engine.liveCursors.subtract(1, ordering: .releasing)
    }

    public var isValid: Bool { leveldb_iter_valid(iterator) != 0 }

    public func seekToFirst() throws {
        leveldb_iter_seek_to_first(iterator)
        try checkStatus()
    }

    public func seekToLast() throws {
        leveldb_iter_seek_to_last(iterator)
        try checkStatus()
    }

    public func seek(_ key: UnsafeRawBufferPointer) throws {
        leveldb_iter_seek(iterator, LevelDBEngine.chars(key), key.count)
        try checkStatus()
    }

    public func next() throws {
        try requireValid("next")
        leveldb_iter_next(iterator)
        try checkStatus()
    }

    public func prev() throws {
        try requireValid("prev")
        leveldb_iter_prev(iterator)
        try checkStatus()
    }

    public var entryBytes: Int {
        guard isValid else { return 0 }
        var keyLength = 0
        var valueLength = 0
        _ = leveldb_iter_key(iterator, &keyLength)
        _ = leveldb_iter_value(iterator, &valueLength)
        return keyLength + valueLength
    }

    public func keyEquals(_ key: UnsafeRawBufferPointer) -> Bool {
        var length = 0
        guard let current = leveldb_iter_key(iterator, &length), length == key.count else { return false }
        return memcmp(current, key.baseAddress!, length) == 0
    }

    /// LevelDB's next/prev on an invalid iterator is undefined; refuse instead.
    private func requireValid(_ operation: String) throws {
        guard isValid else { throw MoraineError(.invalid, "leveldb peer: \(operation) on an invalid cursor") }
    }

    /// An iterator that stopped being valid either ran off the end or hit an error: report the error.
    private func checkStatus() throws {
        if leveldb_iter_valid(iterator) != 0 { return }
        var error: UnsafeMutablePointer<CChar>?
        leveldb_iter_get_error(iterator, &error)
        try LevelDBEngine.check(error)
    }
}
