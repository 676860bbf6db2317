// The db_bench workloads. Each runs --threads threads (readwhilewriting adds one writer), each
// thread with its own generator (seeded as db_bench seeds it) and latency histogram, merged at
// the end. Throughput is operations over wall time.
import Histogram
import MoraineSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Operations done so far across threads, for the progress display (updated every 1024 ops).
final class ProgressCounter: Sendable {
    let done = Atomic<Int>(0)
}

/// Per-thread counters and latencies.
struct ThreadTally: Sendable {
    var histogram = Histogram<UInt64>(highestTrackableValue: 600_000_000_000, numberOfSignificantValueDigits: .three)
    var ops = 0
    var bytes = 0
    var found = 0
    var progress: ProgressCounter? = nil

    /// Records one operation that started at `start` (monotonic nanoseconds).
    @inline(__always)
    mutating func record(since start: UInt64) {
        _ = histogram.record(max(nowNanos() &- start, 1))
        ops += 1
        if ops & 1023 == 0 { progress?.done.wrappingAdd(1024, ordering: .relaxed) }
    }

    /// Records one batch of `operations` that started at `start`.
    mutating func record(since start: UInt64, operations: Int) {
        _ = histogram.record(max(nowNanos() &- start, 1))
        let before = ops >> 10
        ops += operations
        let crossed = (ops >> 10) - before
        if crossed > 0 { progress?.done.wrappingAdd(crossed << 10, ordering: .relaxed) }
    }
}

extension BenchRunner {
    // Workloads draw their keys as db_bench does (DbBenchRandom): each thread of a fill writes
    // --num entries in batches of --batch_size and each reader reads --reads keys; a write batch
    // and a read draw one number for db_bench's database choice before their keys, a seek does
    // not; batched workloads run whole batches only (db_bench stops before a batch that would
    // pass the count). The same flags then write and look up exactly the keys RocksDB's db_bench
    // does.
    func runWorkload(_ workload: String, engine name: String) throws -> BenchResult {
        let num = flags.num
        let reads = flags.readCount
        switch workload {
        case "fillseq", "fillrandom", "overwrite":
            if workload != "overwrite" { try reopenFresh(name) }
            let random = workload != "fillseq"
            return try measure(workload, name, opsPerThread: num) { engine, _, rng, tally in
                try self.writeKeys(engine, count: num, random: random, rng: &rng, tally: &tally)
            }
        case "readrandom":
            return try measure(workload, name, opsPerThread: reads, reportFound: true) { engine, _, rng, tally in
                try self.readRandom(engine, count: reads, rng: &rng, tally: &tally)
            }
        case "multireadrandom":
            return try measure(workload, name, opsPerThread: reads, reportFound: true) { engine, _, rng, tally in
                try self.multiReadRandom(engine, count: reads, rng: &rng, tally: &tally)
            }
        case "readseq", "readreverse":
            let reverse = workload == "readreverse"
            return try measure(workload, name, opsPerThread: reads) { engine, _, _, tally in
                let cursor = try engine.makeCursor()
                var start = nowNanos()
                if reverse { try cursor.seekToLast() } else { try cursor.seekToFirst() }
                while cursor.isValid && tally.ops < reads {
                    tally.bytes += cursor.entryBytes
                    if reverse { try cursor.prev() } else { try cursor.next() }
                    tally.record(since: start)
                    start = nowNanos()
                }
            }
        case "seekrandom":
            return try measure(workload, name, opsPerThread: reads, reportFound: true) { engine, _, rng, tally in
                let cursor = try engine.makeCursor()
                try withUnsafeTemporaryAllocation(byteCount: self.data.keySize, alignment: 8) { key in
                    let seekNexts = self.flags.seekNexts
                    for _ in 0..<reads {
                        self.data.fillKey(rng.below(num), into: key)
                        let start = nowNanos()
                        try cursor.seek(UnsafeRawBufferPointer(key))
                        // db_bench counts a seek found when it lands on the key itself.
                        if cursor.isValid && cursor.keyEquals(UnsafeRawBufferPointer(key)) { tally.found += 1 }
                        var n = 0
                        while n < seekNexts && cursor.isValid {
                            tally.bytes += cursor.entryBytes
                            try cursor.next()
                            n += 1
                        }
                        tally.record(since: start)
                    }
                }
            }
        case "deleterandom":
            return try measure(workload, name, opsPerThread: num) { engine, _, rng, tally in
                try self.writeKeys(engine, count: num, random: true, deleting: true, rng: &rng, tally: &tally)
            }
        case "readwhilewriting":
            return try readWhileWriting(name, reads: reads)
        case "compact":
            return try measure(workload, name, opsPerThread: 1, threads: 1, seedThreads: flags.threads) {
                engine, _, _, tally in
                let start = nowNanos()
                try engine.compactAll()
                tally.record(since: start)
            }
        default:
            throw MoraineError(.invalid, "unknown benchmark '\(workload)'")
        }
    }

    func reopenFresh(_ name: String) throws {
        try engines[name]?.close()
        engines[name] = try open(name, fresh: true)
    }

    /// Writes `count` entries in batches of --batch_size (one engine write per batch): keys
    /// 0..<count in order, or drawn at random below --num; puts, or with `deleting`, deletes.
    func writeKeys(
        _ engine: any BenchEngine, count: Int, random: Bool, deleting: Bool = false, rng: inout DbBenchRandom,
        tally: inout ThreadTally
    ) throws {
        let batch = flags.batchSize
        let keySize = data.keySize
        // Flags are read once: an ArgumentParser property costs hundreds of instructions a read.
        let num = flags.num
        try withUnsafeTemporaryAllocation(byteCount: keySize * batch, alignment: 8) { keys in
            var written = 0
            while written + batch <= count {
                _ = rng.next()  // db_bench's choice among databases
                for i in 0..<batch {
                    data.fillKey(
                        random ? rng.below(num) : written + i,
                        into: UnsafeMutableRawBufferPointer(rebasing: keys[i * keySize..<(i + 1) * keySize]))
                }
                let first = UnsafeRawBufferPointer(rebasing: keys[0..<keySize])
                let start = nowNanos()
                if batch == 1 && deleting {
                    try engine.delete(first)
                } else if batch == 1 {
                    try data.withValue(written) { value in try engine.put(first, value) }
                } else {
                    let values = deleting ? nil : (0..<batch).map { data.value(written + $0) }
                    try engine.write(keys: UnsafeRawBufferPointer(rebasing: keys[0..<batch * keySize]), keySize: keySize, values: values)
                }
                tally.record(since: start, operations: batch)
                if !deleting { tally.bytes += batch * (keySize + data.valueSize) }
                written += batch
            }
        }
    }

    func readRandom(_ engine: any BenchEngine, count: Int, rng: inout DbBenchRandom, tally: inout ThreadTally) throws {
        let num = flags.num
        try withUnsafeTemporaryAllocation(byteCount: data.keySize, alignment: 8) { key in
            for _ in 0..<count {
                _ = rng.next()  // db_bench's choice among databases
                data.fillKey(rng.below(num), into: key)
                let start = nowNanos()
                let size = try engine.get(UnsafeRawBufferPointer(key))
                tally.record(since: start)
                if let size {
                    tally.found += 1
                    tally.bytes += data.keySize + size
                }
            }
        }
    }

    /// Reads `count` random keys in batches of --batch_size; the histogram holds one latency per
    /// batch (as db_bench's), and throughput counts keys.
    func multiReadRandom(_ engine: any BenchEngine, count: Int, rng: inout DbBenchRandom, tally: inout ThreadTally) throws {
        let batch = flags.batchSize
        let num = flags.num
        try withUnsafeTemporaryAllocation(byteCount: data.keySize * batch, alignment: 8) { keys in
            var left = count
            while left >= batch {
                let n = batch
                _ = rng.next()  // db_bench's choice among databases
                for i in 0..<n {
                    data.fillKey(
                        rng.below(num),
                        into: UnsafeMutableRawBufferPointer(rebasing: keys[i * data.keySize..<(i + 1) * data.keySize]))
                }
                let start = nowNanos()
                let (found, bytes) = try engine.multiGet(UnsafeRawBufferPointer(keys), keySize: data.keySize, count: n)
                tally.record(since: start, operations: n)
                tally.found += found
                tally.bytes += found * data.keySize + bytes
                left -= n
            }
        }
    }

    /// --threads readers doing readrandom beside one writer of random keys that runs until they
    /// finish. As in db_bench the writer is the workload's first thread (it takes the first
    /// seed); the readers take the next ones.
    func readWhileWriting(_ name: String, reads: Int) throws -> BenchResult {
        let engine = engines[name]!
        let stop = StopFlag()
        let writerSeed = UInt64(flags.seed) &+ UInt64(seedThreadsUsed) &+ 1
        let writer = Worker { [self] in
            var rng = DbBenchRandom(seed: writerSeed)
            var tally = ThreadTally()
            while !stop.isSet {
                try writeKeys(engine, count: 1, random: true, rng: &rng, tally: &tally)
            }
        }
        defer {
            stop.set()
            writer.join()
        }
        return try measure(
            "readwhilewriting", name, opsPerThread: reads, reportFound: true, seedThreads: flags.threads + 1,
            firstSeedThread: 1
        ) { engine, _, rng, tally in
            try self.readRandom(engine, count: reads, rng: &rng, tally: &tally)
        }
    }

    /// Runs `body` on `threads` threads and merges their tallies. Thread t's generator is seeded
    /// with --seed + (threads started before this workload) + `firstSeedThread` + t + 1; the
    /// workload counts `seedThreads` threads (db_bench's count, which may differ from the
    /// threads measured here).
    func measure(
        _ benchmark: String, _ name: String, opsPerThread: Int, threads: Int? = nil, reportFound: Bool = false,
        seedThreads: Int? = nil, firstSeedThread: Int = 0,
        _ body: @escaping @Sendable (any BenchEngine, Int, inout DbBenchRandom, inout ThreadTally) throws -> Void
    ) throws -> BenchResult {
        let engine = engines[name]!
        let threadCount = threads ?? flags.threads
        let seedBase = UInt64(flags.seed) &+ UInt64(seedThreadsUsed) &+ UInt64(firstSeedThread) &+ 1
        seedThreadsUsed += seedThreads ?? threadCount
        let collected = TallyCollector()
        let progress = ProgressCounter()
        let display = ProgressDisplay(
            label: "\(name) \(benchmark)", expected: opsPerThread * threadCount, counter: progress)
        defer { display.finish() }
        let requestsBefore = engine.storageRequests
        let missesBefore = requestsBefore == nil ? nil : engine.blockCacheMisses
        let backgroundBefore = engine.backgroundCounters
        let cpuBefore = processCPUSeconds()
        let start = nowNanos()
        let workers = (0..<threadCount).map { thread in
            Worker {
                var rng = DbBenchRandom(seed: seedBase &+ UInt64(thread))
                var tally = ThreadTally()
                tally.progress = progress
                defer { collected.add(tally) }
                try body(engine, thread, &rng, &tally)
            }
        }
        for worker in workers { worker.join() }
        let seconds = Double(nowNanos() - start) / 1e9
        if let error = workers.compactMap(\.error).first { throw error }
        let merged = collected.merged()
        var result = BenchResult(
            engine: name, benchmark: benchmark, ops: merged.ops, seconds: seconds, threads: threadCount,
            bytes: merged.bytes, found: reportFound ? merged.found : nil,
            p50Micros: Double(merged.histogram.valueAtPercentile(50)) / 1000,
            p99Micros: Double(merged.histogram.valueAtPercentile(99)) / 1000,
            p999Micros: Double(merged.histogram.valueAtPercentile(99.9)) / 1000)
        result.cpuSeconds = processCPUSeconds() - cpuBefore
        result.background = BackgroundCounters.delta(from: backgroundBefore, to: engine.backgroundCounters)
        if let before = requestsBefore, let after = engine.storageRequests {
            result.storageRequestsPerOp = Double(after - before) / Double(max(merged.ops, 1))
            if let missesBefore, let missesAfter = engine.blockCacheMisses {
                result.blockCacheMissesPerOp = Double(missesAfter - missesBefore) / Double(max(merged.ops, 1))
            }
        }
        return result
    }
}

/// Gathers thread tallies.
final class TallyCollector: @unchecked Sendable {
    private let lock = ConditionLock()
    private var tallies: [ThreadTally] = []
    func add(_ tally: ThreadTally) { lock.withLock { tallies.append(tally) } }
    func merged() -> ThreadTally {
        lock.withLock {
            var total = ThreadTally()
            for t in tallies {
                total.histogram.add(t.histogram)
                total.ops += t.ops
                total.bytes += t.bytes
                total.found += t.found
            }
            return total
        }
    }
}

/// A flag one thread sets and others poll.
final class StopFlag: @unchecked Sendable {
    private let lock = ConditionLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// A joinable OS thread that keeps the error its body threw.
final class Worker: @unchecked Sendable {
    private let lock = ConditionLock()
    private var finished = false
    private(set) var error: Error? = nil

    init(_ body: @escaping @Sendable () throws -> Void) {
        startThread(name: "bench") { [self] in
            var failure: Error? = nil
            do { try body() } catch { failure = error }
            lock.withLock {
                self.error = failure
                finished = true
                lock.broadcast()
            }
        }
    }

    func join() { lock.withLock { while !finished { lock.wait() } } }
}

/// On a terminal, rewrites one status line every second once a workload has run 3 seconds;
/// silent when stdout is not a TTY.
final class ProgressDisplay: @unchecked Sendable {
    private let stop = StopFlag()
    private var worker: Worker? = nil

    init(label: String, expected: Int, counter: ProgressCounter) {
        guard isatty(1) != 0 else { return }
        let stop = self.stop
        worker = Worker {
            let start = nowNanos()
            var shown = false
            while !stop.isSet {
                usleep(100_000)
                let seconds = Double(nowNanos() - start) / 1e9
                guard seconds >= 3, Int(seconds * 10) % 10 == 0 else { continue }
                let done = counter.done.load(ordering: .relaxed)
                let percent = expected > 0 ? min(100, done * 100 / expected) : 0
                print("\r\(label): \(done) ops (\(percent)%), \(Int(Double(done) / seconds)) ops/s   ", terminator: "")
                fflush(nil)
                shown = true
            }
            if shown {
                print("\r" + String(repeating: " ", count: 72) + "\r", terminator: "")
                fflush(nil)
            }
        }
    }

    func finish() {
        stop.set()
        worker?.join()
    }
}
