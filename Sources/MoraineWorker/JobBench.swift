// Where a flush's and a compaction's work goes, measured against a running cluster (`moraine
// job-bench`): the choices for a flush's source and the cost of a compaction on a worker.
//
// Flush, for one memtable of `megabytes` (random 16-byte keys, 100-byte values):
// - insert: building the memtable (what a worker flushing from the WAL would redo);
// - here: the compute node builds and writes the table itself (through the storage node);
// - streamed: the compute node streams the sorted entries to a flush worker that builds it;
// - from the WAL: what a worker would do with the retired WAL segment instead — read it from the
//   storage node, decode its batches, insert them into a memtable, build the table — run in this
//   process, on one thread, as the worker would.
// For each, this thread's CPU time (the compute node's cost where it runs here) and wall time.
//
// Compaction, of two overlapping tables of `megabytes` each into L1: the same job run embedded
// (local files), here through the storage node, and on a compaction worker; MB/s of input read
// and output written over wall time, and this thread's CPU time.
//
// Thread-safety: one caller; everything runs on the calling thread but the workers' own.
import MoraineEngine
import MoraineFormat
import MoraineMemtable
import MoraineStorage
import MoraineSystem

/// Measures flush sources and compaction placement against a cluster.
public struct JobBench {
    /// One measured way of doing a job.
    public struct Row: Sendable {
        public var job: String
        public var way: String
        /// CPU time of the calling thread: the compute node's cost of the way.
        public var threadCPUSeconds: Double
        public var wallSeconds: Double
        /// Bytes moved (a flush: the memtable's entries; a compaction: input read plus output written).
        public var bytes: Int
        public var megabytesPerSecond: Double { Double(bytes) / 1_048_576 / max(wallSeconds, 1e-9) }
    }

    let files: RemoteFileSystem
    let runner: RemoteJobRunner
    let directory: String
    let megabytes: Int
    let scratch: String
    let tableOptions = TableOptions()

    /// A bench writing database `directory` on the storage node behind `files` (it takes the
    /// database's lease), sending jobs through `runner`, with `scratch` a local directory for
    /// the embedded compaction.
    public init(files: RemoteFileSystem, runner: RemoteJobRunner, directory: String, megabytes: Int, scratch: String) {
        self.files = files
        self.runner = runner
        self.directory = directory
        self.megabytes = megabytes
        self.scratch = scratch
    }

    /// Runs every way once, in a fixed order; tables it writes are removed after.
    public func run(seed: UInt64) throws -> [Row] {
        if !(try files.exists(directory)) { try files.createDirectory(directory) }
        let lease = try files.lock(joinPath(directory, "LOCK"))
        defer { try? lease.unlock() }
        var random = SplitMix64(seed: seed)
        let entries = makeEntries(&random)
        var rows: [Row] = []
        var next: UInt64 = 1_000_000
        func number() -> UInt64 {
            next += 1
            return next
        }
        defer { removeTables(from: 1_000_001, through: next + 64) }
        // Flush.
        var memtable: MemTable? = nil
        let insert = try measure("flush", "insert into a memtable", bytes: entries.bytes) {
            memtable = self.makeMemTable(entries, sequenceBase: 1)
        }
        rows.append(insert)
        guard let memtable else { return rows }
        let spec = { FlushJobSpec(jobID: number(), directory: directory, epoch: 0, outputNumber: number(), tableOptions: tableOptions) }
        rows.append(try measure("flush", "here (build and write the table)", bytes: entries.bytes) {
            _ = try LocalJobRunner.flush(spec(), source: memtable.makeIterator(), fileSystem: files)
        })
        let remoteBefore = runner.remoteFlushes
        rows.append(try measure("flush", "streamed to a flush worker", bytes: entries.bytes) {
            _ = try runner.runFlush(spec(), source: memtable.makeIterator(), fileSystem: files)
        })
        if runner.remoteFlushes == remoteBefore { rows[rows.count - 1].way += " (no worker took it: ran here)" }
        let walPath = joinPath(directory, DatabaseFile.log(number()).name)
        try writeWAL(entries, to: walPath)
        rows.append(try measure("flush", "from the WAL (read, decode, insert, build)", bytes: entries.bytes) {
            let replayed = MemTable(capacityBytes: self.capacity(entries), logNumber: 2)
            let reader = try LogReader(file: try files.openRandomAccess(walPath), name: walPath)
            while let record = try reader.nextRecord() {
                let batch = try WriteBatch(decoding: record, origin: walPath)
                var sequence = batch.sequence
                try batch.forEach { type, key, value in
                    replayed.add(sequence: sequence, type: type, key: key, value: value)
                    sequence += 1
                }
            }
            _ = try LocalJobRunner.flush(spec(), source: replayed.makeIterator(), fileSystem: files)
        })
        try? files.remove(walPath)
        // Compaction: two overlapping tables (every key twice) into L1.
        let older = try LocalJobRunner.flush(spec(), source: memtable.makeIterator(), fileSystem: files).output!
        let newer = try LocalJobRunner.flush(
            spec(), source: makeMemTable(entries, sequenceBase: UInt64(entries.count) + 1).makeIterator(), fileSystem: files
        ).output!
        func job(_ files: any FileSystem, _ directory: String) -> CompactionJobSpec {
            let first = number()
            next += 63
            return CompactionJobSpec(
                jobID: number(), directory: directory, epoch: 0,
                inputs: [JobInputTable(level: 0, info: newer), JobInputTable(level: 0, info: older)], outputLevel: 1,
                levelCount: 7, smallestSnapshot: maxSequenceNumber, deeperLevelRanges: [], targetFileSizeBytes: 64 << 20,
                tableOptions: tableOptions, outputFileNumbers: first..<first + 64)
        }
        // Embedded: the same input tables copied to a local directory.
        let local = PosixFileSystem.shared
        local.removeTree(scratch)
        try local.createDirectory(scratch)
        defer { local.removeTree(scratch) }
        for table in [older, newer] {
            let name = DatabaseFile.table(table.number).name
            let target = try local.createNew(joinPath(scratch, name), hint: .bulk)
            let source = try files.openRandomAccess(joinPath(directory, name))
            var offset: UInt64 = 0
            while offset < source.size {
                var piece = [UInt8](repeating: 0, count: Int(min(4 << 20, source.size - offset)))
                try piece.withUnsafeMutableBytes { try source.read(at: offset, into: $0) }
                try target.append(piece)
                offset += UInt64(piece.count)
            }
            try target.sync()
            try target.close()
        }
        var moved = 0
        rows.append(try measure("compaction", "embedded (local files)", bytes: 0) {
            let result = try LocalJobRunner().runCompaction(job(local, self.scratch), fileSystem: local)
            moved = Int(result.bytesRead + result.bytesWritten)
        })
        rows[rows.count - 1].bytes = moved
        rows.append(try measure("compaction", "here, through the storage node", bytes: 0) {
            let result = try LocalJobRunner().runCompaction(job(files, directory), fileSystem: files)
            moved = Int(result.bytesRead + result.bytesWritten)
        })
        rows[rows.count - 1].bytes = moved
        let remoteJobs = runner.remoteJobs
        rows.append(try measure("compaction", "on a compaction worker", bytes: 0) {
            let result = try runner.runCompaction(job(files, directory), fileSystem: files)
            moved = Int(result.bytesRead + result.bytesWritten)
        })
        rows[rows.count - 1].bytes = moved
        if runner.remoteJobs == remoteJobs { rows[rows.count - 1].way += " (no worker took it: ran here)" }
        return rows
    }

    /// Sorted-by-nothing entries: random keys (some repeat), 100-byte values, `megabytes` in all.
    private func makeEntries(_ random: inout SplitMix64) -> (keys: [[UInt8]], values: [[UInt8]], bytes: Int, count: Int) {
        var keys: [[UInt8]] = []
        var values: [[UInt8]] = []
        var bytes = 0
        while bytes < megabytes << 20 {
            let key = Array("key\(String(random.next() % 100_000_000_000, radix: 10))".utf8)
            let value = random.bytes(100)
            bytes += key.count + value.count
            keys.append(key)
            values.append(value)
        }
        return (keys, values, bytes, keys.count)
    }

    private func capacity(_ entries: (keys: [[UInt8]], values: [[UInt8]], bytes: Int, count: Int)) -> Int {
        entries.bytes + entries.count * 64 + (1 << 20)
    }

    private func makeMemTable(_ entries: (keys: [[UInt8]], values: [[UInt8]], bytes: Int, count: Int), sequenceBase: UInt64) -> MemTable {
        let table = MemTable(capacityBytes: capacity(entries), logNumber: 1)
        for i in 0..<entries.count {
            entries.keys[i].withUnsafeBytes { key in
                entries.values[i].withUnsafeBytes { value in
                    table.add(sequence: sequenceBase + UInt64(i), type: .value, key: key, value: value)
                }
            }
        }
        return table
    }

    /// The entries as a WAL: one batch per write, as an unbatched load writes them.
    private func writeWAL(_ entries: (keys: [[UInt8]], values: [[UInt8]], bytes: Int, count: Int), to path: String) throws {
        let file = try files.createNew(path, hint: .log)
        let writer = LogWriter(file: file)
        for i in 0..<entries.count {
            var batch = WriteBatch()
            batch.put(entries.keys[i], entries.values[i])
            batch.sequence = UInt64(i) + 1
            try writer.addRecord(batch.rep)
        }
        try file.sync()
        try file.close()
    }

    private func removeTables(from first: UInt64, through last: UInt64) {
        guard let names = try? files.children(of: directory) else { return }
        for name in names {
            if case .table(let n) = DatabaseFile(name: name), n >= first, n <= last { try? files.remove(joinPath(directory, name)) }
        }
    }

    private func measure(_ job: String, _ way: String, bytes: Int, _ body: () throws -> Void) throws -> Row {
        let cpu = threadCPUNanos()
        let start = monotonicNanos()
        try body()
        return Row(
            job: job, way: way, threadCPUSeconds: Double(threadCPUNanos() - cpu) / 1e9,
            wallSeconds: Double(monotonicNanos() - start) / 1e9, bytes: bytes)
    }
}
