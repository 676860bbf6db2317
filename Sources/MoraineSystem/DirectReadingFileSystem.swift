// A view of a file system whose random-access opens read directly (O_DIRECT): what an engine with
// `useDirectReads` hands the jobs it runs itself, so a compaction's inputs bypass the page cache as
// its point reads do (RocksDB's compaction reads honour `use_direct_reads` too). Every other call
// goes to the file system underneath unchanged.
// Thread-safety: as the file system underneath.

/// `base`, with `openRandomAccess` meaning `base.openDirect`.
public final class DirectReadingFileSystem: FileSystem, @unchecked Sendable {
    public let base: any FileSystem

    public init(_ base: any FileSystem) { self.base = base }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile { try base.openDirect(path) }
    public func openDirect(_ path: String) throws -> any RandomAccessFile { try base.openDirect(path) }
    public func openMapped(_ path: String) throws -> any RandomAccessFile { try base.openMapped(path) }
    public func read(batch: UnsafeMutableBufferPointer<BatchRead>) { base.read(batch: batch) }
    public func createWritable(_ path: String) throws -> any WritableFile { try base.createWritable(path) }
    public func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile { try base.createWritable(path, hint: hint) }
    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile { try base.createNew(path, hint: hint) }
    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile { try base.openForAppend(path, hint: hint) }
    public func readAll(_ path: String) throws -> [UInt8] { try base.readAll(path) }
    public func exists(_ path: String) throws -> Bool { try base.exists(path) }
    public func fileSize(_ path: String) throws -> UInt64 { try base.fileSize(path) }
    public func children(of directory: String) throws -> [String] { try base.children(of: directory) }
    public func createDirectory(_ path: String) throws { try base.createDirectory(path) }
    public func remove(_ path: String) throws { try base.remove(path) }
    public func rename(_ source: String, to target: String) throws { try base.rename(source, to: target) }
    public func syncDirectory(_ directory: String) throws { try base.syncDirectory(directory) }
    public func lock(_ path: String) throws -> any FileLock { try base.lock(path) }
}
