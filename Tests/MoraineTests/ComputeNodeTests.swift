// The compute node and its thin client: a `Database` connected to a compute node (in this
// process, over real shared memory and TCP) behaves as an embedded one — writes, batches,
// gets, multiGets, snapshots, iterators both ways with bounds, flush, compactRange, stats; its
// snapshots and iterators are leases that lapse when the client stops renewing them; a request
// that is garbage, names another session's lease, or a bad database is refused alone; and a
// restarted node is found again. The randomized model test also runs through a compute node
// (ModelTests, configurations compute-node-shm and compute-node-tcp).
import Foundation
import Moraine
import MoraineCompute
import MoraineMessages
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import Testing

/// A compute node in this process, serving databases under a temporary directory.
final class ComputeTestNode: @unchecked Sendable {
    let directory = TempDir("moraine-compute")
    let carrier: Carrier
    let configure: @Sendable (inout Options) -> Void
    let sessionTTLMillis: UInt32
    private(set) var endpoint: Endpoint
    private(set) var node: ComputeNode!
    private var server: EndpointServer?
    var keyPath: String { directory.file("cluster.key") }

    init(_ carrier: Carrier, sessionTTLMillis: UInt32 = 10_000, configure: @escaping @Sendable (inout Options) -> Void = { _ in }) throws {
        self.carrier = carrier.server
        self.configure = configure
        self.sessionTTLMillis = sessionTTLMillis
        try FileManager.default.createDirectory(atPath: directory.file("data"), withIntermediateDirectories: true)
        try ClusterKey.generate(path: directory.file("cluster.key"))
        endpoint = carrier == .sharedMemory ? .sharedMemory(socketPath: directory.file("compute.sock")) : .tcp(host: "127.0.0.1", port: 0)
        try start()
    }

    private func makeNode() -> ComputeNode {
        var options = Options()
        configure(&options)
        var configuration = ComputeNodeConfiguration.local(directory: directory.file("data"), options: options)
        configuration.sessionTTLMillis = sessionTTLMillis
        return ComputeNode(configuration: configuration)
    }

    /// Starts a new node (its databases open again at their first request) on the endpoint.
    func start() throws {
        node = makeNode()
        let server = try endpoint.serve(key: try ClusterKey.load(path: keyPath), router: node.router())
        endpoint = server.endpoint
        self.server = server
    }

    /// Stops serving and closes the node's databases cleanly.
    func stop() {
        server?.close()
        server = nil
        try? node.close()
    }

    func restart() throws {
        stop()
        try start()
    }

    /// A client of the database `name` on this node.
    func connect(_ name: String, create: Bool = true, settings: ComputeClient.Settings = ComputeClient.Settings()) throws -> Database {
        var options = Options()
        options.createIfMissing = create
        return try Database(connect: endpoint.description, database: name, clusterKey: keyPath, options: options, settings: settings)
    }

    /// Waits (bounded) until `condition` holds.
    func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = monotonicNanos() + Int64(seconds * 1e9)
        while monotonicNanos() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    deinit {
        stop()
        directory.remove()
    }
}

@Suite("Compute node")
struct ComputeNodeTests {
    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test("a connected database reads, writes, scans and snapshots as an embedded one", arguments: Carrier.servers)
    func connectedDatabase(carrier: Carrier) throws {
        let compute = try ComputeTestNode(carrier) { $0.writeBufferSize = 32 << 10 }
        let db = try compute.connect("orders")
        #expect(db.isConnected && db.engine == nil)
        try db.put("apple", "red")
        try db.put(Self.bytes("pear"), Self.bytes("green"), options: WriteOptions(sync: true))
        #expect(try db.get("apple") == "red")
        var batch = WriteBatch()
        batch.put(Self.bytes("plum"), Self.bytes("purple"))
        batch.delete(Self.bytes("apple"))
        try db.write(batch)
        #expect(try db.get("apple") == nil)
        #expect(try db.multiGet([Self.bytes("plum"), Self.bytes("kiwi"), Self.bytes("pear")]) == [Self.bytes("purple"), nil, Self.bytes("green")])
        let snapshot = try db.snapshot()
        #expect(snapshot.leaseID != 0)
        try db.put("plum", "ripe")
        try db.delete("pear")
        #expect(try db.get(Self.bytes("plum"), options: ReadOptions(snapshot: snapshot)) == Self.bytes("purple"))
        #expect(try db.get(Self.bytes("pear"), options: ReadOptions(snapshot: snapshot)) == Self.bytes("green"))
        #expect(try db.get("pear") == nil)
        // Enough keys that iterators fetch several batches, both ways, with bounds.
        for i in 0..<600 { try db.put(String(format: "k%04d", i), String(repeating: "v", count: i % 50)) }
        try db.flush()
        let iterator = try db.makeIterator(options: ReadOptions(lowerBound: Self.bytes("k0100"), upperBound: Self.bytes("k0500")))
        var forward: [String] = []
        try iterator.seekToFirst()
        while iterator.isValid {
            forward.append(String(decoding: iterator.key, as: UTF8.self))
            try iterator.next()
        }
        #expect(forward == (100..<500).map { String(format: "k%04d", $0) })
        var backward: [String] = []
        try iterator.seekToLast()
        while iterator.isValid {
            backward.append(String(decoding: iterator.key, as: UTF8.self))
            try iterator.prev()
        }
        #expect(backward == (100..<500).reversed().map { String(format: "k%04d", $0) })
        // Turning around in the middle, past the edge of what was fetched.
        try iterator.seek(Self.bytes("k0300"))
        for _ in 0..<40 { try iterator.next() }
        #expect(iterator.key == Self.bytes("k0340"))
        for _ in 0..<100 { try iterator.prev() }
        #expect(iterator.key == Self.bytes("k0240") && iterator.value.count == 240 % 50)
        try iterator.seekForPrev(Self.bytes("k0250x"))
        #expect(iterator.key == Self.bytes("k0250"))
        try db.compactRange()
        let stats = db.stats()
        #expect(stats.backgroundError == nil)
        #expect(stats.flushes >= 1 && stats.levels.count >= 2)
        #expect(stats.levels.dropFirst().contains { $0.fileCount > 0 }, "compactRange moved nothing below L0")
        #expect(db.estimatedKeyCount() > 500)
        // The snapshot still reads its view after the flush and the compaction.
        #expect(try db.get(Self.bytes("pear"), options: ReadOptions(snapshot: snapshot)) == Self.bytes("green"))
        #expect(compute.node.leaseCounts.snapshots == 1)
        db.releaseSnapshot(snapshot)
        #expect(compute.node.leaseCounts.snapshots == 0)
        try db.close()
        // The node's database is the same one an embedded open finds after the node stops.
        compute.stop()
        let embedded = try Database(path: compute.directory.file("data/orders"))
        #expect(try embedded.get("plum") == "ripe")
        #expect(try embedded.get("k0599") == String(repeating: "v", count: 599 % 50))
        try embedded.close()
    }

    @Test("a client that stops renewing loses its snapshots and iterators; other sessions go on")
    func leasesLapse() throws {
        let compute = try ComputeTestNode(.sharedMemory, sessionTTLMillis: 2000)
        let db = try compute.connect("leases")
        for i in 0..<50 { try db.put("k\(i)", "v\(i)") }
        // A session that vanishes: raw requests with its id, then silence.
        let key = try ClusterKey.load(path: compute.keyPath)
        let connection = try compute.endpoint.connect(key: key)
        let header = ComputeHeader(session: 0xDEAD, database: "leases")
        let snapshot = try ComputeLease.decode(try connection.call(ComputeOpcode.snapshot, .bytes(header.encoded())))
        let open = ComputeIteratorOpen(header: header, snapshot: snapshot.id, lowerBound: nil, upperBound: nil)
        let iterator = try ComputeLease.decode(try connection.call(ComputeOpcode.iteratorOpen, .bytes(open.encoded())))
        #expect(compute.node.leaseCounts.snapshots == 1 && compute.node.leaseCounts.iterators == 1)
        // The live client keeps its own leases through the same time, renewed by its thread.
        let mine = try db.snapshot()
        let myIterator = try db.makeIterator(options: ReadOptions(snapshot: mine))
        #expect(compute.eventually { compute.node.expiredLeases == 2 }, "the silent session's leases did not lapse")
        #expect(compute.node.leaseCounts.snapshots == 1 && compute.node.leaseCounts.iterators == 1)
        // Its ids are now a clear notFound, for it and for anyone else.
        let move = ComputeIteratorMove(header: header, iterator: iterator.id, motion: .seekToFirst, count: 4)
        let lapsed = try connection.send(opcode: ComputeOpcode.iteratorMove, payload: .bytes(move.encoded()))
        let lapsedResult = try connection.receive(requestID: lapsed, timeoutNanos: 5_000_000_000).result
        guard case .failure(let error) = lapsedResult else {
            Issue.record("a lapsed iterator answered")
            return
        }
        #expect(error.code == .notFound && error.message.contains("iterator \(iterator.id)"))
        let stolen = ComputeIteratorMove(header: ComputeHeader(session: 0xBEEF, database: "leases"), iterator: iterator.id, motion: .seekToFirst, count: 4)
        let stolenID = try connection.send(opcode: ComputeOpcode.iteratorMove, payload: .bytes(stolen.encoded()))
        #expect(try connection.receive(requestID: stolenID, timeoutNanos: 5_000_000_000).result.isFailure)
        connection.close()
        // The live client's leases work past a whole lease time since it took them.
        usleep(2_500_000)
        try myIterator.seekToFirst()
        #expect(myIterator.isValid && myIterator.key == Self.bytes("k0"))
        try db.put("k0", "changed")
        #expect(try db.get(Self.bytes("k0"), options: ReadOptions(snapshot: mine)) == Self.bytes("v0"))
        try db.close()
        // Closing ends the session: the node holds nothing for it.
        #expect(compute.eventually { compute.node.leaseCounts.snapshots == 0 && compute.node.leaseCounts.iterators == 0 })
    }

    @Test("closing a client whose every connection is busy still ends its session on the node")
    func closeWithEveryConnectionBusy() throws {
        let compute = try ComputeTestNode(.sharedMemory)
        // A slow link (100 ms each way), so a read holds the client's only connection a while.
        var settings = ComputeClient.Settings()
        settings.link = LinkEmulation(delay: .fixed(nanos: 100_000_000))
        let db = try compute.connect("busy", settings: settings)
        try db.put("k", "v")
        let snapshot = try db.snapshot()
        #expect(compute.node.leaseCounts.sessions == 1 && compute.node.leaseCounts.snapshots == 1)
        let reader = Thread { _ = try? db.get("k") }
        reader.start()
        usleep(50_000)  // the read has taken the pooled connection and waits on the link
        try db.close()
        // Ended at once (through a new connection), not left to lapse after the lease time.
        #expect(compute.node.leaseCounts.sessions == 0 && compute.node.leaseCounts.snapshots == 0)
        let deadline = monotonicNanos() + 5_000_000_000
        while !reader.isFinished && monotonicNanos() < deadline { usleep(10_000) }
        #expect(reader.isFinished)
        withExtendedLifetime(snapshot) {}
    }

    @Test("garbage, bad names, missing databases and wrong keys are refused alone; a restarted node is found again")
    func refusalsAndRestart() throws {
        let compute = try ComputeTestNode(.tcp)
        let db = try compute.connect("main")
        try db.put("a", "1")
        let key = try ClusterKey.load(path: compute.keyPath)
        let connection = try compute.endpoint.connect(key: key)
        func refused(_ opcode: UInt8, _ bytes: [UInt8]) throws -> TransportError? {
            let id = try connection.send(opcode: opcode, payload: .bytes(bytes))
            if case .failure(let error) = try connection.receive(requestID: id, timeoutNanos: 5_000_000_000).result { return error }
            return nil
        }
        #expect(try refused(ComputeOpcode.write, [1, 2, 3])?.code == .malformed)
        let tooManyKeys = ComputeHeader(session: 1, database: "main").encoded() + [0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]
        #expect(try refused(ComputeOpcode.read, tooManyKeys)?.code == .malformed)
        let badBatch = ComputeWrite(header: ComputeHeader(session: 1, database: "main"), sync: false, disableWAL: false, batch: [9, 9, 9])
        #expect(try refused(ComputeOpcode.write, badBatch.encoded())?.code == .invalid)
        let escape = ComputeOpen(header: ComputeHeader(session: 1, database: "../etc"), createIfMissing: true)
        #expect(try refused(ComputeOpcode.open, escape.encoded())?.message.contains("database name") == true)
        let missing = ComputeOpen(header: ComputeHeader(session: 1, database: "nothing-here"), createIfMissing: false)
        #expect(try refused(ComputeOpcode.open, missing.encoded()) != nil)
        #expect(!FileManager.default.fileExists(atPath: compute.directory.file("data/nothing-here/CURRENT")))
        let unknownSnapshot = ComputeRead(header: ComputeHeader(session: 1, database: "main"), snapshot: 77, keys: [Self.bytes("a")])
        #expect(try refused(ComputeOpcode.read, unknownSnapshot.encoded())?.code == .notFound)
        connection.close()
        #expect(throws: MoraineError.self) { _ = try compute.connect("nothing-either", create: false) }
        // A wrong key is refused at the handshake.
        let wrong = try ClusterKey(bytes: [UInt8](repeating: 7, count: 32))
        #expect(throws: TransportError.self) { _ = try compute.endpoint.connect(key: wrong) }
        // Through all of it the first client went on.
        #expect(try db.get("a") == "1")
        // The node stops: a clear unavailable. It comes back: the same handle goes on.
        compute.stop()
        let down = #expect(throws: MoraineError.self) { try db.put("b", "2") }
        #expect(down?.kind == .unavailable)
        try compute.start()
        try db.put("b", "2")
        #expect(try db.get("a") == "1" && db.get("b") == "2")
        try db.close()
    }

    @Test("destroy through the node removes a database's files, refused while another client holds a snapshot of it")
    func destroyThroughTheNode() throws {
        let compute = try ComputeTestNode(.sharedMemory)
        defer { compute.stop() }
        let target = compute.endpoint.description
        let db = try compute.connect("doomed")
        for i in 0..<200 { try db.put("k\(i)", "v\(i)") }
        try db.flush()
        let holder = try compute.connect("doomed")
        let snapshot = try holder.snapshot()
        let busy = #expect(throws: MoraineError.self) { try Database.destroy(connect: target, database: "doomed", clusterKey: compute.keyPath) }
        #expect(busy?.kind == .busy, "\(String(describing: busy))")
        #expect(try db.get("k7") == "v7", "a refused destroy left the database as it was")
        try snapshot.release()
        try holder.close()
        let removed = try Database.destroy(connect: target, database: "doomed", clusterKey: compute.keyPath)
        #expect(removed >= 3, "a table, a log, a manifest and CURRENT at least: \(removed)")
        #expect(!FileManager.default.fileExists(atPath: compute.directory.file("data/doomed/CURRENT")))
        // The old handle's database is gone: a clear error naming it, not an empty database made anew.
        let gone = #expect(throws: MoraineError.self) { _ = try db.get("k7") }
        #expect(gone?.kind == .invalid && gone?.message.contains("no CURRENT") == true, "\(String(describing: gone))")
        // Made again, it is empty; destroying what does not exist removes nothing.
        let fresh = try compute.connect("doomed")
        #expect(try fresh.get("k7") == nil)
        try fresh.close()
        #expect(try Database.destroy(connect: target, database: "never-made", clusterKey: compute.keyPath) == 0)
        try db.close()
    }
}

extension Result {
    var isFailure: Bool {
        if case .failure = self { return true }
        return false
    }
}
