// The `moraine` command: single operations, the line-oriented shell, the demo, and inspection
// tools. Thin: all behaviour lives in the libraries.
import ArgumentParser
import Logging
import Moraine
import MoraineCompute
import MoraineMemory
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import MoraineWorker

@main
struct MoraineCommand: ParsableCommand {
    /// The release this build is.
    static let version = "0.4.0"

    static let configuration = CommandConfiguration(
        commandName: "moraine",
        abstract: "Moraine: an LSM key-value store for disaggregated infrastructure.",
        version: version,
        subcommands: [
            Demo.self, Put.self, Get.self, Del.self, Scan.self, Shell.self, Stats.self, Repair.self, SST.self,
            Manifest.self, WAL.self, Bench.self, IOBenchCommand.self, NumaCommand.self, TransportBenchCommand.self,
            NodeCommand.self, Up.self, Status.self, Down.self, JobBenchCommand.self, ServeCommand.self, Destroy.self,
            MemoryBenchCommand.self,
        ])

    /// Parses and runs a command. A usage error (an unknown flag, a missing argument, a value
    /// out of range) exits 2, as getopt-style tools and RocksDB's do; a failed operation exits 1
    /// (`reporting`); a missing key exits 1 from `get`.
    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if let verbose = arguments.firstIndex(of: "--verbose") {
            arguments.remove(at: verbose)
            SystemLog.isDebugEnabled = true
        }
        // Every process message goes through swift-log; this command writes them as `moraine: …`.
        let level: Logger.Level = SystemLog.isDebugEnabled ? .debug : .info
        LoggingSystem.bootstrap { label in MoraineLogHandler(label: label, level: level) }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                printError(fullMessage(for: error))
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}

/// Options shared by commands that open a database.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "Database directory (with --cluster: the database's name on the storage node; with --connect: on the compute node).")
    var db: String

    @Option(help: "Keep the database's files on the storage node of the cluster running in this run directory.")
    var cluster: String?

    @Option(
        help: """
            Use the database on a compute node: a cluster's run directory (it runs one) or the node's endpoint \
            (shm:PATH or tcp:HOST:PORT, with --cluster-key). The node opens it with its own options.
            """)
    var connect: String?

    @Option(name: .customLong("cluster-key"), help: "With --connect ENDPOINT: the cluster key file.")
    var clusterKey: String?

    @Option(name: .customLong("write_buffer_size"), help: "Memtable size in bytes (write_buffer_size).")
    var writeBufferSize: Int?

    @Option(name: .customLong("compression_type"), help: "Block compression: lz4 or none.")
    var compression: String?

    @Option(help: "Where writes become durable: wal (default) or pmem (a persistent log in a region).")
    var durability: String?

    @Option(name: .customLong("pmem_path"), help: "Region file for --durability pmem (default: under /dev/shm).")
    var pmemPath: String?

    @Option(name: .customLong("cache_size"), help: "Block cache size in bytes (cache_size; default 8 MiB).")
    var cacheSize: Int?

    @Option(
        name: .customLong("row_cache_size"),
        help: "Row cache size in bytes: the tables' answer per key, for point reads (row_cache_size; default 0, off).")
    var rowCacheSize: Int?

    @Option(
        help: """
            Storage tiers for the tables, fastest first: PATH:SIZE[,PATH:SIZE…] (sizes with K, M, G or T; the last tier \
            may leave its size out: unbounded). Levels fill the fastest tier with room; a tier past its size moves its \
            coldest tables down. Embedded only.
            """)
    var tiers: String?

    @Option(
        name: .customLong("options_file"),
        help: "Start from the options in this OPTIONS file (one a database wrote, say); the flags above override it.")
    var optionsFile: String?

    func validate() throws {
        if connect != nil && cluster != nil { throw ValidationError("--connect and --cluster exclude each other") }
        if let writeBufferSize, writeBufferSize < 4096 || writeBufferSize > 1 << 30 {
            throw ValidationError("--write_buffer_size must be 4096…1073741824 bytes, not \(writeBufferSize)")
        }
        if let cacheSize, cacheSize < 0 || cacheSize > 1 << 40 {
            throw ValidationError("--cache_size must be 0…1099511627776 bytes, not \(cacheSize)")
        }
        if tiers != nil && (connect != nil || cluster != nil) {
            throw ValidationError("--tiers places an embedded database's tables; with --cluster or --connect the storage node holds them")
        }
        if let rowCacheSize, rowCacheSize < 0 || rowCacheSize > 1 << 40 {
            throw ValidationError("--row_cache_size must be 0…1099511627776 bytes, not \(rowCacheSize)")
        }
        if let tiers {
            do { _ = try StorageTier.parseList(tiers) } catch let error as MoraineError { throw ValidationError("--tiers: \(error.message)") }
        }
    }

    func makeOptions(create: Bool = true) throws -> Options {
        var options = Options()
        if let optionsFile {
            let text: String
            do {
                text = String(decoding: try PosixFileSystem.shared.readAll(optionsFile), as: UTF8.self)
            } catch {
                throw MoraineError(.notFound, "cannot read --options_file \(optionsFile): \(error)")
            }
            try OptionsFile.apply(text, to: &options, name: optionsFile)
        }
        options.createIfMissing = create
        if let writeBufferSize { options.writeBufferSize = writeBufferSize }
        if let compression {
            guard let type = CompressionType(rawValue: compression) else {
                throw ValidationError("compression_type must be lz4 or none")
            }
            options.compression = type
        }
        if let durability {
            guard let mode = Durability(rawValue: durability) else { throw ValidationError("durability must be wal or pmem") }
            options.durability = mode
        }
        options.pmemPath = pmemPath
        if let cacheSize { options.blockCacheSize = cacheSize }
        if let rowCacheSize { options.rowCacheSize = rowCacheSize }
        if let tiers { options.tiers = try StorageTier.parseList(tiers) }
        if let cluster {
            options = try ClusterAttachment.options(options, database: db, runDirectory: cluster, owner: Self.owner)
        }
        return options
    }

    static var owner: String { "moraine \(CommandLine.arguments.dropFirst().first ?? "") pid \(getpid())" }

    static func jobRunner(cluster: String) throws -> RemoteJobRunner? { try ClusterAttachment.jobRunner(runDirectory: cluster) }

    static func memoryNode(cluster: String, fileSystem: RemoteFileSystem) throws -> MemoryNodeArenas? {
        try ClusterAttachment.memoryNode(runDirectory: cluster, fileSystem: fileSystem)
    }

    static func remoteFileSystem(cluster: String) throws -> RemoteFileSystem {
        try ClusterAttachment.remoteFileSystem(runDirectory: cluster, owner: owner)
    }

    func open() throws -> Database {
        if let connect { return try Database(connect: connect, database: db, clusterKey: clusterKey, options: try makeOptions()) }
        return try Database(path: db, options: try makeOptions())
    }

    /// Opens the database read-only: inspecting never changes it. (Connected, the compute node
    /// has it open for writing; the command itself only reads.)
    func openReadOnly() throws -> Database {
        if let connect { return try Database(connect: connect, database: db, clusterKey: clusterKey, options: try makeOptions(create: false)) }
        var options = try makeOptions(create: false)
        options.readOnly = true
        return try Database(path: db, options: options)
    }
}

/// Runs `body`, turning Moraine errors into a clear message and exit code 1.
func reporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as MoraineError {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

func printError(_ message: String) {
    var line = Array(message.utf8)
    line.append(10)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress!, $0.count) }
}

#if canImport(Glibc)
    import Glibc
#endif

struct Put: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Store a value.")
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "fdatasync the WAL before returning.") var sync = false
    @Argument(help: "Key (text, or x:HEX).") var key: String
    @Argument(help: "Value (text, or x:HEX).") var value: String

    func run() throws {
        try reporting {
            let db = try database.open()
            try db.put(
                try TokenCodec.decode(key[...]), try TokenCodec.decode(value[...]), options: WriteOptions(sync: sync))
            try db.close()
        }
        print("OK")
    }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a value; a missing key prints nothing, says 'not found' on standard error and exits 1.")
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "Key (text, or x:HEX).") var key: String

    func run() throws {
        let value = try reporting {
            let db = try database.openReadOnly()
            defer { try? db.close() }
            return try db.get(try TokenCodec.decode(key[...]))
        }
        guard let value else {
            printError("not found")
            throw ExitCode(1)
        }
        print(TokenCodec.encode(value))
    }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove a database: its files (on the storage node with --cluster) and its memory-node arenas.")
    @OptionGroup var database: DatabaseOptions

    func run() throws {
        let removed = try reporting { try Database.destroy(path: database.db, options: try database.makeOptions(create: false)) }
        print("removed \(removed) file(s) and arena(s) of \(database.db)")
    }
}

struct Del: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a key.")
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "fdatasync the WAL before returning.") var sync = false
    @Argument(help: "Key (text, or x:HEX).") var key: String

    func run() throws {
        try reporting {
            let db = try database.open()
            try db.delete(try TokenCodec.decode(key[...]), options: WriteOptions(sync: sync))
            try db.close()
        }
        print("OK")
    }
}

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print pairs in key order: KEY VALUE per line, then END.")
    @OptionGroup var database: DatabaseOptions
    @Option(help: "First key (inclusive).") var from: String?
    @Option(help: "End key (exclusive).") var to: String?
    @Option(help: "Most pairs to print.") var limit = 100
    @Flag(help: "Walk backward from the end.") var reverse = false

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must not be negative, not \(limit)") }
    }

    func run() throws {
        try reporting {
            let db = try database.openReadOnly()
            defer { try? db.close() }
            let iterator = try db.makeIterator(
                options: ReadOptions(
                    lowerBound: try from.map { try TokenCodec.decode($0[...]) },
                    upperBound: try to.map { try TokenCodec.decode($0[...]) }))
            if reverse { try iterator.seekToLast() } else { try iterator.seekToFirst() }
            var count = 0
            while iterator.isValid && count < limit {
                print(TokenCodec.encode(iterator.key) + " " + TokenCodec.encode(iterator.value))
                count += 1
                if reverse { try iterator.prev() } else { try iterator.next() }
            }
            if iterator.isValid { printError("scan stopped at --limit \(limit); more pairs follow") }
        }
        print("END")
    }
}

struct Shell: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read commands from stdin, one per line; answer one line each (see README).")
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Acknowledge writes only once they are durable (fdatasync).") var sync = false
    @Option(name: .customLong("numa_node"), help: "Pin the process (all its threads) to this NUMA node.") var numaNode: Int?

    func validate() throws {
        if let numaNode, numaNode < 0 { throw ValidationError("--numa_node must not be negative, not \(numaNode)") }
    }

    func run() throws {
        // Before any thread starts, so that only the shell's own signal thread takes them.
        TerminationSignals.block()
        try reporting {
            if let numaNode { try NUMATopology.pinCurrentThread(toNode: numaNode) }
            let topology = NUMATopology.current().description
            if let numaNode { SystemLog.info(topology + "; pinned to node \(numaNode)") } else { SystemLog.debug(topology) }
        }
        let db = try reporting { try database.open() }
        let session = ShellSession(database: db, writeOptions: WriteOptions(sync: sync))
        session.stopOnSignal()
        if let error = session.run() { try reporting { throw error } }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the database's counters as one line of JSON, then the shape of its tree (read-only).")
    @OptionGroup var database: DatabaseOptions

    func run() throws {
        try reporting {
            let db = try database.openReadOnly()
            defer { try? db.close() }
            let stats = db.stats()
            print(stats.json)
            print(stats.shape)
        }
    }
}

struct Repair: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rebuild the manifest from the tables and WALs found; unreadable files move to DIR/lost/.",
        discussion: """
            For a database an open refuses (no CURRENT, a damaged manifest, a table no manifest \
            names). Every table is read whole and kept if it reads cleanly; every WAL is replayed \
            into new tables (damaged records skipped); files that cannot be read, replayed WALs and \
            old manifests are moved to DIR/lost/, never deleted. Prints what it kept and moved.
            """)
    @Option(help: "Database directory.") var db: String

    func run() throws {
        try reporting {
            let report = try Database.repair(path: db, options: Options())
            print(report.description)
        }
    }
}
