// The I/O queue: file reads, writes (plain and vectored) and fdatasync, submitted in batches.
// Two backends share one interface:
// - io_uring: one ring per queue, never shared between threads. A batch goes to the kernel in
//   one io_uring_enter (more when it exceeds the ring's depth); completions are matched to
//   requests by index. The ring asks for IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN (kernel 6.1+),
//   then COOP_TASKRUN, then nothing, taking the first the kernel accepts. SQPOLL stays off: its
//   polling thread takes a whole core, which on a 2-core machine costs more than it saves.
// - pread/pwrite: the same requests, one system call each, for kernels and containers where
//   io_uring is missing or forbidden (ENOSYS, EPERM from kernel.io_uring_disabled or seccomp).
// Both backends retry EINTR and EAGAIN, continue short reads and writes until the request is
// complete (a read stops early only at end of file, or at its first short transfer when it says
// `endsAtShortRead`: an O_DIRECT read), and honour links: a request whose
// predecessor has `linkNext` starts only after it succeeded, and fails with ECANCELED otherwise.
// Thread-safety: an io_uring queue belongs to one thread (see IOQueue+Thread.swift); the pread
// queue keeps no state and may be used from any thread.
import CSystemShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The mechanism that carries file I/O.
public enum IOBackend: String, Sendable, CaseIterable, CustomStringConvertible {
    case ioUring = "io_uring"
    case posix = "pread"

    /// Accepts "io_uring" (or "uring") and "pread" (or "posix").
    public init?(name: String) {
        switch name.lowercased() {
        case "io_uring", "uring", "iouring": self = .ioUring
        case "pread", "posix", "pwrite": self = .posix
        default: return nil
        }
    }

    public var description: String { rawValue }
}

/// One I/O operation in a batch, with its result once submitted.
public struct IORequest {
    /// What the request does.
    public enum Operation: UInt8, Sendable {
        case read, write, readVectored, writeVectored, fdatasync
    }

    public var operation: Operation
    /// The file descriptor (also used by the pread backend when `fixedFileIndex` is set).
    public var fd: Int32
    public var offset: UInt64
    /// The buffer for `read` and `write`.
    public var buffer: UnsafeMutableRawPointer?
    /// Bytes to transfer for `read` and `write`.
    public var length: Int
    /// The iovec array for vectored requests; the queue advances it in place after a short
    /// transfer.
    public var iovecs: UnsafeMutablePointer<iovec>?
    public var iovecCount: Int32
    /// An index into the ring's registered buffers (io_uring only), or -1.
    public var fixedBufferIndex: Int32 = -1
    /// An index into the ring's registered files (io_uring only), or -1.
    public var fixedFileIndex: Int32 = -1
    /// When true, the next request in the batch runs only after this one succeeded.
    public var linkNext = false
    /// A read that ends at its first short transfer instead of continuing from there: an
    /// O_DIRECT read, whose continuation would start at an unaligned offset (refused with
    /// EINVAL) when the file ends inside the range. Its reader continues aligned reads itself.
    public var endsAtShortRead = false
    /// Bytes transferred (for reads, fewer than asked only at end of file, or after a short
    /// transfer with `endsAtShortRead`).
    public internal(set) var transferred = 0
    /// 0 on success, else the errno that ended the request.
    public internal(set) var errorNumber: Int32 = 0
    var done = false

    /// A read of `buffer.count` bytes at `offset`.
    public static func read(fd: Int32, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> IORequest {
        IORequest(
            operation: .read, fd: fd, offset: offset, buffer: buffer.baseAddress, length: buffer.count,
            iovecs: nil, iovecCount: 0)
    }

    /// A write of `bytes` at `offset`.
    public static func write(fd: Int32, at offset: UInt64, from bytes: UnsafeRawBufferPointer) -> IORequest {
        IORequest(
            operation: .write, fd: fd, offset: offset, buffer: UnsafeMutableRawPointer(mutating: bytes.baseAddress),
            length: bytes.count, iovecs: nil, iovecCount: 0)
    }

    /// A vectored read or write over `count` iovecs at `offset`.
    public static func vectored(
        _ operation: Operation, fd: Int32, at offset: UInt64, iovecs: UnsafeMutablePointer<iovec>, count: Int32
    ) -> IORequest {
        precondition(operation == .readVectored || operation == .writeVectored)
        var total = 0
        for i in 0..<Int(count) { total += iovecs[i].iov_len }
        return IORequest(
            operation: operation, fd: fd, offset: offset, buffer: nil, length: total, iovecs: iovecs,
            iovecCount: count)
    }

    /// An fdatasync of `fd`.
    public static func fdatasync(fd: Int32) -> IORequest {
        IORequest(operation: .fdatasync, fd: fd, offset: 0, buffer: nil, length: 0, iovecs: nil, iovecCount: 0)
    }

    var isVectored: Bool { operation == .readVectored || operation == .writeVectored }

    /// Records `count` more bytes done; returns true when the request is complete.
    mutating func advance(by count: Int) -> Bool {
        transferred += count
        if isVectored, count > 0, transferred < length, let iovecs {
            // Drop the iovecs that are done and trim the first partial one.
            var skip = count
            var first = iovecs
            var left = iovecCount
            while left > 0 && skip >= first.pointee.iov_len {
                skip -= first.pointee.iov_len
                first += 1
                left -= 1
            }
            if left > 0 && skip > 0 {
                first.pointee.iov_base += skip
                first.pointee.iov_len -= skip
            }
            self.iovecs = first
            self.iovecCount = left
        }
        return transferred >= length
    }
}

/// A queue that performs batches of `IORequest`s.
public final class IOQueue {
    /// The backend this queue uses.
    public let backend: IOBackend
    let ring: IOURing?
    /// Bound on resubmission rounds for one batch (EAGAIN storms, endless short transfers).
    static let maxRounds = 100_000

    /// A pread/pwrite queue (always available, stateless, usable from any thread).
    public init() {
        self.backend = .posix
        self.ring = nil
    }

    /// An io_uring queue with a ring of `depth` entries.
    /// - Throws: `.unavailable` naming the errno when the kernel refuses a ring.
    public init(ringDepth depth: Int) throws(MoraineError) {
        self.ring = try IOURing(depth: depth)
        self.backend = .ioUring
    }

    /// The O_DIRECT flag for open(2): reads and writes then bypass the page cache and need
    /// buffers, offsets and lengths aligned to the device's logical block size (4096 is safe).
    public static var directIOOpenFlag: Int32 { CSystemShims_o_direct() }

    /// Ring setup flags that the kernel accepted, for start-up reports.
    public var setupDescription: String { ring?.setupDescription ?? "pread/pwrite" }

    /// Performs every request; results land in each request's `transferred` and `errorNumber`.
    public func submit(_ requests: UnsafeMutableBufferPointer<IORequest>) {
        for i in requests.indices {
            requests[i].transferred = 0
            requests[i].errorNumber = 0
            requests[i].done = false
        }
        if let ring, !ring.broken {
            ring.perform(requests)
        } else {
            Self.performPosix(requests)
        }
    }

    /// Reads up to `buffer.count` bytes at `offset`; returns the count, fewer only at end of file.
    /// - Returns: the bytes read, or the errno.
    public func read(fd: Int32, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, IOErrno> {
        var request = IORequest.read(fd: fd, at: offset, into: buffer)
        withUnsafeMutablePointer(to: &request) { submit(UnsafeMutableBufferPointer(start: $0, count: 1)) }
        return request.errorNumber == 0 ? .success(request.transferred) : .failure(IOErrno(request.errorNumber, call: "read"))
    }

    /// Writes all of `bytes` at `offset`, then (when `sync`) fdatasyncs, in one submission.
    /// - Returns: nil, or the first failure (its call is "write" or "fdatasync").
    public func write(fd: Int32, at offset: UInt64, from bytes: UnsafeRawBufferPointer, sync: Bool) -> IOErrno? {
        withUnsafeTemporaryAllocation(of: IORequest.self, capacity: 2) { requests in
            var count = 0
            if bytes.count > 0 {
                requests.initializeElement(at: 0, to: IORequest.write(fd: fd, at: offset, from: bytes))
                requests[0].linkNext = sync
                count = 1
            }
            if sync {
                requests.initializeElement(at: count, to: IORequest.fdatasync(fd: fd))
                count += 1
            }
            let batch = UnsafeMutableBufferPointer(rebasing: requests[0..<count])
            submit(batch)
            let failed = batch.first { $0.errorNumber != 0 }
            batch.deinitialize()
            guard let failed else { return nil }
            return IOErrno(failed.errorNumber, call: failed.operation == .fdatasync ? "fdatasync" : "write")
        }
    }

    /// Keeps up to `depth` requests in flight until `next` returns nil: the io_uring backend
    /// refills each slot as soon as its request completes (as fio's iodepth does); the pread
    /// backend performs them one after another. `completed` sees every request with its result.
    /// - Precondition: `depth` is at most the ring's depth; requests are not linked.
    public func stream(depth: Int, next: (Int) -> IORequest?, completed: (Int, IORequest) -> Void) {
        if let ring, !ring.broken {
            ring.stream(depth: depth, next: next, completed: completed)
            return
        }
        while var request = next(0) {
            withUnsafeMutablePointer(to: &request) { Self.performPosix(UnsafeMutableBufferPointer(start: $0, count: 1)) }
            completed(0, request)
        }
    }

    /// Registers files with the ring, so requests can name them by index (io_uring only; a no-op
    /// for pread).
    /// - Throws: `.io` naming the errno.
    public func registerFiles(_ fds: [Int32]) throws {
        try ring?.registerFiles(fds)
    }

    /// Registers buffers with the ring, so reads and writes into them skip page pinning
    /// (io_uring only; a no-op for pread).
    /// - Throws: `.io` naming the errno (RLIMIT_MEMLOCK on old kernels).
    public func registerBuffers(_ buffers: [UnsafeMutableRawBufferPointer]) throws {
        try ring?.registerBuffers(buffers)
    }

    static func performPosix(_ requests: UnsafeMutableBufferPointer<IORequest>) {
        for i in requests.indices {
            if i > 0 && requests[i - 1].linkNext && requests[i - 1].errorNumber != 0 {
                requests[i].errorNumber = ECANCELED
                requests[i].done = true
                continue
            }
            var rounds = 0
            while !requests[i].done {
                rounds += 1
                let result = posixCall(requests[i])
                if result < 0 {
                    let code = errno
                    if (code == EINTR || code == EAGAIN) && rounds < maxRounds { continue }
                    requests[i].errorNumber = code
                    requests[i].done = true
                } else {
                    complete(&requests[i], result: result)
                }
            }
        }
    }

    private static func posixCall(_ r: IORequest) -> Int {
        let offset = off_t(r.offset) + off_t(r.transferred)
        let position = r.buffer.map { $0 + r.transferred }
        switch r.operation {
        case .read: return pread(r.fd, position, r.length - r.transferred, offset)
        case .write: return pwrite(r.fd, position, r.length - r.transferred, offset)
        case .readVectored: return preadv(r.fd, r.iovecs, r.iovecCount, offset)
        case .writeVectored: return pwritev(r.fd, r.iovecs, r.iovecCount, offset)
        case .fdatasync: return Int(Glibc.fdatasync(r.fd))
        }
    }

    /// Applies a non-negative result; marks the request done when it is complete, at end of
    /// file, or stuck (a write that makes no progress is an I/O error, not a loop).
    static func complete(_ request: inout IORequest, result: Int) {
        switch request.operation {
        case .fdatasync:
            request.done = true
        case .read, .readVectored:
            if request.length == 0 || result == 0 || request.advance(by: result) || request.endsAtShortRead {
                request.done = true
            }
        case .write, .writeVectored:
            if request.length == 0 || request.advance(by: result) {
                request.done = true
            } else if result == 0 {
                request.errorNumber = EIO
                request.done = true
            }
        }
    }
}

/// An errno from the I/O queue.
public struct IOErrno: Error, Sendable, Equatable {
    public let code: Int32
    /// The system call that failed ("read", "write", "fdatasync").
    public let call: String
    public init(_ code: Int32, call: String) {
        self.code = code
        self.call = call
    }

    /// The error as a MoraineError naming the call and `path`.
    public func error(_ path: String) -> MoraineError { posixError(call, path, code) }
}
