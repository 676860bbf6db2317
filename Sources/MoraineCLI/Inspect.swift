// `moraine demo`, and the inspection commands `sst dump`, `manifest dump` and `wal dump`, which
// only read: none of them opens the database for writing.
import ArgumentParser
import Moraine
import MoraineFormat
import MoraineSystem

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open (or create) an embedded database and show puts, gets, a scan, a flush and the LSM shape.")
    @Option(help: "Database directory (with --cluster: its name on the storage node).") var db = "./data"
    @Option(help: "Keys to write.") var keys = 200_000
    @Option(help: "Keep the files on the storage node of the cluster running in this run directory.") var cluster: String?
    @Option(help: "Run the demo through the compute node of the cluster in this run directory (or at this endpoint).")
    var connect: String?
    @Option(name: .customLong("cluster-key"), help: "With --connect ENDPOINT: the cluster key file.") var clusterKey: String?

    func validate() throws {
        if keys < 1 || keys > 100_000_000 { throw ValidationError("--keys must be 1…100000000, not \(keys)") }
        if connect != nil && cluster != nil { throw ValidationError("--connect and --cluster exclude each other") }
    }

    func run() throws {
        try reporting {
            var options = Options()
            options.createIfMissing = true
            options.writeBufferSize = 4 << 20
            options.targetFileSizeBase = 4 << 20
            options.maxBytesForLevelBase = 16 << 20
            // With --cluster, every role the cluster runs is wired in as any database command
            // wires it (the memory node too: its arenas may hold this database's writes).
            let database =
                try connect.map { try Database(connect: $0, database: db, clusterKey: clusterKey, options: options) }
                ?? cluster.map { try Database(path: db, cluster: $0, options: options) }
                ?? Database(path: db, options: options)
            print(connect.map { "opened \(db) on the compute node of \($0)" } ?? "opened \(db)")
            let start = monotonicSeconds()
            var batch = WriteBatch()
            for i in 0..<keys {
                let key = "user\(String(i * 7919 % keys).leftPadded(8))"
                batch.put(Array(key.utf8), Array("value-\(i)-".utf8) + Array(repeating: UInt8(ascii: "x"), count: 80))
                if batch.count == 1000 {
                    try database.write(batch)
                    batch.clear()
                }
            }
            if !batch.isEmpty { try database.write(batch) }
            let elapsed = monotonicSeconds() - start
            print("put \(keys) keys in \(String(format1: elapsed * 1000)) ms (\(Int(Double(keys) / elapsed)) puts/s)")
            for probe in ["user00000000", "user00000042", "user\(String(keys - 1).leftPadded(8))", "missing"] {
                let value = try database.get(probe)
                print("get \(probe) -> \(value.map { String($0.prefix(24)) + "…" } ?? "(nil)")")
            }
            try database.delete("user00000042")
            print("del user00000042 -> get: \(try database.get("user00000042") ?? "(nil)")")
            let iterator = try database.makeIterator(options: ReadOptions(lowerBound: Array("user00000100".utf8)))
            try iterator.seekToFirst()
            print("scan from user00000100:")
            for _ in 0..<3 where iterator.isValid {
                print(
                    "  \(String(decoding: iterator.key, as: UTF8.self)) = \(String(decoding: iterator.value.prefix(24), as: UTF8.self))…"
                )
                try iterator.next()
            }
            try database.flush()
            print("flushed; LSM shape:")
            print(database.stats().shape.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            // Background compaction may still be catching up; give it a few seconds to settle.
            let deadline = monotonicSeconds() + 10
            while database.stats().levels.contains(where: { $0.score >= 1 }) && monotonicSeconds() < deadline {
                usleep(100_000)
            }
            let settled = database.stats()
            let remote = cluster == nil ? "" : ", \(settled.remoteCompactions) on a worker"
            print("after background compaction (\(settled.compactions) compactions\(remote), \(settled.trivialMoves) trivial moves):")
            print(settled.shape.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            try database.close()
        }
    }
}

struct SST: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sst", abstract: "Inspect table files.", subcommands: [Dump.self])

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a table's properties and entries.")
        @Argument(help: "Path of an .sst file (with --cluster: DATABASE/NAME on the storage node).") var file: String
        @Option(help: "Most entries to print (-1 for all).") var limit = -1
        @Option(help: "Read the file from the storage node of the cluster running in this run directory.") var cluster: String?

        func validate() throws {
            if limit < -1 { throw ValidationError("--limit must be -1 (all) or more, not \(limit)") }
        }

        func run() throws {
            try reporting {
                let reader = try TableReader(
                    file: try inspectedFileSystem(cluster).openRandomAccess(file), name: file, cache: nil)
                let p = reader.properties
                print("file: \(file)")
                print(
                    "size: \(reader.fileSizeBytes) bytes; entries: \(p.entryCount) (\(p.deletionCount) deletions); data blocks: \(p.dataBlockCount)"
                )
                print(
                    "data: \(p.dataBytes) bytes; index: \(p.indexBytes); filter: \(p.filterBytes); compression: \(p.compression.rawValue)"
                )
                print(
                    "raw keys: \(p.rawKeyBytes) bytes; raw values: \(p.rawValueBytes) bytes; sequences: \(p.smallestSequence)…\(p.largestSequence)"
                )
                print("smallest: \(describeInternal(p.smallestKey)); largest: \(describeInternal(p.largestKey))")
                let iterator = reader.makeIterator(fillCache: false)
                try iterator.seekToFirst()
                var printed = 0
                while iterator.isValid && (limit < 0 || printed < limit) {
                    let ikey = Array(iterator.key)
                    print("\(describeInternal(ikey)) => \(TokenCodec.encode(Array(iterator.value)))")
                    printed += 1
                    try iterator.next()
                }
            }
        }
    }
}

/// Where a dump command reads: the storage node of `cluster`, or this machine's files.
func inspectedFileSystem(_ cluster: String?) throws -> any FileSystem {
    guard let cluster else { return PosixFileSystem.shared }
    return try DatabaseOptions.remoteFileSystem(cluster: cluster)
}

func describeInternal(_ key: [UInt8]) -> String {
    guard key.count >= 8 else { return "(malformed)" }
    return key.withUnsafeBytes { raw in
        let type = valueType(raw).map { $0 == .value ? "put" : "del" } ?? "?"
        return "\(TokenCodec.encode(Array(userKey(raw)))) @\(sequence(raw)) \(type)"
    }
}

struct Manifest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest", abstract: "Inspect the manifest.", subcommands: [Dump.self])

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print every version edit of a manifest: the live one of a database directory, or a MANIFEST file.")
        @Argument(help: "Database directory or MANIFEST file (with --cluster: DATABASE or DATABASE/NAME on the storage node).")
        var path: String
        @Option(help: "Read the manifest from the storage node of the cluster running in this run directory.") var cluster: String?

        func run() throws {
            try reporting {
                let fs = try inspectedFileSystem(cluster)
                let manifestPath: String
                if try fs.exists(joinPath(path, "CURRENT")) {
                    var name = String(decoding: try fs.readAll(joinPath(path, "CURRENT")), as: UTF8.self)
                    if name.hasSuffix("\n") { name.removeLast() }
                    manifestPath = joinPath(path, name)
                } else if (try? fs.children(of: path)) != nil {
                    throw MoraineError(.notFound, "\(path) is a directory without CURRENT; name a MANIFEST file in it")
                } else {
                    manifestPath = path
                }
                print("manifest: \(manifestPath)")
                let reader = try LogReader(file: try fs.openRandomAccess(manifestPath), name: manifestPath, strictTail: true)
                var index = 0
                while let record = try reader.nextRecord() {
                    let edit = try VersionEdit.decode(record, origin: manifestPath)
                    print("edit \(index): " + describe(edit))
                    index += 1
                }
                if reader.droppedTailBytes > 0 { print("(dropped \(reader.droppedTailBytes) bytes of torn tail)") }
            }
        }

        func describe(_ edit: VersionEdit) -> String {
            var parts: [String] = []
            if let n = edit.logNumber { parts.append("log=\(n)") }
            if let n = edit.nextFileNumber { parts.append("next_file=\(n)") }
            if let n = edit.lastSequence { parts.append("last_seq=\(n)") }
            for (level, key) in edit.compactPointers { parts.append("pointer L\(level)=\(describeInternal(key))") }
            for (level, n) in edit.deletedFiles { parts.append("-L\(level) #\(n)") }
            for (level, f) in edit.newFiles {
                parts.append(
                    "+L\(level) #\(f.number) \(f.sizeBytes)B [\(describeInternal(f.smallest)) … \(describeInternal(f.largest))]")
            }
            return parts.joined(separator: "; ")
        }
    }
}

struct WAL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal", abstract: "Inspect write-ahead logs.", subcommands: [Dump.self])

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a WAL's records: each batch's sequence numbers and operations; damaged records are named.")
        @Argument(help: "Path of a .log file (with --cluster: DATABASE/NAME on the storage node).") var file: String
        @Option(help: "Most records to print (-1 for all).") var limit = -1
        @Option(help: "Read the log from the storage node of the cluster running in this run directory.") var cluster: String?

        func validate() throws {
            if limit < -1 { throw ValidationError("--limit must be -1 (all) or more, not \(limit)") }
        }

        func run() throws {
            try reporting {
                let reader = try LogReader(
                    file: try inspectedFileSystem(cluster).openRandomAccess(file), name: file, mode: .skip)
                print("wal: \(file)")
                var index = 0
                var damaged = 0
                while limit < 0 || index < limit {
                    let skippedBefore = reader.skippedBytes
                    guard let record = try reader.nextRecord() else { break }
                    if reader.skippedBytes > skippedBefore {
                        print("(damaged: skipped \(reader.skippedBytes - skippedBefore) bytes before record \(index))")
                        damaged += 1
                    }
                    print("record \(index): " + describe(record))
                    index += 1
                }
                if reader.droppedTailBytes > 0 { print("(dropped \(reader.droppedTailBytes) bytes of torn tail)") }
                print("\(index) record(s), \(damaged) damaged stretch(es) skipped")
            }
        }

        func describe(_ record: [UInt8]) -> String {
            if let predecessor = WALPredecessor(decoding: record) {
                return "follows WAL \(predecessor.logNumber) (\(predecessor.length) bytes, up to sequence \(predecessor.lastSequence))"
            }
            do {
                let batch = try WriteBatch(decoding: record, origin: file)
                var operations: [String] = []
                try batch.forEach(origin: file) { type, key, value in
                    let k = TokenCodec.encode(Array(key))
                    operations.append(type == .value ? "put \(k) \(TokenCodec.encode(Array(value)))" : "del \(k)")
                }
                let last = batch.sequence + UInt64(max(batch.count, 1)) - 1
                return "batch @\(batch.sequence)…\(last), \(batch.count) op(s): " + operations.joined(separator: "; ")
            } catch {
                return "damaged batch of \(record.count) bytes: \(error)"
            }
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif

func monotonicSeconds() -> Double { Double(monotonicNanos()) / 1e9 }

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }

    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}
