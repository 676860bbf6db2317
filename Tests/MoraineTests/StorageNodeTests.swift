// The storage node through its protocol, on a live node in this process over both carriers:
// confinement of names, appends at an expected offset (a retry is harmless, a gap or different
// bytes are refused), exclusive creates, fencing by lease epochs (kept across a restart of the
// node), batched reads, a fuzz of malformed storage messages, and an open database riding out a
// restart of its node.
import Foundation
import Moraine
import MoraineMessages
@testable import MoraineStorage
import MoraineSystem
import MoraineTestSupport
@testable import MoraineTransport
import Testing

@Suite("Storage node")
struct StorageNodeTests {
    init() { _ = CapturedLog.installed }

    /// One request to the node; the reply's bytes or its error.
    static func call(_ client: any TransportClient, _ opcode: UInt8, _ message: some WireMessage) -> Result<[UInt8], TransportError> {
        do throws(TransportError) {
            guard case .bytes(let bytes) = try client.call(opcode, .bytes(message.encoded()), timeoutNanos: 5_000_000_000) else {
                return .failure(TransportError(.malformed, "a reference reply"))
            }
            return .success(bytes)
        } catch {
            return .failure(error)
        }
    }

    static func connect(_ node: StorageTestNode) throws -> any TransportClient {
        switch node.endpoint {
        case .sharedMemory(let path): try SharedMemoryClient(socketPath: path, key: node.key)
        case .tcp(let host, let port): try DirectTCPClient(host: host, port: port, key: node.key)
        }
    }

    static func code(_ result: Result<[UInt8], TransportError>) -> TransportError.Code? {
        if case .failure(let error) = result { return error.code }
        return nil
    }

    @Test("names outside DATA/<database>/ are refused, and nothing is created there", arguments: Carrier.servers)
    func confinement(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let client = try Self.connect(node)
        defer { client.close() }
        let long = String(repeating: "x", count: 256)
        let bad: [StorageFile] = [
            StorageFile(database: "..", name: "escape"), StorageFile(database: "db", name: ".."),
            StorageFile(database: "db", name: "../escape"), StorageFile(database: "db/../..", name: "escape"),
            StorageFile(database: "", name: "x"), StorageFile(database: "db", name: ""),
            StorageFile(database: "db", name: "a\u{0}b"), StorageFile(database: "db", name: long),
            StorageFile(database: ".moraine", name: "epochs"), StorageFile(database: "/etc", name: "passwd"),
            StorageFile(database: "a/b/c", name: "x"), StorageFile(database: "db//", name: "x"),
        ]
        for file in bad {
            let result = Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: 0))
            #expect(Self.code(result) == .invalid, "\(carrier): \(file) was not refused as invalid: \(result)")
            #expect(Self.code(Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file))) == .invalid)
        }
        let parent = URL(fileURLWithPath: node.dataDirectory.path).deletingLastPathComponent().path
        #expect(!FileManager.default.fileExists(atPath: parent + "/escape"))
        #expect(node.dataDirectory.names().filter { !$0.hasPrefix(".") && $0 != "node.sock" }.isEmpty)
        // A good name in a database that exists works.
        #expect(Self.code(Self.call(client, StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: "db", name: "")))) == nil)
        let good = StorageFile(database: "db", name: "000001.log")
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: good, exclusive: true, epoch: 0))) == nil)
    }

    @Test("appends at an expected offset: a retry changes nothing, a gap or different bytes are refused", arguments: Carrier.servers)
    func appends(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let client = try Self.connect(node)
        defer { client.close() }
        let file = StorageFile(database: "db", name: "000003.log")
        _ = Self.call(client, StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: "db", name: "")))
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: 0))) == nil)
        func append(_ offset: UInt64, _ bytes: [UInt8], sync: Bool = false) -> Result<[UInt8], TransportError> {
            Self.call(client, StorageOpcode.append, StorageAppend(file: file, offset: offset, sync: sync, epoch: 0, bytes: bytes))
        }
        #expect(try StorageAppendReply.decode(append(0, [1, 2, 3]).get()).sizeBytes == 3)
        #expect(try StorageAppendReply.decode(append(3, [4, 5], sync: true).get()).sizeBytes == 5)
        // The same append again (its reply was lost): nothing changes.
        #expect(try StorageAppendReply.decode(append(3, [4, 5]).get()).sizeBytes == 5)
        // Overlapping the end with the same bytes, then new ones: only the new ones are added.
        #expect(try StorageAppendReply.decode(append(4, [5, 6]).get()).sizeBytes == 6)
        #expect(Self.code(append(8, [9])) == .invalid, "a gap was accepted")
        #expect(Self.code(append(1, [7, 7])) == .invalid, "different bytes over written ones were accepted")
        let all = try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get()
        #expect(all == [1, 2, 3, 4, 5, 6])
        // An exclusive create never truncates; a plain one does.
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: 0))) == .invalid)
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get().count == 6)
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: false, epoch: 0))) == nil)
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get().isEmpty)
        // A deferred append is taken at once and written once the connection has run what it
        // had, before its reply is out: the reply says what was written when it was made.
        let onDisk = { (try? PosixFileSystem.shared.fileSize(node.dataDirectory.file("db/000003.log"))) ?? 0 }
        let deferred = try StorageAppendReply.decode(
            Self.call(client, StorageOpcode.append, StorageAppend(file: file, offset: 0, mode: .deferred, epoch: 0, bytes: [9, 8, 7])).get())
        #expect(deferred.sizeBytes == 3 && deferred.writtenBytes == 0)
        #expect(onDisk() == 3, "the deferred append was not written once the connection drained")
        let after = try StorageAppendReply.decode(append(3, [6]).get())
        #expect(after.sizeBytes == 4 && after.writtenBytes == 4)
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get() == [9, 8, 7, 6])
        _ = Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: false, epoch: 0))
        // Reads: one, a batch across files with one missing, past the end.
        _ = append(0, Array(0..<100))
        let read = try Self.call(client, StorageOpcode.read, StorageRead(file: file, offset: 90, length: 20)).get()
        #expect(read == Array(90..<100))
        let batch = StorageReadBatch(reads: [
            StorageRead(file: file, offset: 0, length: 4), StorageRead(file: StorageFile(database: "db", name: "missing"), offset: 0, length: 4),
            StorageRead(file: file, offset: 50, length: 2),
        ])
        let reply = try StorageReadBatchReply.decode(Self.call(client, StorageOpcode.readBatch, batch).get())
        #expect(try reply.results[0].get() == [0, 1, 2, 3])
        #expect(Self.code(reply.results[1].map { $0 }) == .notFound)
        #expect(try reply.results[2].get() == [50, 51])
    }

    @Test("leases: one owner at a time; a new grant raises the epoch and fences the old owner, across a restart", arguments: Carrier.servers)
    func fencing(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        var client = try Self.connect(node)
        let file = StorageFile(database: "db", name: "000004.log")
        _ = Self.call(client, StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: "db", name: "")))
        func lease(_ opcode: UInt8, owner: String, epoch: UInt64, ttl: UInt32 = 300) -> Result<[UInt8], TransportError> {
            Self.call(client, opcode, StorageLease(database: "db", owner: owner, epoch: epoch, ttlMillis: ttl))
        }
        let first = try StorageLeaseReply.decode(lease(StorageOpcode.leaseAcquire, owner: "A", epoch: 0).get()).epoch
        #expect(first == 1)
        #expect(Self.code(lease(StorageOpcode.leaseAcquire, owner: "B", epoch: 0)) == .busy, "a held lease was granted again")
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: first))) == nil)
        let unleased = StorageCreate(file: StorageFile(database: "db", name: "x"), exclusive: true, epoch: 0)
        #expect(Self.code(Self.call(client, StorageOpcode.create, unleased)) == .fenced, "a write without the lease was accepted")
        // A stops renewing; after its TTL, B gets the next epoch and A can change nothing.
        sleepNanos(400_000_000)
        let second = try StorageLeaseReply.decode(lease(StorageOpcode.leaseAcquire, owner: "B", epoch: 0).get()).epoch
        #expect(second == 2)
        let stale = StorageAppend(file: file, offset: 0, sync: true, epoch: first, bytes: [9, 9, 9])
        #expect(Self.code(Self.call(client, StorageOpcode.append, stale)) == .fenced)
        #expect(Self.code(Self.call(client, StorageOpcode.remove, StorageFileMutation(file: file, epoch: first))) == .fenced)
        let rename = StorageRename(database: "db", source: file.name, target: "y", epoch: first)
        #expect(Self.code(Self.call(client, StorageOpcode.rename, rename)) == .fenced)
        #expect(Self.code(lease(StorageOpcode.leaseRenew, owner: "A", epoch: first)) == .fenced)
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get().isEmpty, "a fenced append changed the file")
        let current = StorageAppend(file: file, offset: 0, sync: true, epoch: second, bytes: [1])
        #expect(try StorageAppendReply.decode(Self.call(client, StorageOpcode.append, current).get()).sizeBytes == 1)
        // A restart of the node keeps the epoch: B renews and writes on; A is still fenced.
        client.close()
        node.stop()
        try node.start()
        client = try Self.connect(node)
        defer { client.close() }
        #expect(Self.code(lease(StorageOpcode.leaseRenew, owner: "B", epoch: second, ttl: 5_000)) == nil)
        let onward = StorageAppend(file: file, offset: 1, sync: false, epoch: second, bytes: [2])
        #expect(try StorageAppendReply.decode(Self.call(client, StorageOpcode.append, onward).get()).sizeBytes == 2)
        let late = StorageAppend(file: file, offset: 2, sync: false, epoch: first, bytes: [3])
        #expect(Self.code(Self.call(client, StorageOpcode.append, late)) == .fenced)
        #expect(Self.code(lease(StorageOpcode.leaseAcquire, owner: "C", epoch: 0)) == .busy)
    }

    @Test("malformed storage messages get an error each; the node keeps serving", arguments: Carrier.servers)
    func fuzz(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let client = try Self.connect(node)
        defer { client.close() }
        let seed = SeededRandom.testSeed("storage fuzz \(carrier)")
        var rng = SeededRandom(seed: seed)
        let valid: [UInt8] = StorageAppend(file: StorageFile(database: "db", name: "f"), offset: 0, sync: false, epoch: 0, bytes: [1, 2]).encoded()
        for round in 0..<400 {
            let opcode = UInt8(Int(StorageOpcode.create) + Int(rng.next() % 18))
            var payload: [UInt8]
            switch rng.next() % 3 {
            case 0: payload = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 1:  // a valid message cut short or with a byte flipped
                payload = Array(valid.prefix(Int(rng.next() % UInt64(valid.count + 1))))
                if !payload.isEmpty { payload[Int(rng.next() % UInt64(payload.count))] ^= 0xff }
            default:  // lengths that lie
                payload = [0xff, 0xff, 0xff, 0xff] + valid
            }
            do {
                _ = try client.call(opcode, .bytes(payload), timeoutNanos: 5_000_000_000)
            } catch {
                #expect(error.code != .unavailable && error.code != .closed, "seed \(seed) round \(round): the connection broke: \(error)")
            }
        }
        #expect(Self.code(Self.call(client, StorageOpcode.capacity, StorageFileQuery(file: StorageFile(database: "db", name: "")))) == nil)
        let fresh = try Self.connect(node)
        defer { fresh.close() }
        #expect(Self.code(Self.call(fresh, StorageOpcode.stat, StorageFileQuery(file: StorageFile(database: "db", name: "")))) == nil)
    }

    @Test("an open database rides out a restart of its storage node, without reopening", arguments: Carrier.servers)
    func restartWhileOpen(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        let db = try Database(path: "ride", options: options)
        defer { try? db.close() }
        for i in 0..<200 { try db.put(Array("key\(i)".utf8), Array("value\(i)".utf8), options: WriteOptions(sync: i % 10 == 0)) }
        node.stop()
        // Restart within the call deadline: the next write waits for it and then goes through.
        let restarted = Thread {
            sleepNanos(800_000_000)
            try? node.start()
        }
        restarted.start()
        try db.put(Array("during".utf8), Array("restart".utf8), options: WriteOptions(sync: true))
        #expect(try db.get(Array("during".utf8)) == Array("restart".utf8))
        try db.flush()
        for i in 0..<200 { #expect(try db.get(Array("key\(i)".utf8)) == Array("value\(i)".utf8)) }
    }

    @Test(
        "an outage longer than the call deadline: writes fail unavailable, then resume without reopening, each settled",
        arguments: Carrier.servers)
    func resumeAfterLongOutage(carrier: Carrier) throws {
        var fast = StorageTestNode.fastOptions
        fast.callTimeoutNanos = 400_000_000
        let node = try StorageTestNode(carrier, options: fast)
        defer { node.remove() }
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        var db: Database? = try Database(path: "outage", options: options)
        for i in 0..<100 { try db!.put(Array("key\(i)".utf8), Array("value\(i)".utf8)) }
        try db!.flush()
        try db!.put(Array("before".utf8), Array("outage".utf8), options: WriteOptions(sync: true))
        node.stop()
        let sync = WriteOptions(sync: true)
        // The first write's record reached the WAL's buffer: its outcome is open until the node answers.
        let first = #expect(throws: MoraineError.self) { try db!.put(Array("first".utf8), Array("1".utf8), options: sync) }
        #expect(first?.kind == .unavailable, "\(String(describing: first))")
        // The next one only tries to resume, fails, and is never made.
        let second = #expect(throws: MoraineError.self) { try db!.put(Array("second".utf8), Array("2".utf8), options: sync) }
        #expect(second?.kind == .unavailable)
        #expect(db!.stats().backgroundError?.contains("writes resume once the storage answers again") == true)
        #expect(throws: MoraineError.self) { try db!.flush() }
        // Reads that need the node fail as unavailable, never as absent.
        let read = #expect(throws: MoraineError.self) { try db!.get(Array("key7".utf8)) }
        #expect(read?.kind == .unavailable)
        try node.start()
        try db!.put(Array("third".utf8), Array("3".utf8), options: sync)
        #expect(db!.stats().resumes == 1)
        #expect(db!.stats().backgroundError == nil)
        try db!.flush()
        for round in 0..<2 {
            #expect(try db!.get(Array("first".utf8)) == Array("1".utf8), "round \(round): the pending write is applied")
            #expect(try db!.get(Array("second".utf8)) == nil, "round \(round): the refused write was never made")
            #expect(try db!.get(Array("third".utf8)) == Array("3".utf8))
            for i in 0..<100 { #expect(try db!.get(Array("key\(i)".utf8)) == Array("value\(i)".utf8)) }
            // A reopen finds the same.
            try db!.close()
            db = try Database(path: "outage", options: options)
        }
        try db!.close()
    }

    @Test(
        "destroy removes a database's files on the node, refuses while it is open, never takes an absent node for none",
        arguments: Carrier.servers)
    func destroy(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        let db = try Database(path: "doomed", options: options)
        for i in 0..<100 { try db.put(Array("key\(i)".utf8), Array("value\(i)".utf8)) }
        try db.flush()
        #expect(throws: MoraineError.self) { try Database.destroy(path: "doomed", options: options) }
        try db.close()
        let foreign = node.dataDirectory.file("doomed/notes.txt")
        try Data("kept".utf8).write(to: URL(fileURLWithPath: foreign))
        node.stop()
        var impatient = options
        impatient.fileSystem = RemoteFileSystem(endpoint: node.endpoint, key: node.key, options: {
            var fast = StorageTestNode.fastOptions
            fast.callTimeoutNanos = 300_000_000
            return fast
        }())
        let unreachable = #expect(throws: MoraineError.self) { try Database.destroy(path: "doomed", options: impatient) }
        #expect(unreachable?.kind == .unavailable)
        try node.start()
        let removed = try Database.destroy(path: "doomed", options: options)
        #expect(removed >= 4, "CURRENT, a manifest, a WAL and a table at least")
        let left = try PosixFileSystem.shared.children(of: node.dataDirectory.file("doomed")).sorted()
        #expect(left.allSatisfy { $0 == "LOCK" || $0 == "notes.txt" }, "\(left)")
        #expect(left.contains("notes.txt"))
        // What is left opens as a new, empty database.
        let fresh = try Database(path: "doomed", options: options)
        defer { try? fresh.close() }
        #expect(try fresh.get(Array("key1".utf8)) == nil)
    }
}
