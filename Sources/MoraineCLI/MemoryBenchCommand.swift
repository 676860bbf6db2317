// `moraine memory-bench`: how long a database takes to open again with unflushed memtables, when
// they are in a memory node's region (re-attached in place) against when they are in WAL files
// (replayed, then flushed to L0, as every open of a WAL does). The same writes, the same machine,
// one run; medians of several. The writer closes without flushing (the background work paused),
// which leaves exactly what a SIGKILL leaves (the SIGKILL tests prove the data side): WAL files
// in the page cache, or arenas in the region.
import ArgumentParser
import Foundation
import Moraine
import MoraineMemory
import MoraineMessages
import MoraineSystem
import MoraineTransport

struct MemoryBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory-bench",
        abstract: "Reopen with unflushed memtables: re-attached from the memory node's region vs replayed from the WAL.")
    @Option(help: "The run directory of a cluster with a memory node (moraine up).") var cluster: String
    @Option(help: "Where the databases go (local files; removed after each run).") var db = "/tmp/moraine-memory-bench"
    @Option(help: "MiB of writes left unflushed (100-byte values, 16-byte keys).") var megabytes = 128
    @Option(name: .customLong("write_buffer_size"), help: "Memtable size in bytes.") var writeBufferSize = 64 << 20
    @Option(help: "Runs; the medians are reported.") var runs = 3

    func validate() throws {
        guard (1...4096).contains(megabytes) else { throw ValidationError("--megabytes must be 1…4096, not \(megabytes)") }
        guard (1...50).contains(runs) else { throw ValidationError("--runs must be 1…50, not \(runs)") }
        guard (64 << 10...1 << 30).contains(writeBufferSize) else {
            throw ValidationError("--write_buffer_size must be 65536…1073741824, not \(writeBufferSize)")
        }
    }

    func run() throws {
        try reporting {
            let run = RunDirectory(cluster)
            let key = try ClusterKey.load(path: run.keyPath)
            let arenas = MemoryNodeArenas(key: key, epoch: { _ in 0 }) { () throws(TransportError) -> Endpoint in
                try run.endpoint(of: "memory")
            }
            try PosixFileSystem.shared.createDirectory(db)
            let count = megabytes << 20 / 140
            print("memory-bench: \(count) writes of 16+100 bytes (\(megabytes) MiB of memtable), write_buffer_size \(writeBufferSize)")
            // Where the region does not map (another box, or a node serving by request only), the
            // memtables are this process's and their write groups are in logs in the arenas: the
            // reopen replays those logs, read back by request.
            let logs = try arenas.writesInPlace ? nil : MemoryLogFileSystem(base: PosixFileSystem.shared, arenas: arenas, placesNewLogs: true)
            if logs != nil { print("the memory node's region does not map here: \"region\" replays the write logs in its arenas, by request") }
            var walMillis: [Double] = []
            var regionMillis: [Double] = []
            for round in 0..<runs {
                for mode in ["wal", "region"] {
                    let millis = try reopen(mode: mode, arenas: arenas, logs: logs, count: count, seed: UInt64(round + 1))
                    if mode == "wal" { walMillis.append(millis) } else { regionMillis.append(millis) }
                    print("run \(round + 1) \(mode): reopen \(String(format: "%.1f", millis)) ms")
                }
            }
            let wal = median(walMillis)
            let region = median(regionMillis)
            print(
                "median reopen: WAL replay \(String(format: "%.1f", wal)) ms, "
                    + (logs == nil ? "region re-attach" : "replay of the logs by request") + " \(String(format: "%.1f", region)) ms; "
                    + "WAL / region \(String(format: "%.2f", wal / max(region, 0.001)))")
        }
    }

    /// Writes `count` entries with the background work paused, closes, and times the open that
    /// follows; checks a sample of the writes and removes the database.
    private func reopen(mode: String, arenas: MemoryNodeArenas, logs: MemoryLogFileSystem?, count: Int, seed: UInt64) throws -> Double {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = writeBufferSize
        options.maxWriteBufferNumber = 2 + megabytes << 20 / writeBufferSize
        options.disableAutoCompactions = true
        if mode == "region" {
            options.durability = .pmem
            options.memtableRegion = arenas
            if let logs {
                options.durability = .wal
                options.fileSystem = logs
            }
        }
        let path = db + "/" + mode
        try Database.destroy(path: path, options: options)
        var random = SplitMix64(seed: seed)
        var sample: [([UInt8], [UInt8])] = []
        do {
            let database = try Database(path: path, options: options)
            try database.pauseBackgroundWork()
            var batch = WriteBatch()
            for i in 0..<count {
                var keyBytes = [UInt8](repeating: 0, count: 16)
                var value = [UInt8](repeating: 0, count: 100)
                withUnsafeBytes(of: random.next()) { keyBytes.replaceSubrange(0..<8, with: $0) }
                withUnsafeBytes(of: random.next()) { keyBytes.replaceSubrange(8..<16, with: $0) }
                withUnsafeBytes(of: random.next()) { value.replaceSubrange(0..<8, with: $0) }
                batch.put(keyBytes, value)
                if i % 997 == 0 { sample.append((keyBytes, value)) }
                if batch.count == 100 {
                    try database.write(batch)
                    batch = WriteBatch()
                }
            }
            try database.write(batch)
            try database.close()
        }
        let started = monotonicNanos()
        let reopened = try Database(path: path, options: options)
        let millis = Double(monotonicNanos() - started) / 1e6
        for (key, value) in sample where try reopened.get(key) != value {
            throw MoraineError(.corruption, "\(mode): a write read back wrong after the reopen")
        }
        try reopened.close()
        try Database.destroy(path: path, options: options)
        return millis
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }
}
