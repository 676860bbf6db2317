// Link emulation: the due-time arithmetic on its own, then a live server and client on each
// carrier with an injected delay and a bandwidth cap. Live checks assert lower bounds (a frame is
// never delivered before the emulated link allows) and order; upper bounds are only loose
// sanity checks, since the machine's own scheduling adds to every delay.
import MoraineSystem
import MoraineTestSupport
@testable import MoraineTransport
import Testing

@Suite("Transport link emulation")
struct TransportLinkTests {
    @Test("due times: delay, bandwidth queueing, order kept under jitter, same seed same delays")
    func shaper() {
        var fixed = LinkShaper(LinkEmulation(delay: .fixed(nanos: 1_000)))
        #expect(fixed.due(arrivalNanos: 10_000, byteCount: 64) == 11_000)
        // 1 GB/s: 1,000 bytes take 1,000 ns; the second frame queues behind the first.
        var capped = LinkShaper(LinkEmulation(delay: .fixed(nanos: 500), bandwidthBytesPerSecond: 1_000_000_000))
        #expect(capped.due(arrivalNanos: 0, byteCount: 1_000) == 1_500)
        #expect(capped.due(arrivalNanos: 0, byteCount: 1_000) == 2_500)
        #expect(capped.due(arrivalNanos: 10_000, byteCount: 2_000) == 12_500)
        // Huge frames at a low bandwidth do not overflow.
        var slow = LinkShaper(LinkEmulation(bandwidthBytesPerSecond: 3))
        #expect(slow.due(arrivalNanos: 0, byteCount: Int(Int32.max)) == Int64(Int32.max) * 1_000_000_000 / 3)
        for delay in [LinkEmulation.Delay.uniform(lowerNanos: 0, upperNanos: 50_000), .normal(meanNanos: 20_000, deviationNanos: 20_000)] {
            var first = LinkShaper(LinkEmulation(delay: delay, seed: 99))
            var second = LinkShaper(LinkEmulation(delay: delay, seed: 99))
            var last: Int64 = 0
            var sum: Int64 = 0
            for i in 0..<2_000 {
                let arrival = Int64(i) * 1_000
                let due = first.due(arrivalNanos: arrival, byteCount: 100)
                #expect(due == second.due(arrivalNanos: arrival, byteCount: 100))
                #expect(due >= last && due >= arrival, "\(delay): frame \(i) overtook or came early")
                sum += due - arrival
                last = due
            }
            // Holding frames in order only ever adds delay: the mean is at least the asked mean.
            #expect(sum / 2_000 >= LinkEmulation(delay: delay).meanDelayNanos * 9 / 10, "\(delay)")
        }
    }

    @Test("a round trip over an emulated link takes at least both one-way delays", arguments: Carrier.allCases)
    func delay(carrier: Carrier) throws {
        let oneWay: Int64 = 2_000_000
        let link = LinkEmulation(delay: .fixed(nanos: oneWay))
        let service = try TestService(carrier, link: link)
        defer { service.stop() }
        let client = try service.connect(link: link)
        defer { client.close() }
        var fastest = Int64.max
        for i in 0..<10 {
            let started = monotonicNanos()
            #expect(try client.call(TestOp.echo, [UInt8(i)]) == .bytes([UInt8(i)]))
            fastest = min(fastest, monotonicNanos() - started)
        }
        #expect(fastest >= 2 * oneWay, "\(carrier): a round trip of \(fastest) ns beat the emulated link")
        #expect(fastest < 2 * oneWay + 200_000_000, "\(carrier): \(fastest) ns is far above the emulated link")
        // Pipelined requests under jitter come back complete and matched.
        let jitter = LinkEmulation(delay: .uniform(lowerNanos: 0, upperNanos: 500_000), seed: testSeed("\(carrier) jitter"))
        let jittered = try TestService(carrier, link: jitter)
        defer { jittered.stop() }
        let pipelined = try jittered.connect(link: jitter)
        defer { pipelined.close() }
        var expected: [UInt64: [UInt8]] = [:]
        for i in 0..<64 { expected[try pipelined.send(opcode: TestOp.echo, payload: .bytes([UInt8(i), 1]))] = [UInt8(i), 1] }
        while !expected.isEmpty {
            let response = try pipelined.receive(requestID: nil, timeoutNanos: 10_000_000_000)
            let want = expected.removeValue(forKey: response.requestID)
            #expect(want != nil, "unexpected request id \(response.requestID)")
            #expect(try response.get() == .bytes(want ?? []))
        }
    }

    @Test("a bandwidth cap paces a large transfer", arguments: Carrier.allCases)
    func bandwidth(carrier: Carrier) throws {
        // 8 MB/s each way: 1 MiB out and 1 MiB back need at least ~0.26 s in all.
        let link = LinkEmulation(bandwidthBytesPerSecond: 8_000_000)
        let service = try TestService(carrier, link: link)
        defer { service.stop() }
        let client = try service.connect(link: link)
        defer { client.close() }
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let started = monotonicNanos()
        #expect(try client.call(TestOp.echo, payload) == .bytes(payload))
        let elapsed = monotonicNanos() - started
        let floor = Int64(2 * (1 << 20)) * 1_000_000_000 / 8_000_000
        #expect(elapsed >= floor, "\(carrier): \(elapsed) ns for 2 MiB over 8 MB/s (at least \(floor))")
        #expect(elapsed < floor * 4, "\(carrier): \(elapsed) ns is far above the cap's pace")
    }

    @Test("a role label rides in the proof under the MAC; a changed label fails the handshake")
    func labelInProof() throws {
        let key = try ClusterKey(bytes: [UInt8](repeating: 5, count: 32))
        var client = ClientHandshake(key: key, label: "compute")
        var server = ServerHandshake(key: key)
        let challenge = try server.challenge(hello: client.hello())
        let proof = try client.answer(challenge: challenge)
        #expect(try server.verify(proof: proof) == "compute")
        let forged = Array(proof.prefix(Handshake.macBytes)) + Array("memory".utf8)
        #expect(throws: TransportError.self) { try server.verify(proof: forged) }
        #expect(throws: TransportError.self) { try server.verify(proof: Array(proof.prefix(Handshake.macBytes)) + [0x41]) }
        // No label: the proof is the bare MAC, as before labels existed.
        var plain = ClientHandshake(key: key, label: nil)
        var other = ServerHandshake(key: key)
        let otherChallenge = try other.challenge(hello: plain.hello())
        let bare = try plain.answer(challenge: otherChallenge)
        #expect(bare.count == Handshake.macBytes)
        #expect(try other.verify(proof: bare) == "")
        // The welcome carries the link both ways of the pair emulate.
        let link = LinkEmulation(delay: .fixed(nanos: 2_000), bandwidthBytesPerSecond: 1 << 30)
        #expect(try Handshake.link(fromWelcome: Handshake.welcome(link)) == link)
        #expect(try Handshake.link(fromWelcome: []) == .none)
        #expect(throws: TransportError.self) { try Handshake.link(fromWelcome: [1, 2, 3]) }
    }

    @Test("each pair of roles gets its own link: the server's entry for the client's label, both ways", arguments: Carrier.allCases)
    func peerLinks(carrier: Carrier) throws {
        let key = try ClusterKey(bytes: [UInt8](repeating: 9, count: 32))
        let oneWay: Int64 = 20_000_000
        var router = RequestRouter()
        router.register(TestOp.echo) { _ in .success(.bytes([7])) }
        let peerLinks = ["compute": LinkEmulation(delay: .fixed(nanos: oneWay))]
        let directory = TempDir("moraine-peer-links")
        defer { directory.remove() }
        var stop: () -> Void = {}
        var port = 0
        switch carrier {
        case .sharedMemory:
            let server = try SharedMemoryServer(socketPath: directory.file("s.sock"), key: key, peerLinks: peerLinks, router: router)
            stop = { server.close() }
        case .tcp, .tcpDirect:
            let server = try TCPServer(port: 0, key: key, peerLinks: peerLinks, router: router)
            port = server.port
            stop = { server.close() }
        }
        defer { stop() }
        func fastestRoundTrip(label: String?) throws -> Int64 {
            let client: any TransportClient =
                switch carrier {
                case .sharedMemory: try SharedMemoryClient(socketPath: directory.file("s.sock"), key: key, label: label)
                case .tcp, .tcpDirect: try DirectTCPClient(port: port, key: key, label: label)
                }
            defer { client.close() }
            var fastest = Int64.max
            for _ in 0..<5 {
                let started = monotonicNanos()
                _ = try client.call(TestOp.echo, [1])
                fastest = min(fastest, monotonicNanos() - started)
            }
            return fastest
        }
        let compute = try fastestRoundTrip(label: "compute")
        #expect(compute >= 2 * oneWay, "\(carrier): the compute pair's round trip of \(compute) ns beat its two 20 ms legs")
        let memory = try fastestRoundTrip(label: "memory")
        #expect(memory < oneWay, "\(carrier): a peer with no link of its own waited \(memory) ns")
        let plain = try fastestRoundTrip(label: nil)
        #expect(plain < oneWay, "\(carrier): a plain client waited \(plain) ns")
    }
}
