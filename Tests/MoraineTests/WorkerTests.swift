// Compaction workers in this process, over both carriers, with the engine's files on a storage
// node: jobs run on the worker; with no worker to take them they run locally and are counted,
// and go back to the worker once it answers; a busy worker is passed over; a spec the worker
// cannot run is refused over the wire with its reasons; a job of a superseded owner is fenced by
// the storage node and writes nothing.
import Foundation
import Moraine
@testable import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
@testable import MoraineWorker
import Synchronization
import Testing

@Suite("Compaction workers")
struct WorkerTests {
    init() { _ = CapturedLog.installed }

    static func options(_ node: StorageTestNode, _ runner: RemoteJobRunner) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        options.jobRunner = runner
        options.writeBufferSize = 16 << 10
        options.targetFileSizeBase = 8 << 10
        options.disableAutoCompactions = true
        return options
    }

    /// Two passes over `count` keys (overlapping tables), then a full compaction.
    static func load(_ db: Database, count: Int, tag: String) throws {
        for pass in 0..<2 {
            for i in 0..<count { try db.put(Array("k\(i)".utf8), Array("\(tag)-\(pass)-\(i)".utf8)) }
            try db.flush()
        }
        try db.compactRange()
    }

    @Test("compactions run on the worker; with none answering they run here, counted, and go back once it answers", arguments: Carrier.servers)
    func fallbackAndReturn(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let worker = try TestWorker(for: node)
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing) { [worker.endpoint] }
        let db = try Database(path: "fallback", options: Self.options(node, runner))
        defer { try? db.close() }
        try Self.load(db, count: 500, tag: "a")
        #expect(runner.remoteJobs > 0 && runner.fallbacks == 0)
        #expect(worker.worker.status.finished == UInt64(runner.remoteJobs))
        // The worker goes away: the next compactions run here.
        worker.stop()
        let remote = runner.remoteJobs
        try Self.load(db, count: 500, tag: "b")
        #expect(runner.remoteJobs == remote && runner.fallbacks > 0, "\(runner.remoteJobs) remote, \(runner.fallbacks) local")
        #expect(try db.stats().compactionFallbacks == runner.fallbacks)
        // Back on its endpoint: jobs go to it again.
        try worker.start(key: node.key)
        let fallbacks = runner.fallbacks
        try Self.load(db, count: 500, tag: "c")
        #expect(runner.remoteJobs > remote && runner.fallbacks == fallbacks)
        #expect(try db.stats().remoteCompactions == runner.remoteJobs)
        for i in stride(from: 0, to: 500, by: 7) { #expect(try db.get(Array("k\(i)".utf8)) == Array("c-1-\(i)".utf8)) }
    }

    @Test("a busy worker is passed over for the next one; a spec it cannot run is refused with its reasons", arguments: Carrier.servers)
    func busyAndBadSpecs(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        // The busy worker's jobs reach a storage node that is not there: a job it takes holds its
        // only slot while its calls retry, until their deadline (8 s: room for a slow machine).
        let nowhere = TempDir("moraine-nowhere")
        defer { nowhere.remove() }
        var patient = StorageTestNode.fastOptions
        patient.callTimeoutNanos = 8_000_000_000
        let busy = try TestWorker(
            for: node, slots: 1, storage: .sharedMemory(socketPath: nowhere.file("none.sock")), fileSystemOptions: patient)
        let free = try TestWorker(for: node, slots: 1)
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing) { [busy.endpoint, free.endpoint] }
        let client = try busy.endpoint.connect(key: node.key)
        defer { client.close() }
        // A spec it cannot run: refused as invalid, every reason named.
        let bad = CompactionJobSpec(
            jobID: 1, directory: "db", epoch: 0, inputs: [], outputLevel: 9, levelCount: 7, smallestSnapshot: 0,
            deeperLevelRanges: [], targetFileSizeBytes: 0, tableOptions: TableOptions(), outputFileNumbers: 10..<10)
        let refused = #expect(throws: TransportError.self) {
            try client.call(WorkerOpcode.compact, .bytes(CompactionJobRequest(spec: bad).encoded()), timeoutNanos: 5_000_000_000)
        }
        #expect(refused?.code == .invalid)
        for reason in ["no input tables", "output level 9", "range is empty", "target file size is 0"] {
            #expect(refused?.message.contains(reason) == true, "\(reason) not in \(refused?.message ?? "")")
        }
        // Garbage is malformed, and the worker goes on.
        let garbage = #expect(throws: TransportError.self) {
            try client.call(WorkerOpcode.compact, .bytes([1, 2, 3]), timeoutNanos: 5_000_000_000)
        }
        #expect(garbage?.code == .malformed)
        #expect(busy.worker.status.running == 0)
        // A job that can run, sent to the busy worker and not waited for: it holds the slot.
        let key = makeInternalKey(Array("a".utf8), 1, .value)
        let table = TableFileInfo(number: 5, sizeBytes: 100, smallest: key, largest: key, smallestSequence: 1, largestSequence: 1)
        let holding = CompactionJobSpec(
            jobID: 2, directory: "db", epoch: 0, inputs: [JobInputTable(level: 0, info: table)], outputLevel: 1, levelCount: 7,
            smallestSnapshot: 0, deeperLevelRanges: [], targetFileSizeBytes: 1 << 20, tableOptions: TableOptions(),
            outputFileNumbers: 10..<12)
        _ = try client.send(opcode: WorkerOpcode.compact, payload: .bytes(CompactionJobRequest(spec: holding).encoded()))
        #expect(eventually(seconds: 2) { busy.worker.status.running == 1 })
        let db = try Database(path: "busy", options: Self.options(node, runner))
        defer { try? db.close() }
        try Self.load(db, count: 300, tag: "x")
        #expect(busy.worker.status.running == 1, "the held job ended before the load did: the test proves nothing")
        #expect(runner.fallbacks == 0 && runner.remoteJobs > 0)
        #expect(free.worker.status.finished == UInt64(runner.remoteJobs), "the free worker ran every job")
        // It finished nothing (a refused spec never takes a slot): every job of the load was
        // turned away as busy.
        #expect(busy.worker.status.finished == 0, "the busy worker took a job while its slot was held")
        for i in stride(from: 0, to: 300, by: 11) { #expect(try db.get(Array("k\(i)".utf8)) == Array("x-1-\(i)".utf8)) }
    }

    @Test("a job of a superseded owner is fenced by the storage node and writes nothing", arguments: Carrier.servers)
    func fencedJob(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let worker = try TestWorker(for: node)
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        options.writeBufferSize = 16 << 10
        options.disableAutoCompactions = true
        // The first owner writes two overlapping tables and goes away.
        let first = try Database(path: "owned", options: options)
        for pass in 0..<2 {
            for i in 0..<200 { try first.put(Array("k\(i)".utf8), Array("\(pass)".utf8)) }
            try first.flush()
        }
        let staleEpoch = node.remote.leaseEpoch(of: "owned")
        #expect(staleEpoch > 0)
        let tables = first.engine!.liveFiles()
        try first.close()
        // A second owner takes the lease: a higher epoch.
        let second = try Database(path: "owned", options: options)
        defer { try? second.close() }
        #expect(node.remote.leaseEpoch(of: "owned") > staleEpoch)
        let before = Set(try node.remote.children(of: "owned"))
        let spec = CompactionJobSpec(
            jobID: 1, directory: "owned", epoch: staleEpoch,
            inputs: tables.map { JobInputTable(level: $0.level, info: $0.file) }, outputLevel: 1, levelCount: 7,
            smallestSnapshot: 1 << 40, deeperLevelRanges: [], targetFileSizeBytes: 1 << 20, tableOptions: TableOptions(),
            outputFileNumbers: 900_000..<900_010)
        let fenced = try worker.run(spec)
        guard case .failed(let kind, let message) = fenced else {
            Issue.record("a fenced job ended \(fenced)")
            return
        }
        #expect(kind == .fenced, "\(message)")
        #expect(Set(try node.remote.children(of: "owned")) == before, "a fenced job changed the file set")
        // The same job under the current epoch runs.
        var current = spec
        current.epoch = node.remote.leaseEpoch(of: "owned")
        guard case .done(let result) = try worker.run(current) else {
            Issue.record("the current owner's job did not finish")
            return
        }
        #expect(!result.outputs.isEmpty && spec.problems(in: result).isEmpty)
    }

    /// Passes jobs to another runner and records how many ran at once.
    final class ConcurrencyRecorder: JobRunner, @unchecked Sendable {
        let inner: any JobRunner
        let running = Atomic<Int>(0)
        let most = Atomic<Int>(0)
        init(_ inner: any JobRunner) { self.inner = inner }
        var remoteJobs: Int { inner.remoteJobs }
        var fallbacks: Int { inner.fallbacks }
        var parallelism: Int { inner.parallelism }
        func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
            let now = running.add(1, ordering: .relaxed).newValue
            most.max(now, ordering: .relaxed)
            defer { running.subtract(1, ordering: .relaxed) }
            return try inner.runCompaction(spec, fileSystem: fileSystem)
        }
    }

    @Test("compactions of disjoint tables run side by side on the workers' slots, and every key reads back", arguments: Carrier.servers)
    func parallelCompactions(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let worker = try TestWorker(for: node, slots: 3)
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing) { [worker.endpoint] }
        let recorder = ConcurrencyRecorder(runner)
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = node.remote
        options.jobRunner = recorder
        options.writeBufferSize = 16 << 10
        options.targetFileSizeBase = 4 << 10
        options.maxBytesForLevelBase = 16 << 10
        options.level0FileNumCompactionTrigger = 2
        options.maxBackgroundJobs = 4
        let db = try Database(path: "parallel", options: options)
        defer { try? db.close() }
        let seed = SeededRandom.testSeed(carrier.description)
        var random = SeededRandom(seed: seed)
        var expected: [String: [UInt8]] = [:]
        // Random keys over a wide space: many L1 and L2 tables, so level compactions of
        // disjoint tables are there to pick beside each other. Bounded in count and time.
        let deadline = monotonicNanos() + 60_000_000_000
        var written = 0
        while written < 40_000 && (recorder.most.load(ordering: .relaxed) < 2 || written < 10_000) && monotonicNanos() < deadline {
            let key = String(format: "key%06d", Int.random(in: 0..<100_000, using: &random))
            let value = random.bytes(64)
            try db.put(Array(key.utf8), value)
            expected[key] = value
            written += 1
        }
        #expect(runner.parallelism == 3, "the worker's slots were not learned: \(runner.parallelism)")
        #expect(recorder.most.load(ordering: .relaxed) >= 2, "no two compactions ran at once in \(written) writes (seed \(seed))")
        #expect(runner.fallbacks == 0 && runner.remoteJobs > 0)
        for (key, value) in expected { #expect(try db.get(Array(key.utf8)) == value, "\(key), seed \(seed)") }
        try db.close()
        options.jobRunner = LocalJobRunner()
        let reopened = try Database(path: "parallel", options: options)
        defer { try? reopened.close() }
        for key in expected.keys.sorted().prefix(2000) { #expect(try reopened.get(Array(key.utf8)) == expected[key], "\(key), seed \(seed)") }
    }

    @Test("flushes stream to a flush worker that builds the table; with none answering they run here, counted", arguments: Carrier.servers)
    func remoteFlushes(carrier: Carrier) throws {
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let worker = try TestWorker(for: node)
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing, flushWorkers: { [worker.endpoint] }) { [] }
        var options = Self.options(node, runner)
        options.writeBufferSize = 256 << 10
        let db = try Database(path: "flushed", options: options)
        defer { try? db.close() }
        let seed = SeededRandom.testSeed(carrier.description)
        var random = SeededRandom(seed: seed)
        var expected: [String: [UInt8]] = [:]
        // Values past a chunk's size, and many small ones: chunks of several entries and of one.
        for i in 0..<3000 {
            let value = random.bytes(i % 500 == 0 ? 700_000 : Int.random(in: 1...300, using: &random))
            try db.put(Array("k\(i)".utf8), value)
            expected["k\(i)"] = value
        }
        try db.delete(Array("k5".utf8))
        expected["k5"] = nil
        try db.flush()
        #expect(runner.remoteFlushes > 0 && runner.flushFallbacks == 0, "\(runner.remoteFlushes) remote, \(runner.flushFallbacks) here")
        #expect(try db.stats().remoteFlushes == runner.remoteFlushes)
        #expect(worker.worker.status.finished >= UInt64(runner.remoteFlushes))
        #expect(db.engine!.versions.pendingReservations.isEmpty, "a flush left its reservation")
        // The worker goes away: flushes run here, counted.
        worker.stop()
        try db.put(Array("late".utf8), [1])
        try db.flush()
        #expect(runner.flushFallbacks >= 1)
        expected["late"] = [1]
        for (key, value) in expected { #expect(try db.get(Array(key.utf8)) == value, "\(key), seed \(seed)") }
        #expect(try db.get(Array("k5".utf8)) == nil)
        try db.close()
        options.jobRunner = LocalJobRunner()
        let reopened = try Database(path: "flushed", options: options)
        defer { try? reopened.close() }
        for (key, value) in expected { #expect(try reopened.get(Array(key.utf8)) == value, "\(key), seed \(seed)") }
    }

    @Test("a flush worker refuses chunks out of order, keys out of order, bad bytes and unknown jobs, leaving no table")
    func badFlushes() throws {
        let node = try StorageTestNode(.sharedMemory)
        defer { node.remove() }
        let worker = try TestWorker(for: node)
        try node.remote.createDirectory("bad")
        let client = try worker.endpoint.connect(key: node.key)
        defer { client.close() }
        func start(_ id: UInt64) throws -> CompactionJobName {
            let spec = FlushJobSpec(jobID: id, directory: "bad", epoch: 0, outputNumber: 100 + id, tableOptions: TableOptions())
            _ = try client.call(WorkerOpcode.flushStart, FlushJobRequest(spec: spec).encoded(), timeoutNanos: 5_000_000_000)
            return CompactionJobName(jobID: id, directory: "bad")
        }
        func chunk(_ name: CompactionJobName, _ index: UInt32, _ keys: [(String, UInt64)]) -> [UInt8] {
            var builder = FlushEntries.Builder(name: name, chunk: index, capacity: 256)
            for (user, sequence) in keys {
                let key = makeInternalKey(Array(user.utf8), sequence, .value)
                key.withUnsafeBytes { k in [UInt8(1)].withUnsafeBytes { v in builder.append(key: k, value: v) } }
            }
            return builder.finished()
        }
        func refusal(_ bytes: [UInt8]) -> TransportError? {
            #expect(throws: TransportError.self) { try client.call(WorkerOpcode.flushAppend, bytes, timeoutNanos: 5_000_000_000) }
        }
        // A chunk out of order.
        let first = try start(1)
        let skipped = refusal(chunk(first, 1, [("a", 1)]))
        #expect(skipped?.code == .invalid && skipped?.message.contains("chunk 1 came, chunk 0 was next") == true, "\(String(describing: skipped))")
        // Keys out of order.
        let second = try start(2)
        let unsorted = refusal(chunk(second, 0, [("b", 1), ("a", 2)]))
        #expect(unsorted?.code == .invalid && unsorted?.message.contains("not after the one before") == true, "\(String(describing: unsorted))")
        // A count that lies, and a length past the end.
        let third = try start(3)
        var lying = chunk(third, 0, [("a", 1)])
        lying.removeLast()
        #expect(refusal(lying)?.code == .malformed)
        // A job the worker does not have (the first three were abandoned by their errors).
        for name in [first, second, third] {
            let gone = #expect(throws: TransportError.self) {
                try client.call(WorkerOpcode.flushFinish, name.encoded(), timeoutNanos: 5_000_000_000)
            }
            #expect(gone?.code == .notFound)
        }
        #expect(worker.worker.status.running == 0, "a refused flush kept its slot")
        #expect(try node.remote.children(of: "bad").filter { $0.hasSuffix(".sst") }.isEmpty, "a refused flush left its table")
        // The worker goes on: a good flush after the bad ones.
        let good = try start(4)
        _ = try client.call(WorkerOpcode.flushAppend, chunk(good, 0, [("a", 2), ("a", 1), ("b", 3)]), timeoutNanos: 5_000_000_000)
        guard case .bytes(let bytes) = try client.call(WorkerOpcode.flushFinish, good.encoded(), timeoutNanos: 5_000_000_000) else {
            Issue.record("finish answered a reference")
            return
        }
        let result = try FlushJobReply.decode(bytes).result
        #expect(result.entries == 3 && result.output?.number == 104)
        #expect(try node.remote.children(of: "bad").filter { $0.hasSuffix(".sst") } == [DatabaseFile.table(104).name])
    }
}
