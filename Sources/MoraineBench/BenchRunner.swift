// Runs db_bench workloads against one or more engines, rotating their order from workload to
// workload so machine drift hits each alike, and prints db_bench's result line per engine plus
// p50/p99/p99.9 latency and, with several engines, the first one's throughput ratio to each other. Each engine keeps its
// own database under --db/<engine>.
import Histogram
import Moraine
import MoraineSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One measured workload on one engine.
public struct BenchResult: Sendable {
    public var engine: String
    public var benchmark: String
    public var ops: Int
    public var seconds: Double
    public var threads: Int
    public var bytes: Int
    public var found: Int?
    public var p50Micros: Double
    public var p99Micros: Double
    public var p999Micros: Double
    /// Storage-node requests per operation (an engine whose files live on a storage node).
    public var storageRequestsPerOp: Double? = nil
    /// Block-cache misses per operation, reported with storage requests.
    public var blockCacheMissesPerOp: Double? = nil
    /// CPU time this process spent during the workload (every thread: foreground and background).
    public var cpuSeconds: Double = 0
    /// The engine's background work during the workload, when it counts it.
    public var background: BackgroundCounters? = nil
    /// The process's peak resident memory during the workload (its high-water mark is reset
    /// before it starts; 0 where the kernel cannot). Every open engine's memory counts: run one
    /// engine per process (`--engine NAME`) to read one engine's.
    public var peakResidentBytes: Int = 0

    /// The line after `line`: CPU time, and the engine's background work when counted.
    public var costLine: String {
        var text = "  \(engine) \(benchmark): cpu \(fixed(cpuSeconds, 2)) s in this process"
        if peakResidentBytes > 0 { text += "; peak RSS \(peakResidentBytes / 1_048_576) MiB" }
        if let background {
            text += "; write stalls \(fixed(Double(background.stallMicros) / 1e6, 2)) s"
            text += "; compaction \(background.compactionBytes / 1_048_576) MiB in \(fixed(Double(background.compactionMicros) / 1e6, 2)) s"
            text += "; jobs on workers \(background.remoteJobs)"
            let lookups = background.secondaryHits + background.secondaryMisses
            if lookups > 0 {
                text += "; shared cache hits \(background.secondaryHits) of \(lookups) (\(fixed(100 * Double(background.secondaryHits) / Double(lookups), 1))%)"
            }
        }
        return text
    }

    public var opsPerSecond: Double { Double(ops) / max(seconds, 1e-9) }
    public var microsPerOp: Double { seconds * 1e6 * Double(threads) / Double(max(ops, 1)) }
    public var megabytesPerSecond: Double { Double(bytes) / 1_048_576 / max(seconds, 1e-9) }

    /// db_bench's line, then latency percentiles.
    public var line: String {
        var text =
            pad(engine, 8) + " " + pad(benchmark, 12) + " : " + fixed(microsPerOp, 3, width: 11) + " micros/op "
            + "\(Int(opsPerSecond)) ops/sec;"
        if bytes > 0 { text += " " + fixed(megabytesPerSecond, 1, width: 6) + " MB/s" }
        if let found { text += " (\(found) of \(ops) found)" }
        text += "  p50 \(fixed(p50Micros, 2)) p99 \(fixed(p99Micros, 2)) p99.9 \(fixed(p999Micros, 2)) us"
        if let storageRequestsPerOp {
            text += "; \(fixed(storageRequestsPerOp, 3)) storage requests/op"
            if let blockCacheMissesPerOp { text += " (\(fixed(blockCacheMissesPerOp, 3)) block cache misses/op)" }
        }
        return text
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

func fixed(_ value: Double, _ decimals: Int, width: Int = 0) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = Int((value * scale).rounded())
    let whole = scaled / Int(scale)
    var fraction = String(abs(scaled % Int(scale)))
    while fraction.count < decimals { fraction = "0" + fraction }
    let text = decimals > 0 ? "\(whole).\(fraction)" : "\(whole)"
    return text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

func nowNanos() -> UInt64 { UInt64(monotonicNanos()) }

/// User and system CPU time of this process so far, every thread.
public func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Peak resident set size of this process in bytes (VmHWM).
/// Resets the process's peak resident memory (VmHWM) to its current resident memory, so a later
/// `peakResidentBytes()` is the peak since this call. False where the kernel refuses.
@discardableResult
public func resetPeakResidentBytes() -> Bool {
    guard let file = fopen("/proc/self/clear_refs", "w") else { return false }
    defer { fclose(file) }
    return fputs("5", file) >= 0
}

public func peakResidentBytes() -> Int {
    guard let file = fopen("/proc/self/status", "r") else { return 0 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, file) != nil {
        let text = String(cString: line)
        if text.hasPrefix("VmHWM:") {
            let digits = text.filter { $0.isNumber }
            return (Int(digits) ?? 0) * 1024
        }
    }
    return 0
}

/// Runs the workloads of `flags` on the named engines.
public final class BenchRunner: @unchecked Sendable {
    public let flags: BenchFlags
    public let engineNames: [String]
    let factories: [any BenchEngineFactory]
    let data: BenchData
    var engines: [String: any BenchEngine] = [:]
    public private(set) var results: [BenchResult] = []
    let progress = Atomic<Int>(0)
    /// YCSB records inserted so far (load plus run-phase inserts).
    let inserted = Atomic<Int>(0)
    /// Threads the workloads so far started, as db_bench counts them: the next workload's
    /// generators are seeded past them.
    var seedThreadsUsed = 0

    /// - Throws: a ValidationError for flags out of range (as parsing does), a MoraineError
    ///   naming an engine no factory opens.
    public init(flags: BenchFlags, engineNames: [String], factories: [any BenchEngineFactory]) throws {
        try flags.validate()
        self.flags = flags
        self.engineNames = engineNames
        self.factories = factories
        self.data = BenchData(
            keySize: flags.keySize, valueSize: flags.valueSize, compressionRatio: flags.compressionRatio,
            seed: UInt64(flags.seed))
        for name in engineNames where !factories.contains(where: { $0.engineNames.contains(name) }) {
            throw MoraineError(
                .invalid, "unknown engine '\(name)' (this build has: \(factories.flatMap(\.engineNames)))")
        }
    }

    func directory(_ engine: String) -> String { factory(engine).databasePath(engine, base: flags.db) }

    func factory(_ engine: String) -> any BenchEngineFactory { factories.first { $0.engineNames.contains(engine) }! }

    /// Opens `engine`'s database: a new one when `fresh`, else the one an earlier run left
    /// (with --use_existing_db; a missing one is an error, as in db_bench).
    func open(_ engine: String, fresh: Bool) throws -> any BenchEngine {
        let factory = factory(engine)
        guard fresh else {
            var configuration = flags.configuration
            configuration.createIfMissing = false
            do {
                return try factory.open(engine, path: directory(engine), configuration: configuration)
            } catch let error as MoraineError {
                throw MoraineError(
                    error.kind, "--use_existing_db: \(engine)'s database in \(directory(engine)) does not open: \(error.message)")
            }
        }
        var configuration = flags.configuration
        configuration.createIfMissing = true
        try factory.removeDatabase(engine, path: directory(engine), configuration: configuration)
        return try factory.open(engine, path: directory(engine), configuration: configuration)
    }

    /// Runs every workload; prints results as they come.
    public func run() throws {
        if let node = flags.numaNode { try NUMATopology.pinCurrentThread(toNode: node) }
        // Opened before anything prints, so a missing --use_existing_db database fails first.
        for name in engineNames { engines[name] = try open(name, fresh: !flags.useExistingDB) }
        print("benchmarks: \(flags.benchmarks); engines: \(engineNames.joined(separator: ", "))")
        print(
            "\(NUMATopology.current().description)\(flags.numaNode.map { "; pinned to node \($0)" } ?? ""); "
                + "I/O backend: \(flags.ioBackend ?? IOBackend.preferred.rawValue)")
        print(
            "keys: \(flags.num) × \(flags.keySize) B; values: \(flags.valueSize) B (compression ratio \(flags.compressionRatio)); "
                + "threads: \(flags.threads); cache: \(flags.cacheSize) B; bloom bits: \(flags.bloomBits); compression: \(flags.compressionType)"
        )
        for (index, workload) in flags.workloads.enumerated() {
            if flags.useExistingDB && BenchFlags.freshBenchmarks.contains(workload) {
                print("\(pad(workload, 12)) : skipped (--use_existing_db is true)")
                continue
            }
            // Which engine goes first rotates from workload to workload (with two: alternates),
            // so machine drift and one engine's leftover background work hit each alike.
            let shift = index % engineNames.count
            let order = Array(engineNames[shift...] + engineNames[..<shift])
            var byEngine: [String: BenchResult] = [:]
            let savedInserted = inserted.load(ordering: .relaxed)
            let savedSeedThreads = seedThreadsUsed
            for name in order {
                if flags.settle && engineNames.count > 1 { settle(except: name) }
                // Every engine starts a YCSB phase from the same record count, and every
                // workload from the same seeds.
                inserted.store(savedInserted, ordering: .relaxed)
                seedThreadsUsed = savedSeedThreads
                let resetPeak = resetPeakResidentBytes()
                var phaseResults =
                    workload.hasPrefix("ycsb")
                    ? try runYCSB(workload, engine: name) : [try runWorkload(workload, engine: name)]
                if resetPeak { phaseResults[0].peakResidentBytes = peakResidentBytes() }
                byEngine[name] = phaseResults[0]
                for result in phaseResults {
                    results.append(result)
                    print(result.line)
                    // A YCSB phase's per-operation rows share their total's costs.
                    if result.cpuSeconds > 0 || result.background != nil || result.peakResidentBytes > 0 {
                        print(result.costLine)
                    }
                }
                if flags.statistics, let text = engines[name]?.statistics {
                    print(text.split(separator: "\n").map { "  \(name) stats: \($0)" }.joined(separator: "\n"))
                }
            }
            // The first engine's throughput over each other's.
            if let first = engineNames.first, let a = byEngine[first] {
                for other in engineNames.dropFirst() {
                    guard let b = byEngine[other] else { continue }
                    print("  \(first)/\(other) throughput ratio: \(fixed(a.opsPerSecond / max(b.opsPerSecond, 1e-9), 2))")
                }
            }
        }
        for engine in engines.values { try engine.close() }
        engines = [:]
        print("peak RSS: \(peakResidentBytes() / 1_048_576) MiB")
        if let path = flags.json { try writeJSON(path) }
    }

    /// Waits until every engine but `name` has no background work running or due (each up to
    /// 120 s), so the engine measured next has the cores to itself; says so when one did not settle.
    func settle(except name: String) {
        for other in engineNames where other != name {
            guard let engine = engines[other] else { continue }
            let started = monotonicNanos()
            if !engine.waitForBackgroundIdle(timeoutNanos: 120_000_000_000) {
                print("  \(other) did not settle within 120 s (its background work goes on beside \(name))")
            } else if monotonicNanos() - started > 1_000_000_000 {
                print("  waited \(fixed(Double(monotonicNanos() - started) / 1e9, 1)) s for \(other)'s background work before \(name)")
            }
        }
    }

    func writeJSON(_ path: String) throws {
        let rows = results.map { r in
            "{\"engine\":\"\(r.engine)\",\"benchmark\":\"\(r.benchmark)\",\"ops\":\(r.ops),"
                + "\"ops_per_sec\":\(fixed(r.opsPerSecond, 1)),\"micros_per_op\":\(fixed(r.microsPerOp, 3)),"
                + "\"mb_per_sec\":\(fixed(r.megabytesPerSecond, 2)),\"p50_us\":\(fixed(r.p50Micros, 3)),"
                + "\"p99_us\":\(fixed(r.p99Micros, 3)),\"p999_us\":\(fixed(r.p999Micros, 3)),"
                + (r.found.map { "\"found\":\($0)," } ?? "")
                + (r.storageRequestsPerOp.map { "\"storage_requests_per_op\":\(fixed($0, 4))," } ?? "")
                + (r.blockCacheMissesPerOp.map { "\"block_cache_misses_per_op\":\(fixed($0, 4))," } ?? "")
                + "\"cpu_seconds\":\(fixed(r.cpuSeconds, 3)),"
                + (r.peakResidentBytes > 0 ? "\"peak_rss_mib\":\(fixed(Double(r.peakResidentBytes) / 1_048_576, 1))," : "")
                + (r.background.map {
                    "\"stall_micros\":\($0.stallMicros),\"compaction_bytes\":\($0.compactionBytes),"
                        + "\"compaction_micros\":\($0.compactionMicros),\"remote_jobs\":\($0.remoteJobs),"
                } ?? "")
                + "\"options\":\(flags.optionsJSON)}"
        }
        let file = try PosixFileSystem.shared.createWritable(path)
        try file.append(Array(("[\n" + rows.joined(separator: ",\n") + "\n]\n").utf8))
        try file.close()
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

