// Mutual authentication and version negotiation, before any other frame (docs/TRANSPORT.md).
//
//   client → hello:     min version u8, max version u8, client nonce (32 bytes)
//   server → challenge: chosen version u8, server nonce (32), HMAC(key, "moraine server" ‖ Nc ‖ Ns)
//   client → proof:     HMAC(key, "moraine client" ‖ Ns ‖ Nc ‖ label), then the label (0–32 bytes)
//   server → welcome:   empty, or the link the client is to emulate on what it receives:
//                       delay ns u64, bandwidth bytes/s u64 (0: no cap)
//
// The label names the client's role ("compute", "memory", …; empty for a plain client) so that
// a server can give each pair of roles its own emulated link (LinkEmulation, `peerLinks`): the
// server delays what it receives from that client, and its welcome tells the client to delay
// what it receives back, so both directions of the pair's link are emulated from one setting
// on the server. The label is inside the MAC, so it cannot be changed in flight.
//
// Both nonces are fresh random bytes per connection, so a recorded proof is worthless on any
// other connection (the server's nonce differs), and a recorded challenge is worthless to a
// client (its own nonce differs). The client checks the server's MAC before it proves itself, so
// it never talks to a server that lacks the key. MACs are compared in constant time.
//
// These are pure state machines over payload bytes; the carriers move the frames.
import Crypto
import Synchronization

/// Protocol versions this build speaks. Version 2 adds quiet requests (`FrameFlags.quiet`); a
/// connection that settled on 1 refuses them.
public enum ProtocolVersion {
    public static let minimum: UInt8 = 1
    public static let maximum: UInt8 = 2
    /// The first version with quiet requests.
    public static let quietRequests: UInt8 = 2
}

enum Handshake {
    static let nonceBytes = 32
    static let macBytes = 32
    static let helloBytes = 2 + nonceBytes
    static let challengeBytes = 1 + nonceBytes + macBytes
    /// The longest role label a proof may carry.
    static let labelBytesMax = 32
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

extension Handshake {
    /// The welcome's payload: empty for no emulation, else the link's delay and bandwidth (a
    /// delay drawn from a distribution is sent as its mean; role links are fixed delays).
    static func welcome(_ link: LinkEmulation) -> [UInt8] {
        guard link.isActive else { return [] }
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(link.meanDelayNanos).littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt64(link.bandwidthBytesPerSecond ?? 0).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// The link a welcome asks the client to emulate.
    /// - Throws: `.malformed` for a payload of another shape or a delay over a second.
    static func link(fromWelcome payload: [UInt8]) throws(TransportError) -> LinkEmulation {
        if payload.isEmpty { return .none }
        guard payload.count == 16 else { throw TransportError(.malformed, "welcome of \(payload.count) bytes, expected 0 or 16") }
        let delay = payload.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        let bandwidth = payload.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        guard delay <= 1_000_000_000, bandwidth <= UInt64(Int64.max) else {
            throw TransportError(.malformed, "welcome asks for a delay of \(delay) ns and \(bandwidth) bytes/s")
        }
        return LinkEmulation(delay: delay > 0 ? .fixed(nanos: Int64(delay)) : nil, bandwidthBytesPerSecond: bandwidth > 0 ? Int64(bandwidth) : nil)
    }

    /// The link a server emulates with a client of `label`: its pair's entry in `peerLinks`
    /// (a client with no label is `client`), else the server's `link` for every peer.
    static func link(forLabel label: String, peerLinks: [String: LinkEmulation], otherwise link: LinkEmulation) -> LinkEmulation {
        peerLinks[label.isEmpty ? "client" : label] ?? link
    }

    /// Whether a label is one a proof may carry: 0–32 bytes of a–z, 0–9, '-', '_'.
    static func isValidLabel(_ label: [UInt8]) -> Bool {
        label.count <= labelBytesMax && label.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F }
    }
}

/// Who this process is on the cluster's links: the role label its connections present (a role
/// process sets it once at start, before it connects anywhere; nil for a plain client).
public enum TransportIdentity {
    private static let storage = Mutex<String?>(nil)

    /// The label new connections present by default.
    /// - Precondition: 0–32 bytes of a–z, 0–9, '-' or '_' (a role's kind).
    public static var label: String? {
        get { storage.withLock { $0 } }
        set {
            precondition(Handshake.isValidLabel(Array((newValue ?? "").utf8)), "a transport label is 0–32 bytes of a-z, 0-9, '-', '_'")
            storage.withLock { $0 = newValue }
        }
    }
}

/// The client's side of the handshake.
struct ClientHandshake {
    let key: ClusterKey
    let nonce = Handshake.freshNonce()
    /// The role label the proof carries (see TransportIdentity).
    let label: [UInt8]
    private(set) var serverNonce: [UInt8] = []
    private(set) var version: UInt8 = 0
    /// The newest version offered (an older one only to test what a newer server does with it).
    let maximumVersion: UInt8

    init(key: ClusterKey, label: String? = TransportIdentity.label, maximumVersion: UInt8 = ProtocolVersion.maximum) {
        self.key = key
        self.maximumVersion = maximumVersion
        let bytes = Array((label ?? "").utf8)
        self.label = Handshake.isValidLabel(bytes) ? bytes : []  // TransportIdentity checks what it is given
    }

    /// The hello payload.
    func hello() -> [UInt8] { [ProtocolVersion.minimum, maximumVersion] + nonce }

    /// Checks the server's challenge and returns the proof payload.
    /// - Throws: `.authenticationFailed` when the server does not hold the key, `.malformed`
    ///   for a challenge of the wrong shape, `.unsupportedVersion` for a version not offered.
    mutating func answer(challenge payload: [UInt8]) throws(TransportError) -> [UInt8] {
        guard payload.count == Handshake.challengeBytes else {
            throw TransportError(.malformed, "challenge of \(payload.count) bytes, expected \(Handshake.challengeBytes)")
        }
        let chosen = payload[0]
        guard (ProtocolVersion.minimum...maximumVersion).contains(chosen) else {
            throw TransportError(.unsupportedVersion, "server chose protocol version \(chosen), which was not offered")
        }
        let theirs = Array(payload[1..<(1 + Handshake.nonceBytes)])
        let expected = Handshake.mac(key, label: "moraine server", nonce, theirs)
        guard Handshake.constantTimeEqual(expected, payload[(1 + Handshake.nonceBytes)...]) else {
            throw TransportError(.authenticationFailed, "the server could not prove it holds the cluster key")
        }
        serverNonce = theirs
        version = chosen
        return Handshake.mac(key, label: "moraine client", theirs, nonce + label) + label
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

    /// Checks the client's proof; returns the role label it carries ("" for none).
    /// - Throws: `.authenticationFailed`.
    @discardableResult
    func verify(proof payload: [UInt8]) throws(TransportError) -> String {
        guard !clientNonce.isEmpty else { throw TransportError(.malformed, "proof before hello") }
        let label = Array(payload.dropFirst(Handshake.macBytes))
        guard payload.count >= Handshake.macBytes, Handshake.isValidLabel(label) else {
            throw TransportError(.authenticationFailed, "the client could not prove it holds the cluster key")
        }
        let expected = Handshake.mac(key, label: "moraine client", nonce, clientNonce + label)
        guard Handshake.constantTimeEqual(expected, payload[..<Handshake.macBytes]) else {
            throw TransportError(.authenticationFailed, "the client could not prove it holds the cluster key")
        }
        return String(decoding: label, as: UTF8.self)
    }
}
