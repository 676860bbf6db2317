// `moraine bench`: db_bench-compatible workloads against embedded Moraine. The side-by-side run
// with RocksDB is `moraine-bench` in bench/ (its own package, so Moraine never needs RocksDB).
import ArgumentParser
import MoraineBench

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run db_bench workloads (fillseq, fillrandom, overwrite, readrandom, readseq, readreverse, "
            + "seekrandom, deleterandom, readwhilewriting, compact) against Moraine.")
    @OptionGroup var flags: BenchFlags
    @Option(help: "Engine: moraine (RocksDB runs come from bench/'s moraine-bench).") var engine = "moraine"

    func run() throws {
        try reporting {
            let runner = try BenchRunner(flags: flags, engineNames: [engine], factories: [MoraineBenchFactory()])
            try runner.run()
        }
    }
}
