// db_bench command lines paste as they are: BenchFlags parses db_bench's spellings (single dash,
// bare booleans, true/false/1/0, --noflag), refuses every number out of range and every
// unknown benchmark by name, and `moraine bench` does the same before any workload runs
// (checked by running the built binary), including --use_existing_db on a missing database.
import Foundation
import MoraineBench
import MoraineTestSupport
import Testing

/// Parses a command line as `moraine bench` and `moraine-bench` do.
func parseBench(_ arguments: [String]) throws -> BenchFlags {
    try BenchFlags.parse(BenchFlags.normalizing(arguments))
}

/// The message parsing `arguments` fails with, or nil if it parses.
func benchError(_ arguments: [String]) -> String? {
    do {
        _ = try parseBench(arguments)
        return nil
    } catch {
        return BenchFlags.message(for: error)
    }
}

/// Runs the built `moraine` binary; returns stdout, stderr and the exit status.
func runMoraineCapturing(_ arguments: [String]) throws -> (stdout: String, stderr: String, status: Int32) {
    let run = try runMoraineCLI(arguments)
    return (run.out.map { $0 + "\n" }.joined(), run.err, run.status)
}

@Suite("db_bench flags")
struct BenchFlagsTests {
    @Test("db_bench's spellings: --name=value, -name=value, -name value, bare and negated booleans")
    func spellings() throws {
        let flags = try parseBench([
            "-num=1000", "--reads=50", "-value_size", "64", "--sync", "-disable_wal=true", "--histogram",
            "--statistics", "--use_existing_db=0", "-benchmarks=fillseq,readrandom", "--threads", "2",
        ])
        #expect(flags.num == 1000 && flags.reads == 50 && flags.valueSize == 64 && flags.threads == 2)
        #expect(flags.sync && flags.disableWAL && flags.histogram && flags.statistics && !flags.useExistingDB)
        #expect(flags.workloads == ["fillseq", "readrandom"])
        let negated = try parseBench(["--sync=1", "--nosync", "-nostatistics", "--disable_wal=false"])
        #expect(!negated.sync && !negated.statistics && !negated.disableWAL)
        // A bare boolean followed by a boolean takes it; followed by anything else it means true.
        let spaced = try parseBench(["--sync", "0", "--statistics", "--num=5"])
        #expect(!spaced.sync && spaced.statistics && spaced.num == 5)
        for (text, value) in [("true", true), ("1", true), ("TRUE", true), ("false", false), ("0", false)] {
            #expect(try parseBench(["--use_existing_db=\(text)"]).useExistingDB == value, "\(text)")
        }
        #expect(benchError(["--sync=maybe"])?.contains("not a boolean") == true)
        // Unknown names stay as they are, so ArgumentParser names them; `--` ends the rewrite.
        #expect(BenchFlags.normalizing(["-nosuch=1", "--", "-num=3"]) == ["-nosuch=1", "--", "-num=3"])
        #expect(benchError(["--nosuch=1"])?.contains("nosuch") == true)
    }

    @Test("the rewrite knows every long name BenchFlags declares")
    func longNamesMatchTheFlags() {
        let help = BenchFlags.helpMessage(columns: 400)
        let declared = Set(help.matches(of: /--([a-z0-9_]+) </).map { String($0.output.1) }).subtracting(["help"])
        #expect(declared == BenchFlags.longNames, "help names \(declared.symmetricDifference(BenchFlags.longNames).sorted())")
        #expect(BenchFlags.booleanNames.isSubset(of: BenchFlags.longNames))
    }

    @Test("every number out of range is refused with the flag's name, never a trap")
    func numbersOutOfRange() {
        let cases: [(String, String)] = [
            ("--num=-5", "--num"), ("--num=0", "--num"), ("--reads=-2", "--reads"), ("--value_size=-1", "--value_size"),
            ("--value_size=1000000000000", "--value_size"), ("--key_size=0", "--key_size"), ("--threads=0", "--threads"),
            ("--threads=-3", "--threads"), ("--threads=100000", "--threads"), ("--batch_size=0", "--batch_size"),
            ("--seek_nexts=-1", "--seek_nexts"), ("--seed=-1", "--seed"), ("--cache_size=-1", "--cache_size"),
            ("--bloom_bits=-1", "--bloom_bits"), ("--bloom_bits=65", "--bloom_bits"),
            ("--write_buffer_size=0", "--write_buffer_size"), ("--max_write_buffer_number=1", "--max_write_buffer_number"),
            ("--level0_file_num_compaction_trigger=0", "--level0_file_num_compaction_trigger"),
            ("--target_file_size_base=-1", "--target_file_size_base"), ("--max_bytes_for_level_base=10", "--max_bytes_for_level_base"),
            ("--max_background_jobs=0", "--max_background_jobs"), ("--records=0", "--records"), ("--operations=-7", "--operations"),
            ("--numa_node=-1", "--numa_node"), ("--compression_ratio=0", "--compression_ratio"),
            ("--compression_ratio=1.5", "--compression_ratio"), ("--num=99999999999999999999999", "--num"),
            ("-num=abc", "--num"),
        ]
        for (argument, name) in cases {
            let message = benchError([argument])
            #expect(message?.contains(name) == true, "\(argument): \(message ?? "accepted")")
        }
        #expect(benchError(["--key_size=65536", "--batch_size=65536"])?.contains("--batch_size") == true)
        // The edges themselves are allowed.
        #expect(benchError(["--reads=-1", "--records=-1", "--operations=0", "--value_size=0", "--bloom_bits=0"]) == nil)
    }

    @Test("unknown benchmark names are refused, each named")
    func unknownBenchmarks() {
        let message = benchError(["--benchmarks=fillseq,fillbogus,readrandom,stats"])
        #expect(message?.contains("'fillbogus'") == true && message?.contains("'stats'") == true, "\(message ?? "accepted")")
        #expect(message?.contains("'fillseq'") == false)
        #expect(benchError(["--benchmarks=,"])?.contains("no benchmark") == true)
        for name in BenchFlags.knownBenchmarks { #expect(benchError(["--benchmarks=\(name)"]) == nil, "\(name)") }
    }

    @Test("L0 write triggers rise to a compaction trigger above them, as RocksDB sanitizes")
    func triggersSanitized() throws {
        let c = try parseBench(["--level0_file_num_compaction_trigger=50"]).configuration
        #expect(c.level0FileNumCompactionTrigger == 50 && c.level0SlowdownWritesTrigger == 50 && c.level0StopWritesTrigger == 50)
        let d = try parseBench([]).configuration
        #expect(d.level0SlowdownWritesTrigger == 20 && d.level0StopWritesTrigger == 36 && d.createIfMissing)
    }

    @Test("moraine bench takes a pasted db_bench line and refuses bad ones before running anything")
    func commandLine() throws {
        let directory = makeTemporaryDirectory("moraine-bench-flags")
        defer { removeTree(directory) }
        let ok = try runMoraineCapturing([
            "bench", "-benchmarks=fillseq,readrandom", "-num=200", "--value_size=20", "--sync=0", "--histogram",
            "--statistics", "-db=\(directory)", "--cache_size=65536",
        ])
        #expect(ok.status == 0, "stderr: \(ok.stderr)")
        #expect(ok.stdout.contains("fillseq") && ok.stdout.contains("readrandom") && ok.stdout.contains("stats:"), "\(ok.stdout)")
        // The database it left opens with --use_existing_db; the fill is skipped.
        let again = try runMoraineCapturing(["bench", "--use_existing_db", "-benchmarks=fillseq,readrandom", "-num=200", "-db=\(directory)"])
        #expect(again.status == 0, "stderr: \(again.stderr)")
        #expect(again.stdout.contains("skipped (--use_existing_db is true)") && again.stdout.contains("(200 of 200 found)"), "\(again.stdout)")

        let refusals: [([String], String)] = [
            (["--benchmarks=fillseq,nosuch"], "'nosuch'"),
            (["--num=-5"], "--num"),
            (["--threads=0"], "--threads"),
            (["-value_size=-1"], "--value_size"),
            (["--use_existing_db=1", "--benchmarks=readrandom", "--db=\(directory)/missing"], "use_existing_db"),
        ]
        for (arguments, word) in refusals {
            let result = try runMoraineCapturing(["bench", "--db=\(directory)/refused", "--num=10"] + arguments)
            #expect(result.status != 0, "\(arguments) ran: \(result.stdout)")
            #expect(result.stderr.contains(word), "\(arguments): stderr \(result.stderr)")
            #expect(!result.stdout.contains("micros/op"), "\(arguments) ran a workload")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/missing"), "--use_existing_db created the database")
        let help = try runMoraineCapturing(["bench", "--help"])
        #expect(help.status == 0 && help.stdout.contains("--use_existing_db") && help.stdout.contains("--histogram"), "\(help)")
    }
}
