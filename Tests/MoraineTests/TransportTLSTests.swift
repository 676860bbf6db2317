// The TCP carrier's options that the conformance suite does not switch on: TLS (with a
// self-signed test certificate in Fixtures/, valid for a century) and reconnecting after the
// server went away and came back on the same port.
import Foundation
import MoraineSystem
@testable import MoraineTransport
import Testing

@Suite("Transport TCP options")
struct TransportTCPOptionTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static var certificate: String { fixtures.appendingPathComponent("tls-cert.pem").path }
    static var privateKey: String { fixtures.appendingPathComponent("tls-key.pem").path }

    static func echoRouter() -> RequestRouter {
        var router = RequestRouter()
        router.register(TestOp.echo) { .success($0.payload) }
        return router
    }

    @Test("TLS: requests travel encrypted; a plain client and an untrusting client are refused")
    func tls() throws {
        _ = CapturedLog.installed
        let key = TestService.defaultKey()
        let server = try TCPServer(
            port: 0, key: key, tls: TransportTLS(certificateChainPath: Self.certificate, privateKeyPath: Self.privateKey),
            router: Self.echoRouter())
        defer { server.close() }
        var once = ReconnectPolicy()
        once.attempts = 1
        let client = try TCPClient(
            host: "localhost", port: server.port, key: key,
            tls: TransportTLS(trustRootsPath: Self.certificate), reconnect: once)
        defer { client.close() }
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 3) }
        #expect(try client.call(TestOp.echo, payload) == .bytes(payload))
        // Plain TCP to a TLS port: the server sees no TLS handshake and drops it.
        #expect(throws: TransportError.self) { _ = try TCPClient(port: server.port, key: key, reconnect: once) }
        // A client that trusts only the system's roots does not accept a self-signed server.
        #expect(throws: TransportError.self) {
            _ = try TCPClient(host: "localhost", port: server.port, key: key, tls: TransportTLS(), reconnect: once)
        }
        #expect(try client.call(TestOp.echo, [7]) == .bytes([7]), "the good client lost its connection")
    }

    @Test("mutual TLS: a client without a certificate the server trusts is refused")
    func clientCertificates() throws {
        _ = CapturedLog.installed
        let key = TestService.defaultKey()
        let server = try TCPServer(
            port: 0, key: key,
            tls: TransportTLS(
                certificateChainPath: Self.certificate, privateKeyPath: Self.privateKey, clientTrustRootsPath: Self.certificate),
            router: Self.echoRouter())
        defer { server.close() }
        var once = ReconnectPolicy()
        once.attempts = 1
        let client = try TCPClient(
            host: "localhost", port: server.port, key: key,
            tls: TransportTLS(certificateChainPath: Self.certificate, privateKeyPath: Self.privateKey, trustRootsPath: Self.certificate),
            reconnect: once)
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [4, 2]) == .bytes([4, 2]))
        // Right cluster key and a trusted server, but no client certificate.
        #expect(throws: TransportError.self) {
            _ = try TCPClient(
                host: "localhost", port: server.port, key: key, tls: TransportTLS(trustRootsPath: Self.certificate), reconnect: once)
        }
        #expect(try client.call(TestOp.echo, [5]) == .bytes([5]), "the good client lost its connection")
    }

    @Test("a TCP client reconnects with backoff when the server comes back on the same port")
    func reconnect() throws {
        let key = TestService.defaultKey()
        var server = try TCPServer(port: 0, key: key, router: Self.echoRouter())
        let port = server.port
        let client = try TCPClient(port: port, key: key)
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
        server.close()
        server = try TCPServer(port: port, key: key, router: Self.echoRouter())
        defer { server.close() }
        // The first call may go into the dead connection and fail; the next one reconnects.
        var answer: Payload? = nil
        for _ in 0..<3 where answer == nil {
            answer = try? client.call(TestOp.echo, [2], timeoutNanos: 5_000_000_000)
        }
        #expect(answer == .bytes([2]))
        #expect(client.connectCount == 2)
    }
}
