// db_bench's flags, with db_bench's names and meanings, shared by `moraine bench` and bench/'s
// `moraine-bench`, so a db_bench command line pastes as it is: BenchFlags.normalizing rewrites
// db_bench's spellings (-name=value, a bare boolean --flag, --noflag) into ArgumentParser's
// before parsing, boolean flags take true/false/1/0, and validate() refuses, naming the flag,
// every count or size out of range and every benchmark name this harness does not run, before
// anything runs.
import ArgumentParser
import Moraine
import MoraineSystem

/// The flags of one benchmark run.
public struct BenchFlags: ParsableArguments, Sendable {
    public init() {}

    @Option(name: .customLong("benchmarks"), help: "Comma-separated workloads, run in order.")
    public var benchmarks = "fillseq,fillrandom,overwrite,readrandom,readseq,readreverse,seekrandom"
    @Option(name: .customLong("num"), help: "Keys in the database.") public var num = 1_000_000
    @Option(name: .customLong("reads"), help: "Read operations (-1: --num).") public var reads = -1
    @Option(name: .customLong("value_size")) public var valueSize = 100
    @Option(name: .customLong("key_size")) public var keySize = 16
    @Option(name: .customLong("threads")) public var threads = 1
    @Option(name: .customLong("db"), help: "Directory; each engine uses a subdirectory.")
    public var db = "/tmp/moraine-bench"
    @Option(
        name: .customLong("use_existing_db"), help: "Open the database left by an earlier run; fill workloads are skipped. \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var useExistingDB = false
    @Option(name: .customLong("sync"), help: "fdatasync every write. \(BenchFlags.booleanHelp)", transform: BenchFlags.boolean)
    public var sync = false
    @Option(
        name: .customLong("mmap_read"),
        help: "Read tables through mappings (RocksDB's allow_mmap_reads; LevelDB always does). \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var mmapRead = false
    @Option(
        name: .customLong("use_direct_reads"),
        help: """
            Read tables with O_DIRECT: block-cache misses reach the device (RocksDB's use_direct_reads; for files on a storage \
            node, the node's --direct-reads decides). \(BenchFlags.booleanHelp)
            """,
        transform: BenchFlags.boolean)
    public var useDirectReads = false
    @Option(
        name: .customLong("memtable_huge_pages"),
        help: "Moraine's memtables in transparent huge pages (Options.memtableHugePages). \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var memtableHugePages = true
    @Option(
        name: .customLong("memtable_hash_index"),
        help: "Moraine's memtables keep a point-lookup hash index (Options.memtableHashIndex). \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var memtableHashIndex = true
    @Option(name: .customLong("disable_wal"), help: "Write without the WAL. \(BenchFlags.booleanHelp)", transform: BenchFlags.boolean)
    public var disableWAL = false
    @Option(name: .customLong("durability"), help: "Moraine's durability: wal or pmem (a persistent log in a region).")
    public var durability = "wal"
    @Option(name: .customLong("pmem_path"), help: "Region file for --durability pmem (default: under /dev/shm).")
    public var pmemPath: String? = nil
    @Option(name: .customLong("numa_node"), help: "Pin the benchmark (all its threads) to this NUMA node.")
    public var numaNode: Int? = nil
    @Option(name: .customLong("io_backend"), help: "Moraine's file I/O: io_uring or pread (default: io_uring when available).")
    public var ioBackend: String? = nil
    @Option(
        name: .customLong("tiers"),
        help: "Storage tiers for the tables, PATH:SIZE[:pmem],…; each engine's under PATH/<engine> (RocksDB: db_paths).")
    public var tiers: String? = nil
    @Option(name: .customLong("cache_size"), help: "Block cache bytes.") public var cacheSize = 8 << 20
    @Option(name: .customLong("bloom_bits")) public var bloomBits = 10
    @Option(name: .customLong("compression_type"), help: "lz4 or none.") public var compressionType = "lz4"
    @Option(name: .customLong("write_buffer_size")) public var writeBufferSize = 64 << 20
    @Option(name: .customLong("max_write_buffer_number")) public var maxWriteBufferNumber = 2
    @Option(name: .customLong("level0_file_num_compaction_trigger")) public var level0FileNumCompactionTrigger = 4
    @Option(name: .customLong("target_file_size_base")) public var targetFileSizeBase = 64 << 20
    @Option(name: .customLong("max_bytes_for_level_base")) public var maxBytesForLevelBase = 256 << 20
    @Option(name: .customLong("max_background_jobs")) public var maxBackgroundJobs = 2
    @Option(name: .customLong("seed"), help: "Seed for keys and values (same for every engine).") public var seed = 301
    @Option(name: .customLong("compression_ratio"), help: "Values compress to this fraction.")
    public var compressionRatio = 0.5
    @Option(name: .customLong("seek_nexts"), help: "next() calls after each seek in seekrandom.")
    public var seekNexts = 0
    @Option(name: .customLong("batch_size"), help: "Keys per batch in multireadrandom (db_bench's default: 1).")
    public var batchSize = 1
    @Option(name: .customLong("json"), help: "Write results as a JSON array to this file.") public var json: String?
    @Option(
        name: .customLong("statistics"),
        help: "After each workload, print each engine's own counters (stalls, flushes, compactions, the tree's shape). \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var statistics = false
    @Option(
        name: .customLong("histogram"), help: "Accepted for db_bench's command lines: percentiles are always printed. \(BenchFlags.booleanHelp)",
        transform: BenchFlags.boolean)
    public var histogram = false
    @Option(
        name: .customLong("settle"),
        help: """
            With several engines: before one runs a workload, wait (up to 120 s) until the others have no flush or \
            compaction running or due, so their background work does not share the cores the measured one runs on. \
            \(BenchFlags.booleanHelp)
            """,
        transform: BenchFlags.boolean)
    public var settle = true
    @Option(name: .customLong("records"), help: "YCSB records loaded by ycsb_load (-1: --num).") public var records = -1
    @Option(name: .customLong("operations"), help: "YCSB operations per run phase (-1: --reads).")
    public var operations = -1

    /// Read operations per thread.
    public var readCount: Int { reads < 0 ? num : reads }

    /// The workloads of --benchmarks, in order.
    public var workloads: [String] {
        benchmarks.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
    }

    /// The options every engine receives. The L0 slowdown and stop triggers rise to the
    /// compaction trigger when it is above them, as RocksDB's option sanitizing does.
    public var configuration: BenchConfiguration {
        var c = BenchConfiguration()
        c.sync = sync
        c.disableWAL = disableWAL
        c.createIfMissing = !useExistingDB
        c.durability = durability
        c.pmemPath = pmemPath
        c.ioBackend = ioBackend
        c.mmapReads = mmapRead
        c.directReads = useDirectReads
        c.memtableHugePages = memtableHugePages
        c.memtableHashIndex = memtableHashIndex
        c.cacheSizeBytes = cacheSize
        c.bloomBitsPerKey = bloomBits
        c.compressionLZ4 = compressionType == "lz4"
        c.writeBufferSizeBytes = writeBufferSize
        c.maxWriteBufferNumber = maxWriteBufferNumber
        c.level0FileNumCompactionTrigger = level0FileNumCompactionTrigger
        c.level0SlowdownWritesTrigger = max(c.level0SlowdownWritesTrigger, level0FileNumCompactionTrigger)
        c.level0StopWritesTrigger = max(c.level0StopWritesTrigger, c.level0SlowdownWritesTrigger)
        c.targetFileSizeBaseBytes = targetFileSizeBase
        c.maxBytesForLevelBaseBytes = maxBytesForLevelBase
        c.maxBackgroundJobs = maxBackgroundJobs
        c.tiers = (try? tiers.map(StorageTier.parseList)) ?? []  // checked by validate()
        return c
    }

    /// The options as JSON object members.
    var optionsJSON: String {
        let pairs: [(String, String)] = [
            ("num", "\(num)"), ("reads", "\(readCount)"), ("value_size", "\(valueSize)"), ("key_size", "\(keySize)"),
            ("threads", "\(threads)"), ("sync", sync ? "1" : "0"), ("disable_wal", disableWAL ? "1" : "0"), ("mmap_read", mmapRead ? "1" : "0"),
            ("use_direct_reads", useDirectReads ? "1" : "0"),
            ("memtable_huge_pages", memtableHugePages ? "1" : "0"), ("memtable_hash_index", memtableHashIndex ? "1" : "0"),
            ("durability", "\"\(durability)\""), ("io_backend", "\"\(ioBackend ?? IOBackend.preferred.rawValue)\""),
            ("cache_size", "\(cacheSize)"), ("bloom_bits", "\(bloomBits)"),
            ("compression_type", "\"\(compressionType)\""), ("write_buffer_size", "\(writeBufferSize)"),
            ("max_write_buffer_number", "\(maxWriteBufferNumber)"),
            ("level0_file_num_compaction_trigger", "\(level0FileNumCompactionTrigger)"),
            ("target_file_size_base", "\(targetFileSizeBase)"), ("max_bytes_for_level_base", "\(maxBytesForLevelBase)"),
            ("max_background_jobs", "\(maxBackgroundJobs)"), ("seed", "\(seed)"),
            ("compression_ratio", "\(compressionRatio)"), ("seek_nexts", "\(seekNexts)"), ("settle", settle ? "1" : "0"),
            ("records", "\(records < 0 ? num : records)"), ("operations", "\(operations < 0 ? readCount : operations)"),
            ("batch_size", "\(batchSize)"), ("tiers", "\"\(tiers ?? "")\""),
        ]
        return "{" + pairs.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}
