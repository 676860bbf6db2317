// How BenchFlags reads a db_bench command line: the rewrite of db_bench's (gflags') spellings
// into ArgumentParser's, the boolean values, the benchmark names this harness runs, and the
// range of every number. Pure functions of the arguments; no I/O.
import ArgumentParser
import Moraine
import MoraineSystem

extension BenchFlags {
    /// Every long name BenchFlags declares (the lint-like test checks it against the help).
    public static let longNames: Set<String> = [
        "benchmarks", "num", "reads", "value_size", "key_size", "threads", "db", "use_existing_db", "sync",
        "disable_wal", "durability", "pmem_path", "numa_node", "io_backend", "cache_size", "bloom_bits",
        "compression_type", "write_buffer_size", "max_write_buffer_number", "level0_file_num_compaction_trigger",
        "target_file_size_base", "max_bytes_for_level_base", "max_background_jobs", "seed", "compression_ratio",
        "seek_nexts", "batch_size", "json", "statistics", "histogram", "records", "operations", "settle", "tiers",
        "mmap_read", "memtable_huge_pages", "memtable_hash_index", "use_direct_reads",
    ]

    /// How the help describes a boolean flag's values.
    static let booleanHelp = "true/false/1/0; alone: true; --no<name>: false."

    /// The long names that take a boolean: alone they mean true, as in db_bench.
    public static let booleanNames: Set<String> = [
        "use_existing_db", "sync", "disable_wal", "statistics", "histogram", "settle", "mmap_read", "memtable_huge_pages",
        "memtable_hash_index", "use_direct_reads",
    ]

    /// The workloads this harness runs (db_bench's names, and YCSB's load and run phases).
    public static let knownBenchmarks: [String] = [
        "fillseq", "fillrandom", "overwrite", "readrandom", "multireadrandom", "readseq", "readreverse", "seekrandom",
        "deleterandom", "readwhilewriting", "compact", "ycsb_load", "ycsba", "ycsbb", "ycsbc", "ycsbd", "ycsbe", "ycsbf",
    ]

    /// Workloads that start from an empty database (skipped with --use_existing_db, as db_bench does).
    public static let freshBenchmarks: Set<String> = ["fillseq", "fillrandom", "ycsb_load"]

    /// Largest --num, --reads, --records and --operations: 2^40, far past any run, and small
    /// enough that counts times --threads never overflow.
    public static let countMax = 1 << 40

    /// A boolean value as db_bench's flags take it.
    /// - Throws: a ValidationError for anything but true, false, 1, 0 (any case).
    @Sendable public static func boolean(_ text: String) throws -> Bool {
        switch text.lowercased() {
        case "1", "true", "yes", "y", "t": return true
        case "0", "false", "no", "n", "f": return false
        default: throw ValidationError("'\(text)' is not a boolean (use true, false, 1 or 0)")
        }
    }

    /// db_bench's command line in ArgumentParser's spelling: `-name=value` and `-name value`
    /// become `--name=value` and `--name value` for the names in `longNames` (and `extraNames`,
    /// a command's own options); a boolean flag alone becomes `--name=true` (or takes the next
    /// argument when that is a boolean), and `--noname` becomes `--name=false`. Everything
    /// else, and everything after `--`, is left as it is.
    public static func normalizing(_ arguments: [String], extraNames: Set<String> = []) -> [String] {
        let names = longNames.union(extraNames)
        var result: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                result += arguments[(index - 1)...]
                break
            }
            guard argument.hasPrefix("-"), argument.count > 1 else {
                result.append(argument)
                continue
            }
            let body = argument.drop { $0 == "-" }
            let dashes = argument.count - body.count
            let name = String(body.prefix { $0 != "=" })
            let value = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
            guard dashes <= 2 else {
                result.append(argument)
                continue
            }
            if names.contains(name) {
                if booleanNames.contains(name) && value == nil {
                    // gflags never takes the next argument as a boolean's value; accept it when
                    // it is one, since ArgumentParser's users write `--sync 1`.
                    if index < arguments.count, (try? boolean(arguments[index])) != nil {
                        result.append("--\(name)=\(arguments[index])")
                        index += 1
                    } else {
                        result.append("--\(name)=true")
                    }
                } else {
                    result.append("--\(name)" + (value.map { "=\($0)" } ?? ""))
                }
            } else if name.hasPrefix("no"), booleanNames.contains(String(name.dropFirst(2))), value == nil {
                result.append("--\(name.dropFirst(2))=false")
            } else {
                result.append(argument)
            }
        }
        return result
    }

    /// Checks every flag before anything runs.
    /// - Throws: a ValidationError naming the flag and its allowed range.
    public func validate() throws {
        try Self.check("num", num, 1...Self.countMax)
        try Self.check("reads", reads, 0...Self.countMax, orMinusOne: true)
        try Self.check("records", records, 1...Self.countMax, orMinusOne: true)
        try Self.check("operations", operations, 0...Self.countMax, orMinusOne: true)
        try Self.check("value_size", valueSize, 0...(256 << 20))  // Moraine's default largest value
        try Self.check("key_size", keySize, 1...(64 << 10))  // and largest key
        try Self.check("threads", threads, 1...1024)
        try Self.check("batch_size", batchSize, 1...(1 << 16))
        guard keySize * batchSize <= 256 << 20 else {
            throw ValidationError("--key_size times --batch_size must be at most 256 MiB (one batch's keys)")
        }
        try Self.check("seek_nexts", seekNexts, 0...(1 << 30))
        try Self.check("seed", seed, 0...Int.max)
        try Self.check("cache_size", cacheSize, 0...(1 << 42))
        if let tiers {
            do { _ = try StorageTier.parseList(tiers) } catch let error as MoraineError { throw ValidationError("--tiers: \(error.message)") }
        }
        try Self.check("bloom_bits", bloomBits, 0...64)
        try Self.check("write_buffer_size", writeBufferSize, 4096...(1 << 30))
        try Self.check("max_write_buffer_number", maxWriteBufferNumber, 2...64)
        try Self.check("level0_file_num_compaction_trigger", level0FileNumCompactionTrigger, 1...1000)
        try Self.check("target_file_size_base", targetFileSizeBase, 4096...(1 << 40))
        try Self.check("max_bytes_for_level_base", maxBytesForLevelBase, 4096...(1 << 50))
        try Self.check("max_background_jobs", maxBackgroundJobs, 1...256)
        if let numaNode { try Self.check("numa_node", numaNode, 0...4095) }
        guard compressionRatio > 0 && compressionRatio <= 1 else {
            throw ValidationError("--compression_ratio must be in (0, 1], not \(compressionRatio)")
        }
        guard compressionType == "lz4" || compressionType == "none" else {
            throw ValidationError("--compression_type must be lz4 or none, not '\(compressionType)'")
        }
        guard durability == "wal" || durability == "pmem" else {
            throw ValidationError("--durability must be wal or pmem, not '\(durability)'")
        }
        if let ioBackend, IOBackend(name: ioBackend) == nil {
            throw ValidationError("--io_backend must be io_uring or pread, not '\(ioBackend)'")
        }
        let unknown = workloads.filter { !Self.knownBenchmarks.contains($0) }
        guard unknown.isEmpty else {
            throw ValidationError(
                "unknown benchmark\(unknown.count == 1 ? "" : "s") in --benchmarks: "
                    + unknown.map { "'\($0)'" }.joined(separator: ", ")
                    + " (known: \(Self.knownBenchmarks.joined(separator: ", ")))")
        }
        guard !workloads.isEmpty else { throw ValidationError("--benchmarks names no benchmark") }
    }

    /// Throws unless `value` is in `range` (or -1, meaning "the default", when allowed).
    static func check(_ name: String, _ value: Int, _ range: ClosedRange<Int>, orMinusOne: Bool = false) throws {
        if range.contains(value) || (orMinusOne && value == -1) { return }
        let allowed = "\(range.lowerBound)…\(range.upperBound)" + (orMinusOne ? " (or -1 for the default)" : "")
        throw ValidationError("--\(name) must be \(allowed), not \(value)")
    }
}
