// The file seam. Every byte the LSM layer stores or loads goes through these protocols, so the
// same flush and compaction code runs embedded (PosixFileSystem), on a remote worker, or in a
// test over a simulated or fault-injecting file system.
//
// Paths are plain strings; directories are flat (an LSM database is one directory).
// Thread-safety: a FileSystem is shared by all threads. A WritableFile has one writer at a time.
// A RandomAccessFile is read concurrently by many threads.

/// A file being written from start to end.
public protocol WritableFile: AnyObject {
    /// Appends bytes (possibly buffered in user space).
    func append(_ bytes: UnsafeRawBufferPointer) throws
    /// Hands buffered bytes to the operating system, so they survive a process crash.
    func flush() throws
    /// Makes every appended byte durable (fdatasync), so it survives a machine crash.
    func sync() throws
    /// Flushes and closes. Does not sync.
    func close() throws
    /// Bytes appended so far.
    var size: UInt64 { get }
    /// The most bytes the file can hold where that is bounded (a write log in an arena of a
    /// memory node's region); nil: unbounded.
    var capacity: UInt64? { get }
}

extension WritableFile {
    public var capacity: UInt64? { nil }
}

/// A file read at arbitrary offsets, concurrently.
public protocol RandomAccessFile: AnyObject, Sendable {
    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (fewer only at
    /// the end of the file).
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
        -> Int
    /// The file's size when it was opened.
    var size: UInt64 { get }
    /// Asks the kernel to read `length` bytes at `offset` into its page cache ahead of use,
    /// without waiting. Returns false where that is not available; the caller then reads ahead
    /// into a buffer of its own.
    func prefetch(at offset: UInt64, length: Int) -> Bool
    /// The `count` bytes at `offset` in place, where the file is mapped into memory (nil where it
    /// is not, or the range runs past the end). Valid while the file object lives.
    func mappedBytes(at offset: UInt64, count: Int) -> UnsafeRawBufferPointer?
}

extension RandomAccessFile {
    public func mappedBytes(at offset: UInt64, count: Int) -> UnsafeRawBufferPointer? { nil }
}

/// A held advisory lock on a database directory; released by `unlock` or deinit.
public protocol FileLock: AnyObject, Sendable {
    func unlock()
}

/// The operations the LSM layer needs from a file system.
public protocol FileSystem: AnyObject, Sendable {
    /// Creates (or truncates) a file for writing.
    func createWritable(_ path: String) throws -> any WritableFile
    /// Creates (or truncates) a file for writing, saying how it will be written.
    func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile
    /// Creates a file that does not exist yet. An existing file is never truncated: the call
    /// fails with `.invalid` naming it (a table, log or manifest number used twice, or a
    /// retried create on a remote node that already made it).
    func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile
    /// Opens an existing file to append at its end (a storage node taking up a file it was
    /// writing before a restart).
    func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile
    /// Opens an existing file for random reads.
    func openRandomAccess(_ path: String) throws -> any RandomAccessFile
    /// Opens an existing file for random reads that bypass the operating system's page cache
    /// (O_DIRECT, RocksDB's `use_direct_reads`): every read reaches the device, and the block
    /// cache is the only cache. Any offset and length may be read. File systems without a page
    /// cache of their own open it as `openRandomAccess`.
    func openDirect(_ path: String) throws -> any RandomAccessFile
    /// Opens an existing file that will not change for reads by loads from a mapping, where the
    /// file system can map it (a persistent-memory tier); else as `openRandomAccess`.
    func openMapped(_ path: String) throws -> any RandomAccessFile
    /// Reads a whole (small) file.
    func readAll(_ path: String) throws -> [UInt8]
    /// Whether a file or directory exists at `path`: true or false only when the file system
    /// could tell. "Could not look" (EACCES, EIO, an unreachable node) throws; a caller deciding
    /// whether to create something must never take that for absence.
    func exists(_ path: String) throws -> Bool
    func fileSize(_ path: String) throws -> UInt64
    /// Names (not paths) in a directory.
    func children(of directory: String) throws -> [String]
    func createDirectory(_ path: String) throws
    func remove(_ path: String) throws
    /// Atomically replaces `target` with `source`.
    func rename(_ source: String, to target: String) throws
    /// Makes creations, renames and removals inside `directory` durable.
    func syncDirectory(_ directory: String) throws
    /// Takes an exclusive lock, failing with `.busy` when another process holds it.
    func lock(_ path: String) throws -> any FileLock
    /// Performs many reads, possibly of different files, at once (one submission where the
    /// backend allows). Each read's outcome lands in its `bytesRead` or `error`.
    func read(batch: UnsafeMutableBufferPointer<BatchRead>)
}

/// A file system whose databases are held under leases with epochs (a storage node's): a job
/// sent to a worker carries the owner's epoch, so a superseded owner's job changes nothing.
public protocol LeasedFileSystem: FileSystem {
    /// The epoch of this process's lease on `database` (0 before it holds one).
    func leaseEpoch(of database: String) -> UInt64
}

/// One read of a batch: a file, an offset and a buffer, then the outcome.
public struct BatchRead {
    public let file: any RandomAccessFile
    public let offset: UInt64
    public let buffer: UnsafeMutableRawBufferPointer
    /// Bytes read (fewer than `buffer.count` only at end of file).
    public var bytesRead = 0
    /// Why the read failed, or nil.
    public var error: MoraineError? = nil

    public init(file: any RandomAccessFile, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) {
        self.file = file
        self.offset = offset
        self.buffer = buffer
    }
}

/// How a new file will be written, so the file system can pick the fitting I/O path.
public enum WriteHint: Sendable {
    /// Small appends whose latency matters (WAL, manifest).
    case log
    /// Large sequential output written once and synced at the end (tables from flush and
    /// compaction).
    case bulk
}

extension FileSystem {
    /// Ignores the hint (file systems with one write path).
    public func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile {
        try createWritable(path)
    }

    /// File systems without a page cache of their own (simulated; remote, whose node decides
    /// how it reads) read through `openRandomAccess`.
    public func openDirect(_ path: String) throws -> any RandomAccessFile { try openRandomAccess(path) }

    /// File systems that cannot map read through `openRandomAccess`.
    public func openMapped(_ path: String) throws -> any RandomAccessFile { try openRandomAccess(path) }

    /// Reads one request after another (file systems without a batching backend).
    public func read(batch: UnsafeMutableBufferPointer<BatchRead>) {
        readOneByOne(batch)
    }

    /// Reads each request of `batch` with its file's own `read`.
    public func readOneByOne(_ batch: UnsafeMutableBufferPointer<BatchRead>) {
        for i in batch.indices {
            do {
                batch[i].bytesRead = try batch[i].file.read(at: batch[i].offset, into: batch[i].buffer)
            } catch {
                batch[i].error = (error as? MoraineError) ?? MoraineError(.io, "\(error)")
            }
        }
    }
}

extension WritableFile {
    /// Appends an array of bytes.
    public func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { (raw) in try append(raw) }
    }
}

extension RandomAccessFile {
    public func prefetch(at offset: UInt64, length: Int) -> Bool { false }

    /// Reads exactly `buffer.count` bytes at `offset`.
    /// - Throws: `.corruption` naming `name` when the file ends first.
    public func readExactly(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, name: String
    ) throws {
        let got = try read(at: offset, into: buffer)
        if got != buffer.count {
            throw MoraineError.corruption(
                "short read: \(got) of \(buffer.count) bytes at offset \(offset)", file: name)
        }
    }
}

/// Joins a directory and a file name.
@inlinable
public func joinPath(_ directory: String, _ name: String) -> String {
    directory.hasSuffix("/") ? directory + name : directory + "/" + name
}
