// Attacks and failure modes found in review, each pinned by a test: a shrinkable or foreign file
// passed as the rings, a protocol error after the handshake, a fake server that skips the
// challenge, chunked messages that add up past the connection's budget, a pipelining client that
// fills both rings, requests lost with their connection, and more connections than allowed.
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Transport hardening")
struct TransportHardeningTests {
    init() { _ = CapturedLog.installed }

    @Test("shared memory: only a memfd with a sealed size is mapped")
    func sealedRings() throws {
        let service = try TestService(.sharedMemory)
        defer { service.stop() }
        // Our own rings are sealed: they cannot shrink under the server's mapping.
        let memory = try SharedMemory.create(name: "sealed", byteCount: 1 << 16)
        #expect(ftruncate(memory.descriptor, 0) != 0, "a sealed memfd could be shrunk")
        // A plain file of the right size is refused, and the server goes on serving.
        let capacity = SharedMemoryClient.defaultRingCapacity
        let path = service.directory.file("rings")
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        #expect(ftruncate(fd, off_t(SharedConnectionLayout.totalBytes(capacity))) == 0)
        let raw = try RawPeer(service)
        try raw.handshakeOnly(key: service.key)
        _ = try? raw.attach(passing: fd, capacity: capacity)
        close(fd)
        #expect(raw.serverClosed())
        #expect(CapturedLog.contains("refused", service.socketPath, "not a memfd with a sealed size"))
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
    }

    @Test("a protocol error after the handshake closes that connection with a log line", arguments: Carrier.servers)
    func errorAfterHandshake(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.authenticate(key: service.key)
        try raw.sendFrame(opcode: TestOp.echo, flags: .response, requestID: 4, payload: [1])
        #expect(raw.serverClosed(), "\(carrier): the connection stayed open")
        #expect(CapturedLog.contains("closed", service.logTag, "a client sent a response frame"))
        #expect(eventually { service.connectionCount == 0 })
    }

    @Test("chunked messages together past the connection's budget close it", arguments: Carrier.servers)
    func partialBudget(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.partialBytesMax = 256 << 10
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.authenticate(key: service.key)
        let chunk = [UInt8](repeating: 9, count: 60 << 10)
        for id in 1...5 { try raw.sendFrame(opcode: TestOp.echo, flags: .more, requestID: UInt64(id), payload: chunk) }
        #expect(raw.serverClosed(), "\(carrier): 300 KiB of half-joined messages were held")
        #expect(CapturedLog.contains("closed", service.logTag, "half-joined messages pass"))
    }

    @Test("a client that pipelines more than both rings hold still gets every answer", arguments: Carrier.allCases)
    func pipelineBeyondRings(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        let client: any TransportClient =
            carrier == .sharedMemory
            ? try SharedMemoryClient(socketPath: service.socketPath, key: service.key, ringCapacity: 2 << 20)
            : try service.connect()
        defer { client.close() }
        var expected: [UInt64: [UInt8]] = [:]
        for i in 0..<100 {
            let payload = [UInt8](repeating: UInt8(i), count: 100 << 10)
            expected[try client.send(opcode: TestOp.echo, payload: .bytes(payload))] = payload
        }
        while !expected.isEmpty {
            let response = try client.receive(requestID: nil, timeoutNanos: 10_000_000_000)
            let want = expected.removeValue(forKey: response.requestID)
            #expect(want != nil)
            #expect(try response.get() == .bytes(want ?? []))
        }
    }

    @Test("requests lost with the connection are answered unavailable, one by one", arguments: Carrier.allCases)
    func lostRequests(carrier: Carrier) throws {
        let service = try TestService(carrier)
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [1]) == .bytes([1]))
        service.stop()
        // Sent into a connection that is going away: for each request, either its send or its
        // receive must say unavailable (never an answer, a hang or a trap).
        var ids: [UInt64] = []
        var refusedSends = 0
        for i in 0..<2 {
            do {
                ids.append(try client.send(opcode: TestOp.echo, payload: .bytes([UInt8(i)])))
            } catch {
                #expect(error.code == .unavailable)
                refusedSends += 1
            }
        }
        var refusedReceives = 0
        for id in ids {
            do {
                _ = try client.receive(requestID: id, timeoutNanos: 10_000_000_000)
            } catch {
                #expect(error.code == .unavailable)
                refusedReceives += 1
            }
        }
        #expect(refusedSends + refusedReceives == 2, "\(carrier): a request to a stopped server did not fail")
    }

    @Test("connections past the server's maximum are refused; a freed slot is usable", arguments: Carrier.allCases)
    func connectionCap(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.connectionsMax = 2
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let first = try service.connect()
        let second = try service.connect()
        defer { second.close() }
        #expect(throws: TransportError.self) { _ = try service.connect() }
        #expect(CapturedLog.contains("refused", "more than 2 connections"))
        first.close()
        #expect(eventually { service.connectionCount == 1 })
        let third = try service.connect()
        defer { third.close() }
        #expect(try third.call(TestOp.echo, [3]) == .bytes([3]))
    }

    @Test("tcp: a peer that stops in the middle of a frame is closed after the frame timeout; a slow frame is not")
    func stalledFrame() throws {
        var limits = TransportLimits()
        limits.frameTimeoutNanos = 300_000_000
        let service = try TestService(.tcp, limits: limits)
        defer { service.stop() }
        let slow = try RawPeer(service)
        try slow.authenticate(key: service.key)
        let frame = slow.frameBytes(opcode: TestOp.echo, requestID: 1, payload: [1, 2, 3, 4])
        try slow.sendBytes(Array(frame[0..<10]))
        usleep(100_000)  // a third of the timeout: late, but in time
        try slow.sendBytes(Array(frame[10...]))
        let (header, payload) = try slow.receiveFrame()
        #expect(header.requestID == 1 && payload == [1, 2, 3, 4])

        let stuck = try RawPeer(service)
        try stuck.authenticate(key: service.key)
        let started = monotonicNanos()
        try stuck.sendBytes(Array(stuck.frameBytes(opcode: TestOp.echo, requestID: 2, payload: [9, 9])[0..<20]))
        #expect(stuck.serverClosed(), "a connection stuck mid-frame stayed open")
        let waited = monotonicNanos() - started
        #expect(waited >= 300_000_000 && waited < 3_000_000_000, "closed after \(waited / 1_000_000) ms")
        #expect(CapturedLog.contains("closed", service.logTag, "a frame stayed incomplete"))
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [5]) == .bytes([5]))
    }

    @Test("a send to a server that is alive but stuck fails with timedOut, not a hang", arguments: Carrier.allCases)
    func stuckServer(carrier: Carrier) throws {
        let service = try TestService(carrier)
        defer { service.stop() }
        var limits = TransportLimits()
        limits.sendTimeoutNanos = 300_000_000
        let client = try service.connect(limits: limits)
        defer { client.close() }
        _ = try client.send(opcode: TestOp.block, payload: .bytes([]))
        let payload = Payload.bytes([UInt8](repeating: 7, count: 64 << 10))
        var failure: TransportError? = nil
        var sent = 0
        let started = monotonicNanos()
        while sent < 1000 {
            do {
                _ = try client.send(opcode: TestOp.echo, payload: payload)
                sent += 1
            } catch {
                failure = error
                break
            }
        }
        let waited = monotonicNanos() - started
        #expect(failure?.code == .timedOut, "\(carrier): \(sent) sends, then \(String(describing: failure))")
        #expect(waited < 10_000_000_000, "\(carrier): the failing send took \(waited / 1_000_000) ms")
        service.gate.open()
    }

    @Test("tcp: a client that sends a burst and reads nothing makes the server keep requests, not replies")
    func burstBackPressure() throws {
        let service = try TestService(.tcp)
        defer { service.stop() }
        let raw = try RawPeer(service)
        try raw.authenticate(key: service.key)
        var burst: [UInt8] = []
        let count = 4000  // each asks for a 64 KiB reply: 250 MiB if all ran
        for id in 1...count { burst += raw.frameBytes(opcode: TestOp.big, requestID: UInt64(id), payload: []) }
        try raw.sendBytes(burst)
        // Wait until the server stops running requests (or plainly runs too many).
        var runs = 0
        var steady = 0
        let deadline = monotonicNanos() + 20_000_000_000
        while steady < 3 && runs < 1000 && monotonicNanos() < deadline {
            usleep(200_000)
            let now = service.gate.bigRuns
            steady = now == runs ? steady + 1 : 0
            runs = now
        }
        print("burst back-pressure: the server ran \(runs) of \(count) requests")
        // What can be queued: the socket buffers (a few MiB each way) plus one flush threshold.
        #expect(runs > 0 && runs < 1000, "the server ran \(runs) of \(count) requests for a peer that reads nothing")
    }

    @Test("tcp: a goodbye among requests held for back-pressure ends the connection once; each held request runs once")
    func goodbyeAmongHeldRequests() throws {
        let service = try TestService(.tcp)
        defer { service.stop() }
        let raw = try RawPeer(service)
        defer { raw.close() }
        try raw.authenticate(key: service.key)
        let before = 400  // 25 MiB of replies: most are held until the peer reads
        var burst: [UInt8] = []
        for id in 1...before { burst += raw.frameBytes(opcode: TestOp.big, requestID: UInt64(id), payload: []) }
        burst += raw.frameBytes(opcode: Opcode.goodbye, requestID: 0, payload: [])
        for id in 1...10 { burst += raw.frameBytes(opcode: TestOp.big, requestID: UInt64(before + id), payload: []) }
        try raw.sendBytes(burst)
        usleep(300_000)
        #expect(service.gate.bigRuns < before, "nothing was held back: the test does not reach the held path")
        // Reading lets the held requests run; the goodbye among them closes the connection while
        // they run (a close inside that loop used to trap the server).
        var replies = 0
        let deadline = monotonicNanos() + 20_000_000_000
        while monotonicNanos() < deadline, (try? raw.receiveFrame()) != nil { replies += 1 }
        #expect(service.gate.bigRuns == before, "\(service.gate.bigRuns) runs of \(before) requests before the goodbye")
        #expect(replies <= before)
        let client = try service.connect()
        defer { client.close() }
        #expect(try client.call(TestOp.echo, [7]) == .bytes([7]), "the server goes on serving")
    }

    @Test("limits that do not fit together are refused at start, on both carriers", arguments: Carrier.servers)
    func inconsistentLimits(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.framePayloadBytesMax = 64 << 10
        limits.chunkBytes = 128 << 10  // a chunk larger than any frame the peer accepts
        #expect {
            _ = try TestService(carrier, limits: limits)
        } throws: { error in
            (error as? TransportError)?.code == .invalid && "\(error)".contains("chunkBytes")
        }
    }

    @Test("tcp: a server that welcomes without proving the key is refused")
    func welcomeWithoutChallenge() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(listener, raw, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, raw, &length) == 0
            }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let fake = Int32(listener)
        startThread(name: "fake-server") {
            let fd = accept(fake, nil, nil)
            guard fd >= 0 else { return }
            var hello = [UInt8](repeating: 0, count: 24 + 34)
            _ = recv(fd, &hello, hello.count, Int32(MSG_WAITALL))
            let welcome = FrameHeader.encode(
                version: 1, opcode: Opcode.welcome, flags: .response, requestID: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
            _ = welcome.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            usleep(500_000)
            close(fd)
        }
        var reconnect = ReconnectPolicy()
        reconnect.attempts = 1
        #expect {
            _ = try TCPClient(port: port, key: TestService.defaultKey(), reconnect: reconnect)
        } throws: { error in
            (error as? TransportError)?.code == .authenticationFailed
        }
    }
}
