// The Redis-protocol front end: the parser on whole, split and broken requests; the commands
// against an in-process service (SET's options, atomic INCR under threads, SCAN across a
// compaction, AUTH); and `moraine serve` as a process driven by the real clients — redis-cli
// (commands and --pipe), redis-benchmark, and redis-py in a randomized oracle test with pipelined
// batches (seeded: MORAINE_SEED replays it) — plus raw sockets for malformed requests.
import Foundation
import Moraine
@testable import MoraineRESP
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@Suite("RESP parser")
struct RESPParserTests {
    func parse(_ text: String, limits: RESPLimits = RESPLimits()) throws -> (commands: [[String]], consumed: Int) {
        var parser = RESPParser(limits: limits)
        let bytes = Array(text.utf8)
        let (commands, consumed) = try bytes.withUnsafeBytes { raw throws(RESPProtocolError) in try parser.parse(raw) }
        return (commands.map { $0.map { String(decoding: $0, as: UTF8.self) } }, consumed)
    }

    @Test("multibulk and inline requests, pipelined, with quotes and empty lines")
    func requests() throws {
        let (commands, consumed) = try parse("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n\r\nset \"a b\" \"c\\\"d\"\n")
        #expect(commands == [["GET", "k"], ["SET", "k", ""], ["PING"], ["set", "a b", "c\"d"]])
        #expect(consumed == Array("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n\r\nset \"a b\" \"c\\\"d\"\n".utf8).count)
    }

    @Test("a request split at every byte is framed once it is whole, and only then")
    func splitRequests() throws {
        let request = Array("*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$11\r\nhello world\r\n".utf8)
        var parser = RESPParser()
        var pending: [UInt8] = []
        var framed: [[[UInt8]]] = []
        for byte in request {
            pending.append(byte)
            let (commands, consumed) = try pending.withUnsafeBytes { raw throws(RESPProtocolError) in try parser.parse(raw) }
            pending.removeFirst(consumed)
            framed += commands
            if framed.isEmpty { #expect(consumed == 0) }
        }
        #expect(framed == [[Array("SET".utf8), Array("hello".utf8), Array("hello world".utf8)]])
        #expect(pending.isEmpty)
    }

    @Test("broken requests and requests past a limit are protocol errors naming what is wrong")
    func brokenRequests() throws {
        var small = RESPLimits()
        small.bulkBytesMax = 16
        small.argumentsMax = 4
        small.inlineBytesMax = 32
        let cases: [(String, String)] = [
            ("*x\r\n", "invalid multibulk length"), ("*5\r\n", "invalid multibulk length"), ("*1\r\n+GET\r\n", "expected '$'"),
            ("*1\r\n$99\r\n", "invalid bulk length"), ("*1\r\n$-2\r\n", "invalid bulk length"),
            ("*1\r\n$3\r\nGETxx", "not followed by CRLF"), (String(repeating: "a", count: 40), "too big inline request"),
            ("set \"a\n", "unbalanced quotes"),
        ]
        for (request, expected) in cases {
            let error = #expect(throws: RESPProtocolError.self) { try parse(request, limits: small) }
            #expect(error?.message.contains(expected) == true, "\(request.debugDescription): \(String(describing: error))")
        }
    }
}

@Suite("RESP commands")
struct RESPCommandTests {
    static func service(_ dir: TempDir, password: String? = nil) throws -> (RESPService, Database) {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        let db = try Database(path: dir.path, options: options)
        var settings = RESPService.Settings()
        settings.password = password
        return (RESPService(database: db, settings: settings), db)
    }

    static func run(_ service: RESPService, _ session: RESPSession, _ words: String...) -> RESPReply {
        service.execute(words.map { Array($0.utf8) }, session: session)
    }

    @Test("a front end whose database cannot open yet answers -ERR with the reason at every command, then serves it once it opens")
    func databaseNotYetOpen() throws {
        let dir = TempDir("moraine-resp")
        defer { dir.remove() }
        let (_, db) = try Self.service(dir)
        defer { try? db.close() }
        // What a compute node's database does while a role of its cluster restarts.
        let opens = Mutex(false)
        let service = RESPService(resolving: {
            guard opens.withLock({ $0 }) else {
                throw MoraineError(.unavailable, "database redis cannot open yet: the storage node restarts")
            }
            return db
        })
        let s = service.open(address: "test")!
        for words in [["SET", "k", "v"], ["GET", "k"]] {
            guard case .error(let message) = service.execute(words.map { Array($0.utf8) }, session: s) else {
                Issue.record("\(words) was answered without a database")
                continue
            }
            #expect(message.hasPrefix("ERR ") && message.contains("cannot open yet"), "\(message)")
        }
        // A pipelined run is refused command by command, nothing written.
        let pipelined = service.execute([["SET", "a", "1"], ["SET", "b", "2"]].map { $0.map { Array($0.utf8) } }, session: s)
        #expect(String(decoding: pipelined, as: UTF8.self).components(separatedBy: "cannot open yet").count == 3)
        // INFO still answers, with zeros for the database.
        guard case .bulk(let info) = Self.run(service, s, "INFO", "keyspace") else { throw MoraineError(.invalid, "INFO did not answer") }
        #expect(String(decoding: info ?? [], as: UTF8.self).contains("db0:keys=0"))
        // Once it opens, every command is served, and the failed ones wrote nothing.
        #expect(!service.resolveNow())
        opens.withLock { $0 = true }
        #expect(Self.run(service, s, "SET", "k", "v") == .ok)
        #expect(Self.run(service, s, "GET", "k") == .bulk("v"))
        #expect(try db.get(Array("a".utf8)) == nil)
        #expect(service.totalCommands >= 6)
    }

    @Test("SET with NX, XX and GET; GET, DEL, EXISTS, MGET, MSET, INCR; errors in Redis's words")
    func strings() throws {
        let dir = TempDir("moraine-resp")
        defer { dir.remove() }
        let (service, db) = try Self.service(dir)
        defer { try? db.close() }
        let s = service.open(address: "test")!
        #expect(Self.run(service, s, "SET", "k", "1") == .ok)
        #expect(Self.run(service, s, "SET", "k", "2", "NX") == .null)
        #expect(Self.run(service, s, "SET", "new", "x", "XX") == .null)
        #expect(Self.run(service, s, "SET", "k", "3", "XX", "GET") == .bulk("1"))
        #expect(Self.run(service, s, "SET", "k", "4", "NX", "XX") == .error("ERR syntax error"))
        if case .error(let message) = Self.run(service, s, "SET", "k", "4", "EX", "10") {
            #expect(message.contains("no TTL"))
        } else {
            Issue.record("SET EX was not refused")
        }
        #expect(Self.run(service, s, "GET", "k") == .bulk("3"))
        #expect(Self.run(service, s, "MSET", "a", "1", "b", "2") == .ok)
        #expect(Self.run(service, s, "MSET", "a", "1", "b") == .error("ERR wrong number of arguments for 'mset' command"))
        #expect(Self.run(service, s, "MGET", "a", "nope", "b") == .array([.bulk("1"), .null, .bulk("2")]))
        #expect(Self.run(service, s, "EXISTS", "a", "a", "nope") == .integer(2))
        #expect(Self.run(service, s, "DEL", "a", "nope", "a") == .integer(1))
        #expect(Self.run(service, s, "GET", "a") == .null)
        #expect(Self.run(service, s, "INCR", "n") == .integer(1))
        #expect(Self.run(service, s, "INCRBY", "n", "41") == .integer(42))
        #expect(Self.run(service, s, "DECRBY", "n", "2") == .integer(40))
        #expect(Self.run(service, s, "INCR", "k") == .integer(4))
        #expect(Self.run(service, s, "SET", "text", "abc") == .ok)
        #expect(Self.run(service, s, "INCR", "text") == .error("ERR value is not an integer or out of range"))
        #expect(Self.run(service, s, "SET", "big", String(Int.max)) == .ok)
        #expect(Self.run(service, s, "INCR", "big") == .error("ERR increment or decrement would overflow"))
        #expect(Self.run(service, s, "GET") == .error("ERR wrong number of arguments for 'get' command"))
        if case .error(let message) = Self.run(service, s, "NOPE", "x") {
            #expect(message.hasPrefix("ERR unknown command 'NOPE'"))
        } else {
            Issue.record("an unknown command was not refused")
        }
        #expect(Self.run(service, s, "SELECT", "0") == .ok && Self.run(service, s, "SELECT", "1") == .error("ERR DB index is out of range"))
        #expect(Self.run(service, s, "FLUSHDB").description.contains("disabled"))
        #expect(Self.run(service, s, "PING") == .simple("PONG") && Self.run(service, s, "ECHO", "hi") == .bulk("hi"))
        // An oversized key is the engine's error, and the session goes on.
        if case .error(let message) = service.execute([Array("SET".utf8), [UInt8](repeating: 1, count: 70_000), [1]], session: s) {
            #expect(message.contains("exceeds the limit"))
        } else {
            Issue.record("an oversized key was taken")
        }
        #expect(Self.run(service, s, "GET", "k") == .bulk("4"))
    }

    @Test("a pipeline's runs of writes and reads answer exactly as the same commands one at a time")
    func coalescedRuns() throws {
        let seed = SeededRandom.testSeed()
        var random = SeededRandom(seed: seed)
        let left = TempDir("moraine-resp-runs-a")
        let right = TempDir("moraine-resp-runs-b")
        defer {
            left.remove()
            right.remove()
        }
        let third = TempDir("moraine-resp-runs-c")
        defer { third.remove() }
        let (batched, db1) = try Self.service(left)
        let (single, db2) = try Self.service(right)
        let (queued, db3) = try Self.service(third)
        defer {
            try? db1.close()
            try? db2.close()
            try? db3.close()
        }
        let s1 = batched.open(address: "a")!
        let s2 = single.open(address: "b")!
        let s3 = queued.open(address: "c")!
        var queuedRuns = 0
        let keys = (0..<12).map { "k\($0)" }
        func word(_ text: String) -> [UInt8] { Array(text.utf8) }
        for round in 0..<200 {
            var pipeline: [[[UInt8]]] = []
            for _ in 0..<Int.random(in: 1...24, using: &random) {
                let key = word(keys[Int.random(in: 0..<keys.count, using: &random)])
                let other = word(keys[Int.random(in: 0..<keys.count, using: &random)])
                switch Int.random(in: 0..<9, using: &random) {
                case 0: pipeline.append([word("SET"), key, word("\(Int.random(in: -5...5, using: &random))")])
                case 1: pipeline.append([word("SET"), key, word("text")])
                case 2: pipeline.append([word("INCR"), key])
                case 3: pipeline.append([word("INCRBY"), key, word(Bool.random(using: &random) ? "7" : "x")])
                case 4: pipeline.append([word("DECRBY"), key, word("\(Int.random(in: 0...3, using: &random))")])
                case 5: pipeline.append([word("DEL"), key, other, key])
                case 6: pipeline.append([word("MSET"), key, word("1"), other, word("2")])
                case 7: pipeline.append([word("GET"), key])
                default: pipeline.append([word("MGET"), key, other])
                }
            }
            let together = batched.execute(pipeline, session: s1)
            var apart: [UInt8] = []
            for command in pipeline { single.execute(command, session: s2).encode(into: &apart) }
            guard together == apart else {
                Issue.record("round \(round), seed \(seed): \(String(decoding: together, as: UTF8.self)) != \(String(decoding: apart, as: UTF8.self))")
                return
            }
            // As an event loop runs a batch of writes only: prepared, queued, answered on completion.
            var viaQueue: [UInt8]
            if let writes = queued.prepareWrites(pipeline, session: s3) {
                queuedRuns += 1
                let done = DispatchSemaphore(value: 0)
                let out = Mutex<[UInt8]?>(nil)
                queued.apply(writes) { bytes in
                    out.withLock { $0 = bytes }
                    done.signal()
                }
                done.wait()
                viaQueue = out.withLock { $0 } ?? queued.execute(pipeline, session: s3)
            } else {
                viaQueue = queued.execute(pipeline, session: s3)
            }
            guard viaQueue == apart else {
                Issue.record("queued, round \(round), seed \(seed): \(String(decoding: viaQueue, as: UTF8.self)) != \(String(decoding: apart, as: UTF8.self))")
                return
            }
        }
        #expect(queuedRuns > 10, "few pipelines were writes only: \(queuedRuns)")
        for key in keys {
            #expect(try db1.get(word(key)) == db2.get(word(key)), "\(key), seed \(seed)")
            #expect(try db3.get(word(key)) == db2.get(word(key)), "\(key), seed \(seed)")
        }
    }

    @Test("a batch of reads from memory answers as the usual path, and is refused where a key needs a file read")
    func readsFromMemory() throws {
        let dir = TempDir("moraine-resp-memory")
        defer { dir.remove() }
        var (service, db) = try Self.service(dir)
        func word(_ text: String) -> [UInt8] { Array(text.utf8) }
        var session = service.open(address: "a")!
        for i in 0..<3000 { _ = service.execute([word("SET"), word("t\(i)"), word("v\(i)")], session: session) }
        try db.flush()
        try db.close()
        (service, db) = try Self.service(dir)  // reopened: nothing cached, no table open
        defer { try? db.close() }
        session = service.open(address: "b")!
        _ = service.execute([word("SET"), word("m"), word("in memtable")], session: session)
        let fromMemtable: [[[UInt8]]] = [
            [word("GET"), word("m")], [word("MGET"), word("m"), word("nothing")], [word("EXISTS"), word("m"), word("m")],
            [word("PING")], [word("ECHO"), word("hi")], [word("get"), word("m")],
        ]
        #expect(service.executeFromMemory(fromMemtable, session: session) == service.execute(fromMemtable, session: session))
        let fromTables: [[[UInt8]]] = [[word("GET"), word("m")], [word("MGET"), word("t1"), word("t2999")], [word("EXISTS"), word("t7")]]
        #expect(service.executeFromMemory(fromTables, session: session) == nil, "tables not open: a file read is needed")
        let usual = service.execute(fromTables, session: session)  // reads the blocks, caching them
        #expect(String(decoding: usual, as: UTF8.self).contains("v2999"))
        #expect(service.executeFromMemory(fromTables, session: session) == usual)
        #expect(service.executeFromMemory([[word("GET")]], session: session) == nil, "a malformed command takes the usual path")
        #expect(service.executeFromMemory([[word("SET"), word("a"), word("b")]], session: session) == nil)
    }

    @Test("INCR from many threads at once loses no increment, also queued without waiting", arguments: [false, true])
    func atomicIncrements(queued: Bool) throws {
        let dir = TempDir("moraine-resp-incr")
        defer { dir.remove() }
        let (service, db) = try Self.service(dir)
        defer { try? db.close() }
        let threads = 8
        let each = 500
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let session = service.open(address: "t")!
            for i in 0..<each {
                if queued {
                    // As an event loop does: a run of INCRs prepared, queued, answered on completion.
                    let run = Array(repeating: [Array("INCR".utf8), Array("counter".utf8)], count: 4)
                    guard let writes = service.prepareWrites(run, session: session) else {
                        Issue.record("a run of INCRs was not prepared")
                        return
                    }
                    let applied = DispatchSemaphore(value: 0)
                    service.apply(writes) { out in
                        if out == nil { Issue.record("a queued run of INCRs failed") }
                        applied.signal()
                    }
                    applied.wait()
                } else {
                    _ = Self.run(service, session, "INCR", "counter")
                }
                if i % 50 == 0 { _ = Self.run(service, session, "SET", "other", "\(i)") }
            }
        }
        let session = service.open(address: "check")!
        #expect(Self.run(service, session, "GET", "counter") == .bulk(String(threads * each * (queued ? 4 : 1))))
    }

    @Test(
        "a pipelined run of plain SETs (its stripes shared; also queued without waiting, as on an event loop) never lands between an INCR's read and write",
        arguments: [0, 1, 2])
    func blindWritesWaitForReadModifyWrites(mode: Int) throws {
        let queued = mode > 0  // 1: the queueing thread may lead; 2: the write helper applies
        let dir = TempDir("moraine-resp-blind")
        defer { dir.remove() }
        let (service, db) = try Self.service(dir)
        defer { try? db.close() }
        @Sendable func word(_ text: String) -> [UInt8] { Array(text.utf8) }
        let rounds = 200
        let step = 1_000_000
        let increments = Atomic<Int>(0)
        let setterDone = Atomic<Bool>(false)
        let replies = Mutex<[Int]>([])
        let deadline = monotonicNanos() + 60_000_000_000
        // One thread increments the counter in pipelined runs of 16 INCRs (exclusive stripes);
        // another sets it to a new base in runs of plain SETs (shared stripes), each base after
        // the incrementer has moved on twice. A SET that slipped between a run's read and its
        // write would be overwritten unseen: no INCR would ever answer base + 1.
        let incrementer = Thread {
            let session = service.open(address: "incr")!
            while !setterDone.load(ordering: .acquiring) && monotonicNanos() < deadline {
                let out = service.execute(Array(repeating: [word("INCR"), word("counter")], count: 16), session: session)
                let values = String(decoding: out, as: UTF8.self).split(separator: "\r\n").compactMap { Int($0.dropFirst()) }
                replies.withLock { $0.append(contentsOf: values) }
                increments.add(values.count, ordering: .releasing)
            }
        }
        incrementer.start()
        let session = service.open(address: "set")!
        for round in 1...rounds where monotonicNanos() < deadline {
            let run: [[[UInt8]]] = [[word("SET"), word("other\(round)"), word("x")], [word("SET"), word("counter"), word("\(round * step)")]]
            if queued {
                let applied = DispatchSemaphore(value: 0)
                let writes = try #require(service.prepareWrites(run, session: session))
                service.apply(writes, lead: mode == 1) { out in
                    if out == nil { Issue.record("round \(round): the queued write failed") }
                    applied.signal()
                }
                applied.wait()
            } else {
                _ = service.execute(run, session: session)
            }
            let seen = increments.load(ordering: .acquiring)
            while increments.load(ordering: .acquiring) < seen + 32 && monotonicNanos() < deadline { sched_yield() }
        }
        setterDone.store(true, ordering: .releasing)
        while increments.load(ordering: .acquiring) >= 0 && !incrementer.isFinished && monotonicNanos() < deadline { usleep(1000) }
        #expect(monotonicNanos() < deadline, "the run took over a minute")
        let answered = Set(replies.withLock { $0 })
        let lost = (1...rounds).filter { !answered.contains($0 * step + 1) }
        #expect(lost.isEmpty, "SETs overwritten between an INCR's read and write: rounds \(lost.prefix(10))")
    }

    @Test("SCAN returns every key exactly once across a flush and a compaction, with MATCH and COUNT")
    func scanAcrossCompaction() throws {
        let dir = TempDir("moraine-resp-scan")
        defer { dir.remove() }
        let (service, db) = try Self.service(dir)
        defer { try? db.close() }
        let s = service.open(address: "scan")!
        for i in 0..<3000 { _ = Self.run(service, s, "SET", String(format: "key:%05d", i), "v\(i)") }
        for i in 0..<200 { _ = Self.run(service, s, "SET", "other:\(i)", "x") }
        var seen: [String] = []
        var cursor = "0"
        var rounds = 0
        repeat {
            guard case .array(let parts?) = Self.run(service, s, "SCAN", cursor, "MATCH", "key:*", "COUNT", "97"),
                case .bulk(let next?) = parts[0], case .array(let keys?) = parts[1]
            else {
                Issue.record("SCAN answered in the wrong shape")
                return
            }
            for case .bulk(let key?) in keys { seen.append(String(decoding: key, as: UTF8.self)) }
            cursor = String(decoding: next, as: UTF8.self)
            rounds += 1
            // Mid-scan, the tree changes under the cursor.
            if rounds == 5 { try db.flush() }
            if rounds == 10 { try db.compactRange() }
        } while cursor != "0" && rounds < 1000
        #expect(seen.count == 3000 && Set(seen).count == 3000, "\(seen.count) keys, \(Set(seen).count) distinct")
        #expect(Self.run(service, s, "SCAN", "123456789") == .error("ERR invalid cursor (this server does not know cursor 123456789)"))
        #expect(RESPService.glob(Array("k[a-c]?\\*".utf8), matches: Array("kbx*".utf8)))
        #expect(!RESPService.glob(Array("k[^a-c]*".utf8), matches: Array("kb".utf8)))
    }

    @Test("with a password, every command but AUTH, HELLO and QUIT waits for AUTH; a wrong one is WRONGPASS")
    func auth() throws {
        let dir = TempDir("moraine-resp-auth")
        defer { dir.remove() }
        let (service, db) = try Self.service(dir, password: "s3cret")
        defer { try? db.close() }
        let s = service.open(address: "auth")!
        #expect(Self.run(service, s, "GET", "k") == .error("NOAUTH Authentication required."))
        #expect(Self.run(service, s, "AUTH", "wrong") == .error("WRONGPASS invalid username-password pair or user is disabled."))
        #expect(Self.run(service, s, "AUTH", "s3cret") == .ok)
        #expect(Self.run(service, s, "GET", "k") == .null)
        #expect(Self.run(service, s, "AUTH", "default", "s3cret") == .ok)
    }
}

extension RESPReply: CustomStringConvertible {
    public var description: String {
        var out: [UInt8] = []
        encode(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}
