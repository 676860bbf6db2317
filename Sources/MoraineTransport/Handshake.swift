// Mutual authentication and version negotiation, before any other frame (docs/TRANSPORT.md).
//
//   client → hello:     min version u8, max version u8, client nonce (32 bytes)
//   server → challenge: chosen version u8, server nonce (32), HMAC(key, "moraine server" ‖ Nc ‖ Ns)
//   client → proof:     HMAC(key, "moraine client" ‖ Ns ‖ Nc)
//   server → welcome:   empty
//
// Both nonces are fresh random bytes per connection, so a recorded proof is worthless on any
// other connection (the server's nonce differs), and a recorded challenge is worthless to a
// client (its own nonce differs). The client checks the server's MAC before it proves itself, so
// it never talks to a server that lacks the key. MACs are compared in constant time.
//
// These are pure state machines over payload bytes; the carriers move the frames.
import Crypto

/// Protocol versions this build speaks.
public enum ProtocolVersion {
    public static let minimum: UInt8 = 1
    public static let maximum: UInt8 = 1
}

enum Handshake {
    static let nonceBytes = 32
    static let macBytes = 32
    static let helloBytes = 2 + nonceBytes
    static let challengeBytes = 1 + nonceBytes + macBytes
    /// The handshake's frames are small; anything bigger before authentication is refused.
    static let framePayloadLimit = 256

    static func freshNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func mac(_ key: ClusterKey, label: String, _ first: [UInt8], _ second: [UInt8]) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: key.symmetricKey)
        hmac.update(data: Array(label.utf8))
        hmac.update(data: first)
        hmac.update(data: second)
        return Array(hmac.finalize())
    }

    /// Compares without an early exit, so timing says nothing about where a MAC differs.
    static func constantTimeEqual(_ a: [UInt8], _ b: ArraySlice<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }
}

/// The client's side of the handshake.
struct ClientHandshake {
    let key: ClusterKey
    let nonce = Handshake.freshNonce()
    private(set) var serverNonce: [UInt8] = []
    private(set) var version: UInt8 = 0

    init(key: ClusterKey) { self.key = key }

    /// The hello payload.
    func hello() -> [UInt8] { [ProtocolVersion.minimum, ProtocolVersion.maximum] + nonce }

    /// Checks the server's challenge and returns the proof payload.
    /// - Throws: `.authenticationFailed` when the server does not hold the key, `.malformed`
    ///   for a challenge of the wrong shape, `.unsupportedVersion` for a version not offered.
    mutating func answer(challenge payload: [UInt8]) throws(TransportError) -> [UInt8] {
        guard payload.count == Handshake.challengeBytes else {
            throw TransportError(.malformed, "challenge of \(payload.count) bytes, expected \(Handshake.challengeBytes)")
        }
        let chosen = payload[0]
        guard (ProtocolVersion.minimum...ProtocolVersion.maximum).contains(chosen) else {
            throw TransportError(.unsupportedVersion, "server chose protocol version \(chosen), which was not offered")
        }
        let theirs = Array(payload[1..<(1 + Handshake.nonceBytes)])
        let expected = Handshake.mac(key, label: "moraine server", nonce, theirs)
        guard Handshake.constantTimeEqual(expected, payload[(1 + Handshake.nonceBytes)...]) else {
            throw TransportError(.authenticationFailed, "the server could not prove it holds the cluster key")
        }
        serverNonce = theirs
        version = chosen
        return Handshake.mac(key, label: "moraine client", theirs, nonce)
    }
}

/// The server's side of the handshake.
struct ServerHandshake {
    let key: ClusterKey
    let nonce = Handshake.freshNonce()
    private(set) var clientNonce: [UInt8] = []
    private(set) var version: UInt8 = 0

    init(key: ClusterKey) { self.key = key }

    /// Reads a hello and returns the challenge payload.
    /// - Throws: `.unsupportedVersion` (answered with an error frame; the client may send another
    ///   hello) or `.malformed` (the connection is refused).
    mutating func challenge(hello payload: [UInt8]) throws(TransportError) -> [UInt8] {
        guard payload.count == Handshake.helloBytes else {
            throw TransportError(.malformed, "hello of \(payload.count) bytes, expected \(Handshake.helloBytes)")
        }
        let (lowest, highest) = (payload[0], payload[1])
        let low = max(lowest, ProtocolVersion.minimum)
        let high = min(highest, ProtocolVersion.maximum)
        guard lowest <= highest, low <= high else {
            throw TransportError(
                .unsupportedVersion,
                "client speaks protocol versions \(lowest)...\(highest), this server "
                    + "\(ProtocolVersion.minimum)...\(ProtocolVersion.maximum)")
        }
        version = high
        clientNonce = Array(payload[2...])
        return [version] + nonce + Handshake.mac(key, label: "moraine server", clientNonce, nonce)
    }

    /// Checks the client's proof.
    /// - Throws: `.authenticationFailed`.
    func verify(proof payload: [UInt8]) throws(TransportError) {
        guard !clientNonce.isEmpty else { throw TransportError(.malformed, "proof before hello") }
        let expected = Handshake.mac(key, label: "moraine client", nonce, clientNonce)
        guard Handshake.constantTimeEqual(expected, payload[...]) else {
            throw TransportError(.authenticationFailed, "the client could not prove it holds the cluster key")
        }
    }
}
