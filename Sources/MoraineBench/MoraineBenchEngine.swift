// Moraine as a BenchEngine: a Database configured from BenchConfiguration — embedded, with its
// files on a storage node, its memtables on a memory node, or a thin client of a compute node.
// Thread-safe because Database is.
import Moraine
import MoraineSystem

/// Opens Moraine databases for benchmarks: embedded ones, or (with a file system of a storage
/// node) ones whose files live on a cluster's storage node.
public struct MoraineBenchFactory: BenchEngineFactory {
    let name: String
    var fileSystem: (any FileSystem)? = nil
    var storageRequests: (@Sendable () -> Int)? = nil
    var jobRunner: (any JobRunner)? = nil
    /// Memtables in a memory node's region, `pmem` durability through it.
    var memtableRegion: (any MemtableArenaProvider)? = nil
    /// With `memtableRegion`: the write logs in its arenas by request (`wal` through it).
    var logFileSystem: (any FileSystem)? = nil
    /// A second block-cache tier for the database at a path (a memory node's shared cache).
    var secondaryCache: (@Sendable (String) -> any SecondaryBlockCache)? = nil
    /// The block cache's size, whatever --cache_size says (nil: --cache_size).
    var cacheSizeBytes: Int? = nil
    /// A compute node to connect to (`--connect`: a run directory or an endpoint, and the key's
    /// file for an endpoint): the database runs there, this process is its thin client.
    var connect: (target: String, clusterKey: String?)? = nil
    /// The run directory of a cluster whose roles this process uses with the engine here
    /// (`Database(path:cluster:)`, compute in the application).
    var cluster: String? = nil

    /// Embedded Moraine, engine "moraine"; with `cacheSizeBytes`, its block cache is that big
    /// whatever --cache_size says (a peer for a tiered cache).
    public init(cacheSizeBytes: Int? = nil) {
        name = "moraine"
        self.cacheSizeBytes = cacheSizeBytes
    }

    /// A thin client of a compute node (`target` a run directory, or an endpoint with
    /// `clusterKey`): engine `name`. The node opens the database with its own options (its
    /// cache, write buffer and durability are the cluster's, not --cache_size's).
    public init(name: String, connect target: String, clusterKey: String?) {
        self.name = name
        connect = (target, clusterKey)
    }

    /// Compute in the application: the engine here, with the cluster's storage node, memory
    /// node and workers wired in as `Database(path:cluster:)` wires them: engine `name`.
    public init(name: String, cluster runDirectory: String) {
        self.name = name
        cluster = runDirectory
    }

    /// Moraine with its files here and its memtables in the arenas `memtableRegion` grants (a
    /// memory node's), durability `pmem` through it whatever --durability says, and a second
    /// block-cache tier from `secondaryCache`: engine `name`. Where the region does not map,
    /// `logFileSystem` (files here, write logs in the node's arenas by request) holds the files
    /// and the memtables stay here, as a cluster's compute node across boxes runs.
    public init(
        name: String, memtableRegion: any MemtableArenaProvider, logFileSystem: (any FileSystem)? = nil,
        secondaryCache: (@Sendable (String) -> any SecondaryBlockCache)? = nil
    ) {
        self.name = name
        self.memtableRegion = memtableRegion
        self.logFileSystem = logFileSystem
        self.secondaryCache = secondaryCache
    }

    /// Moraine whose files live behind `fileSystem` (a storage node's), engine `name`;
    /// `storageRequests` counts the requests sent to the node so far; with `jobRunner`, its
    /// flushes and compactions run there (a cluster's workers).
    public init(
        name: String, fileSystem: any FileSystem, jobRunner: (any JobRunner)? = nil,
        secondaryCache: (@Sendable (String) -> any SecondaryBlockCache)? = nil, storageRequests: @escaping @Sendable () -> Int
    ) {
        self.name = name
        self.fileSystem = fileSystem
        self.storageRequests = storageRequests
        self.jobRunner = jobRunner
        self.secondaryCache = secondaryCache
    }

    public var engineNames: [String] { [name] }

    /// On a storage node a database is a flat name: the run directory's last component and
    /// the engine's name (`/tmp/moraine-bench` gives `moraine-bench-cluster`).
    public func databasePath(_ name: String, base: String) -> String {
        guard fileSystem != nil || connect != nil || cluster != nil else { return base + "/" + name }
        let last = base.split(separator: "/").last.map(String.init) ?? "moraine-bench"
        return last + "-" + name
    }

    public func removeDatabase(_ name: String, path: String, configuration c: BenchConfiguration) throws {
        if let connect {
            try Database.destroy(connect: connect.target, database: path, clusterKey: connect.clusterKey)
            return
        }
        if let cluster {
            try Database.destroy(path: path, cluster: cluster, options: options(c))
            return
        }
        if fileSystem != nil {
            try Database.destroy(path: path, options: options(c))
            return
        }
        // The memory node's arenas of the old database go back with it.
        if memtableRegion != nil { try Database.destroy(path: path, options: options(c)) }
        PosixFileSystem.shared.removeTree(path)
        // A fresh database starts with a fresh persistent-memory region too (a memory node's
        // arenas of a removed database are adopted and given back by the next open).
        if c.durability == "pmem" && memtableRegion == nil { PosixFileSystem.shared.removeTree(c.pmemPath ?? Options.defaultPmemPath(for: path)) }
        try PosixFileSystem.shared.createDirectory(path)
        // And its tables on every storage tier.
        for tier in c.tiers(for: name) { PosixFileSystem.shared.removeTree(tier.path) }
    }

    public func open(_ name: String, path: String, configuration c: BenchConfiguration) throws -> any BenchEngine {
        var options = options(c)
        if let connect {
            return MoraineBenchEngine(
                name: name, database: try Database(connect: connect.target, database: path, clusterKey: connect.clusterKey, options: options),
                writeOptions: WriteOptions(sync: c.sync, disableWAL: c.disableWAL), storageRequests: nil)
        }
        if let cluster {
            return MoraineBenchEngine(
                name: name, database: try Database(path: path, cluster: cluster, options: options),
                writeOptions: WriteOptions(sync: c.sync, disableWAL: c.disableWAL), storageRequests: nil)
        }
        options.secondaryBlockCache = secondaryCache?(path)
        return MoraineBenchEngine(
            name: name, database: try Database(path: path, options: options),
            writeOptions: WriteOptions(sync: c.sync, disableWAL: c.disableWAL), storageRequests: storageRequests)
    }

    private func options(_ c: BenchConfiguration) -> Options {
        var options = Options()
        options.createIfMissing = c.createIfMissing
        options.writeBufferSize = c.writeBufferSizeBytes
        options.maxWriteBufferNumber = c.maxWriteBufferNumber
        options.level0FileNumCompactionTrigger = c.level0FileNumCompactionTrigger
        options.level0SlowdownWritesTrigger = c.level0SlowdownWritesTrigger
        options.level0StopWritesTrigger = c.level0StopWritesTrigger
        options.targetFileSizeBase = c.targetFileSizeBaseBytes
        options.maxBytesForLevelBase = c.maxBytesForLevelBaseBytes
        options.maxBackgroundJobs = c.maxBackgroundJobs
        options.blockSize = c.blockSizeBytes
        options.bloomBitsPerKey = c.bloomBitsPerKey
        options.blockCacheSize = cacheSizeBytes ?? c.cacheSizeBytes
        options.compression = c.compressionLZ4 ? .lz4 : .none
        options.tiers = c.tiers(for: name)
        options.allowMmapReads = c.mmapReads
        options.useDirectReads = c.directReads
        options.memtableHugePages = c.memtableHugePages
        options.memtableHashIndex = c.memtableHashIndex
        options.durability = c.durability == "pmem" ? .pmem : .wal
        options.pmemPath = c.pmemPath
        if let jobRunner { options.jobRunner = jobRunner }
        if let fileSystem {
            options.fileSystem = fileSystem
        } else if let name = c.ioBackend, let backend = IOBackend(name: name) {
            options.fileSystem = PosixFileSystem(ioBackend: backend)
        }
        if let memtableRegion {
            options.memtableRegion = memtableRegion
            options.durability = .pmem
            if let logFileSystem {
                options.fileSystem = logFileSystem
                options.durability = .wal
            }
        }
        return options
    }
}

final class MoraineBenchEngine: BenchEngine {
    let database: Database
    let writeOptions: WriteOptions
    let name: String
    private let requestCount: (@Sendable () -> Int)?

    init(name: String, database: Database, writeOptions: WriteOptions, storageRequests: (@Sendable () -> Int)?) {
        self.name = name
        self.database = database
        self.writeOptions = writeOptions
        self.requestCount = storageRequests
    }

    var storageRequests: Int? { requestCount?() }
    var blockCacheMisses: Int? { database.stats().blockCacheMisses }
    var backgroundCounters: BackgroundCounters? {
        let stats = database.stats()
        var counters = BackgroundCounters()
        counters.compactionBytes = stats.compactionBytesRead + stats.compactionBytesWritten
        counters.compactionMicros = stats.compactionMicros
        counters.stallMicros = stats.stallMicros
        counters.remoteJobs = stats.remoteCompactions + stats.remoteFlushes
        counters.secondaryHits = stats.secondaryCache.hits
        counters.secondaryMisses = stats.secondaryCache.misses
        return counters
    }

    func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws {
        try database.put(key: key, value: value, options: writeOptions)
    }

    func delete(_ key: UnsafeRawBufferPointer) throws {
        try database.delete(Array(key), options: writeOptions)
    }

    func write(keys: UnsafeRawBufferPointer, keySize: Int, values: [UnsafeRawBufferPointer]?) throws {
        var batch = WriteBatch()
        for i in 0..<keys.count / keySize {
            let key = UnsafeRawBufferPointer(rebasing: keys[i * keySize..<(i + 1) * keySize])
            if let values { batch.put(key: key, value: values[i]) } else { batch.delete(Array(key)) }
        }
        try database.write(consume batch, options: writeOptions)
    }

    func get(_ key: UnsafeRawBufferPointer) throws -> Int? {
        try database.get(key: key)?.count
    }

    func multiGet(_ keys: UnsafeRawBufferPointer, keySize: Int, count: Int) throws -> (found: Int, valueBytes: Int) {
        let batch = (0..<count).map { Array(UnsafeRawBufferPointer(rebasing: keys[$0 * keySize..<($0 + 1) * keySize])) }
        var found = 0
        var bytes = 0
        for value in try database.multiGet(batch) {
            if let value {
                found += 1
                bytes += value.count
            }
        }
        return (found, bytes)
    }

    func makeCursor() throws -> any BenchCursor { MoraineBenchCursor(try database.makeIterator()) }
    func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool { database.waitForBackgroundIdle(timeoutNanos: timeoutNanos) }
    func compactAll() throws { try database.compactRange() }
    func close() throws { try database.close() }
    var statistics: String? {
        let stats = database.stats()
        return stats.shape + "\n" + stats.json
    }
}

final class MoraineBenchCursor: BenchCursor {
    let iterator: DatabaseIterator
    init(_ iterator: DatabaseIterator) { self.iterator = iterator }
    var isValid: Bool { iterator.isValid }
    func seekToFirst() throws { try iterator.seekToFirst() }
    func seekToLast() throws { try iterator.seekToLast() }
    func seek(_ key: UnsafeRawBufferPointer) throws { try iterator.seek(Array(key)) }
    func next() throws { try iterator.next() }
    func prev() throws { try iterator.prev() }
    var entryBytes: Int { iterator.withCurrent { $0.count + $1.count } }
    func keyEquals(_ key: UnsafeRawBufferPointer) -> Bool { iterator.withCurrent { current, _ in current.elementsEqual(key) } }
}
