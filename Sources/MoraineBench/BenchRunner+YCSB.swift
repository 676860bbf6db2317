// The YCSB phases on the runner: `ycsb_load` and the run phases `ycsba`…`ycsbf`, reporting the
// total and one result per operation type.
import Histogram
import MoraineSystem
import Synchronization

extension BenchRunner {
    var recordCount: Int { flags.records < 0 ? flags.num : flags.records }
    var operationCount: Int { flags.operations < 0 ? flags.readCount : flags.operations }

    /// Writes YCSB key number `n` ("user" + decimal FNV hash) into `buffer`; returns its length.
    func fillYCSBKey(_ n: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var hash = fnvHash64(n)
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &digits) { scratch in
            var count = 0
            repeat {
                scratch[count] = UInt8(48 + hash % 10)
                hash /= 10
                count += 1
            } while hash > 0
            buffer[0] = 117
            buffer[1] = 115
            buffer[2] = 101
            buffer[3] = 114  // "user"
            for i in 0..<count { buffer[4 + i] = scratch[count - 1 - i] }
            return 4 + count
        }
    }

    /// Runs a YCSB phase; the first result is the total, then one per operation type used.
    func runYCSB(_ phase: String, engine name: String) throws -> [BenchResult] {
        let records = recordCount
        if phase == "ycsb_load" {
            try reopenFresh(name)
            let perThread = records / flags.threads
            let result = try measure(phase, name, opsPerThread: perThread) { engine, thread, _, tally in
                try withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { key in
                    for i in 0..<perThread {
                        let length = self.fillYCSBKey(thread * perThread + i, into: key)
                        let start = nowNanos()
                        try self.data.withValue(i) {
                            try engine.put(UnsafeRawBufferPointer(rebasing: key[0..<length]), $0)
                        }
                        tally.record(since: start)
                        tally.bytes += length + self.data.valueSize
                    }
                }
            }
            inserted.store(perThread * flags.threads, ordering: .relaxed)
            return [result]
        }
        guard let workload = YCSBWorkload.named(phase) else {
            throw MoraineError(.invalid, "unknown YCSB workload '\(phase)'")
        }
        if inserted.load(ordering: .relaxed) == 0 { inserted.store(records, ordering: .relaxed) }
        let zipfian = ZipfianGenerator(items: records)
        let perThread = operationCount / flags.threads
        let collected = YCSBCollector()
        let engine = engines[name]!
        let seed = UInt64(flags.seed) &* 31  // the same sequence for every engine
        let backgroundBefore = engine.backgroundCounters
        let cpuBefore = processCPUSeconds()
        let start = nowNanos()
        let workers = (0..<flags.threads).map { thread in
            Worker { [self] in
                var rng = BenchRandom(seed: seed &+ UInt64(thread) &* 0x9e37_79b9 &+ UInt64(phase.utf8.last ?? 0))
                var tally = YCSBTally()
                defer { collected.add(tally) }
                try runYCSBThread(
                    workload, engine: engine, zipfian: zipfian, count: perThread, rng: &rng, tally: &tally)
            }
        }
        for worker in workers { worker.join() }
        let seconds = Double(nowNanos() - start) / 1e9
        if let error = workers.compactMap(\.error).first { throw error }
        let merged = collected.merged()
        var total = Histogram<UInt64>(highestTrackableValue: 600_000_000_000, numberOfSignificantValueDigits: .three)
        for h in merged.histograms { total.add(h) }
        func result(_ label: String, _ h: Histogram<UInt64>, _ ops: Int, found: Int?) -> BenchResult {
            BenchResult(
                engine: name, benchmark: label, ops: ops, seconds: seconds, threads: flags.threads, bytes: 0,
                found: found, p50Micros: Double(h.valueAtPercentile(50)) / 1000,
                p99Micros: Double(h.valueAtPercentile(99)) / 1000, p999Micros: Double(h.valueAtPercentile(99.9)) / 1000)
        }
        var results = [result(phase, total, merged.counts.reduce(0, +), found: merged.found)]
        results[0].cpuSeconds = processCPUSeconds() - cpuBefore
        results[0].background = BackgroundCounters.delta(from: backgroundBefore, to: engine.backgroundCounters)
        // Indexed through locals: the release build of 2026-12-07 (Swift 6.3.1) read `merged.counts`
        // through a register holding the interpolated label's small-string bits when written
        // inline (a SIGSEGV after the first row, every time; the debug build ran, and valgrind's
        // memcheck finds no invalid access in this workload with the code below).
        let counts = merged.counts
        let histograms = merged.histograms
        for op in YCSBOperation.allCases {
            let count = counts[op.rawValue]
            guard count > 0 else { continue }
            let label = phase + "." + op.label
            results.append(result(label, histograms[op.rawValue], count, found: nil))
        }
        return results
    }

    private func runYCSBThread(
        _ workload: YCSBWorkload, engine: any BenchEngine, zipfian: ZipfianGenerator, count: Int,
        rng: inout BenchRandom, tally: inout YCSBTally
    ) throws {
        let records = recordCount
        let cursor = workload.scan > 0 ? try engine.makeCursor() : nil
        try withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { key in
            for i in 0..<count {
                let u = Double(rng.next() >> 11) / Double(1 << 53)
                let op: YCSBOperation =
                    u < workload.read
                    ? .read
                    : u < workload.read + workload.update
                        ? .update
                        : u < workload.read + workload.update + workload.insert
                            ? .insert
                            : u < workload.read + workload.update + workload.insert + workload.scan
                                ? .scan : .readModifyWrite
                let keyNumber: Int
                if op == .insert {
                    keyNumber = inserted.wrappingAdd(1, ordering: .relaxed).oldValue
                } else if workload.latest {
                    keyNumber = max(0, inserted.load(ordering: .relaxed) - 1 - zipfian.next(&rng))
                } else {
                    keyNumber = Int(fnvHash64(zipfian.next(&rng)) % UInt64(records))
                }
                let length = fillYCSBKey(keyNumber, into: key)
                let k = UnsafeRawBufferPointer(rebasing: key[0..<length])
                let start = nowNanos()
                switch op {
                case .read:
                    if try engine.get(k) != nil { tally.found += 1 }
                case .update, .insert:
                    try data.withValue(i) { try engine.put(k, $0) }
                case .scan:
                    try cursor!.seek(k)
                    var n = 1 + rng.below(100)
                    while n > 0 && cursor!.isValid {
                        try cursor!.next()
                        n -= 1
                    }
                case .readModifyWrite:
                    if try engine.get(k) != nil { tally.found += 1 }
                    try data.withValue(i) { try engine.put(k, $0) }
                }
                _ = tally.histograms[op.rawValue].record(max(nowNanos() &- start, 1))
                tally.counts[op.rawValue] += 1
            }
        }
    }
}

/// Gathers YCSB thread tallies.
final class YCSBCollector: @unchecked Sendable {
    private let lock = ConditionLock()
    private var tallies: [YCSBTally] = []
    func add(_ tally: YCSBTally) { lock.withLock { tallies.append(tally) } }
    func merged() -> YCSBTally {
        lock.withLock {
            var total = YCSBTally()
            for t in tallies {
                for i in t.histograms.indices {
                    total.histograms[i].add(t.histograms[i])
                    total.counts[i] += t.counts[i]
                }
                total.found += t.found
            }
            return total
        }
    }
}
