// The FileSystem over POSIX files. Reads, appends and fdatasync go through the calling
// thread's I/O queue (io_uring, or pread/pwrite where io_uring is unavailable or not chosen):
// an append buffer is written in one request, a sync writes what is buffered and fdatasyncs in
// one linked submission, and a batch of reads across files is one submission. A file opened
// with `openDirect` reads with O_DIRECT through an aligned bounce buffer. Metadata
// (open, rename, unlink, directory sync, flock) uses plain system calls. EINTR is retried
// below this layer; every other failure becomes a MoraineError naming the path and errno.
import CSystemShims

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
    /// The backend that carries this file system's reads and writes.
    public let ioBackend: IOBackend

    /// A file system using `ioBackend` (default: the process's preferred backend).
    public init(ioBackend: IOBackend = .preferred) {
        self.ioBackend = ioBackend
    }

    /// A process-wide instance on the preferred backend.
    public static let shared = PosixFileSystem()

    public func createWritable(_ path: String) throws -> any WritableFile {
        try createWritable(path, hint: .log)
    }

    /// Log files write with pwrite(2) whatever the backend: a small buffered write through
    /// io_uring is punted to a kernel worker on ext4 and took 48 µs instead of 6 µs here
    /// (docs/PERFORMANCE.md §3). Bulk files go through the queue in 1 MiB writes, the last one
    /// linked to the fdatasync.
    public func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile {
        try create(path, hint: hint, flags: O_TRUNC)
    }

    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        try create(path, hint: hint, flags: O_EXCL)
    }

    /// Opens an existing file to append at its end (a storage node taking up a file it was
    /// writing before a restart).
    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("open", path) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let error = posixError("fstat", path)
            Glibc.close(fd)
            throw error
        }
        return PosixWritableFile(
            fd: fd, path: path, backend: hint == .log ? .posix : ioBackend, bufferBytes: hint == .log ? 64 << 10 : 1 << 20,
            startingAt: UInt64(st.st_size))
    }

    private func create(_ path: String, hint: WriteHint, flags: Int32) throws -> any WritableFile {
        let fd = open(path, O_WRONLY | O_CREAT | flags | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            if errno == EEXIST { throw MoraineError(.invalid, "create \(path): the file exists and is not truncated") }
            throw posixError("open", path)
        }
        switch hint {
        case .log: return PosixWritableFile(fd: fd, path: path, backend: .posix, bufferBytes: 64 << 10)
        case .bulk: return PosixWritableFile(fd: fd, path: path, backend: ioBackend, bufferBytes: 1 << 20)
        }
    }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        try openForReading(path, direct: false)
    }

    /// O_DIRECT: reads go to the device in whole aligned blocks (DirectReads), through a bounce
    /// buffer, so the caller may read any range.
    /// - Throws: `.invalid` naming the file when its file system refuses O_DIRECT (tmpfs before
    ///   Linux 6.6).
    public func openDirect(_ path: String) throws -> any RandomAccessFile {
        try openForReading(path, direct: true)
    }

    /// Whether files in `directory` open with O_DIRECT. Asks a regular file already there (a
    /// directory opened so is EINVAL on ext4 whatever its file system supports); with none,
    /// `mayCreate` makes a probe file and removes it, else there is nothing to read and the
    /// answer is yes. False also when the probe cannot be made.
    public static func supportsDirectReads(in directory: String, mayCreate: Bool = true) -> Bool {
        for name in (try? PosixFileSystem.shared.children(of: directory)) ?? [] {
            let path = joinPath(directory, name)
            var st = stat()
            guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | CSystemShims_o_direct())
            if fd >= 0 {
                Glibc.close(fd)
                return true
            }
            if errno == EINVAL { return false }
        }
        guard mayCreate else { return true }
        let probe = joinPath(directory, ".direct-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let created = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard created >= 0 else { return false }
        Glibc.close(created)
        defer { unlink(probe) }
        let fd = open(probe, O_RDONLY | O_CLOEXEC | CSystemShims_o_direct())
        guard fd >= 0 else { return false }
        Glibc.close(fd)
        return true
    }

    private func openForReading(_ path: String, direct: Bool) throws -> PosixRandomAccessFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? CSystemShims_o_direct() : 0))
        guard fd >= 0 else {
            if direct && errno == EINVAL {
                throw MoraineError(.invalid, "open \(path) with O_DIRECT: its file system does not support direct reads")
            }
            throw posixError("open", path)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let error = posixError("fstat", path)
            Glibc.close(fd)
            throw error
        }
        return PosixRandomAccessFile(fd: fd, path: path, size: UInt64(st.st_size), backend: ioBackend, direct: direct)
    }

    /// Reads the whole batch in one submission when every file is one of ours (direct files
    /// through a bounce buffer each).
    public func read(batch: UnsafeMutableBufferPointer<BatchRead>) {
        guard !batch.isEmpty else { return }
        guard batch.allSatisfy({ $0.file is PosixRandomAccessFile }) else { return readOneByOne(batch) }
        withUnsafeTemporaryAllocation(of: IORequest.self, capacity: batch.count) { requests in
            withUnsafeTemporaryAllocation(of: DirectReads.Span?.self, capacity: batch.count) { spans in
                for i in batch.indices {
                    let file = batch[i].file as! PosixRandomAccessFile
                    if file.direct && batch[i].buffer.count > 0 && batch[i].offset < DirectReads.offsetLimit {
                        let span = DirectReads.Span(offset: batch[i].offset, count: batch[i].buffer.count)
                        spans.initializeElement(at: i, to: span)
                        requests.initializeElement(at: i, to: span.request(fd: file.fd))
                    } else {
                        // A direct file's empty or unreachable read: a request of no bytes.
                        let empty = file.direct ? UnsafeMutableRawBufferPointer(rebasing: batch[i].buffer[0..<0]) : batch[i].buffer
                        spans.initializeElement(at: i, to: nil)
                        requests.initializeElement(at: i, to: .read(fd: file.fd, at: file.direct ? 0 : batch[i].offset, into: empty))
                    }
                }
                IOQueue.forCurrentThread(ioBackend).submit(requests)
                for i in batch.indices {
                    let file = batch[i].file as! PosixRandomAccessFile
                    if requests[i].errorNumber != 0 {
                        batch[i].error = posixError("read", file.path, requests[i].errorNumber)
                    } else if let span = spans[i] {
                        do {
                            batch[i].bytesRead = try file.finishDirect(span, got: requests[i].transferred, into: batch[i].buffer)
                        } catch {
                            batch[i].error = (error as? MoraineError) ?? MoraineError(.io, "\(error)")
                        }
                    } else {
                        batch[i].bytesRead = requests[i].transferred
                    }
                    spans[i]?.deallocate()
                }
                spans.deinitialize()
                requests.deinitialize()
            }
        }
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

    /// Only ENOENT (and ENOTDIR, a path through a file) is absence; any other failure of
    /// `stat` throws.
    public func exists(_ path: String) throws -> Bool {
        var st = stat()
        if stat(path, &st) == 0 { return true }
        if errno == ENOENT || errno == ENOTDIR { return false }
        throw posixError("stat", path)
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

    /// Takes the lock at once, or refuses with `busy`. A lock just released can still be held
    /// for an instant by a copy of its descriptor in a child this process is starting (another
    /// thread's fork, before the exec closes it), so a busy lock is tried a few more times over
    /// about 50 ms before the refusal: CI saw a reopen in one test refused while a parallel test
    /// spawned a process.
    public func lock(_ path: String) throws -> any FileLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError("open", path) }
        var attempt = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EWOULDBLOCK && attempt < 5 {
                attempt += 1
                usleep(10_000)
                continue
            }
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

/// A write-only file with a user-space buffer; `flush` hands it to the kernel through the
/// calling thread's I/O queue, `sync` also fdatasyncs in the same submission.
final class PosixWritableFile: WritableFile {
    private var fd: Int32
    private let path: String
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private(set) var size: UInt64 = 0
    private let backend: IOBackend

    init(fd: Int32, path: String, backend: IOBackend, bufferBytes: Int, startingAt offset: UInt64 = 0) {
        self.fd = fd
        self.path = path
        self.backend = backend
        self.buffer = .allocate(byteCount: bufferBytes, alignment: 4096)
        size = offset
        written = offset
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

    /// Bytes handed to the kernel so far (the file offset of the next write).
    private var written: UInt64 = 0

    /// Writes `bytes` at the end of what was written, and fdatasyncs after them when `sync`
    /// (one linked submission on io_uring).
    private func writeAll(_ bytes: UnsafeRawBufferPointer, sync: Bool = false) throws {
        if let failure = IOQueue.forCurrentThread(backend).write(fd: fd, at: written, from: bytes, sync: sync) {
            throw failure.error(path)
        }
        written += UInt64(bytes.count)
    }

    func flush() throws {
        guard buffered > 0 else { return }
        let pending = UnsafeRawBufferPointer(rebasing: buffer[0..<buffered])
        buffered = 0
        try writeAll(pending)
    }

    func sync() throws {
        guard fd >= 0 else { throw MoraineError(.closed, "sync of closed file \(path)") }
        let pending = UnsafeRawBufferPointer(rebasing: buffer[0..<buffered])
        buffered = 0
        try writeAll(pending, sync: true)
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

/// A read-only file read through the calling thread's I/O queue; safe for concurrent readers.
final class PosixRandomAccessFile: RandomAccessFile, @unchecked Sendable {
    let fd: Int32
    let path: String
    let size: UInt64
    /// Opened with O_DIRECT: reads go through DirectReads.
    let direct: Bool
    private let backend: IOBackend

    init(fd: Int32, path: String, size: UInt64, backend: IOBackend, direct: Bool = false) {
        self.fd = fd
        self.path = path
        self.size = size
        self.backend = backend
        self.direct = direct
    }

    deinit { Glibc.close(fd) }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard !direct else {
            // No file reaches that far (and the aligned end must not overflow): nothing to read.
            guard buffer.count > 0, offset < DirectReads.offsetLimit else { return 0 }
            let span = DirectReads.Span(offset: offset, count: buffer.count)
            defer { span.deallocate() }
            var request = span.request(fd: fd)
            withUnsafeMutablePointer(to: &request) { IOQueue.forCurrentThread(backend).submit(UnsafeMutableBufferPointer(start: $0, count: 1)) }
            if request.errorNumber != 0 { throw posixError("read", path, request.errorNumber) }
            return try finishDirect(span, got: request.transferred, into: buffer)
        }
        switch IOQueue.forCurrentThread(backend).read(fd: fd, at: offset, into: buffer) {
        case .success(let count): return count
        case .failure(let error): throw error.error(path)
        }
    }

    /// Completes a direct read whose first transfer brought `got` bytes into `span`: continues
    /// while a transfer ends short on an aligned boundary (an interrupted read, not the end of
    /// the file), then copies the caller's range out. Returns the bytes copied.
    func finishDirect(_ span: DirectReads.Span, got first: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var got = first
        while got > 0, got < span.bytes.count, got % DirectReads.alignment == 0 {
            let rest = UnsafeMutableRawBufferPointer(rebasing: span.bytes[got...])
            var request = IORequest.read(fd: fd, at: span.start + UInt64(got), into: rest)
            request.endsAtShortRead = true
            withUnsafeMutablePointer(to: &request) { IOQueue.forCurrentThread(backend).submit(UnsafeMutableBufferPointer(start: $0, count: 1)) }
            if request.errorNumber != 0 { throw posixError("read", path, request.errorNumber) }
            if request.transferred == 0 { break }
            got += request.transferred
        }
        return span.copy(got: got, into: buffer)
    }

    /// posix_fadvise(WILLNEED): the kernel starts reading the range into its page cache and
    /// returns (RocksDB's iterator readahead does the same for buffered files). Not for a direct
    /// file, whose reads never use the page cache: the caller reads ahead into its own buffer.
    func prefetch(at offset: UInt64, length: Int) -> Bool {
        !direct && posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED) == 0
    }
}

/// O_DIRECT reads of any range: the device transfers whole aligned blocks into an aligned
/// buffer, and the caller's bytes are copied out of it.
enum DirectReads {
    /// The alignment of a direct read's offset, length and buffer: 4096 satisfies every logical
    /// block size Linux devices use (512 or 4096).
    static let alignment = 4096
    /// Offsets from here on are past the end of any file (2^62 bytes), and a range there could
    /// overflow its aligned end: reads there return nothing without a system call.
    static let offsetLimit: UInt64 = 1 << 62

    /// The aligned range around a wanted one, with its buffer.
    struct Span {
        let start: UInt64
        /// Where the wanted bytes begin in `bytes`.
        let lead: Int
        let count: Int
        let bytes: UnsafeMutableRawBufferPointer

        init(offset: UInt64, count: Int) {
            let mask = UInt64(DirectReads.alignment - 1)
            start = offset & ~mask
            lead = Int(offset - start)
            self.count = count
            let end = (offset + UInt64(count) + mask) & ~mask
            bytes = .allocate(byteCount: Int(end - start), alignment: DirectReads.alignment)
        }

        func request(fd: Int32) -> IORequest {
            var request = IORequest.read(fd: fd, at: start, into: bytes)
            request.endsAtShortRead = true
            return request
        }

        /// Copies what of the wanted range the `got` bytes read cover; returns that count.
        func copy(got: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
            let available = min(max(0, got - lead), count)
            if available > 0 {
                buffer.baseAddress!.copyMemory(from: bytes.baseAddress! + lead, byteCount: available)
            }
            return available
        }

        func deallocate() { bytes.deallocate() }
    }
}
