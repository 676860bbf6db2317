// `moraine-bench`: the same db_bench workloads and flags as `moraine bench`, with RocksDB and
// LevelDB beside Moraine. `--engine both` runs each workload on Moraine and RocksDB in turn
// (alternating which goes first), `--engine all` on Moraine, RocksDB and LevelDB (rotating which
// goes first), with identical keys, values, seed and options, and prints Moraine's throughput
// ratio to each peer. With a
// running cluster, `--cluster RUNDIR` adds the engine `application` (the engine in this process,
// every other role of the cluster remote: `Database(path:cluster:)`) and `--connect
// RUNDIR|ENDPOINT` the engine `connect` (a thin client of the cluster's compute node), so one
// run compares embedded Moraine, RocksDB and both cluster modes workload by workload.
import ArgumentParser
import MoraineBench
import LevelDBPeer
import RocksDBPeer

@main
struct MoraineBenchTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moraine-bench",
        abstract: "db_bench workloads against Moraine, RocksDB, or both side by side (and a cluster's modes).")
    @OptionGroup var flags: BenchFlags
    @Option(
        help: ArgumentHelp(
            "Comma-separated engines: moraine, rocksdb, leveldb, application (needs --cluster), connect (needs --connect); "
                + "both = moraine,rocksdb; all = moraine,rocksdb,leveldb."))
    var engine = "both"
    @Option(help: "The run directory of `moraine up`, for the application engine.") var cluster: String?
    @Option(help: "A compute node for the connect engine: the run directory of `moraine up`, or shm:PATH / tcp:HOST:PORT.")
    var connect: String?
    @Option(name: .customLong("cluster-key"), help: "With --connect ENDPOINT: the cluster key's file.") var clusterKey: String?

    /// Parses db_bench's spellings (-num=1000, a bare --sync) by rewriting them first.
    static func main() {
        main(
            BenchFlags.normalizing(
                Array(CommandLine.arguments.dropFirst()), extraNames: ["engine", "cluster", "connect", "cluster-key"]))
    }

    var names: [String] {
        engine.split(separator: ",").flatMap { name -> [String] in
            switch name {
            case "both": ["moraine", "rocksdb"]
            case "all": ["moraine", "rocksdb", "leveldb"]
            default: [String(name)]
            }
        }
    }

    func validate() throws {
        let known: Set<String> = ["moraine", "rocksdb", "leveldb", "application", "connect"]
        if let unknown = names.first(where: { !known.contains($0) }) {
            throw ValidationError("--engine takes \(known.sorted().joined(separator: ", ")), both or all, not \(unknown)")
        }
        if Set(names).count != names.count { throw ValidationError("--engine names an engine twice: \(engine)") }
        if names.contains("application") && cluster == nil { throw ValidationError("--engine application needs --cluster RUNDIR") }
        if names.contains("connect") && connect == nil { throw ValidationError("--engine connect needs --connect RUNDIR|ENDPOINT") }
    }

    func run() throws {
        var factories: [any BenchEngineFactory] = [MoraineBenchFactory(), RocksDBFactory(), LevelDBFactory()]
        if let cluster { factories.append(MoraineBenchFactory(name: "application", cluster: cluster)) }
        if let connect { factories.append(MoraineBenchFactory(name: "connect", connect: connect, clusterKey: clusterKey)) }
        let runner = try BenchRunner(flags: flags, engineNames: names, factories: factories)
        try runner.run()
    }
}
