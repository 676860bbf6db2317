// A file system for tests that hold an engine in the middle of an operation: the POSIX file
// system, whose next table read or WAL append, when armed, stops until the test resumes it.
import Dispatch
import MoraineSystem
import MoraineTestSupport
import Synchronization

/// The POSIX file system, whose next table read or WAL append stops, when armed, until resumed:
/// a test holds a read in the middle of its table lookup, or a write group in the middle of its
/// WAL append.
final class PausingFileSystem: ForwardingFileSystem, @unchecked Sendable {
    let base: any FileSystem = PosixFileSystem.shared
    let armedRead = Mutex(false)
    let armedAppend = Mutex(false)
    let paused = DispatchSemaphore(value: 0)
    let resume = DispatchSemaphore(value: 0)

    /// Stops here once if the read (or the append) flag is armed, disarming it, until `resume`
    /// is signalled.
    func pauseIfArmed(read: Bool) {
        let armed =
            read
            ? armedRead.withLock { flag in
                defer { flag = false }
                return flag
            }
            : armedAppend.withLock { flag in
                defer { flag = false }
                return flag
            }
        if armed {
            paused.signal()
            resume.wait()
        }
    }

    final class File: RandomAccessFile, @unchecked Sendable {
        let inner: any RandomAccessFile
        let owner: PausingFileSystem
        init(_ inner: any RandomAccessFile, owner: PausingFileSystem) {
            self.inner = inner
            self.owner = owner
        }
        var size: UInt64 { inner.size }
        func prefetch(at offset: UInt64, length: Int) -> Bool { inner.prefetch(at: offset, length: length) }
        func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            owner.pauseIfArmed(read: true)
            return try inner.read(at: offset, into: buffer)
        }
    }

    final class Log: WritableFile {
        let inner: any WritableFile
        let owner: PausingFileSystem
        init(_ inner: any WritableFile, owner: PausingFileSystem) {
            self.inner = inner
            self.owner = owner
        }
        func append(_ bytes: UnsafeRawBufferPointer) throws {
            owner.pauseIfArmed(read: false)
            try inner.append(bytes)
        }
        func flush() throws { try inner.flush() }
        func sync() throws { try inner.sync() }
        func close() throws { try inner.close() }
        var size: UInt64 { inner.size }
    }

    func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        let file = try base.openRandomAccess(path)
        return path.hasSuffix(".sst") ? File(file, owner: self) : file
    }
    func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        let file = try base.createNew(path, hint: hint)
        return path.hasSuffix(".log") ? Log(file, owner: self) : file
    }
}
