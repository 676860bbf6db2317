// Unix-domain stream sockets for the shared-memory carrier: listen, accept, connect, byte
// transfer with an optional descriptor (SCM_RIGHTS), peer credentials (SO_PEERCRED) and a
// hang-up check. EINTR is retried here; every other failure throws with the path and errno.
//
// Thread-safety: one thread reads and one thread writes at a time; `close` may come from any
// thread (it shuts the socket down first, so a blocked reader wakes).
import CSystemShims
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A connected or listening Unix-domain stream socket.
public final class UnixSocket: @unchecked Sendable {
    /// The descriptor (valid until `close`).
    public let descriptor: Int32
    /// The path it listens on or connected to.
    public let path: String
    private let closed = Atomic<Bool>(false)
    private let ownsPath: Bool

    private init(descriptor: Int32, path: String, ownsPath: Bool) {
        self.descriptor = descriptor
        self.path = path
        self.ownsPath = ownsPath
    }

    deinit { close() }

    /// Listens on `path` (a stale socket file there is replaced), readable by the owner only.
    /// - Throws: `.invalid` for a path too long for a socket address, `.io` otherwise.
    public static func listen(path: String, backlog: Int32 = 64) throws(MoraineError) -> UnixSocket {
        let fd = try makeSocket(path)
        var address = try socketAddress(path)
        unlink(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let code = errno
            Glibc.close(fd)
            throw posixError("bind", path, code)
        }
        chmod(path, 0o600)
        if Glibc.listen(fd, backlog) != 0 {
            let code = errno
            Glibc.close(fd)
            throw posixError("listen", path, code)
        }
        return UnixSocket(descriptor: fd, path: path, ownsPath: true)
    }

    /// Connects to a listening socket at `path`.
    /// - Throws: `.unavailable` when nobody listens there, `.io` otherwise.
    public static func connect(path: String) throws(MoraineError) -> UnixSocket {
        let fd = try makeSocket(path)
        var address = try socketAddress(path)
        while true {
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc == 0 { break }
            let code = errno
            if code == EINTR { continue }
            Glibc.close(fd)
            if code == ENOENT || code == ECONNREFUSED {
                throw MoraineError(.unavailable, "nothing listens on \(path): \(String(cString: strerror(code)))")
            }
            throw posixError("connect", path, code)
        }
        return UnixSocket(descriptor: fd, path: path, ownsPath: false)
    }

    /// Waits for the next connection; nil once the socket was closed.
    public func accept() throws(MoraineError) -> UnixSocket? {
        while true {
            let fd = Glibc.accept(descriptor, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                return UnixSocket(descriptor: fd, path: path, ownsPath: false)
            }
            let code = errno
            if closed.load(ordering: .acquiring) { return nil }
            if code == EINTR || code == ECONNABORTED { continue }
            if code == EMFILE || code == ENFILE {
                // Out of descriptors: refuse this one later rather than spin.
                usleep(10_000)
                continue
            }
            throw posixError("accept", path, code)
        }
    }

    /// Sends all of `bytes`; `passing`, when given, travels with the first byte.
    public func send(_ bytes: UnsafeRawBufferPointer, passing fd: Int32 = -1) throws(MoraineError) {
        var offset = 0
        var pass = fd
        while offset < bytes.count || (bytes.count == 0 && pass >= 0) {
            let sent = CSystemShims_send_with_fd(descriptor, bytes.baseAddress.map { $0 + offset }, bytes.count - offset, pass)
            if sent < 0 { throw posixError("send", path, Int32(-sent)) }
            pass = -1
            offset += sent
            if bytes.count == 0 { break }
        }
    }

    /// Receives exactly `target.count` bytes; returns a descriptor that came with them (or -1).
    /// - Throws: `.unavailable` when the peer closed before all bytes came.
    public func receive(exactly target: UnsafeMutableRawBufferPointer) throws(MoraineError) -> Int32 {
        var offset = 0
        var received: Int32 = -1
        while offset < target.count {
            var fd: Int32 = -1
            let count = CSystemShims_receive_with_fd(descriptor, target.baseAddress! + offset, target.count - offset, &fd)
            if fd >= 0 {
                if received >= 0 { Glibc.close(received) }
                received = fd
            }
            if count < 0 {
                if received >= 0 { Glibc.close(received) }
                if -count == EAGAIN || -count == EWOULDBLOCK {
                    throw MoraineError(.unavailable, "\(path): the peer sent nothing in time")
                }
                throw posixError("recv", path, Int32(-count))
            }
            if count == 0 {
                if received >= 0 { Glibc.close(received) }
                throw MoraineError(.unavailable, "\(path): the peer closed the connection")
            }
            offset += count
        }
        return received
    }

    /// Bounds how long a receive waits (0: forever).
    public func setReceiveTimeout(nanos: Int64) {
        var value = timeval(tv_sec: Int(nanos / 1_000_000_000), tv_usec: Int((nanos % 1_000_000_000) / 1000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The connected peer's process, user and group ids.
    public func peerCredentials() throws(MoraineError) -> (pid: Int32, uid: UInt32, gid: UInt32) {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        let rc = CSystemShims_peer_credentials(descriptor, &pid, &uid, &gid)
        if rc != 0 { throw posixError("getsockopt(SO_PEERCRED)", path, rc) }
        return (pid, uid, gid)
    }

    /// Whether the peer has closed or the connection broke (does not block).
    public func peerHasHungUp() -> Bool { socketPeerHasHungUp(descriptor) }

    /// Ends the connection both ways without closing the descriptor: safe from another thread
    /// while the owner may still use it (a closed descriptor's number could be reused by then).
    /// The owner's blocked calls return, and it closes.
    public func shutdown() {
        guard !closed.load(ordering: .acquiring) else { return }
        Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
    }

    /// Shuts the socket down and closes it; a listener also removes its path. Idempotent.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
        Glibc.close(descriptor)
        if ownsPath { unlink(path) }
    }

    private static func makeSocket(_ path: String) throws(MoraineError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw posixError("socket", path, errno) }
        return fd
    }

    private static func socketAddress(_ path: String) throws(MoraineError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let room = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < room else {
            throw MoraineError(.invalid, "socket path of \(bytes.count) bytes is longer than \(room - 1): \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }
}

/// A shared mapping of a memfd: created by one process, passed to another as a descriptor.
public final class SharedMemory: @unchecked Sendable {
    /// Start of the mapping (page aligned).
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    /// The memfd; -1 after `closeDescriptor`.
    public private(set) var descriptor: Int32

    /// Creates a zero-filled anonymous shared file of `byteCount` bytes, seals its size, and
    /// maps it. The seal is what lets a receiver map it safely: a file the sender could shrink
    /// afterwards would turn the receiver's next access into SIGBUS.
    public static func create(name: String, byteCount: Int) throws(MoraineError) -> SharedMemory {
        let fd = CSystemShims_memfd_create(name)
        if fd < 0 { throw posixError("memfd_create", name, -fd) }
        if ftruncate(fd, off_t(byteCount)) != 0 {
            let code = errno
            Glibc.close(fd)
            throw posixError("ftruncate", name, code)
        }
        let sealed = CSystemShims_memfd_seal_size(fd)
        if sealed != 0 {
            Glibc.close(fd)
            throw posixError("seal", name, sealed)
        }
        return try SharedMemory(mapping: fd, byteCount: byteCount, name: name)
    }

    /// Maps a descriptor another process passed; it must be a memfd whose size is sealed and
    /// exactly `byteCount`.
    /// - Throws: `.invalid` for any other file (a peer cannot make us map past its end, or shrink
    ///   the file under our mapping).
    public static func map(descriptor fd: Int32, byteCount: Int, name: String) throws(MoraineError) -> SharedMemory {
        guard CSystemShims_memfd_size_is_sealed(fd) == 1 else {
            Glibc.close(fd)
            throw MoraineError(.invalid, "\(name): the descriptor passed is not a memfd with a sealed size")
        }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw posixError("fstat", name, code)
        }
        guard Int(status.st_size) == byteCount else {
            Glibc.close(fd)
            throw MoraineError(.invalid, "\(name): shared memory of \(status.st_size) bytes, expected \(byteCount)")
        }
        return try SharedMemory(mapping: fd, byteCount: byteCount, name: name)
    }

    private init(mapping fd: Int32, byteCount: Int, name: String) throws(MoraineError) {
        let address = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else {
            let code = errno
            Glibc.close(fd)
            throw posixError("mmap", name, code)
        }
        base = address
        self.byteCount = byteCount
        descriptor = fd
    }

    /// Closes the descriptor; the mapping stays until deinit.
    public func closeDescriptor() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }

    deinit {
        munmap(base, byteCount)
        closeDescriptor()
    }
}

/// Whether the peer of the connected socket `descriptor` has ended or reset the connection: one
/// poll(2) for a hang-up or an error, no waiting; bytes waiting to be read do not count.
public func socketPeerHasHungUp(_ descriptor: Int32) -> Bool {
    var entry = pollfd(fd: descriptor, events: Int16(CSystemShims_pollrdhup()), revents: 0)
    let rc = poll(&entry, 1, 0)
    if rc < 0 { return errno != EINTR }
    return rc > 0 && entry.revents & Int16(POLLHUP | POLLERR | CSystemShims_pollrdhup()) != 0
}
