// The `moraine` command: single operations, the line-oriented shell, the demo, and inspection
// tools. Thin: all behaviour lives in the libraries.
import ArgumentParser
import Moraine
import MoraineSystem

@main
struct MoraineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moraine",
        abstract: "Moraine: an LSM key-value store for disaggregated infrastructure.",
        subcommands: [
            Demo.self, Put.self, Get.self, Del.self, Scan.self, Shell.self, SST.self, Manifest.self, Bench.self,
            IOBenchCommand.self, NumaCommand.self, TransportBenchCommand.self,
        ])
}

/// Options shared by commands that open a database.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "Database directory.")
    var db: String

    @Option(name: .customLong("write_buffer_size"), help: "Memtable size in bytes (write_buffer_size).")
    var writeBufferSize: Int?

    @Option(name: .customLong("compression_type"), help: "Block compression: lz4 or none.")
    var compression: String?

    @Option(help: "Where writes become durable: wal (default) or pmem (a persistent log in a region).")
    var durability: String?

    @Option(name: .customLong("pmem_path"), help: "Region file for --durability pmem (default: under /dev/shm).")
    var pmemPath: String?

    func makeOptions(create: Bool = true) throws -> Options {
        var options = Options()
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
        return options
    }

    func open() throws -> Database {
        try Database(path: db, options: try makeOptions())
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
    static let configuration = CommandConfiguration(abstract: "Print a value, or (nil).")
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "Key (text, or x:HEX).") var key: String

    func run() throws {
        let value = try reporting {
            let db = try Database(path: database.db, options: try database.makeOptions(create: false))
            defer { try? db.close() }
            return try db.get(try TokenCodec.decode(key[...]))
        }
        print(value.map(TokenCodec.encode) ?? "(nil)")
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

    func run() throws {
        try reporting {
            let db = try Database(path: database.db, options: try database.makeOptions(create: false))
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

    func run() throws {
        try reporting {
            if let numaNode { try NUMATopology.pinCurrentThread(toNode: numaNode) }
            SystemLog.info(NUMATopology.current().description + (numaNode.map { "; pinned to node \($0)" } ?? ""))
        }
        let db = try reporting { try database.open() }
        ShellSession(database: db, writeOptions: WriteOptions(sync: sync)).run()
        try reporting { try db.close() }
    }
}
