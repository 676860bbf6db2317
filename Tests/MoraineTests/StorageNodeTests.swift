// The storage node through its protocol, on a live node in this process over both carriers:
// confinement of names, appends at an expected offset (a retry is harmless, a gap or different
// bytes are refused), exclusive creates, fencing by lease epochs (kept across a restart of the
// node), batched reads, a fuzz of malformed storage messages, and an open database riding out a
// restart of its node, and writes that fail on the node (ENOSPC) part way or after it answered.
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

    @Test("tcp: a quiet append's failure is answered to the file's next answered append, the quiet ones between dropped")
    func quietAppendFailure() throws {
        let node = try StorageTestNode(.tcp)
        defer { node.remove() }
        let client = try #require(try Self.connect(node) as? DirectTCPClient)
        defer { client.close() }
        #expect(client.acceptsQuietRequests)
        let file = StorageFile(database: "db", name: "000005.log")
        _ = Self.call(client, StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: "db", name: "")))
        #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: 0))) == nil)
        func quiet(_ offset: UInt64, _ bytes: [UInt8]) throws {
            let request = StorageAppend(file: file, offset: offset, mode: .deferred, epoch: 0, bytes: bytes)
            try client.sendQuiet(opcode: StorageOpcode.append, payload: .bytes(request.encoded()))
        }
        func answered(_ offset: UInt64, _ bytes: [UInt8]) -> Result<[UInt8], TransportError> {
            Self.call(client, StorageOpcode.append, StorageAppend(file: file, offset: offset, sync: false, epoch: 0, bytes: bytes))
        }
        try quiet(0, [1, 2, 3])
        try quiet(3, [4])
        // Answered after them, so after they ran: it acknowledges them, all written.
        let reply = try StorageAppendReply.decode(answered(4, [5]).get())
        #expect(reply.sizeBytes == 5 && reply.writtenBytes == 5)
        try quiet(9, [9])  // a gap: refused, and kept for the file's next answered append
        try quiet(5, [6])  // dropped: it would land after a refused one
        let failed = answered(5, [6])
        #expect(Self.code(failed) == .invalid)
        if case .failure(let error) = failed {
            #expect(error.message.contains("sent without waiting") && error.message.contains("a gap"), "\(error.message)")
        }
        // Heard once; the writer sends again from what the node holds, and it lands.
        #expect(try StorageAppendReply.decode(answered(5, [6]).get()).sizeBytes == 6)
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get() == [1, 2, 3, 4, 5, 6])
        // A quiet append with a stale epoch changes nothing; the writer's next answered append,
        // as stale, is fenced by the lease check itself.
        let lease = try StorageLeaseReply.decode(
            Self.call(client, StorageOpcode.leaseAcquire, StorageLease(database: "db", owner: "test", epoch: 0, ttlMillis: 60_000)).get())
        try quiet(6, [7])
        let fenced = answered(6, [7])
        #expect(Self.code(fenced) == .fenced, "\(fenced)")
        #expect(try Self.call(client, StorageOpcode.readAll, StorageFileQuery(file: file)).get() == [1, 2, 3, 4, 5, 6])
        // The refusal is not kept for the file: the lease holder's answered append lands.
        func owned(_ offset: UInt64, _ bytes: [UInt8], epoch: UInt64) -> Result<[UInt8], TransportError> {
            Self.call(client, StorageOpcode.append, StorageAppend(file: file, offset: offset, sync: false, epoch: epoch, bytes: bytes))
        }
        #expect(try StorageAppendReply.decode(owned(6, [7], epoch: lease.epoch).get()).sizeBytes == 7)
        // A failure kept for the file is not handed to the owner of a new lease.
        let gap = StorageAppend(file: file, offset: 20, mode: .deferred, epoch: lease.epoch, bytes: [1])
        try client.sendQuiet(opcode: StorageOpcode.append, payload: .bytes(gap.encoded()))
        let next = try StorageLeaseReply.decode(
            Self.call(client, StorageOpcode.leaseAcquire, StorageLease(database: "db", owner: "test", epoch: lease.epoch, ttlMillis: 60_000))
                .get())
        #expect(try StorageAppendReply.decode(owned(7, [8], epoch: next.epoch).get()).sizeBytes == 8)
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

    @Test("a rename moves a file into a subdirectory of its database (lost/), never into another database")
    func renameIntoSubdirectory() throws {
        let node = try StorageTestNode(.sharedMemory)
        defer { node.remove() }
        let files = node.remote
        try files.createDirectory("db")
        try files.createDirectory("other")
        let writable = try files.createNew("db/000007.sst", hint: .bulk)
        try writable.append([1, 2, 3])
        try writable.sync()
        try writable.close()
        try files.createDirectory("db/lost")
        try files.rename("db/000007.sst", to: "db/lost/000007.sst")
        #expect(try files.readAll("db/lost/000007.sst") == [1, 2, 3])
        #expect(try !files.exists("db/000007.sst"))
        #expect(FileManager.default.fileExists(atPath: node.dataDirectory.file("db/lost/000007.sst")))
        #expect(throws: MoraineError.self) { try files.rename("db/lost/000007.sst", to: "other/000007.sst") }
        // The node refuses it too, whatever a client sends.
        let client = try Self.connect(node)
        defer { client.close() }
        let across = StorageRename(database: "db/lost", source: "000007.sst", target: "x", epoch: files.leaseEpoch(of: "db"), targetDatabase: "other")
        #expect(Self.code(Self.call(client, StorageOpcode.rename, across)) == .invalid)
        #expect(try files.readAll("db/lost/000007.sst") == [1, 2, 3])
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

    @Test("a failed deferred write: appends published before the writer heard get the failure, its resend from the written mark lands")
    func deferredWriteFailure() throws {
        // The node's own operations, called in the order a ring would run them, so the
        // interleaving is exact: two deferred appends taken, the drained write fails with
        // ENOSPC, a third published before the writer heard arrives, then the writer's resend.
        let directory = TempDir("moraine-deferred")
        defer { directory.remove() }
        let faults = FaultInjectingFileSystem(wrapping: PosixFileSystem.shared)
        let node = try StorageNode(dataDirectory: directory.path, fileSystem: faults)
        let file = StorageFile(database: "db", name: "000005.log")
        _ = try node.createDirectory(StorageFileQuery(file: StorageFile(database: "db", name: "")))
        _ = try node.create(StorageCreate(file: file, exclusive: true, epoch: 0))
        let bytes = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        func append(_ range: Range<Int>, _ mode: StorageAppend.Mode) throws(TransportError) -> StorageAppendReply {
            let request = StorageAppend(file: file, offset: UInt64(range.lowerBound), mode: mode, epoch: 0, bytes: Array(bytes[range]))
            guard case .bytes(let reply) = try node.append(request) else { throw TransportError(.malformed, "a reference reply") }
            return try StorageAppendReply.decode(reply)
        }
        #expect(try append(0..<100, .write).writtenBytes == 100)
        #expect(try append(100..<150, .deferred).writtenBytes == 100)
        #expect(try append(150..<200, .deferred).sizeBytes == 200)
        faults.arm(.noSpace, on: .wal, trigger: .always)
        node.writeAllDeferred()
        #expect(try PosixFileSystem.shared.fileSize(directory.file("db/000005.log")) == 100, "cut back to the written mark")
        // Published before the writer heard: the failure, not a gap (which the writer could not
        // tell from a bug, and would give the file up on).
        for _ in 0..<2 {
            let stale = #expect(throws: TransportError.self) { try append(200..<250, .deferred) }
            #expect(stale?.code == .noSpace, "\(String(describing: stale))")
        }
        // A sync hears it too.
        let sync = #expect(throws: TransportError.self) { try node.sync(StorageFileMutation(file: file, epoch: 0)) }
        #expect(sync?.code == .noSpace)
        // The writer sends again from the mark while the disk is still full: the failure again.
        let full = #expect(throws: TransportError.self) { try append(100..<250, .sync) }
        #expect(full?.code == .noSpace)
        // Space is back: the resend lands whole, from an offset at or before the mark.
        faults.disarm()
        let resent = try append(60..<250, .sync)
        #expect(resent.sizeBytes == 250 && resent.writtenBytes == 250)
        #expect(try append(250..<300, .write).sizeBytes == 300)
        #expect(try PosixFileSystem.shared.readAll(directory.file("db/000005.log")) == bytes)
    }

    @Test("an append sent in several requests that fails part way resends only what did not land", arguments: Carrier.servers)
    func partialResend(carrier: Carrier) throws {
        // 9 MiB in one append is sent as requests of at most 4 MiB; the node's second write
        // fails with ENOSPC. The first request's bytes landed: the resend must start after them.
        let faults = FaultInjectingFileSystem(wrapping: PosixFileSystem.shared)
        let node = try StorageTestNode(carrier, nodeFileSystem: faults)
        defer { node.remove() }
        try node.remote.createDirectory("db")
        let file = try node.remote.createNew("db/000007.log", hint: .log)
        let bytes = (0..<(9 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        // The first request's append and write succeed; the second's append fails.
        faults.arm(.noSpace, on: .wal, trigger: .after(2, times: 1))
        let failed = #expect(throws: MoraineError.self) { try bytes.withUnsafeBytes { try file.append($0) } }
        #expect(failed?.kind == .noSpace, "\(String(describing: failed))")
        #expect(faults.injectedCount == 1)
        try file.sync()
        try file.close()
        let stored = try PosixFileSystem.shared.readAll(node.dataDirectory.file("db/000007.log"))
        // Compared as one Bool: a failed expectation would print both 9 MiB arrays.
        let same = stored == bytes
        #expect(stored.count == bytes.count)
        #expect(same, "the resend repeated or skipped bytes")
    }

    @Test("a published append whose write fails after the node answered is sent again by the writer")
    func publishedAppendResent() throws {
        // Over shared memory a flush publishes its append; the node takes it, answers (written
        // mark 0) and writes it once the connection drained. That write fails once with ENOSPC:
        // the node cuts the file back, and the writer, which still holds the bytes, must send
        // them again when it settles (here at close).
        let faults = FaultInjectingFileSystem(wrapping: PosixFileSystem.shared)
        let node = try StorageTestNode(.sharedMemory, nodeFileSystem: faults)
        defer { node.remove() }
        try node.remote.createDirectory("db")
        let file = try node.remote.createNew("db/000009.log", hint: .log)
        let bytes = (0..<100).map { UInt8($0) }
        // The node's append (taking the bytes) passes; its write once drained fails, once.
        faults.arm(.noSpace, on: .wal, trigger: .after(1, times: 1))
        try bytes.withUnsafeBytes { try file.append($0) }
        try file.flush()
        try file.close()
        #expect(faults.injectedFaults.map(\.operation) == [.flush], "the drained write did not fail: \(faults.injectedFaults)")
        #expect(try PosixFileSystem.shared.readAll(node.dataDirectory.file("db/000009.log")) == bytes)
    }

    @Test("reads found by their request bytes: a bad name is refused, a file made again under its name reads new bytes", arguments: Carrier.servers)
    func readHandles(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let client = try Self.connect(node)
        defer { client.close() }
        let file = StorageFile(database: "db", name: "000011.sst")
        _ = Self.call(client, StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: "db", name: "")))
        func write(_ bytes: [UInt8]) {
            #expect(Self.code(Self.call(client, StorageOpcode.create, StorageCreate(file: file, exclusive: false, epoch: 0))) == nil)
            #expect(Self.code(Self.call(client, StorageOpcode.append, StorageAppend(file: file, offset: 0, sync: false, epoch: 0, bytes: bytes))) == nil)
        }
        func read(_ file: StorageFile, _ offset: UInt64, _ length: UInt32) -> Result<[UInt8], TransportError> {
            Self.call(client, StorageOpcode.read, StorageRead(file: file, offset: offset, length: length))
        }
        write(Array(0..<64))
        for _ in 0..<3 { #expect(try read(file, 8, 4).get() == [8, 9, 10, 11]) }
        #expect(try read(file, 60, 10).get() == [60, 61, 62, 63], "a read past the end is short")
        // Made again under the same name (a plain create truncates): the new bytes, not the old handle's.
        write(Array(repeating: 7, count: 16))
        #expect(try read(file, 8, 4).get() == [7, 7, 7, 7])
        // Removed: notFound, not the bytes of a handle kept open.
        #expect(Self.code(Self.call(client, StorageOpcode.remove, StorageFileMutation(file: file, epoch: 0))) == nil)
        #expect(Self.code(read(file, 0, 4)) == .notFound)
        // Names are checked before a handle is kept, however often they are asked for.
        for _ in 0..<2 {
            #expect(Self.code(read(StorageFile(database: "db", name: "../000011.sst"), 0, 4)) == .invalid)
            #expect(Self.code(read(StorageFile(database: "..", name: "x"), 0, 4)) == .invalid)
        }
        #expect(Self.code(read(file, 0, UInt32(StorageNode.readBytesMax + 1))) == .invalid)
        // A request one byte short is malformed, whichever path reads it.
        let short = Array(StorageRead(file: file, offset: 0, length: 4).encoded().dropLast())
        let reply = Result { () throws(TransportError) in try client.call(StorageOpcode.read, .bytes(short), timeoutNanos: 5_000_000_000) }
        #expect(Self.code(reply.map { _ in [] }) == .malformed)
    }
}
