// Keeps open TableReaders by file number, up to max_open_files, so a table's footer, index and
// filter are read once. An evicted reader stays usable by whoever still holds it (ARC). A table
// moved to another tier is one number with two files for a while: the cache keeps the reader of
// the tier last asked for, and a reader of the old tier stays usable by whoever holds it.
// Thread-safe.
import MoraineFormat
import MoraineSystem

/// Open table readers by file number.
final class TableCache: @unchecked Sendable {
    private let lock = ConditionLock()
    private var readers: [UInt64: (reader: TableReader, tier: Int)] = [:]
    private var order: [UInt64] = []  // insertion order, for eviction
    private let capacity: Int
    private let layout: TierLayout
    private let fileSystem: any FileSystem
    /// Every table read through a mapping (`allowMmapReads`), not only a mapped tier's.
    private let mapAll: Bool
    /// Tables not on a mapped tier read with O_DIRECT (`useDirectReads`).
    private let direct: Bool
    let blockCache: BlockCache?
    let secondary: (any SecondaryBlockCache)?

    init(
        layout: TierLayout, fileSystem: any FileSystem, blockCache: BlockCache?, capacity: Int,
        secondary: (any SecondaryBlockCache)? = nil, mapAll: Bool = false, direct: Bool = false
    ) {
        self.mapAll = mapAll
        self.direct = direct
        self.layout = layout
        self.fileSystem = fileSystem
        self.blockCache = blockCache
        self.secondary = secondary
        self.capacity = max(capacity, 16)
    }

    /// The reader of `file`, opening it on first use.
    /// - Throws: the open's error (a missing file, a corrupt footer) naming the file.
    func reader(_ file: FileMetaData) throws -> TableReader { try reader(file.number, tier: file.info.tier) }

    /// The reader of `file` if it is open already (nil: opening it would read the file).
    func openedReader(_ file: FileMetaData) -> TableReader? {
        lock.withLock {
            guard let cached = readers[file.number], cached.tier == file.info.tier else { return nil }
            return cached.reader
        }
    }

    /// The reader of table `number` on `tier`, opening it on first use.
    /// - Throws: the open's error (a missing file, a corrupt footer) naming the file.
    func reader(_ number: UInt64, tier: Int) throws -> TableReader {
        if let cached = lock.withLock({ readers[number] }), cached.tier == tier { return cached.reader }
        let path = layout.tablePath(number, tier: tier)
        let file: any RandomAccessFile
        if mapAll || layout.mapped[tier] {
            file = try fileSystem.openMapped(path)
        } else {
            file = direct ? try fileSystem.openDirect(path) : try fileSystem.openRandomAccess(path)
        }
        let reader = try TableReader(file: file, name: path, cache: blockCache, secondary: secondary, fileNumber: number)
        return lock.withLock {
            if let existing = readers[number], existing.tier == tier { return existing.reader }
            if readers.updateValue((reader, tier), forKey: number) == nil { order.append(number) }
            if order.count > capacity {
                let victim = order.removeFirst()
                readers[victim] = nil
            }
            return reader
        }
    }

    /// Forgets table `number` on `tier`, whose file is being deleted, and drops its cached
    /// blocks (a reader of the same number on another tier stays).
    func evict(_ number: UInt64, tier: Int) {
        let reader = lock.withLock { () -> TableReader? in
            guard readers[number]?.tier == tier else { return nil }
            order.removeAll { $0 == number }
            return readers.removeValue(forKey: number)?.reader
        }
        if let reader { blockCache?.evictTable(reader.tableID) }
    }

    var openCount: Int { lock.withLock { readers.count } }
    var pinnedBytes: Int { lock.withLock { readers.values.reduce(0) { $0 + $1.reader.pinnedBytes } } }
}
