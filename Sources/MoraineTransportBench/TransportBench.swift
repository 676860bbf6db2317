// `moraine transport-bench`: round trips over both carriers next to the machine's own floor for
// each, in one run. A server process (the same executable, started by the command with
// `--serve`) runs a shared-memory server, a TCP server and the two floors; this process is the
// client. Every row echoes a payload of a given size (so it crosses the link both ways) with 1 or
// 16 requests in flight, for a fixed time after a warm-up, and records each request's round trip
// in an HDR histogram. The floors are the least any carrier could do: a spinning ping-pong over a
// flag in shared memory, and a blocking-socket ping-pong over TCP loopback, each copying the
// payload as an echo would.
//
// Link emulation accuracy: with `--delays_us`, the server process is restarted with each delay
// on both ends, and the observed extra round trip is compared with the two one-way delays asked.
//
// Thread-safety: one thread runs the client side; the server side is `TransportBenchServer`.
import Histogram
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// One measured configuration.
public struct TransportBenchRow: Sendable {
    /// `shm`, `tcp`, `tcp-nio`, `floor-shm` or `floor-tcp`.
    public let carrier: String
    public let payloadBytes: Int
    public let inflight: Int
    public let operations: Int
    public let seconds: Double
    public let p50Micros: Double
    public let p99Micros: Double
    public let p999Micros: Double
    /// The one-way delay emulated on both ends (0: none).
    public let delayNanos: Int64

    public var opsPerSecond: Double { Double(operations) / seconds }
    /// Payload bytes per second in one direction (an echo moves as many back).
    public var megabytesPerSecond: Double { opsPerSecond * Double(payloadBytes) / 1e6 }

    /// The row as a JSON object with the keys the issue fixed.
    public var json: String {
        "{\"carrier\":\"\(carrier)\",\"payload_bytes\":\(payloadBytes),\"inflight\":\(inflight),"
            + "\"p50_us\":\(rounded(p50Micros)),\"p99_us\":\(rounded(p99Micros)),\"p999_us\":\(rounded(p999Micros)),"
            + "\"ops_per_sec\":\(Int(opsPerSecond)),\"mb_per_sec\":\(rounded(megabytesPerSecond)),"
            + "\"delay_us\":\(rounded(Double(delayNanos) / 1000))}"
    }
}

func rounded(_ value: Double) -> String {
    let scaled = (value * 100).rounded() / 100
    return scaled == scaled.rounded() ? String(Int(scaled)) : String(scaled)
}

/// Where the server process listens, as it writes it to `ready` in the run directory.
public struct TransportBenchEndpoints: Sendable {
    public var socketPath: String
    public var tcpPort: Int
    public var floorTCPPort: Int
    public var floorFilePath: String
}

/// The opcode of the echo service both carriers serve.
let echoOpcode: UInt8 = 0x10

/// The client side: measures rows against a running server process.
public struct TransportBenchClient {
    public let endpoints: TransportBenchEndpoints
    public let key: ClusterKey
    public var secondsPerRow: Double
    public var warmupSeconds: Double

    public init(endpoints: TransportBenchEndpoints, key: ClusterKey, secondsPerRow: Double, warmupSeconds: Double = 0.3) {
        self.endpoints = endpoints
        self.key = key
        self.secondsPerRow = secondsPerRow
        self.warmupSeconds = warmupSeconds
    }

    /// Limits that let a 64 KiB payload go as one frame.
    public static var limits: TransportLimits {
        var limits = TransportLimits()
        limits.chunkBytes = 256 << 10
        return limits
    }

    /// Connects a client of `carrier` over an emulated `link`: `shm`, `tcp` (DirectTCPClient, I/O
    /// on the caller's thread) or `tcp-nio` (TCPClient, on SwiftNIO).
    public func connect(_ carrier: String, link: LinkEmulation = .none) throws(TransportError) -> any TransportClient {
        switch carrier {
        case "shm":
            return try SharedMemoryClient(socketPath: endpoints.socketPath, key: key, limits: Self.limits, link: link)
        case "tcp-nio":
            return try TCPClient(port: endpoints.tcpPort, key: key, limits: Self.limits, link: link)
        default:
            return try DirectTCPClient(port: endpoints.tcpPort, key: key, limits: Self.limits, link: link)
        }
    }

    /// Echoes `payloadBytes` with `inflight` requests outstanding for the row's time.
    public func measure(
        _ client: any TransportClient, carrier: String, payloadBytes: Int, inflight: Int, delayNanos: Int64 = 0
    ) throws(TransportError) -> TransportBenchRow {
        let payload = Payload.bytes((0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 29) })
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        // Ids are sequential and at most `inflight` are outstanding: a small ring of send times.
        var sentAt = [Int64](repeating: 0, count: 4096)
        let warmupEnd = monotonicNanos() + Int64(warmupSeconds * 1e9)
        var measuring = false
        var start: Int64 = 0
        var end: Int64 = 0
        var operations = 0
        // A request's time starts before its send, so the send's own work counts (as the floor's
        // copy in does); one clock read per request serves as both its end and the next start.
        for _ in 0..<inflight {
            let now = monotonicNanos()
            sentAt[Int(try client.send(opcode: echoOpcode, payload: payload) & 4095)] = now
        }
        while true {
            let response = try client.receive(requestID: nil, timeoutNanos: 10_000_000_000)
            let now = monotonicNanos()
            guard case .success(.bytes(let bytes)) = response.result, bytes.count == payloadBytes else {
                throw TransportError(.internalError, "the echo came back wrong: \(response.result)")
            }
            if measuring {
                _ = histogram.record(UInt64(max(1, now - sentAt[Int(response.requestID & 4095)])))
                operations += 1
                if now >= end { break }
            } else if now >= warmupEnd {
                measuring = true
                start = now
                end = now + Int64(secondsPerRow * 1e9)
            }
            sentAt[Int(try client.send(opcode: echoOpcode, payload: payload) & 4095)] = now
        }
        let elapsed = monotonicNanos() - start
        for _ in 0..<(inflight - 1) { _ = try client.receive(requestID: nil, timeoutNanos: 10_000_000_000) }
        return row(carrier, payloadBytes, inflight, operations, elapsed, histogram, delayNanos)
    }

    /// The shared-memory floor: a spinning ping-pong over a flag, the payload copied each way.
    public func measureSharedMemoryFloor(payloadBytes: Int) throws(TransportError) -> TransportBenchRow {
        let floor = try SharedFloor(path: endpoints.floorFilePath)
        floor.setActive(true)
        defer { floor.setActive(false) }
        let payload = (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 29) }
        var reply = [UInt8](repeating: 0, count: payloadBytes)
        return try timed("floor-shm", payloadBytes) {
            payload.withUnsafeBytes { source in
                reply.withUnsafeMutableBytes { target in floor.roundTrip(source, into: target) }
            }
        }
    }

    /// The TCP floor: a blocking-socket ping-pong over loopback, the payload echoed.
    public func measureTCPFloor(payloadBytes: Int) throws(TransportError) -> TransportBenchRow {
        let socket = try FloorSocket.connect(port: endpoints.floorTCPPort)
        defer { close(socket) }
        var message = [UInt8](repeating: 0, count: 4 + payloadBytes)
        withUnsafeBytes(of: UInt32(payloadBytes).littleEndian) { for i in 0..<4 { message[i] = $0[i] } }
        var reply = [UInt8](repeating: 0, count: payloadBytes)
        return try timed("floor-tcp", payloadBytes) { () throws(TransportError) in
            try FloorSocket.sendAll(socket, message)
            try FloorSocket.receiveAll(socket, into: &reply)
        }
    }

    /// Runs `roundTrip` one at a time for the row's time, after the warm-up.
    private func timed(
        _ carrier: String, _ payloadBytes: Int, _ roundTrip: () throws(TransportError) -> Void
    ) throws(TransportError) -> TransportBenchRow {
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let warmupEnd = monotonicNanos() + Int64(warmupSeconds * 1e9)
        while monotonicNanos() < warmupEnd { try roundTrip() }
        let start = monotonicNanos()
        let end = start + Int64(secondsPerRow * 1e9)
        var operations = 0
        var now = start
        while now < end {
            let before = now
            try roundTrip()
            now = monotonicNanos()
            _ = histogram.record(UInt64(max(1, now - before)))
            operations += 1
        }
        return row(carrier, payloadBytes, 1, operations, now - start, histogram, 0)
    }

    private func row(
        _ carrier: String, _ payloadBytes: Int, _ inflight: Int, _ operations: Int, _ elapsedNanos: Int64,
        _ histogram: Histogram<UInt64>, _ delayNanos: Int64
    ) -> TransportBenchRow {
        TransportBenchRow(
            carrier: carrier, payloadBytes: payloadBytes, inflight: inflight, operations: operations,
            seconds: Double(elapsedNanos) / 1e9,
            p50Micros: Double(histogram.valueAtPercentile(50)) / 1000,
            p99Micros: Double(histogram.valueAtPercentile(99)) / 1000,
            p999Micros: Double(histogram.valueAtPercentile(99.9)) / 1000, delayNanos: delayNanos)
    }
}

