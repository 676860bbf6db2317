// The transport under the four attacks an outside probe found, each against a live server:
// strangers flooding the connection slots (a real attacker process), a process out of file
// descriptors (a real server process under a lowered RLIMIT_NOFILE), peers with the key pinning
// memory with chunked messages that never finish, and a FIFO given as the key file. Each test
// checks that a well-behaved client is served throughout and reads what it can of the server
// from /proc. Every loop is bounded in count and time.
import Foundation
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Transport under flood")
struct TransportFloodTests {
    init() { _ = CapturedLog.installed }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    @Test("strangers flooding the handshake slots never keep an authenticated client out", arguments: Carrier.servers)
    func strangerFlood(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.handshakesMax = 8
        limits.handshakesPerAddressMax = 4
        limits.connectionsMax = 16
        limits.refusalLogIntervalNanos = 500_000_000
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        // The attacker is its own process (its own address for shared memory: a process id) on
        // its own loopback address for TCP, opening connections as fast as it can and holding 64.
        let flood = Process()
        flood.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let script = Self.fixtures.appendingPathComponent("connection_flood.py").path
        flood.arguments =
            carrier == .tcp
            ? ["python3", script, "tcp", "127.0.0.1", String(service.port), "127.0.0.2", "64", "3"]
            : ["python3", script, "unix", service.socketPath, "64", "3"]
        let output = Pipe()
        flood.standardOutput = output
        try flood.run()
        defer {
            if flood.isRunning { kill(flood.processIdentifier, SIGKILL) }
        }
        #expect(eventually(seconds: 5) { service.admissionCounts.handshaking >= limits.handshakesPerAddressMax })

        var served = 0
        var refused: [String] = []
        var mostHandshaking = 0
        var mostOpen = 0
        let end = monotonicNanos() + 2_000_000_000
        while monotonicNanos() < end && served + refused.count < 200 {
            do {
                let client = try service.connect()
                defer { client.close() }
                #expect(try client.call(TestOp.echo, [UInt8(served & 0xff)]) == .bytes([UInt8(served & 0xff)]))
                served += 1
            } catch {
                refused.append("\(error)")
            }
            mostHandshaking = max(mostHandshaking, service.admissionCounts.handshaking)
            mostOpen = max(mostOpen, service.connectionCount)
            sleepNanos(20_000_000)
        }
        flood.waitUntilExit()
        let counts = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let opened = Int(counts.split(separator: " ").first ?? "") ?? 0
        print("\(carrier) flood: the attacker opened \(opened) connections; \(served) good calls served, \(refused.count) refused")
        #expect(opened >= 200, "\(carrier): the flood opened only \(opened) connections; it did not test anything")
        #expect(refused.isEmpty, "\(carrier): a good client was refused during the flood: \(refused.prefix(3))")
        #expect(served >= 20)
        #expect(mostHandshaking <= limits.handshakesMax)
        // Evicted connections close a moment after they are evicted, longer on a loaded machine
        // (the suite runs its tests in parallel; 37 and 54 were seen there against caps of 24):
        // what is open stays within a few times the caps, against the thousands the attacker opened.
        #expect(
            mostOpen <= 4 * (limits.handshakesMax + limits.connectionsMax), "\(carrier): \(mostOpen) connections open")
        // Thousands of drops, a few lines per half second: a window's first lines, then a count.
        #expect(CapturedLog.contains("more refused or dropped", "not logged one by one", seconds: 2))
        let lines = CapturedLog.count("dropped", carrier == .tcp ? "127.0.0.1:\(service.port)" : service.socketPath)
        #expect(lines <= 60, "\(carrier): \(lines) log lines for \(opened) connections")
    }

    @Test("out of file descriptors, a server backs off accept (little CPU, one log line) and recovers")
    func descriptorExhaustion() throws {
        let directory = TempDir("moraine-emfile")
        defer { directory.remove() }
        try ClusterKey.generate(path: directory.file("cluster.key"))
        let key = try ClusterKey.load(path: directory.file("cluster.key"))
        // A server process with a limit of 64 descriptors, 30 of them held by what it inherits
        // (as a storage node's open tables would be): its caps fit under 64, but fewer than
        // them are free, so accepting runs out of descriptors first.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/bin/bash")
        server.arguments = [
            "-c",
            "ulimit -n 64 && for fd in $(seq 20 49); do eval \"exec $fd</dev/null\"; done; "
                + "exec \"$0\" transport-bench --serve --dir \"$1\" 2>\"$1/stderr\"",
            moraineExecutablePath(), directory.path,
        ]
        try server.run()
        defer {
            // SIGKILL: a child of the test runner may inherit SIGTERM blocked.
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let port = try Self.readyPort(directory: directory.path)
        var clientLimits = TransportLimits()
        clientLimits.handshakeNanos = 1_000_000_000
        var clients: [DirectTCPClient] = []
        var firstFailure: String? = nil
        for _ in 0..<40 {
            do {
                let client = try DirectTCPClient(port: port, key: key, limits: clientLimits)
                #expect(try client.call(Self.benchEcho, [1]) == .bytes([1]))
                clients.append(client)
            } catch {
                firstFailure = "\(error)"
                break
            }
        }
        print("descriptor exhaustion: \(clients.count) clients served before accept ran out (\(firstFailure ?? "none"))")
        #expect(firstFailure != nil, "the server never ran out of descriptors; the test tested nothing")
        #expect(clients.count >= 5)
        // Connections waiting in the backlog keep accept failing while the CPU is measured.
        let waiting = (0..<3).compactMap { _ in try? RawPeer(tcpPort: port) }
        let before = try Self.cpuSeconds(pid: server.processIdentifier)
        sleepNanos(2_000_000_000)
        let used = try Self.cpuSeconds(pid: server.processIdentifier) - before
        print("descriptor exhaustion: the server used \(used) s of CPU in 2 s")
        #expect(used < 0.4, "out of descriptors, the server used \(used) s of CPU in 2 s (it spins)")
        let log = try String(contentsOfFile: directory.file("stderr"), encoding: .utf8)
        #expect(log.components(separatedBy: "out of file descriptors").count - 1 == 1, "log: \(log.suffix(2000))")
        // Descriptors freed: accepting works again and a new client is served.
        for client in clients { client.close() }
        for peer in waiting { peer.close() }
        clients.removeAll()
        var recovered = false
        for _ in 0..<20 where !recovered {
            if let client = try? DirectTCPClient(port: port, key: key, limits: clientLimits) {
                recovered = (try? client.call(Self.benchEcho, [2])) == .bytes([2])
                client.close()
            }
        }
        #expect(recovered, "the server did not serve again once descriptors were free")
        let after = try String(contentsOfFile: directory.file("stderr"), encoding: .utf8)
        #expect(after.contains("accepting again"), "log: \(after.suffix(2000))")
    }

    @Test("chunked messages that never finish are timed out, and all connections share one byte budget", arguments: Carrier.servers)
    func halfJoinedMessages(carrier: Carrier) throws {
        var limits = TransportLimits()
        limits.chunkTimeoutNanos = 400_000_000
        let budget = MessageBudget(bytesMax: 1 << 20)
        let service = try TestService(carrier, limits: limits, budget: budget)
        defer { service.stop() }
        let chunk = [UInt8](repeating: 7, count: 200 << 10)
        let first = try RawPeer(service)
        try first.authenticate(key: service.key)
        for _ in 0..<4 { try first.sendFrame(opcode: TestOp.echo, flags: .more, requestID: 1, payload: chunk) }
        #expect(eventually { budget.bytesHeld == 800 << 10 }, "held \(budget.bytesHeld)")
        // A second peer with the key: its chunks would take the process past the budget.
        let second = try RawPeer(service)
        try second.authenticate(key: service.key)
        for _ in 0..<2 { try second.sendFrame(opcode: TestOp.echo, flags: .more, requestID: 1, payload: chunk) }
        #expect(second.serverClosed(), "\(carrier): a connection past the process's budget stayed open")
        #expect(CapturedLog.contains("closed", service.logTag, "process's budget"))
        // The first one stops sending: after the chunk timeout it is closed and its bytes freed.
        #expect(first.serverClosed(seconds: 3), "\(carrier): a message without its next chunk was held")
        #expect(CapturedLog.contains("closed", service.logTag, "waited", "for its next chunk"))
        #expect(eventually { budget.bytesHeld == 0 }, "\(carrier): \(budget.bytesHeld) bytes still held")
        // A well-behaved client sends a large message (chunked by its carrier) and gets it back.
        let client = try service.connect()
        defer { client.close() }
        let large = (0..<(900 << 10)).map { UInt8(truncatingIfNeeded: $0) }
        #expect(try client.call(TestOp.echo, large) == .bytes(large))
        #expect(budget.bytesHeld == 0)
    }

    @Test("peers with the key cannot pin a server process's memory with messages they never finish")
    func memoryPinning() throws {
        let directory = TempDir("moraine-pinning")
        defer { directory.remove() }
        try ClusterKey.generate(path: directory.file("cluster.key"))
        let key = try ClusterKey.load(path: directory.file("cluster.key"))
        // A server process with the default limits: 128 MiB per connection, 256 MiB for the
        // process, 10 s for a half-joined message to get its next chunk.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: moraineExecutablePath())
        server.arguments = ["transport-bench", "--serve", "--dir", directory.path]
        server.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try server.run()
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let port = try Self.readyPort(directory: directory.path)
        let baseline = try Self.residentBytes(pid: server.processIdentifier)
        // Eight peers each start a 60 MiB message (under the 64 MiB a message may have) and never
        // finish it: 480 MiB if all were held, as they were before the process budget.
        let chunk = [UInt8](repeating: 0x42, count: 1 << 20)
        var peers: [RawPeer] = []
        var refused = 0
        for _ in 0..<8 {
            let peer = try RawPeer(tcpPort: port)
            try peer.authenticate(key: key)
            do {
                for _ in 0..<60 { try peer.sendFrame(opcode: Self.benchEcho, flags: .more, requestID: 1, payload: chunk) }
            } catch {
                refused += 1  // the server closed it while it was still sending
            }
            peers.append(peer)
        }
        sleepNanos(500_000_000)
        let held = try Self.residentBytes(pid: server.processIdentifier)
        let closed = peers.filter { $0.serverClosed(seconds: 0.2) }.count
        print("memory pinning: resident \(baseline >> 20) MiB before, \(held >> 20) MiB with 8 peers; \(closed) closed")
        // 256 MiB hold four 60 MiB messages; the fifth peer passes the budget, and so do the rest.
        #expect(closed == 4, "\(closed) of 8 connections sending 60 MiB each were refused; 4 should be")
        #expect(held - baseline < 330 << 20, "the server grew by \((held - baseline) >> 20) MiB")
        // Without their next chunk, the rest are closed after the chunk timeout and the memory is freed.
        #expect(peers.allSatisfy { $0.serverClosed(seconds: 15) }, "a half-joined message outlived the chunk timeout")
        #expect(eventually(seconds: 5) { ((try? Self.residentBytes(pid: server.processIdentifier)) ?? .max) - baseline < 64 << 20 })
        let client = try DirectTCPClient(port: port, key: key)
        defer { client.close() }
        #expect(try client.call(Self.benchEcho, [9]) == .bytes([9]))
        #expect(refused <= closed)
    }

    @Test("a key file that is a FIFO, a directory or a socket is refused at once, naming what it is")
    func keyFileKinds() throws {
        let directory = TempDir("moraine-keykinds")
        defer { directory.remove() }
        let fifo = directory.file("fifo.key")
        #expect(mkfifo(fifo, 0o600) == 0)
        let started = monotonicNanos()
        do {
            _ = try ClusterKey.load(path: fifo)
            Issue.record("a FIFO was accepted as a key")
        } catch {
            #expect(error.code == .invalid)
            #expect(error.message.contains("is a FIFO"), "\(error)")
        }
        #expect(monotonicNanos() - started < 1_000_000_000, "loading a FIFO waited for a writer")
        let folder = directory.file("keys")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        #expect(chmod(folder, 0o700) == 0)
        do {
            _ = try ClusterKey.load(path: folder)
            Issue.record("a directory was accepted as a key")
        } catch {
            #expect(error.message.contains("is a directory"), "\(error)")
        }
        let socketPath = directory.file("sock.key")
        let listener = try UnixSocket.listen(path: socketPath)
        defer { listener.close() }
        #expect(throws: TransportError.self) { _ = try ClusterKey.load(path: socketPath) }
        do {
            _ = try ClusterKey.load(path: directory.file("missing.key"))
        } catch {
            #expect(error.code == .notFound)
        }
    }

    @Test("connection caps are fitted under the descriptor limit, leaving room for files")
    func descriptorFitting() {
        let defaults = TransportLimits()
        #expect(defaults.fitted(toDescriptors: 1 << 20).note == nil)
        let (fitted, note) = defaults.fitted(toDescriptors: 1024)
        #expect(note != nil)
        #expect(fitted.connectionsMax + fitted.handshakesMax <= 1024 - 256)
        #expect(fitted.handshakesMax >= 1 && fitted.connectionsMax >= 1)
        #expect(fitted.handshakesPerAddressMax <= fitted.handshakesMax)
        let tiny = defaults.fitted(toDescriptors: 16).limits
        #expect(tiny.connectionsMax + tiny.handshakesMax <= 8)
        #expect(tiny.connectionsMax >= 1 && tiny.handshakesMax >= 1)
        #expect(DescriptorLimit.raised.soft == DescriptorLimit.raised.hard, "the soft limit was not raised to the hard one")
    }

    @Test("a log throttle writes a burst per interval, then one line counting the rest with a sample")
    func logThrottle() {
        let clock = TestClock()
        let throttle = LogThrottle(subject: "test refusals", intervalNanos: 1_000, burst: 3, clock: { clock.now })
        clock.now = 10_000
        for i in 0..<100 { throttle.info("throttle-test line \(i)") }
        #expect(CapturedLog.count("throttle-test line") == 3)
        #expect(throttle.suppressedCount == 97)
        clock.now = 11_500
        throttle.flush()
        #expect(CapturedLog.contains("97 more test refusals", "the latest: throttle-test line 99", seconds: 0))
        #expect(throttle.suppressedCount == 0)
        throttle.info("throttle-test line after")
        #expect(CapturedLog.count("throttle-test line after") == 1)
    }

    // MARK: helpers

    /// TransportBench's echo opcode (the server process of `transport-bench --serve`).
    static let benchEcho: UInt8 = 0x10

    /// The TCP port from a `transport-bench --serve` run directory's `ready` file (second line).
    static func readyPort(directory: String) throws -> Int {
        for _ in 0..<300 {
            if let text = try? String(contentsOfFile: directory + "/ready", encoding: .utf8) {
                let lines = text.split(separator: "\n")
                if lines.count >= 2, let port = Int(lines[1]) { return port }
            }
            sleepNanos(50_000_000)
        }
        let log = (try? String(contentsOfFile: directory + "/stderr", encoding: .utf8)) ?? ""
        throw TransportError(.unavailable, "the server process did not start: \(log)")
    }

    /// Resident memory of a process, from /proc/PID/status (VmRSS).
    static func residentBytes(pid: Int32) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kibibytes = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { throw TransportError(.invalid, "/proc/\(pid)/status has no VmRSS") }
        return kibibytes << 10
    }

    /// User plus system CPU time of a process, in seconds, from /proc/PID/stat.
    static func cpuSeconds(pid: Int32) throws -> Double {
        let text = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name (which may hold spaces) start after the last ')'.
        guard let close = text.lastIndex(of: ")") else { throw TransportError(.invalid, "/proc/\(pid)/stat: \(text)") }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw TransportError(.invalid, "/proc/\(pid)/stat: \(text)")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// A clock a test moves by hand.
final class TestClock: @unchecked Sendable {
    private let lock = ConditionLock()
    private var value: Int64 = 0
    var now: Int64 {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}

extension CapturedLog {
    /// Lines logged so far that contain every one of `parts`.
    static func count(_ parts: String...) -> Int {
        lines.snapshot().filter { line in parts.allSatisfy { line.contains($0) } }.count
    }
}
