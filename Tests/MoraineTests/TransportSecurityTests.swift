// Authentication on both carriers: a wrong key, a key file others can read, a replayed
// handshake, garbage before the handshake, requests before authenticating, a silent peer. Each
// bad connection is refused with a log line and the server keeps serving a good client.
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Every line the system log writes during the tests (the sink is installed once).
enum CapturedLog {
    static let lines = LogLines()
    static let installed: Bool = {
        SystemLog.setSink { line in lines.append(line) }
        return true
    }()

    /// Whether a line containing every one of `parts` was logged within `seconds`.
    static func contains(_ parts: String..., seconds: Double = 5) -> Bool {
        _ = installed
        return eventually(seconds: seconds) { lines.snapshot().contains { line in parts.allSatisfy { line.contains($0) } } }
    }
}

final class LogLines: @unchecked Sendable {
    private let lock = ConditionLock()
    private var lines: [String] = []
    func append(_ line: String) {
        lock.withLock { lines.append(line) }
        let text = Array((line + "\n").utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
    func snapshot() -> [String] { lock.withLock { lines } }
}

extension TestService {
    /// What the server's log lines name for connections to this service.
    var logTag: String { carrier == .sharedMemory ? socketPath : "127.0.0.1:\(port)" }
}

@Suite("Transport security")
struct TransportSecurityTests {
    init() { _ = CapturedLog.installed }

    /// A good client still gets answers.
    func expectServing(_ service: TestService) throws {
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [42]) == .bytes([42]))
    }

    @Test("a client with the wrong key is refused, and refuses the server", arguments: Carrier.allCases)
    func wrongKey(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let other = try ClusterKey(bytes: Array("another key, also 32 bytes long.".utf8))
        #expect {
            _ = try service.connect(key: other)
        } throws: { error in
            (error as? TransportError)?.code == .authenticationFailed
        }
        // A raw client that cannot compute the proof sends a wrong one: the server refuses it.
        let raw = try RawPeer(service)
        _ = try raw.hello(nonce: Handshake.freshNonce())
        #expect {
            try raw.prove([UInt8](repeating: 0xAB, count: 32))
        } throws: { error in
            (error as? TransportError)?.code == .authenticationFailed
        }
        #expect(raw.serverClosed())
        #expect(CapturedLog.contains("refused", service.logTag, "could not prove"))
        try expectServing(service)
    }

    @Test("a recorded handshake cannot be replayed", arguments: Carrier.servers)
    func replay(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let nonce = [UInt8](repeating: 7, count: 32)
        // The genuine exchange, recorded.
        let genuine = try RawPeer(service)
        let challenge = try genuine.hello(nonce: nonce)
        let proof = Handshake.mac(service.key, label: "moraine client", Array(challenge[1..<33]), nonce)
        try genuine.prove(proof)
        genuine.close()
        // The attacker sends the same bytes: the server's nonce differs, so the proof fails.
        let attacker = try RawPeer(service)
        let second = try attacker.hello(nonce: nonce)
        #expect(Array(second[1..<33]) != Array(challenge[1..<33]), "the server reused its nonce")
        #expect {
            try attacker.prove(proof)
        } throws: { error in
            (error as? TransportError)?.code == .authenticationFailed
        }
        #expect(attacker.serverClosed())
        try expectServing(service)
    }

    @Test("garbage before the handshake closes that connection only", arguments: Carrier.servers)
    func garbage(carrier: Carrier) throws {
        let seed = testSeed("\(carrier)")
        var random = SeededRandom(seed: seed)
        let service = try TestService(carrier)
        defer { service.stop() }
        let bystander = try service.connect()
        defer { bystander.close() }
        let raw = try RawPeer(service)
        try raw.sendBytes((0..<200).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        #expect(raw.serverClosed(), "seed \(seed)")
        #expect(CapturedLog.contains("refused", service.logTag))
        #expect(try bystander.call(TestOp.echo, [1]) == .bytes([1]))
        try expectServing(service)
    }

    @Test("a request before authenticating is refused", arguments: Carrier.servers)
    func requestBeforeHandshake(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.sendFrame(opcode: TestOp.echo, requestID: 1, payload: [1, 2, 3])
        #expect(raw.serverClosed())
        #expect(CapturedLog.contains("refused", service.logTag, "expected a hello"))
        try expectServing(service)
    }

    @Test("a peer that never finishes the handshake is dropped after the time allowed", arguments: Carrier.servers)
    func silentPeer(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.handshakeNanos = 300_000_000
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let raw = try RawPeer(service)
        #expect(raw.serverClosed(seconds: 5))
        try expectServing(service)
    }

    @Test("no common protocol version gets an error answer, then a good hello works", arguments: Carrier.servers)
    func versionNegotiation(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        #expect {
            _ = try raw.hello(nonce: Handshake.freshNonce(), versions: (5, 9))
        } throws: { error in
            (error as? TransportError)?.code == .unsupportedVersion
        }
        try raw.authenticate(key: service.key)
        try raw.sendFrame(opcode: TestOp.echo, requestID: 3, payload: [3])
        let (header, payload) = try raw.receiveFrame()
        #expect(header.requestID == 3 && payload == [3])
    }

    @Test("key files: 0600 is accepted; readable by others, missing or short is refused")
    func keyFiles() throws {
        let directory = TempDir("moraine-keys")
        defer { directory.remove() }
        let path = directory.file("cluster.key")
        try ClusterKey.generate(path: path)
        var status = stat()
        stat(path, &status)
        #expect(status.st_mode & 0o777 == 0o600)
        _ = try ClusterKey.load(path: path)
        #expect(throws: TransportError.self) { try ClusterKey.generate(path: path) }  // never overwrites
        chmod(path, 0o644)
        #expect {
            _ = try ClusterKey.load(path: path)
        } throws: { error in
            (error as? TransportError)?.code == .invalid && "\(error)".contains("0600")
        }
        #expect {
            _ = try ClusterKey.load(path: directory.file("missing.key"))
        } throws: { error in
            (error as? TransportError)?.code == .notFound
        }
        let short = directory.file("short.key")
        let fd = open(short, O_WRONLY | O_CREAT, 0o600)
        _ = write(fd, "tiny\n", 5)
        close(fd)
        #expect(throws: TransportError.self) { try ClusterKey.load(path: short) }
    }

    @Test("shared memory: a process of another user is refused by its credentials")
    func peerCredentials() throws {
        let service = try TestService(.sharedMemory)
        defer { service.stop() }
        // Same test from the other side: a server that only admits another user refuses us.
        let directory = TempDir("moraine-uid")
        defer { directory.remove() }
        let strict = try SharedMemoryServer(
            socketPath: directory.file("strict.sock"), key: service.key, allowedUser: getuid() &+ 1, router: RequestRouter())
        defer { strict.close() }
        #expect(throws: TransportError.self) {
            _ = try SharedMemoryClient(socketPath: directory.file("strict.sock"), key: service.key)
        }
        #expect(CapturedLog.contains("refused", directory.file("strict.sock"), "is not the allowed user"))
    }
}
