// `moraine bench`: db_bench-compatible workloads against embedded Moraine; a db_bench command
// line pastes as it is (BenchFlags says how). The side-by-side run with RocksDB is
// `moraine-bench` in bench/ (its own package, so Moraine never needs RocksDB).
import ArgumentParser
import Foundation
import Moraine
import MoraineBench
import MoraineMemory
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run db_bench workloads (fillseq, fillrandom, overwrite, readrandom, readseq, readreverse, "
            + "seekrandom, deleterandom, readwhilewriting, compact) against Moraine.",
        discussion: "Takes db_bench's flags as db_bench does (--num=1000, -num=1000, a bare --sync, --nosync); "
            + "`moraine bench --help` lists them.")
    /// The whole command line, parsed in run(): db_bench's spellings are rewritten first
    /// (BenchFlags.normalizing), which ArgumentParser cannot do for a subcommand's options.
    @Argument(parsing: .captureForPassthrough, help: "db_bench flags (see `moraine bench --help`).")
    var arguments: [String] = []

    /// What the command line holds once normalized.
    struct Arguments: ParsableArguments {
        @OptionGroup var flags: BenchFlags
        @Option(
            help: """
                Engines, comma-separated, run alternately: moraine (embedded), cluster (files on the storage node of \
                --cluster; the default with --cluster), memory (files here, memtables in the arenas of --cluster's \
                memory node, durability pmem through it), application (the engine here with every role of --cluster \
                wired in, as Database(path:cluster:)), connect (a thin client of --connect's compute node; the default \
                with --connect). RocksDB runs come from bench/'s moraine-bench.
                """)
        var engine: String?
        @Option(
            help: """
                Keep the database's files on the storage node of the cluster running in this run directory \
                (database <last component of --db>-cluster), and run its flushes and compactions on the cluster's \
                workers when it has any.
                """)
        var cluster: String?
        @Option(help: "A compute node to run the connect engine against: the run directory of moraine up, or shm:PATH or tcp:HOST:PORT.")
        var connect: String?
        @Option(name: .customLong("cluster-key"), help: "With --connect ENDPOINT: the cluster key's file.")
        var clusterKey: String?
        @Option(
            name: .customLong("embedded_cache_size"),
            help: "The embedded engine's block cache in bytes, whatever --cache_size says (to compare with a tiered cache).")
        var embeddedCacheSize: Int?
    }

    func run() throws {
        let normalized = BenchFlags.normalizing(arguments, extraNames: ["engine", "cluster", "connect", "cluster-key", "embedded_cache_size"])
        if normalized.contains(where: { ["--help", "-h", "-help"].contains($0) }) {
            // The options part of the help (its own usage line would name the wrapper type).
            let help = Arguments.helpMessage(columns: 100)
            let options = help.range(of: "OPTIONS:").map { String(help[$0.lowerBound...]) } ?? help
            print("USAGE: moraine bench [db_bench flags]\n\n" + options)
            return
        }
        let parsed: Arguments
        do {
            parsed = try Arguments.parse(normalized)
        } catch {
            throw ValidationError(Arguments.message(for: error))
        }
        try reporting {
            let defaultEngine = parsed.connect != nil ? "connect" : parsed.cluster != nil ? "cluster" : "moraine"
            let names = (parsed.engine ?? defaultEngine).split(separator: ",").map(String.init)
            let known: Set<String> = ["moraine", "cluster", "memory", "application", "connect"]
            if let unknown = names.first(where: { !known.contains($0) }) {
                throw ValidationError("--engine \(unknown) is not one of \(known.sorted().joined(separator: ", ")) (rocksdb runs in bench/'s moraine-bench)")
            }
            var factories: [any BenchEngineFactory] = [MoraineBenchFactory(cacheSizeBytes: parsed.embeddedCacheSize)]
            if names.contains("application") {
                guard let cluster = parsed.cluster else { throw ValidationError("--engine application needs --cluster RUNDIR") }
                factories.append(MoraineBenchFactory(name: "application", cluster: cluster))
            }
            if names.contains("connect") {
                guard let target = parsed.connect else { throw ValidationError("--engine connect needs --connect RUNDIR|ENDPOINT") }
                factories.append(MoraineBenchFactory(name: "connect", connect: target, clusterKey: parsed.clusterKey))
                print("connect: a thin client of the compute node of \(target); the node's own options (cache, write buffer, durability)")
            }
            if names.contains("cluster") {
                guard let cluster = parsed.cluster else {
                    throw ValidationError("--engine cluster needs --cluster RUNDIR (the run directory of moraine up)")
                }
                let remote = try DatabaseOptions.remoteFileSystem(cluster: cluster)
                let runner = try DatabaseOptions.jobRunner(cluster: cluster)
                // The memory node's shared block cache under the engine's own, as `--cluster` commands have it.
                let memory = try DatabaseOptions.memoryNode(cluster: cluster, fileSystem: remote)
                let shared = Self.sharedCache(memory)
                factories.append(
                    MoraineBenchFactory(
                        name: "cluster", fileSystem: remote, jobRunner: runner, secondaryCache: shared, storageRequests: { remote.requestCount }))
                print(
                    "cluster: files on the storage node at \(remote.endpoint) (run directory \(cluster)); "
                        + (runner == nil ? "flushes and compactions in this process" : "flushes and compactions on the cluster's workers")
                        + (memory == nil ? "" : "; the memory node's shared block cache under --cache_size"))
            }
            if names.contains("memory") {
                guard let cluster = parsed.cluster else {
                    throw ValidationError("--engine memory needs --cluster RUNDIR (the run directory of moraine up, with a memory node)")
                }
                let run = RunDirectory(cluster)
                let key = try ClusterKey.load(path: run.keyPath)
                let arenas = MemoryNodeArenas(key: key, epoch: { _ in 0 }) { () throws(TransportError) -> Endpoint in
                    try run.endpoint(of: "memory")
                }
                // Where the region does not map (another box, or a node serving by request only),
                // the memtables stay here and each write group goes to a log in its arenas.
                let inPlace = try arenas.writesInPlace
                let logs = inPlace ? nil : MemoryLogFileSystem(base: PosixFileSystem.shared, arenas: arenas, placesNewLogs: true)
                factories.append(
                    MoraineBenchFactory(name: "memory", memtableRegion: arenas, logFileSystem: logs, secondaryCache: Self.sharedCache(arenas)))
                print(
                    "memory: files here, "
                        + (inPlace
                            ? "memtables in the region of the memory node of \(cluster) (durability pmem through it), "
                            : "memtables here, each write group in a log in an arena of the memory node of \(cluster), by request (durability pmem "
                                + "through it; its region does not map here), ")
                        + "its shared block cache under --cache_size")
            }
            let runner = try BenchRunner(flags: parsed.flags, engineNames: names, factories: factories)
            try runner.run()
        }
    }
}

extension Bench {
    /// The memory node's shared block cache for each database path, when the cluster runs one.
    static func sharedCache(_ memory: MemoryNodeArenas?) -> (@Sendable (String) -> any SecondaryBlockCache)? {
        guard let memory else { return nil }
        return { path in MemoryNodeBlockCache(database: path, arenas: memory) }
    }
}

/// `moraine io-bench`: random 4 KiB O_DIRECT reads through the I/O queue, io_uring vs pread.
struct IOBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io-bench",
        abstract: "Random 4 KiB reads of one file through the I/O queue: io_uring vs pread, by batch depth.")
    @Option(help: "Data file (created with random bytes when missing or short).") var file: String
    @Option(name: .customLong("file_size"), help: "Bytes of the data file.") var fileSize = 1 << 30
    @Option(help: "Seconds per measured row.") var seconds = 5.0
    @Option(help: "Batch depths, comma-separated.") var depths = "1,8,32"
    @Option(help: "1: O_DIRECT (default), 0: through the page cache.") var direct = 1
    @Option(help: "Write the rows as JSON to this file.") var json: String?

    func validate() throws {
        try validateNumbers(seconds: seconds, lists: [("--depths", depths, 1...1024)], decimals: [])
        if fileSize < 1 << 20 { throw ValidationError("--file_size must be at least 1048576 bytes, not \(fileSize)") }
        if direct != 0 && direct != 1 { throw ValidationError("--direct must be 0 or 1, not \(direct)") }
    }

    func run() throws {
        try reporting {
            let depthList = depths.split(separator: ",").compactMap { Int($0) }.filter { $0 > 0 }
            guard !depthList.isEmpty else { throw ValidationError("--depths needs positive numbers") }
            let bench = IOBench(path: file, fileBytes: fileSize, secondsPerRow: seconds, depths: depthList, direct: direct != 0)
            try bench.prepareFile()
            var lines: [String] = []
            for row in try bench.run() {
                print(
                    "\(row.backend.padded(9)) depth \(String(row.depth).padded(3)): \(Int(row.iops)) IOPS; "
                        + "latency p50 \(row.p50Micros) us, p99 \(row.p99Micros) us (a whole batch for batch rows)")
                lines.append(
                    "{\"backend\":\"\(row.backend)\",\"depth\":\(row.depth),\"iops\":\(Int(row.iops)),"
                        + "\"p50_us\":\(row.p50Micros),\"p99_us\":\(row.p99Micros)}")
            }
            if let json { try ("[" + lines.joined(separator: ",") + "]\n").write(toFile: json, atomically: true, encoding: .utf8) }
        }
    }
}

/// `moraine numa`: the NUMA topology, and (with --node) a check that pinning works.
struct NumaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "numa", abstract: "Print the NUMA topology; with --node, pin this process there and say where it runs.")
    @Option(help: "A node to pin this process to.") var node: Int?

    func validate() throws {
        if let node, node < 0 { throw ValidationError("--node must not be negative, not \(node)") }
    }

    func run() throws {
        try reporting {
            print(NUMATopology.current().description)
            if let node {
                try NUMATopology.pinCurrentThread(toNode: node)
                print("pinned to node \(node); running on node \(NUMATopology.currentNode())")
            }
        }
    }
}

extension String {
    func padded(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

/// Checks a measuring command's numbers: `seconds` in (0, 3600], and every comma-separated item
/// of each list a number in its range.
/// - Throws: a ValidationError naming the flag and the item.
func validateNumbers(
    seconds: Double, lists: [(flag: String, text: String, range: ClosedRange<Int>)],
    decimals: [(flag: String, text: String, range: ClosedRange<Double>)]
) throws {
    guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600], not \(seconds)") }
    for (flag, text, range) in lists {
        let items = text.split(separator: ",", omittingEmptySubsequences: false)
        for item in items where Int(item).map({ !range.contains($0) }) ?? true {
            throw ValidationError("\(flag) takes numbers from \(range.lowerBound) to \(range.upperBound), not '\(item)'")
        }
    }
    for (flag, text, range) in decimals where !text.isEmpty {
        for item in text.split(separator: ",", omittingEmptySubsequences: false)
        where Double(item).map({ !range.contains($0) }) ?? true {
            throw ValidationError("\(flag) takes numbers from \(range.lowerBound) to \(range.upperBound), not '\(item)'")
        }
    }
}
