// `moraine serve` as a process, driven by the real Redis clients: redis-cli (commands, INFO, and
// --pipe), redis-benchmark, redis-py in a randomized oracle test with pipelined batches, raw
// sockets for malformed requests, SHUTDOWN, and SIGTERM followed by a reopen that finds every
// acknowledged write. Needs redis-tools and python3-redis (scripts/install-deps.sh installs them).
import Foundation
import Moraine
import MoraineSystem
@testable import MoraineRESP
import MoraineTestSupport
import Testing

/// A `moraine serve` child on a free port.
final class ServeProcess {
    let directory = TempDir("moraine-serve")
    let process = Process()
    private(set) var port = 0
    private(set) var metricsPort = 0

    init(extra: [String] = []) throws {
        launchDyingWithTests(
            process, moraineExecutablePath(), ["serve", "--db", directory.file("db"), "--listen", "127.0.0.1:0"] + extra)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("listening on "), let port = text.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw MoraineError(.unavailable, "moraine serve said '\(text)'")
        }
        self.port = port
        // With --metrics, the next line says where /metrics is.
        if extra.contains("--metrics") {
            line = []
            while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
            let text = String(decoding: line, as: UTF8.self)
            guard text.hasPrefix("metrics "), let port = text.split(separator: ":").last.flatMap({ Int($0) }) else {
                throw MoraineError(.unavailable, "moraine serve said '\(text)' for its metrics")
            }
            metricsPort = port
        }
    }

    func stop(_ signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        directory.remove()
    }
}

/// Runs a tool to its end with `input`; its stdout lines, stderr and status.
func runTool(_ path: String, _ arguments: [String], input: [UInt8] = []) throws -> (out: [String], err: String, status: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    let writer = Thread {
        stdin.fileHandleForWriting.write(Data(input))
        try? stdin.fileHandleForWriting.close()
    }
    writer.start()
    let out = stdout.fileHandleForReading.readDataToEndOfFile()
    let err = stderr.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    // Lines split on the byte: "\r\n" is one Character to Swift, and INFO's lines end in it.
    var lines = Array(out).split(separator: 10, omittingEmptySubsequences: false).map { line in
        String(decoding: line.last == 13 ? line.dropLast() : line, as: UTF8.self)
    }
    if lines.last == "" { lines.removeLast() }
    return (lines, String(decoding: err, as: UTF8.self), process.terminationStatus)
}

/// A plain TCP connection for raw requests.
final class RawConnection {
    let descriptor: Int32

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw MoraineError(.unavailable, "connect to \(port): errno \(errno)") }
    }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress!, $0.count) }
    }

    /// What arrives until `expected` bytes came, the peer closed, or 5 s passed.
    func receive(atLeast expected: Int) -> (text: String, closed: Bool) {
        var all: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while all.count < expected {
            let n = read(descriptor, &buffer, buffer.count)
            if n <= 0 { return (String(decoding: all, as: UTF8.self), n == 0) }
            all += buffer[0..<n]
        }
        return (String(decoding: all, as: UTF8.self), false)
    }

    deinit { close(descriptor) }
}

@Suite("moraine serve with Redis clients", .serialized)
struct RESPServeTests {
    static let redisCLI = "/usr/bin/redis-cli"
    static let redisBenchmark = "/usr/bin/redis-benchmark"
    /// Debian's python3, which python3-redis installs into.
    static let python = "/usr/bin/python3"

    static func cli(_ server: ServeProcess, _ words: String...) throws -> [String] {
        try runTool(redisCLI, ["-p", String(server.port)] + words).out
    }

    @Test("redis-cli: commands, INFO, CLIENT, and --pipe of 5000 writes")
    func redisCLI() throws {
        let server = try ServeProcess()
        #expect(try Self.cli(server, "SET", "greeting", "hello world") == ["OK"])
        #expect(try Self.cli(server, "GET", "greeting") == ["hello world"])
        #expect(try Self.cli(server, "INCRBY", "n", "5") == ["5"])
        #expect(try Self.cli(server, "MGET", "greeting", "missing", "n") == ["hello world", "", "5"])
        #expect(try Self.cli(server, "SET", "k", "v", "EX", "10").first?.contains("no TTL") == true)
        #expect(try Self.cli(server, "INFO", "keyspace").contains { $0.hasPrefix("db0:keys=") })
        #expect(try Self.cli(server, "INFO").contains { $0.hasPrefix("level0:files=") })
        var requests: [UInt8] = []
        for i in 0..<5000 {
            RESPReply.array([.bulk("SET"), .bulk("piped:\(i)"), .bulk("value \(i)")]).encode(into: &requests)
        }
        let piped = try runTool(Self.redisCLI, ["-p", String(server.port), "--pipe"], input: requests)
        #expect(piped.status == 0 && piped.out.contains { $0.contains("errors: 0, replies: 5000") }, "\(piped.out) \(piped.err)")
        #expect(try Self.cli(server, "GET", "piped:4999") == ["value 4999"])
        let dbsize = Int(try Self.cli(server, "DBSIZE").first ?? "") ?? 0
        #expect(dbsize >= 5002, "DBSIZE \(dbsize)")
        #expect(server.stop() == 0)
    }

    @Test("redis-benchmark runs SET, GET, MSET and INCR, pipelined, with no error")
    func redisBenchmark() throws {
        let server = try ServeProcess()
        let run = try runTool(
            Self.redisBenchmark, ["-p", String(server.port), "-n", "4000", "-c", "10", "-P", "16", "-t", "set,get,mset,incr", "-q"])
        #expect(run.status == 0, "\(run.err)")
        for name in ["SET", "GET", "MSET", "INCR"] {
            #expect(run.out.contains { $0.contains(name) && $0.contains("requests per second") }, "\(name) missing: \(run.out) \(run.err)")
        }
        #expect(!run.out.joined().contains("ERR") && !run.err.contains("ERR"), "\(run.out) \(run.err)")
        // INCR's counter (redis-benchmark's key "counter:__rand_int__" is one key without -r).
        #expect(Int(try Self.cli(server, "GET", "counter:__rand_int__").first ?? "") == 4000)
        #expect(server.stop() == 0)
    }

    /// Runs the randomized redis-py oracle (pipelined batches of SET, GET, DEL, MGET, INCR,
    /// MSET, EXISTS, then a SCAN of every key) against the server on `port`; returns the model
    /// (every key and value the server acknowledged), or nil after recording what differed.
    static func redisPyOracle(port: Int, seed: UInt64) throws -> [String: [UInt8]]? {
        let script = """
            import random, sys, redis
            seed, port = int(sys.argv[1]), int(sys.argv[2])
            rng = random.Random(seed)
            r = redis.Redis(host="127.0.0.1", port=port)
            model = {}
            keys = ["k%d" % i for i in range(300)]
            for batch in range(150):
                pipe = r.pipeline(transaction=False)
                expected = []
                for _ in range(rng.randint(1, 40)):
                    op = rng.uniform(0, 1)
                    k = rng.choice(keys)
                    if op < 0.3:
                        v = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
                        pipe.set(k, v); model[k] = v; expected.append(True)
                    elif op < 0.55:
                        pipe.get(k); expected.append(model.get(k))
                    elif op < 0.65:
                        existed = k in model
                        pipe.delete(k); model.pop(k, None); expected.append(1 if existed else 0)
                    elif op < 0.75:
                        ks = [rng.choice(keys) for _ in range(rng.randint(1, 5))]
                        pipe.mget(ks); expected.append([model.get(x) for x in ks])
                    elif op < 0.85:
                        c = "c%d" % rng.randint(0, 9)
                        n = int(model.get(c, b"0")) + 1
                        pipe.incr(c); model[c] = str(n).encode(); expected.append(n)
                    elif op < 0.92:
                        pairs = {rng.choice(keys): str(rng.uniform(0, 1)).encode() for _ in range(rng.randint(1, 4))}
                        pipe.mset(pairs); model.update(pairs); expected.append(True)
                    else:
                        pipe.exists(k); expected.append(1 if k in model else 0)
                got = pipe.execute()
                if got != expected:
                    print("batch %d differs: %r != %r" % (batch, got, expected)); sys.exit(1)
            scanned = set(x.decode() for x in r.scan_iter(count=17))
            if scanned != set(model):
                print("scan differs: %d keys, model %d" % (len(scanned), len(model))); sys.exit(1)
            for k, v in model.items():
                print("%s %s" % (k, v.hex()))
            """
        let run = try runTool(Self.python, ["-c", script, String(seed), String(port)])
        guard run.status == 0 else {
            Issue.record("redis-py oracle, seed \(seed): \(run.out.prefix(3)) \(run.err)")
            return nil
        }
        return Dictionary(
            uniqueKeysWithValues: run.out.compactMap { line -> (String, [UInt8])? in
                let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { return nil }
                var bytes: [UInt8] = []
                var index = parts[1].startIndex
                while index < parts[1].endIndex {
                    let next = parts[1].index(index, offsetBy: 2)
                    bytes.append(UInt8(parts[1][index..<next], radix: 16)!)
                    index = next
                }
                return (String(parts[0]), bytes)
            })
    }

    @Test("redis-py: a randomized oracle test in pipelined batches, then SIGTERM and a reopen with every write")
    func redisPy() throws {
        let server = try ServeProcess()
        let seed = SeededRandom.testSeed()
        let model = try #require(try Self.redisPyOracle(port: server.port, seed: seed))
        #expect(!model.isEmpty)
        // SIGTERM: a clean stop; the reopened database holds every acknowledged write.
        #expect(server.stop(SIGTERM) == 0)
        let db = try Database(path: server.directory.file("db"))
        defer { try? db.close() }
        for (key, value) in model { #expect(try db.get(Array(key.utf8)) == value, "\(key), seed \(seed)") }
    }

    @Test("a malformed request gets a protocol error and the connection closes; a bad command does not close it; SHUTDOWN stops the server")
    func malformedAndShutdown() throws {
        let open = try ServeProcess()
        let connection = try RawConnection(port: open.port)
        connection.send("GET\r\nPING\r\n")
        let answer = connection.receive(atLeast: "-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n".utf8.count)
        #expect(answer.text == "-ERR wrong number of arguments for 'get' command\r\n+PONG\r\n", "\(answer)")
        connection.send("*1\r\n$x\r\n")
        let broken = connection.receive(atLeast: 1 << 20)
        #expect(broken.text == "-ERR Protocol error: invalid bulk length\r\n" && broken.closed, "\(broken)")
        // The server goes on for everyone else.
        #expect(try Self.cli(open, "PING") == ["PONG"])
        #expect(try runTool(Self.redisCLI, ["-p", String(open.port), "SHUTDOWN"]).status == 0)
        open.process.waitUntilExit()
        #expect(open.process.terminationStatus == 0)
    }

    @Test("with --requirepass-file, redis-cli needs the password")
    func password() throws {
        let directory = TempDir("moraine-serve-pass")
        defer { directory.remove() }
        try "s3cret\n".write(toFile: directory.file("pass"), atomically: true, encoding: .utf8)
        let server = try ServeProcess(extra: ["--requirepass-file", directory.file("pass")])
        #expect(try Self.cli(server, "GET", "k").first?.hasPrefix("NOAUTH") == true)
        let authed = try runTool(Self.redisCLI, ["-p", String(server.port), "--no-auth-warning", "-a", "s3cret", "SET", "k", "v"])
        #expect(authed.out == ["OK"], "\(authed)")
        let wrong = try runTool(Self.redisCLI, ["-p", String(server.port), "--no-auth-warning", "-a", "nope", "GET", "k"])
        #expect(wrong.out.joined().contains("WRONGPASS") || wrong.err.contains("WRONGPASS"), "\(wrong)")
        #expect(server.stop() == 0)
    }
}
