// The FileSystem over POSIX calls: buffered appends with write(2), pread(2) for reads,
// fdatasync(2) for durability, flock(2) for the database lock. EINTR is retried here so no
// caller sees it; every other failure becomes a MoraineError naming the path and errno.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Maps an errno from a call on `path` to a MoraineError.
func posixError(_ call: String, _ path: String, _ code: Int32 = errno) -> MoraineError {
    let reason = String(cString: strerror(code))
    let kind: MoraineError.Kind
    switch code {
    case ENOSPC, EDQUOT: kind = .noSpace
    case ENOENT: kind = .notFound
    case EWOULDBLOCK: kind = .busy
    case EINVAL, ENAMETOOLONG, EISDIR, ENOTDIR: kind = .invalid
    default: kind = .io
    }
    return MoraineError(kind, "\(call) \(path): \(reason) (errno \(code))")
}

/// The real file system.
public final class PosixFileSystem: FileSystem {
    public init() {}

    /// A process-wide instance.
    public static let shared = PosixFileSystem()

    public func createWritable(_ path: String) throws -> any WritableFile {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError("open", path) }
        return PosixWritableFile(fd: fd, path: path)
    }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("open", path) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let error = posixError("fstat", path)
            Glibc.close(fd)
            throw error
        }
        return PosixRandomAccessFile(fd: fd, path: path, size: UInt64(st.st_size))
    }

    public func readAll(_ path: String) throws -> [UInt8] {
        let file = try openRandomAccess(path)
        var bytes = [UInt8](repeating: 0, count: Int(file.size))
        let got = try bytes.withUnsafeMutableBytes { (buffer) in
            try file.read(at: 0, into: buffer)
        }
        if got < bytes.count { bytes.removeSubrange(got...) }
        return bytes
    }

    public func fileExists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public func fileSize(_ path: String) throws -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw posixError("stat", path) }
        return UInt64(st.st_size)
    }

    public func children(of directory: String) throws -> [String] {
        guard let dir = opendir(directory) else { throw posixError("opendir", directory) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Creates a directory and any missing parents.
    public func createDirectory(_ path: String) throws {
        if mkdir(path, 0o755) == 0 || errno == EEXIST { return }
        guard errno == ENOENT else { throw posixError("mkdir", path) }
        let trimmed = path.hasSuffix("/") ? String(path.dropLast()) : path
        if let slash = trimmed.lastIndex(of: "/"), slash != trimmed.startIndex {
            try createDirectory(String(trimmed[..<slash]))
        }
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw posixError("mkdir", path) }
    }

    /// Removes a file or a directory tree, best effort (tools and tests; the engine never
    /// deletes directories).
    public func removeTree(_ path: String) {
        guard let dir = opendir(path) else {
            unlink(path)
            return
        }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if entry.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
        rmdir(path)
    }

    public func remove(_ path: String) throws {
        if unlink(path) != 0 { throw posixError("unlink", path) }
    }

    public func rename(_ source: String, to target: String) throws {
        if Glibc.rename(source, target) != 0 { throw posixError("rename", "\(source) -> \(target)") }
    }

    public func syncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("open", directory) }
        defer { Glibc.close(fd) }
        if fsync(fd) != 0 { throw posixError("fsync", directory) }
    }

    public func lock(_ path: String) throws -> any FileLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError("open", path) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            Glibc.close(fd)
            if code == EWOULDBLOCK {
                throw MoraineError(
                    .busy, "database is locked by another process (lock file \(path))")
            }
            throw posixError("flock", path, code)
        }
        return PosixFileLock(fd: fd)
    }
}

final class PosixFileLock: FileLock, @unchecked Sendable {
    private var fd: Int32
    init(fd: Int32) { self.fd = fd }
    func unlock() {
        if fd >= 0 {
            Glibc.close(fd)  // closing the descriptor releases the flock
            fd = -1
        }
    }
    deinit { unlock() }
}

/// A write-only file with a user-space buffer; `flush` hands it to the kernel.
final class PosixWritableFile: WritableFile {
    private var fd: Int32
    private let path: String
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private(set) var size: UInt64 = 0
    private static let bufferBytes = 64 << 10

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        self.buffer = .allocate(byteCount: Self.bufferBytes, alignment: 16)
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        buffer.deallocate()
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard fd >= 0 else { throw MoraineError(.closed, "append to closed file \(path)") }
        size += UInt64(bytes.count)
        if buffered + bytes.count <= buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[buffered..<buffered + bytes.count])
                .copyMemory(from: bytes)
            buffered += bytes.count
            return
        }
        try flush()
        if bytes.count >= buffer.count {
            try writeAll(bytes)
        } else {
            UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count]).copyMemory(from: bytes)
            buffered = bytes.count
        }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError("write", path)
            }
            done += n
        }
    }

    func flush() throws {
        guard buffered > 0 else { return }
        let pending = UnsafeRawBufferPointer(rebasing: buffer[0..<buffered])
        buffered = 0
        try writeAll(pending)
    }

    func sync() throws {
        try flush()
        guard fd >= 0 else { throw MoraineError(.closed, "sync of closed file \(path)") }
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw posixError("fdatasync", path)
        }
    }

    func close() throws {
        guard fd >= 0 else { return }
        defer {
            Glibc.close(fd)
            fd = -1
        }
        try flush()
    }
}

/// A read-only file served by pread(2); safe for concurrent readers.
final class PosixRandomAccessFile: RandomAccessFile, @unchecked Sendable {
    private let fd: Int32
    private let path: String
    let size: UInt64

    init(fd: Int32, path: String, size: UInt64) {
        self.fd = fd
        self.path = path
        self.size = size
    }

    deinit { Glibc.close(fd) }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
        -> Int
    {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError("pread", path)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
}
