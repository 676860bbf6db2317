// A file system that hands every call to another: a test's wrapper states only the calls it
// intercepts (counts, pauses, faults) and inherits the rest.
import MoraineSystem

/// Passes each `FileSystem` call to `base` unless the conforming type implements it. The calls
/// `FileSystem` itself defaults (`createWritable(_:hint:)`, `openMapped`, `openDirect`,
/// `read(batch:)`) keep those defaults, which go through the wrapper's own `openRandomAccess` and
/// `createWritable` (so a wrapper's direct opens are its plain ones unless it says otherwise).
public protocol ForwardingFileSystem: FileSystem {
    var base: any FileSystem { get }
}

extension ForwardingFileSystem {
    public func createWritable(_ path: String) throws -> any WritableFile { try base.createWritable(path) }
    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile { try base.createNew(path, hint: hint) }
    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile { try base.openForAppend(path, hint: hint) }
    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile { try base.openRandomAccess(path) }
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
