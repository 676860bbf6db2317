// Keeps open TableReaders by file number, up to max_open_files, so a table's footer, index and
// filter are read once. An evicted reader stays usable by whoever still holds it (ARC).
// Thread-safe.
import MoraineFormat
import MoraineSystem

/// Open table readers by file number.
final class TableCache: @unchecked Sendable {
    private let lock = ConditionLock()
    private var readers: [UInt64: TableReader] = [:]
    private var order: [UInt64] = []  // insertion order, for eviction
    private let capacity: Int
    private let directory: String
    private let fileSystem: any FileSystem
    let blockCache: BlockCache?
    let secondary: (any SecondaryBlockCache)?

    init(
        directory: String, fileSystem: any FileSystem, blockCache: BlockCache?, capacity: Int,
        secondary: (any SecondaryBlockCache)? = nil
    ) {
        self.directory = directory
        self.fileSystem = fileSystem
        self.blockCache = blockCache
        self.secondary = secondary
        self.capacity = max(capacity, 16)
    }

    /// The reader of table `number`, opening it on first use.
    /// - Throws: the open's error (a missing file, a corrupt footer) naming the file.
    func reader(_ number: UInt64) throws -> TableReader {
        if let reader = lock.withLock({ readers[number] }) { return reader }
        let path = joinPath(directory, DatabaseFile.table(number).name)
        let reader = try TableReader(
            file: try fileSystem.openRandomAccess(path), name: path, cache: blockCache, secondary: secondary, fileNumber: number)
        return lock.withLock {
            if let existing = readers[number] { return existing }
            readers[number] = reader
            order.append(number)
            if order.count > capacity {
                let victim = order.removeFirst()
                readers[victim] = nil
            }
            return reader
        }
    }

    /// Forgets a table whose file is being deleted, and drops its cached blocks.
    func evict(_ number: UInt64) {
        let reader = lock.withLock { () -> TableReader? in
            order.removeAll { $0 == number }
            return readers.removeValue(forKey: number)
        }
        if let reader { blockCache?.evictTable(reader.tableID) }
    }

    var openCount: Int { lock.withLock { readers.count } }
    var pinnedBytes: Int { lock.withLock { readers.values.reduce(0) { $0 + $1.pinnedBytes } } }
}
