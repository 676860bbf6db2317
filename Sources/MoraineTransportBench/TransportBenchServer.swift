// The server process of `moraine transport-bench`: an echo service on a shared-memory server and
// a TCP server (each with the emulated link it is told), and the two floors — a thread that
// answers a spinning flag ping-pong in a shared file, and a thread that echoes on a blocking
// socket. It writes where it listens to `ready` in the run directory and lives until its parent
// goes away.
//
// The floor-shm thread spins only while the client marks the floor active, so it does not take
// a core from the other rows.
import Atomics
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the server side of the bench in this process.
public enum TransportBenchServer {
    /// Serves until the parent process exits. `directory` holds `cluster.key`; `ready` is
    /// written there once every server listens.
    public static func run(directory: String, delayNanos: Int64) throws {
        let parent = getppid()
        let key = try ClusterKey.load(path: directory + "/cluster.key")
        var router = RequestRouter()
        router.register(echoOpcode) { .success($0.payload) }
        let link = delayNanos > 0 ? LinkEmulation(delay: .fixed(nanos: delayNanos)) : .none
        let limits = TransportBenchClient.limits
        let socketPath = directory + "/node.sock"
        let shm = try SharedMemoryServer(socketPath: socketPath, key: key, limits: limits, link: link, router: router)
        let tcp = try TCPServer(port: 0, key: key, limits: limits, link: link, router: router)
        let floorPath = directory + "/floor.shm"
        let floor = try SharedFloor(path: floorPath, create: true)
        let floorListener = try FloorSocket.listen()
        startThread(name: "floor-shm") { floor.serve(while: { getppid() == parent }) }
        startThread(name: "floor-tcp") { FloorSocket.serve(floorListener.descriptor) }
        let ready = "\(socketPath)\n\(tcp.port)\n\(floorListener.port)\n\(floorPath)\n"
        let temporary = directory + "/ready.tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw MoraineError(.io, "cannot write \(temporary): errno \(errno)") }
        _ = Array(ready.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        rename(temporary, directory + "/ready")
        while getppid() == parent { usleep(100_000) }
        shm.close()
        tcp.close()
    }
}

extension TransportBenchEndpoints {
    /// Waits up to `seconds` for the server process's `ready` file and reads it.
    public static func read(directory: String, seconds: Double = 60) throws -> TransportBenchEndpoints {
        let deadline = monotonicNanos() + Int64(seconds * 1e9)
        while monotonicNanos() < deadline {
            if let file = fopen(directory + "/ready", "r") {
                var lines: [String] = []
                var buffer = [CChar](repeating: 0, count: 4096)
                while fgets(&buffer, Int32(buffer.count), file) != nil {
                    let line = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                    lines.append(String(line.dropLast(line.hasSuffix("\n") ? 1 : 0)))
                }
                fclose(file)
                guard lines.count == 4, let tcp = Int(lines[1]), let floor = Int(lines[2]) else {
                    throw MoraineError(.corruption, "\(directory)/ready is not what the server writes")
                }
                return TransportBenchEndpoints(socketPath: lines[0], tcpPort: tcp, floorTCPPort: floor, floorFilePath: lines[3])
            }
            usleep(20_000)
        }
        throw MoraineError(.unavailable, "the bench server did not start within \(Int(seconds)) s")
    }
}

/// The shared-memory floor: a file both processes map, with a request and a reply sequence word
/// on separate cache lines and a buffer each way.
final class SharedFloor: @unchecked Sendable {
    static let bufferBytes = 64 << 10
    static let fileBytes = 4096 + 2 * bufferBytes
    private let base: UnsafeMutableRawPointer
    private var sequence: UInt64 = 0

    init(path: String, create: Bool = false) throws(TransportError) {
        let fd = open(path, create ? O_RDWR | O_CREAT | O_TRUNC : O_RDWR, 0o600)
        guard fd >= 0 else { throw TransportError(.unavailable, "cannot open \(path): errno \(errno)") }
        defer { close(fd) }
        if create && ftruncate(fd, off_t(Self.fileBytes)) != 0 {
            throw TransportError(.io, "cannot size \(path): errno \(errno)")
        }
        guard let mapping = mmap(nil, Self.fileBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED else {
            throw TransportError(.io, "cannot map \(path): errno \(errno)")
        }
        base = mapping
    }

    deinit { munmap(base, Self.fileBytes) }

    private func word(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
    private var active: UnsafeAtomic<UInt64> { word(0) }
    private var request: UnsafeAtomic<UInt64> { word(64) }
    private var reply: UnsafeAtomic<UInt64> { word(128) }
    private var size: UnsafeAtomic<UInt64> { word(192) }
    private var requestBuffer: UnsafeMutableRawPointer { base + 4096 }
    private var replyBuffer: UnsafeMutableRawPointer { base + 4096 + Self.bufferBytes }

    /// Asks the server's floor thread to spin (true) or to rest (false).
    func setActive(_ value: Bool) { active.store(value ? 1 : 0, ordering: .sequentiallyConsistent) }

    /// One ping-pong: the payload in, the echo out.
    func roundTrip(_ payload: UnsafeRawBufferPointer, into target: UnsafeMutableRawBufferPointer) {
        if let source = payload.baseAddress { requestBuffer.copyMemory(from: source, byteCount: payload.count) }
        size.store(UInt64(payload.count), ordering: .relaxed)
        sequence &+= 1
        request.store(sequence, ordering: .releasing)
        while reply.load(ordering: .acquiring) != sequence {}
        if let target = target.baseAddress { target.copyMemory(from: replyBuffer, byteCount: payload.count) }
    }

    /// The server's loop: echo each request while active, rest while not.
    func serve(while alive: () -> Bool) {
        var seen = request.load(ordering: .acquiring)
        while alive() {
            guard active.load(ordering: .relaxed) != 0 else {
                usleep(1000)
                continue
            }
            for _ in 0..<1_000_000 {
                let current = request.load(ordering: .acquiring)
                if current != seen {
                    seen = current
                    let count = min(Int(size.load(ordering: .relaxed)), Self.bufferBytes)
                    replyBuffer.copyMemory(from: requestBuffer, byteCount: count)
                    reply.store(current, ordering: .releasing)
                }
            }
        }
    }
}

/// The TCP floor: length-prefixed echo on a blocking socket.
enum FloorSocket {
    struct Listener {
        let descriptor: Int32
        let port: Int
    }

    static func listen() throws(TransportError) -> Listener {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && Glibc.listen(fd, 16) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        guard bound else { throw TransportError(.unavailable, "floor socket: errno \(errno)") }
        return Listener(descriptor: fd, port: Int(UInt16(bigEndian: address.sin_port)))
    }

    static func connect(port: Int) throws(TransportError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw TransportError(.unavailable, "floor connect: errno \(errno)")
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    /// Accepts connections one after another and echoes each until it closes.
    static func serve(_ listener: Int32) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: SharedFloor.bufferBytes, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno == EINTR { continue }
                return
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            while receive(fd, buffer, 4) {
                let count = min(Int(UInt32(littleEndian: buffer.loadUnaligned(as: UInt32.self))), SharedFloor.bufferBytes)
                guard receive(fd, buffer, count), transmit(fd, buffer, count) else { break }
            }
            close(fd)
        }
    }

    private static func receive(_ fd: Int32, _ target: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let got = recv(fd, target + offset, count - offset, 0)
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { return false }
            offset += got
        }
        return true
    }

    private static func transmit(_ fd: Int32, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let sent = send(fd, source + offset, count - offset, Int32(MSG_NOSIGNAL))
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { return false }
            offset += sent
        }
        return true
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(TransportError) {
        guard bytes.withUnsafeBytes({ transmit(fd, $0.baseAddress!, $0.count) }) else {
            throw TransportError(.unavailable, "floor send: errno \(errno)")
        }
    }

    static func receiveAll(_ fd: Int32, into bytes: inout [UInt8]) throws(TransportError) {
        guard bytes.isEmpty || bytes.withUnsafeMutableBytes({ receive(fd, $0.baseAddress!, $0.count) }) else {
            throw TransportError(.unavailable, "floor receive: errno \(errno)")
        }
    }
}
