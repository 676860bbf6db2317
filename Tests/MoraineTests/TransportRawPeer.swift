// A peer that speaks the wire protocol by hand, for the tests that must send what a real client
// never would: garbage, replays, wrong versions, half frames. Over TCP it is a plain blocking
// socket; over shared memory it is the Unix socket until attached, then the rings.
import MoraineSystem
@testable import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

final class RawPeer {
    let carrier: Carrier
    private var tcp: Int32 = -1
    private var unix: UnixSocket? = nil
    private var memory: SharedMemory? = nil
    private var producer: FrameProducer? = nil
    private var consumer: FrameConsumer? = nil
    private var limits = TransportLimits()
    /// The protocol version frames go in: 1 until the handshake settles on one.
    private(set) var version: UInt8 = 1

    init(_ service: TestService) throws {
        carrier = service.carrier.server
        switch carrier {
        case .sharedMemory:
            unix = try UnixSocket.connect(path: service.socketPath)
            unix!.setReceiveTimeout(nanos: 5_000_000_000)
        case .tcp, .tcpDirect:
            tcp = try Self.connectTCP(port: service.port)
        }
    }

    /// A raw TCP peer of any server listening on 127.0.0.1:`tcpPort`.
    init(tcpPort: Int) throws {
        carrier = .tcp
        tcp = try Self.connectTCP(port: tcpPort)
    }

    private static func connectTCP(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let code = errno
            Glibc.close(fd)
            throw TransportError(.unavailable, "connect: errno \(code)")
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    deinit { close() }

    var attached: Bool { producer != nil }

    /// Raw bytes onto the stream: the socket, or the request ring once attached.
    func sendBytes(_ bytes: [UInt8]) throws {
        if let ring = producer?.ring {
            // Written as if they were frames: the server must treat them as untrusted.
            let (tail, _) = ring.producerPositions()
            bytes.withUnsafeBytes { ring.write($0, at: tail) }
            ring.publish(tail: tail + UInt64(bytes.count))
            producer = FrameProducer(ring: ring)
            return
        }
        switch carrier {
        case .sharedMemory:
            try bytes.withUnsafeBytes { try unix!.send($0) }
        case .tcp, .tcpDirect:
            var offset = 0
            while offset < bytes.count {
                let sent = bytes.withUnsafeBytes { Glibc.send(tcp, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                guard sent > 0 else { throw TransportError(.unavailable, "send: errno \(errno)") }
                offset += sent
            }
        }
    }

    func frameBytes(version: UInt8? = nil, opcode: UInt8, flags: FrameFlags = [], requestID: UInt64, payload: [UInt8]) -> [UInt8] {
        let version = version ?? self.version
        return payload.withUnsafeBytes {
            FrameHeader.encode(version: version, opcode: opcode, flags: flags, requestID: requestID, payload: $0)
        }
    }

    func sendFrame(version: UInt8? = nil, opcode: UInt8, flags: FrameFlags = [], requestID: UInt64 = 0, payload: [UInt8]) throws {
        let version = version ?? self.version
        if producer != nil {
            try payload.withUnsafeBytes { raw in
                try producer!.write(
                    version: version, opcode: opcode, flags: flags, requestID: requestID, payload: raw, stillWanted: { false })
            }
            producer!.publish()
            return
        }
        try sendBytes(frameBytes(version: version, opcode: opcode, flags: flags, requestID: requestID, payload: payload))
    }

    /// The next frame from the server; throws when the server closed the connection.
    func receiveFrame(timeoutNanos: Int64 = 5_000_000_000) throws -> (FrameHeader, [UInt8]) {
        if consumer != nil {
            let deadline = monotonicNanos() + timeoutNanos
            while true {
                if let frame = try consumer!.next() {
                    consumer!.release()
                    return frame
                }
                if unix!.peerHasHungUp() { throw TransportError(.unavailable, "the server hung up") }
                if monotonicNanos() > deadline { throw TransportError(.timedOut, "no frame") }
                usleep(100)
            }
        }
        switch carrier {
        case .sharedMemory:
            let (header, payload, fd) = try unix!.receiveFrame(limit: 1 << 20)
            if fd >= 0 { Glibc.close(fd) }
            return (header, payload)
        case .tcp, .tcpDirect:
            let head = try receiveExactly(FrameHeader.byteCount)
            let header = try head.withUnsafeBytes { try FrameHeader.parse($0, limitBytes: 64 << 20) }
            let payload = try receiveExactly(Int(header.payloadByteCount))
            return (header, payload)
        }
    }

    private func receiveExactly(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = bytes.withUnsafeMutableBytes { recv(tcp, $0.baseAddress! + offset, count - offset, 0) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw TransportError(.unavailable, "the server closed the connection (errno \(errno))") }
            offset += got
        }
        return bytes
    }

    /// Whether the server has closed this connection (waits up to `seconds`).
    func serverClosed(seconds: Double = 5) -> Bool {
        let deadline = monotonicNanos() + Int64(seconds * 1e9)
        while monotonicNanos() < deadline {
            switch carrier {
            case .sharedMemory:
                if unix!.peerHasHungUp() { return true }
                usleep(2000)
            case .tcp, .tcpDirect:
                // Wait at most until the deadline (the socket's receive timeout is longer).
                var entry = pollfd(fd: tcp, events: Int16(POLLIN), revents: 0)
                let left = max(1, Int32((deadline - monotonicNanos()) / 1_000_000))
                guard poll(&entry, 1, min(left, 100)) > 0 else { continue }
                var byte: UInt8 = 0
                let got = recv(tcp, &byte, 1, Int32(MSG_DONTWAIT))
                if got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { return true }
            }
        }
        return false
    }

    /// Sends hello with `nonce`; returns the challenge payload.
    func hello(nonce: [UInt8], versions: (UInt8, UInt8) = (1, 1)) throws -> [UInt8] {
        try sendFrame(opcode: Opcode.hello, payload: [versions.0, versions.1] + nonce)
        let (header, payload) = try receiveFrame()
        if header.flags.contains(.error) { throw payload.withUnsafeBytes { TransportError(wirePayload: $0) } }
        return payload
    }

    /// Sends a proof; returns normally when welcomed, throws the server's refusal otherwise.
    func prove(_ proof: [UInt8]) throws {
        try sendFrame(opcode: Opcode.proof, payload: proof)
        let (header, payload) = try receiveFrame()
        if header.flags.contains(.error) { throw payload.withUnsafeBytes { TransportError(wirePayload: $0) } }
        guard header.opcode == Opcode.welcome else { throw TransportError(.malformed, "no welcome") }
    }

    /// The full handshake (and, over shared memory, the ring attachment).
    func authenticate(key: ClusterKey, maximumVersion: UInt8 = ProtocolVersion.maximum) throws {
        var handshake = ClientHandshake(key: key, maximumVersion: maximumVersion)
        _ = try sendFrame(opcode: Opcode.hello, payload: handshake.hello())
        let (_, challenge) = try receiveFrame()
        try prove(try handshake.answer(challenge: challenge))
        version = handshake.version
        if carrier == .sharedMemory { try attach() }
    }

    private func attach() throws {
        let capacity = SharedMemoryClient.defaultRingCapacity
        let memory = try SharedMemory.create(name: "raw-peer", byteCount: SharedConnectionLayout.totalBytes(capacity))
        memory.base.storeBytes(of: SharedConnectionLayout.magic, as: UInt64.self)
        let rings = SharedConnectionLayout.rings(in: memory, capacity: capacity)
        rings.requests.format()
        rings.responses.format()
        try unix!.sendFrame(opcode: attachOpcode, payload: SharedConnectionLayout.attachPayload(capacity: capacity), passing: memory.descriptor)
        let (header, _, _) = try unix!.receiveFrame(limit: 256)
        guard header.opcode == attachOpcode, !header.flags.contains(.error) else { throw TransportError(.malformed, "attach refused") }
        self.memory = memory
        producer = FrameProducer(ring: rings.requests)
        consumer = FrameConsumer(ring: rings.responses, limits: limits)
    }

    /// Sends an attach message with any descriptor (shared memory only); returns the answer.
    func attach(passing fd: Int32, capacity: Int) throws -> (FrameHeader, [UInt8]) {
        try unix!.sendFrame(opcode: attachOpcode, payload: SharedConnectionLayout.attachPayload(capacity: capacity), passing: fd)
        let (header, payload, received) = try unix!.receiveFrame(limit: 256)
        if received >= 0 { Glibc.close(received) }
        return (header, payload)
    }

    /// The handshake without the ring attachment.
    func handshakeOnly(key: ClusterKey) throws {
        var handshake = ClientHandshake(key: key)
        _ = try sendFrame(opcode: Opcode.hello, payload: handshake.hello())
        let (_, challenge) = try receiveFrame()
        try prove(try handshake.answer(challenge: challenge))
    }

    func close() {
        if tcp >= 0 { Glibc.close(tcp) }
        tcp = -1
        unix?.close()
    }
}
