// A seeded stress test of the public API under concurrency: writers (puts, deletes, batches),
// readers (get, multiGet), a scanner (snapshots and iterators, both ways), and a thread that
// flushes, compacts, pauses and continues background work, all at once; then close, reopen,
// and the next phase. Every check is exact:
// - Each key belongs to one writer, and a writer runs its operations one after another, each a
//   pure function of (seed, writer, operation number). The writer logs, for every key, the
//   numbers of the operations that touch it before starting them, and its last acknowledged
//   operation after each returns.
// - A read of a key may show the state left by the last operation acknowledged before the read
//   began, or by any operation touching the key that started before the read ended; nothing
//   else. A value names its operation, and its bytes are checked against the recomputed value.
// - A scan at one snapshot sees, for each writer, exactly the state after some prefix of that
//   writer's operations (the writer's operations are acknowledged in order), no shorter than
//   what was acknowledged when the snapshot was taken. Both directions must agree, gets at the
//   snapshot must agree with the scan, and a snapshot held across compactions must read the
//   same again later.
// The seed fixes every writer's operations and every thread's choices, not how the threads
// interleave. MORAINE_STRESS_SECONDS sets the length (default 3, over three phases); every loop
// is bounded in count and time.
import Glibc
import Moraine
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

/// What one writer has started and acknowledged, shared with the readers. Guarded by `lock`.
final class WriterLog: @unchecked Sendable {
    let writer: Int
    private let lock = ConditionLock()
    /// The last operation started and the last acknowledged (0: none).
    private var started = 0
    private var acknowledged = 0
    /// Per key, the operations that touch it, ascending (logged before they start).
    private var touches: [[Int]]

    init(writer: Int, keyCount: Int) {
        self.writer = writer
        touches = Array(repeating: [], count: keyCount)
    }

    func start(_ operation: StressOperation) {
        lock.withLock {
            precondition(operation.number == started + 1 && acknowledged == started, "writer ops run one at a time")
            started = operation.number
            for change in operation.changes { touches[change.key].append(operation.number) }
        }
    }

    func acknowledge(_ number: Int) { lock.withLock { acknowledged = number } }

    var lastAcknowledged: Int { lock.withLock { acknowledged } }

    /// After a read that began when `acknowledgedBefore` was acknowledged: the last started
    /// operation, and for each of `keys` the operations whose state a read may show, as the last
    /// touch at or before `acknowledgedBefore` (0: never touched) then every later touch.
    func window(acknowledgedBefore: Int, keys: [Int]) -> (started: Int, candidates: [[Int]]) {
        lock.withLock {
            let candidates = keys.map { key -> [Int] in
                let list = touches[key]
                var lower = 0
                var upper = list.count
                while lower < upper {
                    let middle = (lower + upper) / 2
                    if list[middle] <= acknowledgedBefore { lower = middle + 1 } else { upper = middle }
                }
                return [lower > 0 ? list[lower - 1] : 0] + Array(list[lower...])
            }
            return (started, candidates)
        }
    }
}

/// One writer operation: its changes (key index, value or nil for a delete), drawn from the seed.
struct StressOperation {
    let writer: Int
    let number: Int
    let changes: [(key: Int, value: [UInt8]?)]
    let sync: Bool

    init(seed: UInt64, writer: Int, number: Int, keyCount: Int) {
        self.writer = writer
        self.number = number
        var rng = SeededRandom(seed: seed ^ (UInt64(writer) &* 0x9e37_79b9_7f4a_7c15) ^ (UInt64(number) &* 0xc2b2_ae3d_27d4_eb4f))
        var changes: [(key: Int, value: [UInt8]?)] = []
        let roll = rng.below(10)
        let count = roll < 7 ? 1 : 2 + rng.below(5)
        var keys: [Int] = []
        for _ in 0..<(count * 4) where keys.count < count {
            let key = rng.below(keyCount)
            if !keys.contains(key) { keys.append(key) }
        }
        for key in keys {
            let delete = count == 1 ? roll >= 5 : rng.below(3) == 0
            changes.append((key, delete ? nil : Self.value(seed: seed, writer: writer, key: key, number: number)))
        }
        self.changes = changes
        sync = rng.below(64) == 0
    }

    var isBatch: Bool { changes.count > 1 }

    /// The change this operation makes to `key`: .some(value), .some(nil) for a delete, or nil.
    func change(to key: Int) -> [UInt8]?? {
        changes.first { $0.key == key }.map { $0.value }
    }

    static func keyBytes(writer: Int, key: Int) -> [UInt8] { Array("w\(writer)/k\(String(key).leftPad(4))".utf8) }

    /// The value operation `number` writes to `key`: a header naming them, then seeded filler.
    static func value(seed: UInt64, writer: Int, key: Int, number: Int) -> [UInt8] {
        var rng = SeededRandom(seed: seed &+ UInt64(writer) << 48 &+ UInt64(key) << 32 &+ UInt64(number))
        let length = rng.below(10) == 0 ? 1000 + rng.below(3000) : rng.below(120)
        let filler = UInt8(97 + rng.below(26))
        return Array("w\(writer)/k\(key)@\(number)|".utf8) + Array(repeating: filler, count: length)
    }

    /// The operation number named by a value's header, or nil if the header is malformed.
    static func number(in value: [UInt8]) -> Int? {
        guard let at = value.firstIndex(of: UInt8(ascii: "@")), let bar = value.firstIndex(of: UInt8(ascii: "|")), at < bar
        else { return nil }
        return Int(String(decoding: value[(at + 1)..<bar], as: UTF8.self))
    }

    /// (writer, key) of a key this test writes, or nil.
    static func parse(key: [UInt8]) -> (writer: Int, key: Int)? {
        let text = String(decoding: key, as: UTF8.self)
        guard text.first == "w", let slash = text.firstIndex(of: "/") else { return nil }
        let rest = text[text.index(after: slash)...]
        guard rest.first == "k", let writer = Int(text[text.index(after: text.startIndex)..<slash]),
            let index = Int(rest.dropFirst())
        else { return nil }
        return (writer, index)
    }
}

/// The state of one stress run, shared by its threads.
final class StressRun: @unchecked Sendable {
    static let writerCount = 3
    static let keyCount = 150

    let seed: UInt64
    let directory: String
    let logs: [WriterLog]
    /// Each writer's next operation number (carried across phases; touched by its writer only,
    /// and between phases).
    var nextNumber: [Int]
    /// Guards `failureList` and `countTable` (a pthread lock, which ThreadSanitizer follows).
    private let lock = ConditionLock()
    private var failureList: [String] = []
    private var countTable: [String: Int] = [:]
    let stop = Atomic<Bool>(false)

    init(seed: UInt64) {
        self.seed = seed
        directory = makeTemporaryDirectory("moraine-stress")
        logs = (0..<Self.writerCount).map { WriterLog(writer: $0, keyCount: Self.keyCount) }
        nextNumber = Array(repeating: 1, count: Self.writerCount)
    }

    func fail(_ message: String) {
        lock.withLock { if failureList.count < 20 { failureList.append("\(message) (MORAINE_SEED=\(seed))") } }
        stop.store(true, ordering: .releasing)
    }

    var failures: [String] { lock.withLock { failureList } }
    var failed: Bool { !failures.isEmpty }

    func count(_ what: String, _ n: Int = 1) { lock.withLock { countTable[what, default: 0] += n } }
    var counts: [String: Int] { lock.withLock { countTable } }

    /// Operation `number` of `writer`, recomputed (readers check against it).
    func operation(writer: Int, number: Int) -> StressOperation {
        StressOperation(seed: seed, writer: writer, number: number, keyCount: Self.keyCount)
    }

    /// Whether `shown` (a value, or nil for absent) is the state some candidate operation left.
    func allowed(_ shown: [UInt8]?, writer: Int, key: Int, candidates: [Int]) -> Bool {
        guard let shown else {
            return candidates.contains { $0 == 0 || operation(writer: writer, number: $0).change(to: key) == .some(nil) }
        }
        guard let number = StressOperation.number(in: shown), candidates.contains(number) else { return false }
        return shown == StressOperation.value(seed: seed, writer: writer, key: key, number: number)
            && operation(writer: writer, number: number).change(to: key) != .some(nil)
    }

    static func options(phase: Int, seed: UInt64) -> Options {
        var rng = SeededRandom(seed: seed &+ UInt64(phase) &* 7919)
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = [8 << 10, 32 << 10, 64 << 10][rng.below(3)]
        options.targetFileSizeBase = 16 << 10
        options.maxBytesForLevelBase = 64 << 10
        options.level0FileNumCompactionTrigger = 2 + rng.below(3)
        options.blockSize = [256, 1024, 4096][rng.below(3)]
        options.blockCacheSize = [0, 32 << 10, 1 << 20][rng.below(3)]
        options.compression = rng.below(2) == 0 ? .lz4 : .none
        options.maxBackgroundJobs = 1 + rng.below(2)
        options.rowCacheSize = [0, 16 << 10, 1 << 20][rng.below(3)]
        return options
    }
}

/// Threads that a test starts and waits for, each bounded by the caller's deadline.
final class StressThreads: Sendable {
    private let running = Atomic<Int>(0)

    func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        running.wrappingAdd(1, ordering: .acquiringAndReleasing)
        startThread(name: name) { [self] in
            body()
            running.wrappingSubtract(1, ordering: .acquiringAndReleasing)
        }
    }

    /// Waits until every thread has ended or `timeoutNanos` passed; returns whether all ended.
    func join(timeoutNanos: Int64) -> Bool {
        let deadline = monotonicNanos() + timeoutNanos
        while running.load(ordering: .acquiring) > 0 && monotonicNanos() < deadline { usleep(1_000) }
        return running.load(ordering: .acquiring) == 0
    }
}

@Suite("Concurrency stress")
struct ConcurrencyStressTests {
    @Test("writers, readers, snapshot scans and background work agree, across reopens")
    func stress() throws {
        let seconds = Double(SeededRandom.environmentInt("MORAINE_STRESS_SECONDS", default: 3))
        let phases = 3
        let seed = SeededRandom.testSeed("\(Int(seconds)) s over \(phases) phases")
        let run = StressRun(seed: seed)
        defer { removeTree(run.directory) }
        var database = try Database(path: run.directory, options: StressRun.options(phase: 0, seed: seed))
        for phase in 0..<phases where !run.failed {
            let phaseNanos = Int64(seconds * 1e9) / Int64(phases)
            try runPhase(run, database, phase: phase, nanos: phaseNanos)
            guard !run.failed else { break }
            try verifyAll(run, database, label: "phase \(phase) end")
            try database.close()
            database = try Database(path: run.directory, options: StressRun.options(phase: phase + 1, seed: seed))
            try verifyAll(run, database, label: "phase \(phase) after reopen")
        }
        try? database.close()
        let failures = run.failures
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        let counts = run.counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }
        print("concurrency stress (MORAINE_SEED=\(seed)): \(counts.joined(separator: ", "))")
    }

    /// One phase: every thread runs until the deadline (or a failure), then all are joined.
    func runPhase(_ run: StressRun, _ database: Database, phase: Int, nanos: Int64) throws {
        run.stop.store(false, ordering: .releasing)
        let deadline = monotonicNanos() + nanos
        let threads = StressThreads()
        let starts = run.nextNumber
        for writer in 0..<StressRun.writerCount {
            threads.spawn("stress-writer") {
                Self.write(run, database, writer: writer, from: starts[writer], deadline: deadline)
            }
        }
        for reader in 0..<2 {
            let rngSeed = run.seed &+ UInt64(phase * 16 + reader) &* 0x5851_f42d
            threads.spawn("stress-reader") { Self.read(run, database, seed: rngSeed, deadline: deadline) }
        }
        let scanSeed = run.seed &+ UInt64(phase * 16 + 8) &* 0x5851_f42d
        threads.spawn("stress-scanner") { Self.scan(run, database, seed: scanSeed, deadline: deadline) }
        let chaosSeed = run.seed &+ UInt64(phase * 16 + 9) &* 0x5851_f42d
        threads.spawn("stress-background") { Self.disturb(run, database, seed: chaosSeed, deadline: deadline) }
        let joined = threads.join(timeoutNanos: nanos + 120_000_000_000)
        if !joined {
            run.fail("phase \(phase): threads still running two minutes after the deadline")
            Issue.record("stress threads hung; not closing the database under them")
            throw MoraineError(.internalError, "stress threads hung")
        }
        run.nextNumber = run.logs.map { $0.lastAcknowledged + 1 }
    }

    /// A writer: its operations in order, each logged before it starts and after it returns.
    static func write(_ run: StressRun, _ database: Database, writer: Int, from first: Int, deadline: Int64) {
        let log = run.logs[writer]
        var number = first
        while number < first + 1_000_000 && monotonicNanos() < deadline && !run.stop.load(ordering: .acquiring) {
            let operation = run.operation(writer: writer, number: number)
            log.start(operation)
            do {
                let options = WriteOptions(sync: operation.sync)
                if operation.isBatch {
                    var batch = WriteBatch()
                    for change in operation.changes {
                        let key = StressOperation.keyBytes(writer: writer, key: change.key)
                        if let value = change.value { batch.put(key, value) } else { batch.delete(key) }
                    }
                    try database.write(batch, options: options)
                } else if let value = operation.changes[0].value {
                    try database.put(StressOperation.keyBytes(writer: writer, key: operation.changes[0].key), value, options: options)
                } else {
                    try database.delete(StressOperation.keyBytes(writer: writer, key: operation.changes[0].key), options: options)
                }
            } catch {
                run.fail("writer \(writer) operation \(number): \(error)")
                return
            }
            log.acknowledge(number)
            number += 1
        }
        run.count("writes", number - first)
    }

    /// A reader: gets and multiGets of random keys of every writer, each checked against the
    /// window of states it could have seen.
    static func read(_ run: StressRun, _ database: Database, seed: UInt64, deadline: Int64) {
        var rng = SeededRandom(seed: seed)
        var reads = 0
        while reads < 5_000_000 && monotonicNanos() < deadline && !run.stop.load(ordering: .acquiring) {
            let count = rng.below(4) == 0 ? 1 + rng.below(16) : 1
            let picks = (0..<count).map { _ in (writer: rng.below(StressRun.writerCount), key: rng.below(StressRun.keyCount)) }
            let before = run.logs.map(\.lastAcknowledged)
            let keys = picks.map { StressOperation.keyBytes(writer: $0.writer, key: $0.key) }
            let shown: [[UInt8]?]
            do {
                shown = count == 1 ? [try database.get(keys[0])] : try database.multiGet(keys)
            } catch {
                run.fail("read: \(error)")
                return
            }
            for (index, pick) in picks.enumerated() {
                let window = run.logs[pick.writer].window(acknowledgedBefore: before[pick.writer], keys: [pick.key])
                if !run.allowed(shown[index], writer: pick.writer, key: pick.key, candidates: window.candidates[0]) {
                    let what = shown[index].flatMap { StressOperation.number(in: $0) }.map { "operation \($0)'s value" } ?? "nothing"
                    run.fail(
                        "\(count == 1 ? "get" : "multiGet") \(hex(keys[index])) showed \(what); "
                            + "acknowledged before: \(before[pick.writer]), allowed operations \(window.candidates[0])")
                    return
                }
            }
            if rng.below(200) == 0 { _ = database.stats() }  // reads the block cache's usage under load
            reads += 1
        }
        run.count("reads", reads)
    }

    /// Reads every pair at `snapshot` (nil: the iterator's own view, fixed when it is made)
    /// forward, then backward with the same iterator, which must mirror it.
    static func scanBothWays(_ database: Database, snapshot: Snapshot?) throws -> (pairs: [([UInt8], [UInt8])], mirrored: Bool) {
        let iterator = try database.makeIterator(options: ReadOptions(snapshot: snapshot))
        var forward: [([UInt8], [UInt8])] = []
        try iterator.seekToFirst()
        while iterator.isValid && forward.count < 100_000 {
            forward.append((iterator.key, iterator.value))
            try iterator.next()
        }
        var backward: [([UInt8], [UInt8])] = []
        try iterator.seekToLast()
        while iterator.isValid && backward.count < 100_000 {
            backward.append((iterator.key, iterator.value))
            try iterator.prev()
        }
        let mirrored = backward.count == forward.count && zip(forward, backward.reversed()).allSatisfy { $0 == $1 }
        return (forward, mirrored)
    }

    /// Checks that `pairs` is, for each writer, the state after some prefix of its operations
    /// between `before` (acknowledged when the view was taken) and what had started by now.
    static func checkPrefix(_ run: StressRun, _ pairs: [([UInt8], [UInt8])], before: [Int], label: String) -> Bool {
        var shown = Array(repeating: [Int?](repeating: nil, count: StressRun.keyCount), count: StressRun.writerCount)
        for (keyBytes, value) in pairs {
            guard let parsed = StressOperation.parse(key: keyBytes), parsed.writer < StressRun.writerCount,
                parsed.key < StressRun.keyCount, let number = StressOperation.number(in: value),
                value == StressOperation.value(seed: run.seed, writer: parsed.writer, key: parsed.key, number: number)
            else {
                run.fail("\(label): unexpected pair \(hex(keyBytes)) = \(value.count) bytes")
                return false
            }
            shown[parsed.writer][parsed.key] = number
        }
        for writer in 0..<StressRun.writerCount {
            let window = run.logs[writer].window(acknowledgedBefore: before[writer], keys: Array(0..<StressRun.keyCount))
            // The state after prefix p: each key shows its last touch at or before p (nil if
            // that touch deleted it or there is none).
            var deletes: [Int: Bool] = [:]
            func isDelete(_ number: Int, _ key: Int) -> Bool {
                if number == 0 { return true }
                if let known = deletes[number &* 1024 &+ key] { return known }
                let result = run.operation(writer: writer, number: number).change(to: key) == .some(nil)
                deletes[number &* 1024 &+ key] = result
                return result
            }
            let prefixes = before[writer]...max(before[writer], window.started)
            let matching = prefixes.first { p in
                (0..<StressRun.keyCount).allSatisfy { key in
                    let last = window.candidates[key].last { $0 <= p } ?? 0
                    return isDelete(last, key) ? shown[writer][key] == nil : shown[writer][key] == last
                }
            }
            if matching == nil {
                run.fail(
                    "\(label): writer \(writer)'s keys match no prefix of its operations in \(prefixes) "
                        + "(shown: \(shown[writer].enumerated().compactMap { i, n in n.map { "k\(i)@\($0)" } }.prefix(12)))")
                return false
            }
        }
        return true
    }

    /// The scanner: snapshots and plain iterators, scanned and checked; one snapshot is held
    /// across several rounds (and the flushes and compactions meanwhile) and must read the same.
    static func scan(_ run: StressRun, _ database: Database, seed: UInt64, deadline: Int64) {
        var rng = SeededRandom(seed: seed)
        var held: (snapshot: Snapshot, pairs: [([UInt8], [UInt8])], rounds: Int)? = nil
        var scans = 0
        defer {
            if let held { database.releaseSnapshot(held.snapshot) }
            run.count("scans", scans)
        }
        while scans < 100_000 && monotonicNanos() < deadline && !run.stop.load(ordering: .acquiring) {
            do {
                let before = run.logs.map(\.lastAcknowledged)
                let useSnapshot = rng.below(3) != 0
                let snapshot = try useSnapshot ? database.snapshot() : nil
                let (pairs, mirrored) = try scanBothWays(database, snapshot: snapshot)
                scans += 1
                let label = useSnapshot ? "snapshot \(snapshot!.sequence) scan" : "iterator scan"
                if !mirrored {
                    run.fail("\(label): the backward scan is not the forward scan reversed")
                    return
                }
                guard checkPrefix(run, pairs, before: before, label: label) else { return }
                if let snapshot {
                    // Gets and a multiGet at the snapshot agree with its scan.
                    let byKey = Dictionary(pairs.map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
                    let keys = (0..<8).map { _ in
                        StressOperation.keyBytes(writer: rng.below(StressRun.writerCount), key: rng.below(StressRun.keyCount))
                    }
                    let read = ReadOptions(snapshot: snapshot)
                    let got = try database.multiGet(keys, options: read)
                    for (index, key) in keys.enumerated() {
                        let single = try database.get(key, options: read)
                        if got[index] != byKey[key] || single != byKey[key] {
                            run.fail("\(label): get or multiGet of \(hex(key)) disagrees with the scan")
                            return
                        }
                    }
                    if held == nil && rng.below(4) == 0 {
                        held = (snapshot, pairs, 3 + rng.below(10))
                    } else {
                        database.releaseSnapshot(snapshot)
                    }
                }
                if let current = held {
                    let (again, _) = try scanBothWays(database, snapshot: current.snapshot)
                    if again.count != current.pairs.count || !zip(again, current.pairs).allSatisfy({ $0 == $1 }) {
                        run.fail("held snapshot \(current.snapshot.sequence) reads differently after \(current.rounds) rounds")
                        return
                    }
                    if current.rounds <= 1 {
                        database.releaseSnapshot(current.snapshot)
                        held = nil
                    } else {
                        held = (current.snapshot, current.pairs, current.rounds - 1)
                    }
                }
            } catch {
                run.fail("scan: \(error)")
                return
            }
        }
    }

    /// Background work on demand: flushes (waiting or not), compactions of all or part of the
    /// keys, pauses of background work (always continued), and stats.
    static func disturb(_ run: StressRun, _ database: Database, seed: UInt64, deadline: Int64) {
        var rng = SeededRandom(seed: seed)
        var actions = 0
        while actions < 100_000 && monotonicNanos() < deadline && !run.stop.load(ordering: .acquiring) {
            do {
                switch rng.below(8) {
                case 0: try database.flush()
                case 1: try database.flush(wait: false)
                case 2: try database.compactRange()
                case 3:
                    let writer = rng.below(StressRun.writerCount)
                    let a = rng.below(StressRun.keyCount)
                    let b = rng.below(StressRun.keyCount)
                    try database.compactRange(
                        begin: StressOperation.keyBytes(writer: writer, key: min(a, b)),
                        end: StressOperation.keyBytes(writer: writer, key: max(a, b)))
                case 4:
                    try database.pauseBackgroundWork()
                    usleep(UInt32(1_000 + rng.below(20_000)))
                    try database.continueBackgroundWork()
                    run.count("pauses")
                case 5: _ = database.stats()
                default: usleep(UInt32(1_000 + rng.below(5_000)))
                }
            } catch {
                run.fail("background action: \(error)")
                return
            }
            actions += 1
        }
        run.count("background actions", actions)
    }

    /// With every thread stopped: each key holds exactly what its writer's last acknowledged
    /// operation left, through gets and through a scan.
    func verifyAll(_ run: StressRun, _ database: Database, label: String) throws {
        var expected: [([UInt8], [UInt8])] = []
        for writer in 0..<StressRun.writerCount {
            let acknowledged = run.logs[writer].lastAcknowledged
            let window = run.logs[writer].window(acknowledgedBefore: acknowledged, keys: Array(0..<StressRun.keyCount))
            #expect(window.started == acknowledged, "\(label): writer \(writer) has an operation in flight")
            for key in 0..<StressRun.keyCount {
                let last = window.candidates[key][0]
                let value: [UInt8]? =
                    last == 0 ? nil : run.operation(writer: writer, number: last).change(to: key) ?? nil
                let keyBytes = StressOperation.keyBytes(writer: writer, key: key)
                if let value { expected.append((keyBytes, value)) }
                let got = try database.get(keyBytes)
                #expect(got == value, "\(label): \(hex(keyBytes)) holds \(got?.count ?? -1) bytes; seed \(run.seed)")
            }
        }
        let (pairs, _) = try Self.scanBothWays(database, snapshot: try database.snapshot())
        let sorted = expected.sorted { $0.0.lexicographicallyPrecedes($1.0) }
        #expect(
            pairs.count == sorted.count && zip(pairs, sorted).allSatisfy { $0 == $1 },
            "\(label): a scan holds \(pairs.count) pairs, \(sorted.count) expected; seed \(run.seed)")
    }
}
