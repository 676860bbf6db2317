// Moraine as a BenchEngine: the embedded Database configured from BenchConfiguration.
// Thread-safe because Database is.
import Moraine
import MoraineSystem

/// Opens embedded Moraine databases for benchmarks.
public struct MoraineBenchFactory: BenchEngineFactory {
    public init() {}
    public var engineNames: [String] { ["moraine"] }

    public func open(_ name: String, path: String, configuration c: BenchConfiguration) throws -> any BenchEngine {
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
        options.blockCacheSize = c.cacheSizeBytes
        options.compression = c.compressionLZ4 ? .lz4 : .none
        options.durability = c.durability == "pmem" ? .pmem : .wal
        options.pmemPath = c.pmemPath
        if let name = c.ioBackend, let backend = IOBackend(name: name) {
            options.fileSystem = PosixFileSystem(ioBackend: backend)
        }
        return MoraineBenchEngine(
            database: try Database(path: path, options: options),
            writeOptions: WriteOptions(sync: c.sync, disableWAL: c.disableWAL))
    }
}

final class MoraineBenchEngine: BenchEngine {
    let database: Database
    let writeOptions: WriteOptions
    var name: String { "moraine" }

    init(database: Database, writeOptions: WriteOptions) {
        self.database = database
        self.writeOptions = writeOptions
    }

    func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws {
        try database.engine.put(key: key, value: value, options: writeOptions)
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
        try database.write(batch, options: writeOptions)
    }

    func get(_ key: UnsafeRawBufferPointer) throws -> Int? {
        try database.engine.get(key: key)?.count
    }

    func multiGet(_ keys: UnsafeRawBufferPointer, keySize: Int, count: Int) throws -> (found: Int, valueBytes: Int) {
        let batch = (0..<count).map { Array(UnsafeRawBufferPointer(rebasing: keys[$0 * keySize..<($0 + 1) * keySize])) }
        var found = 0
        var bytes = 0
        for value in try database.engine.multiGet(batch) {
            if let value {
                found += 1
                bytes += value.count
            }
        }
        return (found, bytes)
    }

    func makeCursor() throws -> any BenchCursor { MoraineBenchCursor(try database.makeIterator()) }
    func compactAll() throws { try database.compactRange() }
    func close() throws { try database.close() }
    var statistics: String? {
        let stats = database.engine.stats()
        return stats.shape + "\n" + stats.json
    }
}

final class MoraineBenchCursor: BenchCursor {
    let iterator: DBIterator
    init(_ iterator: DBIterator) { self.iterator = iterator }
    var isValid: Bool { iterator.isValid }
    func seekToFirst() throws { try iterator.seekToFirst() }
    func seekToLast() throws { try iterator.seekToLast() }
    func seek(_ key: UnsafeRawBufferPointer) throws { try iterator.seek(Array(key)) }
    func next() throws { try iterator.next() }
    func prev() throws { try iterator.prev() }
    var entryBytes: Int { iterator.withCurrent { $0.count + $1.count } }
    func keyEquals(_ key: UnsafeRawBufferPointer) -> Bool { iterator.withCurrent { current, _ in current.elementsEqual(key) } }
}
