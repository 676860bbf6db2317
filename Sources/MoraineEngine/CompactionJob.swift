// A compaction job merges input tables into new tables of the output level. Its inputs say
// everything it needs: the input files, the oldest sequence a live snapshot may still read, and
// the key ranges of deeper levels (to know where a tombstone can be dropped). It reads inputs
// and writes outputs only through the FileSystem seam.
//
// Rules, per user key, walking versions newest first:
// - a version hidden by a newer version of the same key that every snapshot can see is dropped;
// - a tombstone every snapshot can see is dropped when no deeper level may hold the key;
// - outputs are cut at `targetFileSizeBytes`, only between user keys, so the tables of a level
//   never share a user key.
import MoraineFormat
import MoraineSystem

/// What a compaction job reads and produces.
public struct CompactionJob {
    /// Input tables by file number, each level's files in key order.
    public let inputs: [UInt64]
    public let outputLevel: Int
    /// Entries newer than this are kept as they are.
    public let smallestSnapshot: SequenceNumber
    /// For each level deeper than the output, the user-key ranges of its files, sorted.
    public let deeperLevelRanges: [[(lower: [UInt8], upper: [UInt8])]]
    public let targetFileSizeBytes: UInt64
    public let directory: String
    public let fileSystem: any FileSystem
    public let tableOptions: TableOptions
    /// Hands out numbers for output files.
    public let allocateFileNumber: () -> UInt64

    public init(
        inputs: [UInt64], outputLevel: Int, smallestSnapshot: SequenceNumber,
        deeperLevelRanges: [[(lower: [UInt8], upper: [UInt8])]], targetFileSizeBytes: UInt64,
        directory: String, fileSystem: any FileSystem, tableOptions: TableOptions,
        allocateFileNumber: @escaping () -> UInt64
    ) {
        self.inputs = inputs
        self.outputLevel = outputLevel
        self.smallestSnapshot = smallestSnapshot
        self.deeperLevelRanges = deeperLevelRanges
        self.targetFileSizeBytes = targetFileSizeBytes
        self.directory = directory
        self.fileSystem = fileSystem
        self.tableOptions = tableOptions
        self.allocateFileNumber = allocateFileNumber
    }

    /// Counters a job reports.
    public struct Result {
        public var outputs: [TableFileInfo] = []
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        public var entriesDropped: UInt64 = 0
    }

    /// Whether no deeper level may hold `user`.
    func isBaseLevel(for user: UnsafeRawBufferPointer) -> Bool {
        for ranges in deeperLevelRanges {
            var low = 0
            var high = ranges.count
            while low < high {
                let mid = (low + high) / 2
                if ranges[mid].upper.withUnsafeBytes({ compareBytes($0, user) < 0 }) {
                    low = mid + 1
                } else {
                    high = mid
                }
            }
            if low < ranges.count && ranges[low].lower.withUnsafeBytes({ compareBytes($0, user) <= 0 }) {
                return false
            }
        }
        return true
    }

    /// Runs the merge, writing and syncing every output.
    public func run() throws -> Result {
        var result = Result()
        var children: [any InternalIterator] = []
        for number in inputs {
            let path = joinPath(directory, DatabaseFile.table(number).name)
            let reader = try TableReader(file: try fileSystem.openRandomAccess(path), name: path, cache: nil)
            result.bytesRead += reader.fileSizeBytes
            children.append(reader.makeIterator(fillCache: false, readahead: .fixed()))
        }
        let merged = MergingIterator(children)
        var writer: TableWriter? = nil
        var currentUser = KeyBuffer()
        var hasCurrentUser = false
        var lastSequenceForKey = maxSequenceNumber
        do {
            try merged.seekToFirst()
            while merged.isValid {
                let ikey = merged.key
                let user = userKey(ikey)
                let newUserKey = !hasCurrentUser || compareBytes(currentUser.bytes, user) != 0
                if newUserKey {
                    // Cut the output only between user keys.
                    if let w = writer, w.builder!.estimatedFileSizeBytes >= targetFileSizeBytes {
                        result.outputs.append(try w.finish())
                        result.bytesWritten += result.outputs.last!.sizeBytes
                        writer = nil
                    }
                    currentUser.set(user)
                    hasCurrentUser = true
                    lastSequenceForKey = maxSequenceNumber
                }
                let seq = sequence(ikey)
                var drop = false
                if lastSequenceForKey <= smallestSnapshot {
                    drop = true  // a newer version of this key is visible to every snapshot
                } else if valueType(ikey) == .deletion && seq <= smallestSnapshot && isBaseLevel(for: user) {
                    drop = true  // nothing older survives below, and no snapshot needs the tombstone
                }
                lastSequenceForKey = seq
                if drop {
                    result.entriesDropped += 1
                } else {
                    if writer == nil {
                        let number = allocateFileNumber()
                        let w = TableWriter(
                            path: joinPath(directory, DatabaseFile.table(number).name), number: number,
                            fileSystem: fileSystem, options: tableOptions)
                        try w.open()
                        writer = w
                    }
                    try writer!.builder!.add(key: ikey, value: merged.value)
                }
                try merged.next()
            }
            if let w = writer {
                if w.builder!.entryCount > 0 {
                    result.outputs.append(try w.finish())
                    result.bytesWritten += result.outputs.last!.sizeBytes
                } else {
                    w.abandon()
                }
                writer = nil
            }
        } catch {
            writer?.abandon()
            for output in result.outputs {
                try? fileSystem.remove(joinPath(directory, DatabaseFile.table(output.number).name))
            }
            throw error
        }
        return result
    }
}
