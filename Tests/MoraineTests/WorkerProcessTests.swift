// Compaction workers as real processes, failed for real in the middle of a job: `moraine node
// --role compaction` SIGKILLed (the job runs again here, and what the dead job wrote is swept),
// SIGSTOPped past the stall timeout and then continued (the zombie hears its cancel and removes its
// outputs; nothing of it is installed), and the compute node — a `moraine shell --cluster` —
// SIGKILLed while its job runs (the next open deletes the job's outputs by their reservation). Each
// ends with every acknowledged write read back and the storage node's tables equal to the live
// version's. Values are random bytes from a printed seed (MORAINE_SEED replays it).
import Foundation
import Moraine
@testable import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import MoraineWorker
import Synchronization
import Testing

/// A `moraine node --role compaction` child of a storage node's run directory, which it adds
/// itself to.
final class WorkerProcess: @unchecked Sendable {
    let node: StorageNodeProcess
    /// "compaction" or "flush".
    let role: String
    private(set) var process: Process?
    private(set) var endpoint: Endpoint?

    init(for node: StorageNodeProcess, role: String = "compaction") throws {
        self.node = node
        self.role = role
        try start()
    }

    func start() throws {
        (process, endpoint) = try launchRole(
            role, run: node.run.path, ["--cluster", node.run.path, "--listen", "shm:" + node.run.file("\(role).sock")])
    }

    func signal(_ number: Int32) {
        if let process { Foundation.kill(process.processIdentifier, number) }
    }

    func kill() {
        guard let process else { return }
        Foundation.kill(process.processIdentifier, SIGCONT)
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// The worker's status, or nil when it does not answer within a second.
    func status() -> WorkerStatusReply? {
        guard let endpoint, let key = try? ClusterKey.load(path: RunDirectory(node.run.path).keyPath),
            let client = try? endpoint.connect(key: key)
        else { return nil }
        defer { client.close() }
        guard case .bytes(let bytes)? = try? client.call(WorkerOpcode.status, [], timeoutNanos: 1_000_000_000) else { return nil }
        return try? WorkerStatusReply.decode(bytes)
    }

    /// Waits (up to `seconds`) for a job that has merged some bytes; false if none shows.
    func awaitRunningJob(seconds: Double = 20) -> Bool {
        eventually(seconds: seconds) { status()?.jobs.contains { $0.bytesDone > 0 } == true }
    }

    deinit { kill() }
}

/// Starts `moraine node --role ROLE ARGUMENTS…`, reads the endpoint it prints, and lists it as the
/// run directory's one `role` (replacing an earlier one).
func launchRole(_ role: String, run path: String, _ arguments: [String]) throws -> (Process, Endpoint) {
    let child = Process()
    launchDyingWithTests(child, moraineExecutablePath(), ["node", "--role", role] + arguments)
    child.standardError = FileHandle.nullDevice
    let output = Pipe()
    child.standardOutput = output
    try child.run()
    var line: [UInt8] = []
    var byte: UInt8 = 0
    while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
    let endpoint = try Endpoint(parsing: String(decoding: line, as: UTF8.self))
    let run = RunDirectory(path)
    let others = try run.roles().filter { $0.role != role }
    try run.write(others + [RunDirectory.Role(role: role, index: 0, pid: child.processIdentifier, endpoint: endpoint)])
    return (child, endpoint)
}

@Suite("Compaction worker processes", .serialized)
struct WorkerProcessTests {
    /// Keys `count` per pass, values of `valueBytes` random bytes.
    static let count = 40_000
    static let valueBytes = 200

    static func options(_ node: StorageNodeProcess, _ runner: (any JobRunner)?) throws -> Options {
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = try node.fileSystem()
        if let runner { options.jobRunner = runner }
        options.writeBufferSize = 2 << 20
        options.targetFileSizeBase = 2 << 20
        options.disableAutoCompactions = true
        return options
    }

    /// Writes pass `pass` over every key (random values from `random`), flushed to L0; returns
    /// what each key must read.
    static func writePass(_ db: Database, pass: Int, random: inout SplitMix64, into expected: inout [Int: [UInt8]]) throws {
        var batch = WriteBatch()
        for i in 0..<count {
            var value = [UInt8](repeating: 0, count: valueBytes)
            for j in stride(from: 0, to: valueBytes, by: 8) {
                let word = random.next()
                for b in 0..<min(8, valueBytes - j) { value[j + b] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(b))) }
            }
            batch.put(key(i), value)
            expected[i] = value
            if batch.count == 1000 {
                try db.write(batch)
                batch = WriteBatch()
            }
        }
        try db.write(batch)
        try db.flush()
    }

    static func key(_ i: Int) -> [UInt8] { Array(String(format: "key%08d", i).utf8) }

    /// Every key reads back its expected value.
    static func expectAll(_ db: Database, _ expected: [Int: [UInt8]]) throws {
        var wrong = 0
        for (i, value) in expected where try db.get(key(i)) != value { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(expected.count) keys read back wrong")
    }

    /// Table files on the storage node beyond the live version's (nil: none).
    static func strayTables(_ db: Database, _ node: StorageNodeProcess, _ database: String) throws -> Set<UInt64>? {
        let live = Set(db.engine!.liveFiles().map(\.file.number))
        var onNode = Set<UInt64>()
        for name in try node.fileSystem().children(of: database) {
            if case .table(let n) = DatabaseFile(name: name) { onNode.insert(n) }
        }
        let stray = onNode.subtracting(live)
        return stray.isEmpty ? nil : stray
    }

    /// Runs `compactRange` on a thread of its own; the returned call waits for it (up to 120 s).
    static func compactInBackground(_ db: Database) -> () -> Result<Void, Error>? {
        let outcome = Mutex<Result<Void, Error>?>(nil)
        startThread(name: "test-compact") {
            let result = Result { try db.compactRange() }
            outcome.withLock { $0 = result }
        }
        return {
            _ = eventually(seconds: 120) { outcome.withLock { $0 != nil } }
            return outcome.withLock { $0 }
        }
    }

    /// A storage node and a compaction worker as processes, and a database of three overlapping
    /// passes (not compacted yet) whose compactions go to the worker.
    struct Loaded {
        let node: StorageNodeProcess
        let worker: WorkerProcess
        let runner: RemoteJobRunner
        let db: Database
        var random: SplitMix64
        var expected: [Int: [UInt8]] = [:]

        init(_ name: String) throws {
            node = try StorageNodeProcess(.sharedMemory)
            worker = try WorkerProcess(for: node)
            let endpoint = worker.endpoint!
            runner = RemoteJobRunner(key: try ClusterKey.load(path: RunDirectory(node.run.path).keyPath), timing: TestWorker.timing) {
                [endpoint]
            }
            db = try Database(path: name, options: WorkerProcessTests.options(node, runner))
            random = SplitMix64(seed: SeededRandom.testSeed(name))
            for pass in 0..<3 { try WorkerProcessTests.writePass(db, pass: pass, random: &random, into: &expected) }
        }
    }

    /// Starts a full compaction in the background and waits for its job to show on the worker;
    /// nil (with the issue recorded) when none shows.
    static func compactionOnWorker(_ loaded: Loaded) -> (() -> Result<Void, Error>?)? {
        let wait = compactInBackground(loaded.db)
        guard loaded.worker.awaitRunningJob() else {
            _ = wait()
            Issue.record("no compaction job showed on the worker: the test proves nothing")
            return nil
        }
        return wait
    }

    @Test("SIGKILL of a worker mid-job: the compaction runs again here, what the dead job wrote is swept, and jobs return once it is back")
    func killWorker() throws {
        var loaded = try Loaded("killed")
        let (node, worker, runner, db) = (loaded.node, loaded.worker, loaded.runner, loaded.db)
        defer { try? db.close() }
        guard let wait = Self.compactionOnWorker(loaded) else { return }
        worker.kill()
        guard case .success? = wait() else {
            Issue.record("the compaction did not complete after its worker was killed: \(String(describing: wait()))")
            return
        }
        let stats = try db.stats()
        #expect(stats.lostJobs >= 1 && runner.fallbacks >= 1, "lost \(stats.lostJobs), fallbacks \(runner.fallbacks)")
        try Self.expectAll(db, loaded.expected)
        // The dead job's range is swept once writes it sent before it died can no longer land.
        var stray: Set<UInt64>? = []
        let swept = eventually(seconds: 15) {
            try? db.put(Array("tick".utf8), Array("x".utf8))
            try? db.flush()
            stray = try? Self.strayTables(db, node, "killed")
            return stray == nil
        }
        #expect(swept, "tables outside the live version stayed on the storage node: \(String(describing: stray))")
        // Back: the next compaction goes to it.
        try worker.start()
        let remote = runner.remoteJobs
        try Self.writePass(db, pass: 3, random: &loaded.random, into: &loaded.expected)
        try db.compactRange()
        #expect(runner.remoteJobs > remote)
        try Self.expectAll(db, loaded.expected)
    }

    @Test("SIGSTOP of a worker mid-job: given up after the stall timeout and run here; continued, the zombie is cancelled and leaves nothing")
    func stopWorker() throws {
        let loaded = try Loaded("zombie")
        let (node, worker, runner, db, expected) = (loaded.node, loaded.worker, loaded.runner, loaded.db, loaded.expected)
        defer { try? db.close() }
        guard let wait = Self.compactionOnWorker(loaded) else { return }
        worker.signal(SIGSTOP)
        let stopped = monotonicNanos()
        let outcome = wait()
        let tookNanos = monotonicNanos() - stopped
        guard case .success? = outcome else {
            worker.signal(SIGCONT)
            Issue.record("the compaction did not complete while its worker was stopped: \(String(describing: outcome))")
            return
        }
        #expect(tookNanos >= TestWorker.timing.stallTimeoutNanos, "given up after \(tookNanos / 1_000_000) ms, before the stall timeout")
        #expect(try db.stats().lostJobs >= 1 && runner.fallbacks >= 1)
        try Self.expectAll(db, expected)
        // Continued: the zombie hears the cancel (or its deadline) and removes what it wrote; no
        // purge runs here, so the worker's own cleanup (and the sweep when the job was lost) is
        // all that can clear its outputs.
        worker.signal(SIGCONT)
        var stray: Set<UInt64>? = []
        let clean = eventually(seconds: 20) {
            stray = try? Self.strayTables(db, node, "zombie")
            return stray == nil && worker.status()?.running == 0
        }
        #expect(clean, "the zombie left tables outside the live version: \(String(describing: stray)), status \(String(describing: worker.status()))")
        try Self.expectAll(db, expected)
        try db.close()
        let reopened = try Database(path: "zombie", options: Self.options(node, nil))
        defer { try? reopened.close() }
        try Self.expectAll(reopened, expected)
    }

    @Test("SIGKILL of the compute node mid-job: the next open deletes the job's outputs by its reservation and has every acknowledged write")
    func killCompute() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let worker = try WorkerProcess(for: node)
        let shell = try ShellProcess(arguments: ["shell", "--sync", "--cluster", node.run.path, "--db", "owned"])
        defer { shell.kill() }
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var acknowledged: [String: String] = [:]
        for pass in 0..<3 {
            for first in stride(from: 0, to: Self.count, by: 1000) {
                #expect(shell.send("batch 1000"))
                for i in first..<first + 1000 {
                    let value = String(format: "%016llx", random.next()) + String(repeating: "v", count: 100) + "\(pass)"
                    #expect(shell.send("put k\(i) \(value)"))
                    acknowledged["k\(i)"] = value
                }
                guard shell.readLine() == "OK" else { Issue.record("a batch was not acknowledged"); return }
            }
            #expect(shell.send("flush"))
            #expect(shell.readLine() == "OK")
        }
        #expect(shell.send("compact"))
        guard worker.awaitRunningJob() else {
            Issue.record("no compaction job showed on the worker: the test proves nothing")
            return
        }
        shell.kill()
        shell.wait()
        // The worker's job runs on (its writes carry the dead owner's epoch, still leased) or is
        // fenced once the next owner takes the lease; either way nothing installs its outputs.
        var options = try Self.options(node, nil)
        options.createIfMissing = false
        var db: Database? = nil
        let deadline = monotonicNanos() + 20_000_000_000
        while db == nil, monotonicNanos() < deadline {
            do {
                db = try Database(path: "owned", options: options)
            } catch let error as MoraineError where error.kind == .busy {
                sleepNanos(200_000_000)
            }
        }
        guard let db else { Issue.record("the lease of a killed compute node was never given up"); return }
        defer { try? db.close() }
        #expect(db.engine!.versions.pendingReservations.isEmpty, "the open kept \(db.engine!.versions.pendingReservations)")
        // The job may still be finishing on the worker when the open runs: its last writes are
        // fenced, and whatever it created before is an orphan of the open's (now released)
        // reservation, so only a table created after the open could stay; none may.
        _ = eventually(seconds: 20) { worker.status()?.running == 0 }
        var stray: Set<UInt64>? = []
        #expect(eventually(seconds: 5) {
            stray = try? Self.strayTables(db, node, "owned")
            return stray == nil
        }, "tables outside the live version: \(String(describing: stray))")
        var wrong = 0
        for (key, value) in acknowledged where try db.get(Array(key.utf8)) != Array(value.utf8) { wrong += 1 }
        #expect(wrong == 0, "\(wrong) acknowledged writes read back wrong")
    }

    @Test("SIGKILL of a flush worker mid-stream: the flush runs again here, nothing it wrote stays, every write reads back")
    func killFlushWorker() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let worker = try WorkerProcess(for: node, role: "flush")
        let endpoint = worker.endpoint!
        let runner = RemoteJobRunner(
            key: try ClusterKey.load(path: RunDirectory(node.run.path).keyPath), timing: TestWorker.timing, flushWorkers: { [endpoint] }
        ) { [] }
        var options = try Self.options(node, runner)
        options.writeBufferSize = 64 << 20
        let db = try Database(path: "flushkill", options: options)
        defer { try? db.close() }
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var expected: [Int: [UInt8]] = [:]
        // One pass into the memtable (no flush yet), then the flush that is killed.
        var batch = WriteBatch()
        for i in 0..<Self.count {
            let value = random.bytes(1000)
            batch.put(Self.key(i), value)
            expected[i] = value
            if batch.count == 1000 {
                try db.write(batch)
                batch = WriteBatch()
            }
        }
        let outcome = Mutex<Result<Void, Error>?>(nil)
        startThread(name: "test-flush") {
            let result = Result { try db.flush() }
            outcome.withLock { $0 = result }
        }
        guard worker.awaitRunningJob() else {
            _ = eventually(seconds: 60) { outcome.withLock { $0 != nil } }
            Issue.record("no flush showed on the worker: the test proves nothing")
            return
        }
        worker.kill()
        #expect(eventually(seconds: 60) { outcome.withLock { $0 != nil } })
        guard case .success? = outcome.withLock({ $0 }) else {
            Issue.record("the flush did not complete after its worker was killed: \(String(describing: outcome.withLock { $0 }))")
            return
        }
        let stats = try db.stats()
        #expect(stats.lostJobs >= 1 && runner.flushFallbacks >= 1, "lost \(stats.lostJobs), fallbacks \(runner.flushFallbacks)")
        try Self.expectAll(db, expected)
        var stray: Set<UInt64>? = []
        let swept = eventually(seconds: 15) {
            try? db.put(Array("tick".utf8), Array("x".utf8))
            try? db.flush()
            stray = try? Self.strayTables(db, node, "flushkill")
            return stray == nil
        }
        #expect(swept, "tables outside the live version stayed on the storage node: \(String(describing: stray))")
        try db.close()
        let reopened = try Database(path: "flushkill", options: Self.options(node, nil))
        defer { try? reopened.close() }
        try Self.expectAll(reopened, expected)
    }
}
