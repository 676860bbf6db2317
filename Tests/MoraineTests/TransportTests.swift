// Conformance tests for the transport: every test runs against each carrier (shared memory and
// TCP) with a live server in this process and real sockets, rings and threads. Security tests
// (keys, replays, garbage) are in TransportSecurityTests.swift, the fuzz test in
// TransportFuzzTests.swift.
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Opcodes of the test service.
enum TestOp {
    static let echo: UInt8 = 0x10
    static let fail: UInt8 = 0x11
    static let reference: UInt8 = 0x12
    static let length: UInt8 = 0x13
    /// Waits until the service's gate opens, then answers empty: a server that is alive but stuck.
    static let block: UInt8 = 0x14
    /// Answers 64 KiB, counting each request it runs.
    static let big: UInt8 = 0x15
}

/// A gate a blocking handler waits on, and a count of the `big` requests run.
final class ServiceGate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var isOpen = false
    private var runs = 0

    func wait() { lock.withLock { while !isOpen { lock.wait() } } }
    func open() {
        lock.withLock {
            isOpen = true
            lock.broadcast()
        }
    }
    func countRun() { lock.withLock { runs += 1 } }
    var bigRuns: Int { lock.withLock { runs } }
}

/// A carrier under test: starts a server with the test service and connects clients to it.
/// `tcpDirect` is the TCP server with the client that does its I/O on the caller's thread
/// (DirectTCPClient); `tcp` uses the SwiftNIO client.
enum Carrier: String, CaseIterable, CustomStringConvertible, Sendable {
    case sharedMemory = "shm"
    case tcp
    case tcpDirect = "tcp-direct"

    var description: String { rawValue }

    /// The server a carrier runs (both TCP clients talk to the same TCP server).
    var server: Carrier { self == .tcpDirect ? .tcp : self }

    /// One carrier per server, for the tests of what a server does with a raw peer.
    static let servers: [Carrier] = [.sharedMemory, .tcp]
}

/// A running server of the test service on one carrier, and how to reach it.
final class TestService {
    let carrier: Carrier
    let directory: TempDir
    let key: ClusterKey
    let region: SharedMemory
    let regions = SharedRegionTable()
    private var shm: SharedMemoryServer?
    private var tcp: TCPServer?
    let gate = ServiceGate()
    static let regionID: UInt64 = 7

    init(
        _ carrier: Carrier, key: ClusterKey = TestService.defaultKey(), limits: TransportLimits = TransportLimits(),
        link: LinkEmulation = .none, budget: MessageBudget = .process
    ) throws {
        self.carrier = carrier
        self.key = key
        directory = TempDir("moraine-transport")
        region = try SharedMemory.create(name: "test-region", byteCount: 1 << 20)
        for i in 0..<(1 << 20) { region.base.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31), toByteOffset: i, as: UInt8.self) }
        regions.register(id: Self.regionID, base: region.base, byteCount: region.byteCount)
        var router = RequestRouter()
        router.register(TestOp.echo) { .success($0.payload) }
        router.register(TestOp.fail) { _ in .failure(TransportError(.invalid, "the request was refused on purpose")) }
        router.register(TestOp.reference) { request in
            // Payload: offset u32, length u32 into the test region.
            guard let bytes = request.payload.byteArray, bytes.count == 8 else {
                return .failure(TransportError(.invalid, "reference request needs 8 bytes"))
            }
            let offset = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self) }
            let length = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
            return .success(.reference(RegionReference(region: Self.regionID, offset: UInt64(offset), length: UInt64(length), version: 1)))
        }
        router.register(TestOp.length) { request in
            let count = request.payload.byteArray?.count ?? -1
            return .success(.bytes(withUnsafeBytes(of: Int64(count).littleEndian) { Array($0) }))
        }
        let gate = self.gate
        router.register(TestOp.block) { _ in
            gate.wait()
            return .success(.bytes([]))
        }
        router.register(TestOp.big) { _ in
            gate.countRun()
            return .success(.bytes([UInt8](repeating: 0x5a, count: 64 << 10)))
        }
        switch carrier.server {
        case .sharedMemory:
            shm = try SharedMemoryServer(
                socketPath: directory.file("node.sock"), key: key, limits: limits, link: link, budget: budget, router: router)
        case .tcp, .tcpDirect:
            tcp = try TCPServer(
                host: "127.0.0.1", port: 0, key: key, limits: limits, regions: regions, link: link, budget: budget,
                router: router)
        }
    }

    static func defaultKey() -> ClusterKey { try! ClusterKey(bytes: Array("a test cluster key of 32 bytes!!".utf8)) }

    /// Where a raw client connects: the socket path, or the TCP port.
    var socketPath: String { directory.file("node.sock") }
    var port: Int { tcp?.port ?? 0 }

    func connect(
        key: ClusterKey? = nil, limits: TransportLimits = TransportLimits(), link: LinkEmulation = .none
    ) throws(TransportError) -> any TransportClient {
        switch carrier {
        case .sharedMemory:
            return try SharedMemoryClient(socketPath: socketPath, key: key ?? self.key, limits: limits, link: link)
        case .tcp:
            return try TCPClient(
                host: "127.0.0.1", port: port, key: key ?? self.key, limits: limits, regions: regions, link: link)
        case .tcpDirect:
            return try DirectTCPClient(
                host: "127.0.0.1", port: port, key: key ?? self.key, limits: limits, regions: regions, link: link)
        }
    }

    var connectionCount: Int { shm?.connectionCount ?? tcp?.connectionCount ?? 0 }

    /// Connections in their handshake and authenticated ones, as the server's admission counts them.
    var admissionCounts: (handshaking: Int, authenticated: Int) { shm?.admissionCounts ?? tcp?.admissionCounts ?? (0, 0) }

    /// The bytes a reference reply names, wherever they arrive (in place over shared memory,
    /// copied over TCP).
    func bytes(of payload: Payload) throws -> [UInt8] {
        switch payload {
        case .bytes(let bytes): return bytes
        case .reference(let reference): return Array(try regions.resolve(reference))
        }
    }

    func stop() {
        gate.open()  // a handler still waiting would hold the server's thread
        shm?.close()
        tcp?.close()
        directory.remove()
    }

    deinit { stop() }
}

/// Waits up to `seconds` for `condition`.
func eventually(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanos() + Int64(seconds * 1e9)
    while monotonicNanos() < deadline {
        if condition() { return true }
        usleep(5000)
    }
    return condition()
}

@Suite("Transport conformance")
struct TransportConformanceTests {
    @Test("a request gets its answer; empty and odd-sized payloads survive", arguments: Carrier.allCases)
    func echo(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let client = try service.connect()
        defer { client.close() }
        for size in [0, 1, 7, 64, 4095, 4096, 65_536, 300_000] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ size) }
            let answer = try client.call(TestOp.echo, payload)
            #expect(answer == .bytes(payload), "size \(size) on \(carrier)")
        }
    }

    @Test("many requests in flight; responses matched by id", arguments: Carrier.allCases)
    func pipelined(carrier: Carrier) throws {
        let seed = testSeed("\(carrier)")
        var random = SeededRandom(seed: seed)
        let service = try TestService(carrier)
        defer { service.stop() }
        let client = try service.connect()
        defer { client.close() }
        var expected: [UInt64: [UInt8]] = [:]
        for round in 0..<20 {
            for _ in 0..<(1 + Int(random.next() % 64)) {
                let size = Int(random.next() % 3000)
                let payload = (0..<size).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                expected[try client.send(opcode: TestOp.echo, payload: .bytes(payload))] = payload
            }
            #expect(client.inFlightCount == expected.count)
            // Ask for a specific one first, then take the rest in arrival order.
            if let wanted = expected.keys.max() {
                let response = try client.receive(requestID: wanted, timeoutNanos: 5_000_000_000)
                #expect(try response.get() == .bytes(expected.removeValue(forKey: wanted)!), "seed \(seed) round \(round)")
            }
            while !expected.isEmpty {
                let response = try client.receive(requestID: nil, timeoutNanos: 5_000_000_000)
                let removed = expected.removeValue(forKey: response.requestID)
                let want = try #require(removed, "seed \(seed): unexpected id")
                #expect(try response.get() == .bytes(want), "seed \(seed) round \(round)")
            }
        }
        #expect(client.inFlightCount == 0)
    }

    @Test("payloads larger than a frame travel in chunks, both ways", arguments: Carrier.allCases)
    func chunked(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.chunkBytes = 64 << 10
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let client = try service.connect(limits: limits)
        defer { client.close() }
        let payload = (0..<(5 << 20)).map { UInt8(truncatingIfNeeded: $0 >> 3) }
        #expect(try client.call(TestOp.echo, payload) == .bytes(payload))
        let length = try client.call(TestOp.length, payload)
        #expect(length == .bytes(withUnsafeBytes(of: Int64(5 << 20).littleEndian) { Array($0) }))
    }

    @Test("errors are typed responses and the connection stays usable", arguments: Carrier.allCases)
    func typedErrors(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let client = try service.connect()
        defer { client.close() }
        #expect(throws: TransportError(.invalid, "the request was refused on purpose")) {
            try client.call(TestOp.fail, [1, 2, 3])
        }
        let unknown = try client.receive(requestID: client.send(opcode: 0xEE, payload: .bytes([])), timeoutNanos: 5_000_000_000)
        #expect(throws: TransportError.self) { try unknown.get() }
        if case .failure(let error) = unknown.result { #expect(error.code == .unknownOpcode) }
        #expect(try client.call(TestOp.echo, [9]) == .bytes([9]))
    }

    @Test("a quiet request runs and is never answered, not even its error; an answered one after it sees it ran", arguments: Carrier.servers)
    func quietRequests(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        defer { raw.close() }
        try raw.authenticate(key: service.key)
        #expect(raw.version == ProtocolVersion.quietRequests)
        for id in 1...5 { try raw.sendFrame(opcode: TestOp.big, flags: .quiet, requestID: UInt64(id), payload: []) }
        try raw.sendFrame(opcode: TestOp.fail, flags: .quiet, requestID: 6, payload: [])
        try raw.sendFrame(opcode: Opcode.ping, flags: .quiet, requestID: 7, payload: [])
        try raw.sendFrame(opcode: TestOp.echo, requestID: 8, payload: [4, 2])
        // The first frame back answers the echo: nothing came for the quiet ones before it.
        let (header, payload) = try raw.receiveFrame()
        #expect(header.requestID == 8 && payload == [4, 2])
        #expect(service.gate.bigRuns == 5, "the quiet requests ran before the answered one after them")
    }

    @Test("a quiet request on a connection that settled on protocol version 1 is refused", arguments: Carrier.servers)
    func quietNeedsVersion2(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        defer { raw.close() }
        try raw.authenticate(key: service.key, maximumVersion: 1)
        #expect(raw.version == 1)
        try raw.sendFrame(opcode: TestOp.big, flags: .quiet, requestID: 3, payload: [])
        let (header, payload) = try raw.receiveFrame()
        let error = payload.withUnsafeBytes { TransportError(wirePayload: $0) }
        #expect(header.requestID == 3 && header.flags.contains(.error) && error.code == .malformed && error.message.contains("quiet"))
        #expect(service.gate.bigRuns == 0)
        try raw.sendFrame(opcode: TestOp.echo, requestID: 4, payload: [1])
        #expect(try raw.receiveFrame().1 == [1], "the connection stays usable")
    }

    /// With an emulated link the requests are still on the emulated wire when the client goes,
    /// and a real link delivers them too.
    @Test("quiet requests a client sent just before it went away all run", arguments: Carrier.servers, [Int64(0), 20_000_000])
    func quietRequestsOutliveTheClient(carrier: Carrier, delayNanos: Int64) throws {
        let link = delayNanos == 0 ? LinkEmulation.none : LinkEmulation(delay: .fixed(nanos: delayNanos))
        let service = try TestService(carrier, link: link)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.authenticate(key: service.key)
        let count = 300
        if carrier == .sharedMemory {
            for id in 1...count { try raw.sendFrame(opcode: TestOp.big, flags: .quiet, requestID: UInt64(id), payload: []) }
        } else {
            // One write, so the end of the stream follows the whole burst at once.
            try raw.sendBytes((1...count).flatMap { raw.frameBytes(opcode: TestOp.big, flags: .quiet, requestID: UInt64($0), payload: []) })
        }
        raw.close()
        let deadline = monotonicNanos() + 10_000_000_000
        while service.gate.bigRuns < count && monotonicNanos() < deadline { usleep(10_000) }
        #expect(service.gate.bigRuns == count, "\(service.gate.bigRuns) of \(count) quiet requests ran after the client went away")
    }

    @Test("a frame in a version not negotiated gets an error response, not a hang-up", arguments: Carrier.servers)
    func unknownVersion(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        defer { raw.close() }
        try raw.authenticate(key: service.key)
        try raw.sendFrame(version: 9, opcode: TestOp.echo, requestID: 77, payload: [1])
        let (header, payload) = try raw.receiveFrame()
        #expect(header.requestID == 77 && header.flags.contains(.error))
        #expect(payload.withUnsafeBytes { TransportError(wirePayload: $0) }.code == .unsupportedVersion)
        try raw.sendFrame(opcode: TestOp.echo, requestID: 78, payload: [5, 6])
        let (answer, bytes) = try raw.receiveFrame()
        #expect(answer.requestID == 78 && bytes == [5, 6])
    }

    @Test("a reference reply names bytes in a shared region", arguments: Carrier.allCases)
    func references(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let client = try service.connect()
        defer { client.close() }
        let request = withUnsafeBytes(of: (UInt32(4096), UInt32(65_536))) { Array($0) }
        let reply = try client.call(TestOp.reference, request)
        switch (carrier.server, reply) {
        case (.sharedMemory, .reference(let reference)):
            #expect(reference == RegionReference(region: TestService.regionID, offset: 4096, length: 65_536, version: 1))
        case (.tcp, .bytes):
            break  // copied in by the sender: a reference cannot cross machines
        default:
            Issue.record("\(carrier) delivered \(reply)")
        }
        let expected = (4096..<(4096 + 65_536)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(try service.bytes(of: reply) == expected)
        // A reference outside the region is an error response, not a crash.
        let bad = withUnsafeBytes(of: (UInt32(1 << 20), UInt32(16))) { Array($0) }
        switch carrier {
        case .sharedMemory:
            let reference = try client.call(TestOp.reference, bad)
            #expect(throws: TransportError.self) { try service.bytes(of: reference) }
        case .tcp, .tcpDirect:
            #expect(throws: TransportError.self) { try client.call(TestOp.reference, bad) }
        }
    }

    @Test("a server that goes away fails waiting callers with unavailable", arguments: Carrier.allCases)
    func deadServer(carrier: Carrier) throws {
        let service = try TestService(carrier)
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
        let id = try client.send(opcode: TestOp.echo, payload: .bytes([2]))
        _ = try client.receive(requestID: id, timeoutNanos: 5_000_000_000)
        service.stop()
        let started = monotonicNanos()
        #expect {
            let id = try client.send(opcode: TestOp.echo, payload: .bytes([3]))
            _ = try client.receive(requestID: id, timeoutNanos: 10_000_000_000)
        } throws: { error in
            (error as? TransportError)?.code == .unavailable
        }
        #expect(monotonicNanos() - started < 5_000_000_000, "detecting the dead server took too long")
    }

    @Test("a shared-memory publisher polls for its server only once the server stops taking requests or the interval passes")
    func livenessPolls() throws {
        let service = try TestService(.sharedMemory)
        let client = try #require(try service.connect() as? SharedMemoryClient)
        defer { client.close() }
        let interval: Int64 = 60_000_000_000
        for i in 0..<20 {
            let id = try client.send(opcode: TestOp.echo, payload: .bytes([UInt8(i)]))
            _ = try client.receive(requestID: id, timeoutNanos: 5_000_000_000)
            #expect(!client.serverHasGone(pollingAfter: interval))
        }
        // A second connection that last polled before the death and had everything taken.
        let other = try #require(try service.connect() as? SharedMemoryClient)
        defer { other.close() }
        #expect(!other.serverHasGone(pollingAfter: interval))
        let otherID = try other.send(opcode: TestOp.echo, payload: .bytes([1]))
        _ = try other.receive(requestID: otherID, timeoutNanos: 5_000_000_000)
        service.stop()
        #expect(eventually { client.serverHasGone }, "the socket never said the server went away")
        // Within the interval the ring is trusted (the window docs/STORAGE.md names); past it,
        // the look polls though the ring says the server took everything.
        #expect(!other.serverHasGone(pollingAfter: interval))
        #expect(other.serverHasGone(pollingAfter: 0))
        // Everything sent before was taken and the last poll is recent: the first look after the
        // death trusts the ring; the next finds the request it published not taken, and polls.
        var sends = 0
        var found = false
        while !found && sends < 3 {
            _ = try client.send(opcode: TestOp.echo, payload: .bytes([9]))
            sends += 1
            found = client.serverHasGone(pollingAfter: interval)
        }
        #expect(found && sends == 2, "found the dead server after \(sends) sends")
    }

    @Test("a client that vanishes is released by the server", arguments: Carrier.servers)
    func deadClient(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.authenticate(key: service.key)
        #expect(eventually { service.connectionCount == 1 })
        // Half a frame, then gone.
        try raw.sendBytes([0x4D, 0x52, 0x4E])
        raw.close()
        #expect(eventually { service.connectionCount == 0 }, "the server kept a dead connection")
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [4]) == .bytes([4]))
    }

    @Test("a receive with a timeout times out and the answer still arrives later", arguments: Carrier.allCases)
    func timeouts(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let client = try service.connect()
        defer { client.close() }
        #expect(throws: TransportError.self) {
            _ = try client.receive(requestID: nil, timeoutNanos: 1_000_000)
        }
        #expect(try client.call(TestOp.echo, [8], timeoutNanos: 5_000_000_000) == .bytes([8]))
        // A zero timeout polls: an answer that has arrived is returned, not a timeout.
        let id = try client.send(opcode: TestOp.echo, payload: .bytes([9]))
        var answer: Response? = nil
        let deadline = monotonicNanos() + 5_000_000_000
        while answer == nil && monotonicNanos() < deadline {
            do {
                answer = try client.receive(requestID: id, timeoutNanos: 0)
            } catch {
                #expect(error.code == .timedOut, "\(carrier): \(error)")
                usleep(1000)
            }
        }
        #expect(try answer?.get() == .bytes([9]), "\(carrier): a polling receive never saw the answer")
    }
}
