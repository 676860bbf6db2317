// `moraine-bench`: the same db_bench workloads and flags as `moraine bench`, with RocksDB beside
// Moraine. `--engine both` runs each workload on both engines in turn (alternating which goes
// first) with identical keys, values, seed and options, and prints the throughput ratio.
import ArgumentParser
import MoraineBench
import RocksDBPeer

@main
struct MoraineBenchTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moraine-bench",
        abstract: "db_bench workloads against Moraine, RocksDB, or both side by side.")
    @OptionGroup var flags: BenchFlags
    @Option(help: "moraine, rocksdb, or both.") var engine = "both"

    /// Parses db_bench's spellings (-num=1000, a bare --sync) by rewriting them first.
    static func main() {
        main(BenchFlags.normalizing(Array(CommandLine.arguments.dropFirst()), extraNames: ["engine"]))
    }

    func validate() throws {
        guard ["moraine", "rocksdb", "both"].contains(engine) else {
            throw ValidationError("--engine must be moraine, rocksdb or both")
        }
    }

    func run() throws {
        let names = engine == "both" ? ["moraine", "rocksdb"] : [engine]
        let runner = try BenchRunner(
            flags: flags, engineNames: names, factories: [MoraineBenchFactory(), RocksDBFactory()])
        try runner.run()
    }
}
