// What the roles exchange through a carrier: requests with an opcode and a payload, and replies
// that are bytes, a reference into a shared region, or a typed error. Limits bound everything a
// receiver accepts.
import Synchronization

/// A position in a shared region that both ends have mapped: the bytes travel as this reference
/// (32 bytes on the wire: region, offset, length, version, each u64 little-endian) instead of as a
/// copy. The version lets the owner of the region say which generation of the bytes is meant (a
/// cache slot reused for another block gets a new version); the reader checks it where it matters.
public struct RegionReference: Sendable, Hashable {
    public static let byteCount = 32
    public var region: UInt64
    public var offset: UInt64
    public var length: UInt64
    public var version: UInt64

    public init(region: UInt64, offset: UInt64, length: UInt64, version: UInt64) {
        self.region = region
        self.offset = offset
        self.length = length
        self.version = version
    }

    var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(Self.byteCount)
        for word in [region, offset, length, version] {
            withUnsafeBytes(of: word.littleEndian) { out.append(contentsOf: $0) }
        }
        return out
    }

    init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count == Self.byteCount else { return nil }
        func word(_ i: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) }
        self.init(region: word(0), offset: word(1), length: word(2), version: word(3))
    }
}

/// The body of a request or a successful reply.
public enum Payload: Sendable, Equatable {
    case bytes([UInt8])
    /// Bytes in a shared region. Over TCP the sender copies them in, and they arrive as `.bytes`.
    case reference(RegionReference)

    /// The bytes, when the payload carries them.
    public var byteArray: [UInt8]? {
        if case .bytes(let bytes) = self { return bytes }
        return nil
    }
}

/// A request as a handler sees it.
public struct Request: Sendable {
    public let opcode: UInt8
    public let requestID: UInt64
    public let payload: Payload
    /// The client wants no response (`FrameFlags.quiet`): whatever the handler returns is
    /// dropped, so a handler that must report a failure later keeps it itself.
    public var quiet = false
}

/// A reply as a caller sees it.
public struct Response: Sendable {
    public let requestID: UInt64
    public let result: Result<Payload, TransportError>

    /// The payload, or the error response thrown.
    public func get() throws(TransportError) -> Payload { try result.get() }
}

/// A role's request handler. It runs on the carrier's thread for the connection (a connection's
/// requests are handled one at a time, in order), so it must not block for long.
public typealias RequestHandler = @Sendable (Request) -> Result<Payload, TransportError>

/// Bounds on what a connection accepts. Every limit is checked before memory is allocated for it.
public struct TransportLimits: Sendable {
    /// Largest payload of one frame.
    public var framePayloadBytesMax = 1 << 20
    /// Largest message after its chunks are joined.
    public var messageBytesMax = 64 << 20
    /// Payloads larger than this go as chunks of this size.
    public var chunkBytes = 256 << 10
    /// Requests a client may have in flight on one connection.
    public var inFlightMax = 1024
    /// Bytes of half-joined chunked messages one connection may hold at once, all together.
    public var partialBytesMax = 128 << 20
    /// Time allowed for the whole handshake, in nanoseconds. A client on the same network
    /// needs a few round trips; what stays longer only holds a slot of `handshakesMax`.
    public var handshakeNanos: Int64 = 2_000_000_000
    /// Authenticated connections a server serves at once; one more is refused with `busy` once
    /// it has proved the key. Connections still in their handshake do not count here, so
    /// strangers cannot take these slots.
    public var connectionsMax = 1024
    /// Connections a server keeps in their handshake at once. A new one past it makes room by
    /// dropping the oldest that has sent nothing yet (or, when every one has, the oldest): a
    /// flood of silent connections then turns over in milliseconds, while a client that sends
    /// its hello at once finishes its handshake before it is the oldest.
    public var handshakesMax = 128
    /// Connections in their handshake from one address (an IP for TCP, a process for shared
    /// memory); past it that address's own oldest is dropped, so one noisy address cannot
    /// push out the handshakes of others.
    public var handshakesPerAddressMax = 32
    /// Time a half-joined chunked message may wait for its next chunk; past it the connection
    /// is logged and closed and the bytes it held are freed.
    public var chunkTimeoutNanos: Int64 = 10_000_000_000
    /// Descriptors a server leaves for everything else its process has open (a storage node's
    /// tables, logs): when `connectionsMax + handshakesMax` do not fit under the descriptor
    /// limit minus this (at most half the limit), the server lowers both at start and says so.
    public var descriptorsReserved = 256
    /// Refusals (a failed handshake, a dropped stranger, a closed connection) logged one by one
    /// per interval; the rest of the interval's are counted and logged as one line with a sample.
    public var refusalLogBurst = 5
    public var refusalLogIntervalNanos: Int64 = 10_000_000_000
    /// Time a TCP server allows a frame to arrive once its first byte has: a peer that stops in
    /// the middle of a frame (a slow-loris) is logged and closed after it, and frees its slot.
    /// The clock stops while the server holds reads back for back-pressure.
    public var frameTimeoutNanos: Int64 = 30_000_000_000
    /// Time a `send` waits for room (a full request ring, or a TCP channel that is not writable)
    /// before it fails with `timedOut`. The connection is then given up: a message may be half
    /// sent. A server that is alive but stuck cannot hold a caller for ever.
    public var sendTimeoutNanos: Int64 = 30_000_000_000
    /// Seconds a TCP connection may sit idle before the kernel sends keepalive probes; with 3
    /// probes 10 s apart, a peer whose machine vanished is noticed within this plus 30 s.
    public var keepaliveIdleSeconds = 60

    public init() {}

    /// Checks that the limits fit together: a chunk must fit in one frame.
    /// - Throws: `.invalid` naming the setting at fault.
    public func check() throws(TransportError) {
        guard chunkBytes > 0, chunkBytes <= framePayloadBytesMax else {
            throw TransportError(
                .invalid, "chunkBytes \(chunkBytes) must be positive and at most framePayloadBytesMax \(framePayloadBytesMax)")
        }
        guard framePayloadBytesMax <= messageBytesMax, inFlightMax > 0, connectionsMax > 0 else {
            throw TransportError(
                .invalid, "framePayloadBytesMax must not exceed messageBytesMax; inFlightMax and connectionsMax must be positive")
        }
        guard handshakeNanos > 0, frameTimeoutNanos > 0, sendTimeoutNanos > 0, keepaliveIdleSeconds > 0, chunkTimeoutNanos > 0
        else {
            throw TransportError(
                .invalid,
                "handshakeNanos, frameTimeoutNanos, sendTimeoutNanos, chunkTimeoutNanos and keepaliveIdleSeconds must be positive")
        }
        guard handshakesMax > 0, handshakesPerAddressMax > 0, descriptorsReserved >= 0, refusalLogBurst >= 0,
            refusalLogIntervalNanos > 0
        else {
            throw TransportError(
                .invalid,
                "handshakesMax, handshakesPerAddressMax and refusalLogIntervalNanos must be positive, "
                    + "descriptorsReserved and refusalLogBurst not negative")
        }
    }

    /// These limits with the connection caps lowered, where needed, so that every connection
    /// a server admits has a descriptor under `descriptorLimit` and `descriptorsReserved`
    /// (at most half of it) stay free; and a sentence saying what was lowered, or nil.
    public func fitted(toDescriptors descriptorLimit: Int) -> (limits: TransportLimits, note: String?) {
        let reserve = min(descriptorsReserved, descriptorLimit / 2)
        let available = max(2, descriptorLimit - reserve)
        guard connectionsMax + handshakesMax > available else { return (self, nil) }
        var fitted = self
        fitted.handshakesMax = max(1, min(handshakesMax, available / 8))
        fitted.connectionsMax = max(1, min(connectionsMax, available - fitted.handshakesMax))
        fitted.handshakesPerAddressMax = min(handshakesPerAddressMax, fitted.handshakesMax)
        let note =
            "the descriptor limit is \(descriptorLimit) (RLIMIT_NOFILE), so this server serves at most "
            + "\(fitted.connectionsMax) connections and \(fitted.handshakesMax) handshakes at once (asked: "
            + "\(connectionsMax) and \(handshakesMax)), keeping \(reserve) descriptors for files"
        return (fitted, note)
    }
}

/// Bytes of half-joined chunked messages that all the connections of a process (or of the
/// servers given the same budget) may hold together. A connection whose next chunk would pass
/// it is refused and closed, so a few peers with the key cannot pin the process's memory.
///
/// Thread-safe: an atomic count.
public final class MessageBudget: Sendable {
    /// The most bytes held at once.
    public let bytesMax: Int
    private let held = Atomic<Int>(0)

    public init(bytesMax: Int) {
        precondition(bytesMax > 0)
        self.bytesMax = bytesMax
    }

    /// The budget every server of a process shares unless it is given its own: 256 MiB.
    public static let process = MessageBudget(bytesMax: 256 << 20)

    /// Bytes held now.
    public var bytesHeld: Int { held.load(ordering: .relaxed) }

    /// Takes `count` bytes of the budget; false (nothing taken) when they do not fit.
    func reserve(_ count: Int) -> Bool {
        var current = held.load(ordering: .relaxed)
        while true {
            guard current + count <= bytesMax else { return false }
            let (exchanged, original) = held.compareExchange(
                expected: current, desired: current + count, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    func release(_ count: Int) {
        held.subtract(count, ordering: .relaxed)
    }
}
