// A non-blocking TCP socket driven by poll, for the direct client: connect with a deadline, write
// what fits, read what has arrived, and wait for either with poll. Errors
// come back as `unavailable` naming the call and errno; nothing here retries.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// One connected stream socket. Owned by one thread; `close` is idempotent.
final class TCPStream {
    private(set) var descriptor: Int32
    let peer: String

    private init(descriptor: Int32, peer: String) {
        self.descriptor = descriptor
        self.peer = peer
    }

    deinit { close() }

    /// Connects to `host:port` (a name or a numeric address; every address the name resolves to
    /// is tried in turn) within `timeoutNanos`, with TCP_NODELAY and the given keepalive.
    /// - Throws: `.unavailable` naming what failed.
    static func connect(host: String, port: Int, timeoutNanos: Int64, keepaliveIdleSeconds: Int) throws(TransportError) -> TCPStream {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let first = list else {
            throw TransportError(.unavailable, "cannot resolve \(host): \(String(cString: gai_strerror(resolved)))")
        }
        defer { freeaddrinfo(list) }
        let deadline = monotonicNanos() + timeoutNanos
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 {
                lastError = "socket: errno \(errno)"
                continue
            }
            let stream = TCPStream(descriptor: fd, peer: "\(host):\(port)")
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
                guard errno == EINPROGRESS else {
                    lastError = "connect: errno \(errno)"
                    continue
                }
                let ready = stream.wait(events: Int16(POLLOUT), deadline: deadline)
                var failure: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &length)
                guard ready, failure == 0 else {
                    lastError = ready ? "connect: errno \(failure)" : "connect: no answer within \(timeoutNanos / 1_000_000) ms"
                    continue
                }
            }
            stream.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            stream.setOption(SOL_SOCKET, SO_KEEPALIVE, 1)
            stream.setOption(Int32(IPPROTO_TCP), TCP_KEEPIDLE, Int32(clamping: keepaliveIdleSeconds))
            stream.setOption(Int32(IPPROTO_TCP), TCP_KEEPINTVL, Int32(TCPKeepalive.probeIntervalSeconds))
            stream.setOption(Int32(IPPROTO_TCP), TCP_KEEPCNT, Int32(TCPKeepalive.probeCount))
            stream.setOption(
                Int32(IPPROTO_TCP), TCP_USER_TIMEOUT,
                Int32(clamping: TCPKeepalive.userTimeoutMillis(idleSeconds: keepaliveIdleSeconds)))
            return stream
        }
        throw TransportError(.unavailable, "cannot connect to \(host):\(port): \(lastError)")
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32) {
        var value = value
        setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Writes what the socket takes now.
    /// - Returns: bytes written (0 when the socket buffer is full).
    /// - Throws: `.unavailable` when the connection is broken.
    func write(_ bytes: UnsafeRawBufferPointer) throws(TransportError) -> Int {
        guard descriptor >= 0 else { throw TransportError(.unavailable, "the connection to \(peer) is closed") }
        while true {
            let sent = send(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if sent >= 0 { return sent }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return 0
            default: throw TransportError(.unavailable, "the connection to \(peer) was lost (send: errno \(errno))")
            }
        }
    }

    /// Reads what has arrived into `target`.
    /// - Returns: bytes read (0 when nothing is there yet).
    /// - Throws: `.unavailable` when the peer closed or the connection broke.
    func read(into target: UnsafeMutableRawBufferPointer) throws(TransportError) -> Int {
        guard descriptor >= 0 else { throw TransportError(.unavailable, "the connection to \(peer) is closed") }
        while true {
            let got = recv(descriptor, target.baseAddress, target.count, 0)
            if got > 0 { return got }
            if got == 0 { throw TransportError(.unavailable, "the connection to \(peer) was closed by the server") }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return 0
            default: throw TransportError(.unavailable, "the connection to \(peer) was lost (recv: errno \(errno))")
            }
        }
    }

    /// Waits until one of `events` (POLLIN, POLLOUT) is possible or `deadline` passes (nil: no
    /// limit). A hang-up or an error counts as ready, so the next read or write reports it.
    /// - Returns: whether an event (or a hang-up) arrived before the deadline.
    func wait(events: Int16, deadline: Int64?) -> Bool {
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        while true {
            // poll counts in milliseconds: round up, so a deadline is never cut short.
            let timeout = deadline.map { Int32(clamping: (max(0, $0 - monotonicNanos()) + 999_999) / 1_000_000) } ?? -1
            let rc = poll(&entry, 1, timeout)
            if rc > 0 { return true }
            if rc == 0 { return false }
            if errno != EINTR { return true }
        }
    }

    /// Whether the peer has ended or reset the connection (its process exited or was killed).
    /// One poll(2), no waiting; bytes waiting to be read do not count.
    func peerHasHungUp() -> Bool {
        descriptor < 0 || socketPeerHasHungUp(descriptor)
    }

    /// Whether the socket has something to read (or a hang-up) right now.
    func readable() -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    func close() {
        guard descriptor >= 0 else { return }
        Glibc.close(descriptor)
        descriptor = -1
    }
}
