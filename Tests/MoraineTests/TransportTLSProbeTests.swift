// The TLS path under what a probe from outside tries: a peer that stops in the middle of the TLS
// handshake, bytes that are not TLS, a client that asks to renegotiate, a client whose
// certificate the server does not trust; and a peer whose host vanishes without FIN or RST
// (the socket options that notice it, here; the behaviour itself in an opt-in test that needs a
// private network namespace). After each, a good client is still served.
import Foundation
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Transport TLS and vanished peers")
struct TransportTLSProbeTests {
    init() { _ = CapturedLog.installed }

    static func tlsServer(limits: TransportLimits = TransportLimits()) throws -> TCPServer {
        try TCPServer(
            port: 0, key: TestService.defaultKey(), limits: limits,
            tls: TransportTLS(
                certificateChainPath: TransportTCPOptionTests.certificate, privateKeyPath: TransportTCPOptionTests.privateKey),
            router: TransportTCPOptionTests.echoRouter())
    }

    static func goodClient(_ server: TCPServer) throws -> TCPClient {
        var once = ReconnectPolicy()
        once.attempts = 1
        return try TCPClient(
            host: "localhost", port: server.port, key: TestService.defaultKey(),
            tls: TransportTLS(trustRootsPath: TransportTCPOptionTests.certificate), reconnect: once)
    }

    /// Runs `openssl s_client` against the server with `input` on its standard input; returns
    /// what it printed (both streams) and its exit status.
    static func sClient(port: Int, arguments: [String], input: String, seconds: Double = 10) throws -> (String, Int32) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "s_client", "-connect", "127.0.0.1:\(port)"] + arguments
        let stdin = Pipe()
        let output = Pipe()
        process.standardInput = stdin
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let deadline = monotonicNanos() + Int64(seconds * 1e9)
        sleepNanos(300_000_000)
        stdin.fileHandleForWriting.write(Data(input.utf8))
        sleepNanos(700_000_000)
        try? stdin.fileHandleForWriting.close()
        while process.isRunning && monotonicNanos() < deadline { sleepNanos(20_000_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (text, process.terminationStatus)
    }

    @Test("TLS: a client asking to renegotiate is refused and closed; others are served")
    func renegotiation() throws {
        let server = try Self.tlsServer()
        defer { server.close() }
        let client = try Self.goodClient(server)
        defer { client.close() }
        // TLS 1.2 is the last version with renegotiation; `R` asks for it once the session is up.
        let (text, _) = try Self.sClient(port: server.port, arguments: ["-tls1_2"], input: "R\n")
        #expect(text.contains("RENEGOTIATING"), "s_client did not get as far as renegotiating: \(text.suffix(800))")
        #expect(CapturedLog.contains("refused TCP connection", "127.0.0.1:\(server.port)", "NO_RENEGOTIATION"))
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
        #expect(eventually { server.connectionCount == 1 })
    }

    @Test("TLS: a peer that stops in the middle of its ClientHello is dropped at the handshake deadline")
    func stalledClientHello() throws {
        var limits = TransportLimits()
        limits.handshakeNanos = 500_000_000
        let server = try Self.tlsServer(limits: limits)
        defer { server.close() }
        let raw = try RawPeer(tcpPort: server.port)
        // A TLS record header announcing a 512-byte handshake record, then 16 of its bytes.
        try raw.sendBytes([0x16, 0x03, 0x01, 0x02, 0x00] + [UInt8](repeating: 0x01, count: 16))
        let started = monotonicNanos()
        #expect(raw.serverClosed(seconds: 5))
        let waited = monotonicNanos() - started
        #expect(waited < 3_000_000_000, "dropped after \(waited / 1_000_000) ms")
        #expect(CapturedLog.contains("refused TCP connection", "127.0.0.1:\(server.port)", "no handshake within the time allowed"))
        let client = try Self.goodClient(server)
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [2]) == .bytes([2]))
    }

    @Test("TLS: bytes that are not TLS, and a client certificate the server does not trust, are refused")
    func untrusted() throws {
        let directory = TempDir("moraine-tls-stranger")
        defer { directory.remove() }
        let server = try TCPServer(
            port: 0, key: TestService.defaultKey(),
            tls: TransportTLS(
                certificateChainPath: TransportTCPOptionTests.certificate, privateKeyPath: TransportTCPOptionTests.privateKey,
                clientTrustRootsPath: TransportTCPOptionTests.certificate),
            router: TransportTCPOptionTests.echoRouter())
        defer { server.close() }
        let raw = try RawPeer(tcpPort: server.port)
        try raw.sendBytes((0..<600).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        #expect(raw.serverClosed())
        // A certificate of its own, signed by nobody the server trusts, with the right cluster key.
        let (key, certificate) = (directory.file("stranger-key.pem"), directory.file("stranger-cert.pem"))
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        make.arguments = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
            "/CN=stranger", "-days", "1", "-keyout", key, "-out", certificate,
        ]
        make.standardOutput = FileHandle.nullDevice
        make.standardError = FileHandle.nullDevice
        try make.run()
        make.waitUntilExit()
        #expect(make.terminationStatus == 0)
        var once = ReconnectPolicy()
        once.attempts = 1
        #expect(throws: TransportError.self) {
            _ = try TCPClient(
                host: "localhost", port: server.port, key: TestService.defaultKey(),
                tls: TransportTLS(
                    certificateChainPath: certificate, privateKeyPath: key, trustRootsPath: TransportTCPOptionTests.certificate),
                reconnect: once)
        }
        #expect(CapturedLog.contains("refused TCP connection", "127.0.0.1:\(server.port)", "CERTIFICATE"))
        let client = try TCPClient(
            host: "localhost", port: server.port, key: TestService.defaultKey(),
            tls: TransportTLS(
                certificateChainPath: TransportTCPOptionTests.certificate, privateKeyPath: TransportTCPOptionTests.privateKey,
                trustRootsPath: TransportTCPOptionTests.certificate),
            reconnect: once)
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [3]) == .bytes([3]))
    }

    @Test(
        "every TCP connection, on both ends, notices a vanished peer: keepalive and a user timeout",
        arguments: [Carrier.tcp, .tcpDirect])
    func vanishedPeerOptions(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.keepaliveIdleSeconds = 7
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let client = try service.connect(limits: limits)
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
        // Both ends of the connection are sockets of this process: find them by their ports.
        let ends = Self.tcpSockets().filter { $0.localPort == service.port || $0.peerPort == service.port }
        let serverEnd = ends.filter { $0.localPort == service.port && $0.peerPort != 0 }
        let clientEnd = ends.filter { $0.peerPort == service.port }
        #expect(serverEnd.count == 1 && clientEnd.count == 1, "\(ends)")
        for end in serverEnd + clientEnd {
            #expect(Self.option(end.fd, SOL_SOCKET, SO_KEEPALIVE) == 1, "\(end)")
            #expect(Self.option(end.fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE) == 7, "\(end)")
            #expect(Self.option(end.fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL) == 10, "\(end)")
            #expect(Self.option(end.fd, Int32(IPPROTO_TCP), TCP_KEEPCNT) == 3, "\(end)")
            #expect(Self.option(end.fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT) == 37_000, "\(end)")
        }
    }

    /// Runs only inside a private network namespace (scripts/probe-vanished-peer.sh), because
    /// it takes the loopback interface down: every packet from then on is lost, as when a
    /// peer's host vanishes without a FIN or an RST.
    static let inPrivateNetwork = ProcessInfo.processInfo.environment["MORAINE_NETNS_PROBE"] == "1"

    @Test(
        "a peer whose host vanishes is dropped by keepalive when idle and by the user timeout with replies in flight",
        .enabled(if: inPrivateNetwork, "needs a private network namespace: scripts/probe-vanished-peer.sh"))
    func vanishedPeer() throws {
        var limits = TransportLimits()
        limits.keepaliveIdleSeconds = 1  // keepalive gives up after 1 + 3 x 10 s; so does the user timeout
        let service = try TestService(.tcp, limits: limits)
        defer { service.stop() }
        let idle = try service.connect(limits: limits)
        defer { idle.close() }
        #expect(try idle.call(TestOp.echo, [1]) == .bytes([1]))
        let busy = try RawPeer(service)
        try busy.authenticate(key: service.key)
        for id in 1...300 { try busy.sendFrame(opcode: TestOp.big, requestID: UInt64(id), payload: []) }
        #expect(eventually { service.gate.bigRuns >= 1 })
        sleepNanos(500_000_000)  // replies fill both socket buffers; the server holds the rest
        let down = Process()
        down.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        down.arguments = ["ip", "link", "set", "lo", "down"]
        try down.run()
        down.waitUntilExit()
        #expect(down.terminationStatus == 0)
        let started = monotonicNanos()
        let gone = eventually(seconds: 60) { service.connectionCount == 0 }
        let seconds = Double(monotonicNanos() - started) / 1e9
        print("vanished peer: both connections dropped after \(seconds) s (gone: \(gone))")
        #expect(gone, "the server still held \(service.connectionCount) connections 60 s after their host vanished")
        #expect(seconds < 45)
    }

    // MARK: helpers

    struct SocketEnd: CustomStringConvertible {
        let fd: Int32
        let localPort: Int
        let peerPort: Int
        var description: String { "fd \(fd) \(localPort)->\(peerPort)" }
    }

    /// The IPv4 TCP sockets this process has open, with their ports (0: no peer).
    static func tcpSockets() -> [SocketEnd] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return names.compactMap { Int32($0) }.sorted().compactMap { fd in
            guard option(fd, SOL_SOCKET, SO_TYPE) == Int32(SOCK_STREAM.rawValue) else { return nil }
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let local = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard local == 0, address.sin_family == sa_family_t(AF_INET) else { return nil }
            let localPort = Int(UInt16(bigEndian: address.sin_port))
            var peer = sockaddr_in()
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let remote = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
            }
            return SocketEnd(fd: fd, localPort: localPort, peerPort: remote == 0 ? Int(UInt16(bigEndian: peer.sin_port)) : 0)
        }
    }

    static func option(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, level, name, &value, &length) == 0 ? value : nil
    }
}
