// The db_bench workloads. Each runs --threads threads (readwhilewriting adds one writer), each
// thread with its own seeded generator and latency histogram, merged at the end. Throughput is
// operations over wall time.
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
    func runWorkload(_ workload: String, engine name: String) throws -> BenchResult {
        let num = flags.num
        let reads = flags.readCount
        switch workload {
        case "fillseq":
            try reopenFresh(name)
            return try measure(workload, name, opsPerThread: num / flags.threads) { engine, thread, rng, tally in
                try self.writeKeys(
                    engine, thread: thread, count: num / self.flags.threads, random: false, rng: &rng, tally: &tally)
            }
        case "fillrandom":
            try reopenFresh(name)
            return try measure(workload, name, opsPerThread: num / flags.threads) { engine, thread, rng, tally in
                try self.writeKeys(
                    engine, thread: thread, count: num / self.flags.threads, random: true, rng: &rng, tally: &tally)
            }
        case "overwrite":
            return try measure(workload, name, opsPerThread: num / flags.threads) { engine, thread, rng, tally in
                try self.writeKeys(
                    engine, thread: thread, count: num / self.flags.threads, random: true, rng: &rng, tally: &tally)
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
                    for _ in 0..<reads {
                        self.data.fillKey(rng.below(num), into: key)
                        let start = nowNanos()
                        try cursor.seek(UnsafeRawBufferPointer(key))
                        if cursor.isValid { tally.found += 1 }
                        var n = 0
                        while n < self.flags.seekNexts && cursor.isValid {
                            tally.bytes += cursor.entryBytes
                            try cursor.next()
                            n += 1
                        }
                        tally.record(since: start)
                    }
                }
            }
        case "deleterandom":
            return try measure(workload, name, opsPerThread: num / flags.threads) { engine, _, rng, tally in
                try withUnsafeTemporaryAllocation(byteCount: self.data.keySize, alignment: 8) { key in
                    for _ in 0..<(num / self.flags.threads) {
                        self.data.fillKey(rng.below(num), into: key)
                        let start = nowNanos()
                        try engine.delete(UnsafeRawBufferPointer(key))
                        tally.record(since: start)
                    }
                }
            }
        case "readwhilewriting":
            return try readWhileWriting(name, reads: reads)
        case "compact":
            return try measure(workload, name, opsPerThread: 1, threads: 1) { engine, _, _, tally in
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

    func writeKeys(
        _ engine: any BenchEngine, thread: Int, count: Int, random: Bool, rng: inout BenchRandom,
        tally: inout ThreadTally
    ) throws {
        let base = thread * count
        try withUnsafeTemporaryAllocation(byteCount: data.keySize, alignment: 8) { key in
            for i in 0..<count {
                data.fillKey(random ? rng.below(flags.num) : base + i, into: key)
                let start = nowNanos()
                try data.withValue(base + i) { value in try engine.put(UnsafeRawBufferPointer(key), value) }
                tally.record(since: start)
                tally.bytes += data.keySize + data.valueSize
            }
        }
    }

    func readRandom(_ engine: any BenchEngine, count: Int, rng: inout BenchRandom, tally: inout ThreadTally) throws {
        try withUnsafeTemporaryAllocation(byteCount: data.keySize, alignment: 8) { key in
            for _ in 0..<count {
                data.fillKey(rng.below(flags.num), into: key)
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
    func multiReadRandom(_ engine: any BenchEngine, count: Int, rng: inout BenchRandom, tally: inout ThreadTally) throws {
        let batch = flags.batchSize
        try withUnsafeTemporaryAllocation(byteCount: data.keySize * batch, alignment: 8) { keys in
            var left = count
            while left > 0 {
                let n = min(batch, left)
                for i in 0..<n {
                    data.fillKey(
                        rng.below(flags.num),
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

    func readWhileWriting(_ name: String, reads: Int) throws -> BenchResult {
        let engine = engines[name]!
        let stop = StopFlag()
        let writerSeed = UInt64(flags.seed) &* 7919 &+ 17
        let writer = Worker { [self] in
            var rng = BenchRandom(seed: writerSeed)
            var tally = ThreadTally()
            while !stop.isSet {
                try writeKeys(engine, thread: 0, count: 1, random: true, rng: &rng, tally: &tally)
            }
        }
        defer {
            stop.set()
            writer.join()
        }
        return try measure("readwhilewriting", name, opsPerThread: reads, reportFound: true) { engine, _, rng, tally in
            try self.readRandom(engine, count: reads, rng: &rng, tally: &tally)
        }
    }

    /// Runs `body` on `threads` threads and merges their tallies.
    func measure(
        _ benchmark: String, _ name: String, opsPerThread: Int, threads: Int? = nil, reportFound: Bool = false,
        _ body: @escaping @Sendable (any BenchEngine, Int, inout BenchRandom, inout ThreadTally) throws -> Void
    ) throws -> BenchResult {
        let engine = engines[name]!
        let threadCount = threads ?? flags.threads
        let seed = UInt64(flags.seed)
        let collected = TallyCollector()
        let progress = ProgressCounter()
        let display = ProgressDisplay(
            label: "\(name) \(benchmark)", expected: opsPerThread * threadCount, counter: progress)
        defer { display.finish() }
        let start = nowNanos()
        let workers = (0..<threadCount).map { thread in
            Worker {
                var rng = BenchRandom(seed: seed &+ UInt64(thread) &* 0x9e37_79b9)
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
        return BenchResult(
            engine: name, benchmark: benchmark, ops: merged.ops, seconds: seconds, threads: threadCount,
            bytes: merged.bytes, found: reportFound ? merged.found : nil,
            p50Micros: Double(merged.histogram.valueAtPercentile(50)) / 1000,
            p99Micros: Double(merged.histogram.valueAtPercentile(99)) / 1000,
            p999Micros: Double(merged.histogram.valueAtPercentile(99.9)) / 1000)
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
