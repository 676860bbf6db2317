// Flush and compaction are jobs with explicit inputs and outputs: they read and write only
// through the FileSystem seam and touch no engine state, so the same code can run on a remote
// worker. A job that fails removes the files it started; one that dies with its process leaves
// files no manifest references, which the next open deletes.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

/// Writes the entries of an immutable memtable (or any sorted source) to one L0 table.
public struct FlushJob {
    /// The sorted entries to persist.
    public let source: any InternalIterator
    /// The number the output table takes.
    public let fileNumber: UInt64
    /// The directory of the output's tier.
    public let directory: String
    /// The tier the output goes to (recorded in its file record).
    public let tier: Int
    public let fileSystem: any FileSystem
    public let tableOptions: TableOptions

    public init(
        source: any InternalIterator, fileNumber: UInt64, directory: String, tier: Int = 0, fileSystem: any FileSystem,
        tableOptions: TableOptions
    ) {
        self.source = source
        self.fileNumber = fileNumber
        self.directory = directory
        self.tier = tier
        self.fileSystem = fileSystem
        self.tableOptions = tableOptions
    }

    /// Writes and syncs the table.
    /// - Returns: the new file's record, or nil when the source is empty.
    public func run() throws -> TableFileInfo? {
        try source.seekToFirst()
        guard source.isValid else { return nil }
        let path = joinPath(directory, DatabaseFile.table(fileNumber).name)
        let writer = TableWriter(path: path, number: fileNumber, tier: tier, fileSystem: fileSystem, options: tableOptions)
        do {
            try writer.open()
            while source.isValid {
                try writer.builder!.add(key: source.key, value: source.value)
                try source.next()
            }
            return try writer.finish()
        } catch {
            writer.abandon()
            throw error
        }
    }
}

/// One output table being written: create, add, finish (sync, close), or abandon (remove).
final class TableWriter {
    let path: String
    let number: UInt64
    let tier: Int
    let fileSystem: any FileSystem
    let options: TableOptions
    private(set) var builder: TableBuilder? = nil
    private var file: (any WritableFile)? = nil

    init(path: String, number: UInt64, tier: Int, fileSystem: any FileSystem, options: TableOptions) {
        self.path = path
        self.number = number
        self.tier = tier
        self.fileSystem = fileSystem
        self.options = options
    }

    func open() throws {
        let file = try fileSystem.createNew(path, hint: .bulk)
        self.file = file
        builder = TableBuilder(file: file, options: options, name: path)
    }

    func finish() throws -> TableFileInfo {
        let properties = try builder!.finish()
        try file!.sync()
        try file!.close()
        let size = builder!.fileSizeBytes
        file = nil
        return TableFileInfo(
            number: number, sizeBytes: size, smallest: properties.smallestKey, largest: properties.largestKey,
            smallestSequence: properties.smallestSequence, largestSequence: properties.largestSequence, tier: tier)
    }

    /// Closes and removes a partly written table (best effort: the next open collects leftovers).
    func abandon() {
        if let file { try? file.close() }
        file = nil
        try? fileSystem.remove(path)
    }
}

/// A flush fed entry by entry, as a worker gets them over the wire: the table is created at
/// start, each entry is checked (a whole internal key, after the previous one) and added, and
/// `finish` syncs it. Entries from the wire are not trusted: a key out of order or too short is
/// refused, not asserted.
///
/// Thread-safety: one caller at a time.
public final class FlushStream {
    public let spec: FlushJobSpec
    private let writer: TableWriter
    private var previous = KeyBuffer()
    private var entryCount: UInt64 = 0
    private let started = monotonicNanos()
    private var cpuNanos: Int64 = 0
    private var done = false

    /// Creates the output table (exclusive create).
    /// - Throws: `invalid` naming each problem of a spec that cannot run; the file system's errors.
    public init(spec: FlushJobSpec, fileSystem: any FileSystem) throws {
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw MoraineError(.invalid, "flush job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        self.spec = spec
        writer = TableWriter(
            path: spec.tablePath(spec.outputNumber, tier: spec.outputTier), number: spec.outputNumber, tier: spec.outputTier,
            fileSystem: fileSystem, options: spec.tableOptions)
        try writer.open()
    }

    /// Adds one entry.
    /// - Throws: `invalid` for a key shorter than an internal key's tag or not after the previous
    ///   one; the file system's errors. The stream is unusable after a throw: abandon it.
    public func add(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) throws {
        guard key.count >= internalKeyTagBytes else {
            throw MoraineError(.invalid, "flush job \(spec.jobID): entry \(entryCount) has a key of \(key.count) bytes, not an internal key")
        }
        if entryCount > 0 && compareInternalKeys(previous.bytes, key) >= 0 {
            throw MoraineError(.invalid, "flush job \(spec.jobID): entry \(entryCount) is not after the one before it")
        }
        try writer.builder!.add(key: key, value: value)
        previous.set(key)
        entryCount += 1
    }

    /// Counts `nanos` of CPU time spent feeding the stream (a caller times its chunks: timing
    /// each entry would cost more than the entry).
    public func addCPU(_ nanos: Int64) { cpuNanos += nanos }

    /// Syncs and closes the table; with no entries, removes it.
    public func finish() throws -> FlushJobResult {
        precondition(!done, "a flush stream finished twice")
        done = true
        let cpuStarted = threadCPUNanos()
        var result = FlushJobResult(jobID: spec.jobID)
        result.entries = entryCount
        if entryCount == 0 {
            writer.abandon()
        } else {
            result.output = try writer.finish()
        }
        result.wallNanos = monotonicNanos() - started
        result.cpuNanos = cpuNanos + threadCPUNanos() - cpuStarted
        return result
    }

    /// Removes the partly written table (best effort).
    public func abandon() {
        guard !done else { return }
        done = true
        writer.abandon()
    }
}
