// `moraine job-bench --cluster RUNDIR`: where a flush's and a compaction's work goes (JobBench,
// MoraineWorker): a flush built here, streamed to a flush worker, or rebuilt from the WAL as a
// worker would; a compaction embedded, here through the storage node, and on a compaction worker.
// Medians of --runs; --json writes every run's rows.
import ArgumentParser
import MoraineStorage
import MoraineSystem
import MoraineWorker

#if canImport(Glibc)
    import Glibc
#endif

struct JobBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job-bench",
        abstract: "Flush sources and compaction placement against a running cluster: wall time, this thread's CPU, MB/s.")
    @Option(help: "The cluster's run directory (moraine up); it needs a flush and a compaction worker.") var cluster: String
    @Option(help: "Megabytes of entries per memtable (and per compaction input table).") var megabytes = 32
    @Option(help: "Runs; the table shows medians.") var runs = 3
    @Option(help: "Write every run's rows as JSON to this file.") var json: String?

    func validate() throws {
        guard (1...1024).contains(megabytes) else { throw ValidationError("--megabytes must be 1…1024, not \(megabytes)") }
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be 1…100, not \(runs)") }
    }

    func run() throws {
        try reporting {
            let files = try DatabaseOptions.remoteFileSystem(cluster: cluster)
            guard let runner = try DatabaseOptions.jobRunner(cluster: cluster) else {
                throw MoraineError(.invalid, "--cluster \(cluster) runs no flush or compaction worker")
            }
            let bench = JobBench(
                files: files, runner: runner, directory: "job-bench", megabytes: megabytes,
                scratch: "/tmp/moraine-job-bench-\(getpid())")
            var all: [[JobBench.Row]] = []
            for run in 0..<runs {
                all.append(try bench.run(seed: 0x10b + UInt64(run)))
                print("run \(run + 1) of \(runs) done")
            }
            print("\(megabytes) MiB per memtable and per compaction input; medians of \(runs) runs")
            print("job".padded(11) + "way".padded(46) + "wall s".padded(9) + "thread CPU s".padded(14) + "MB/s")
            for (index, first) in all[0].enumerated() {
                let rows = all.map { $0[index] }
                func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
                print(
                    first.job.padded(11) + first.way.padded(46) + format(median(rows.map(\.wallSeconds))).padded(9)
                        + format(median(rows.map(\.threadCPUSeconds))).padded(14) + format(median(rows.map(\.megabytesPerSecond)), 1))
            }
            if let json {
                let lines = all.enumerated().flatMap { run, rows in
                    rows.map {
                        "{\"run\":\(run),\"job\":\"\($0.job)\",\"way\":\"\($0.way)\",\"wall_s\":\($0.wallSeconds),"
                            + "\"thread_cpu_s\":\($0.threadCPUSeconds),\"bytes\":\($0.bytes),\"megabytes\":\(megabytes)}"
                    }
                }
                let file = try PosixFileSystem.shared.createWritable(json)
                try file.append(Array(("[" + lines.joined(separator: ",\n") + "]\n").utf8))
                try file.close()
            }
        }
    }

    private func format(_ value: Double, _ decimals: Int = 3) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        return String((value * scale).rounded() / scale)
    }
}
