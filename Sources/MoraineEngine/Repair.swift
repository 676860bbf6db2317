// Repair (LevelDB's RepairDB, RocksDB's `ldb repair`): rebuilds a database's manifest from the
// files it finds, for when CURRENT or the manifest is lost or damaged, or an open refused a
// table no manifest names. It trusts no manifest. In order:
//   1. every table is read whole (every block's checksum); one that reads cleanly is kept, with
//      its key and sequence ranges taken from its entries; one that does not is moved to lost/.
//      A table that a compaction recorded in a readable manifest replaced (an input whose
//      deletion was pending), whose replacements all read cleanly, is moved to lost/ too:
//      adopting it would bring back keys that compaction dropped with their tombstones;
//   2. every WAL (and the arenas of a persistent-memory region at the database's region path)
//      is replayed into new tables, skipping damaged records (counted); each WAL is then moved
//      to lost/;
//   3. kept tables go to L0, newest first. L0 reads stop at the first table holding a key, which
//      is right only when tables whose key ranges meet have disjoint sequence ranges; tables
//      that break that (a compaction output beside an older flush, or a WAL replayed twice) are
//      merged into new tables, cut at user-key boundaries, until none does;
//   4. a new manifest naming them is written and synced, CURRENT points at it; only then are old
//      manifests and temporaries moved to lost/ and merged inputs deleted (their entries are in
//      the synced merge outputs). A crash part-way leaves the old state plus extra files, and
//      repair can run again.
// Nothing is deleted that is not provably elsewhere. Runs with the database's lock held.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

/// What `Engine.repair` kept, made and moved.
public struct RepairReport: Sendable, CustomStringConvertible {
    /// A table of the repaired database and where it came from.
    public struct Table: Sendable {
        public var info: TableFileInfo
        public var entryCount: Int
        public var origin: String
    }

    /// The tables the new manifest names.
    public var tables: [Table] = []
    /// Files moved to `lost/`, with why.
    public var moved: [(file: String, reason: String)] = []
    /// Log records replayed, and damaged bytes skipped in logs.
    public var logRecordsReplayed = 0
    public var logBytesSkipped = 0
    /// Tables merged because their key and sequence ranges overlapped.
    public var tablesMerged = 0
    /// The new manifest.
    public var manifest = ""

    public var description: String {
        var lines = ["repaired: \(tables.count) table(s) in \(manifest)"]
        for table in tables {
            lines.append(
                "  kept \(DatabaseFile.table(table.info.number).name): \(table.entryCount) entries, sequences "
                    + "\(table.info.smallestSequence)...\(table.info.largestSequence), \(table.origin)")
        }
        lines.append("  replayed \(logRecordsReplayed) log record(s), skipped \(logBytesSkipped) damaged byte(s)")
        if tablesMerged > 0 { lines.append("  merged \(tablesMerged) table(s) whose key and sequence ranges overlapped") }
        for (file, reason) in moved { lines.append("  moved \(file) to lost/: \(reason)") }
        return lines.joined(separator: "\n")
    }
}

extension Engine {
    /// Rebuilds the manifest of the database in `path` from its tables and logs (see the top of
    /// Repair.swift). Open the database normally afterwards.
    /// - Throws: `.notFound` for a missing directory, `.busy` when another process has it open,
    ///   and I/O errors (a file that could not be read because the device failed is not taken
    ///   for a damaged one).
    public static func repair(path: String, options: Options) throws -> RepairReport {
        try options.validate()
        let fs = options.fileSystem
        guard try fs.exists(path) else { throw MoraineError(.notFound, "database directory \(path) does not exist") }
        // Repair rebuilds from one directory's tables; it does not look on other tiers yet, and
        // a manifest rebuilt without them would let the next open delete them. A database that
        // ever had tiers says so with its TIERS file, whatever options this call was given.
        let hasTiers = try fs.exists(joinPath(path, DatabaseFile.tierIdentity.name))
        if !options.tiers.isEmpty || hasTiers {
            throw MoraineError(.invalid, "repair of \(path) refused: the database has storage tiers, which repair does not cover yet")
        }
        let lock = try fs.lock(joinPath(path, DatabaseFile.lock.name))
        defer { lock.unlock() }
        return try Repairer(directory: path, options: options).run()
    }
}

/// The state of one repair run (one thread).
final class Repairer {
    let directory: String
    let options: Options
    let fileSystem: any FileSystem
    var report = RepairReport()
    var nextNumber: UInt64 = 2
    var tables: [RepairReport.Table] = []
    /// Files to move to lost/ once the new manifest is in place, and tables to delete then.
    var toSetAside: [(name: String, reason: String)] = []
    var toDelete: [String] = []

    init(directory: String, options: Options) {
        self.directory = directory
        self.options = options
        self.fileSystem = options.fileSystem
    }

    func path(_ name: String) -> String { joinPath(directory, name) }

    func newNumber() -> UInt64 {
        defer { nextNumber += 1 }
        return nextNumber
    }

    func run() throws -> RepairReport {
        let names = try fileSystem.children(of: directory).sorted()
        var tableNumbers: [UInt64] = []
        var logNumbers: [UInt64] = []
        var oldFiles: [String] = []
        for name in names {
            switch DatabaseFile(name: name) {
            case .table(let n): tableNumbers.append(n); nextNumber = max(nextNumber, n + 1)
            case .log(let n): logNumbers.append(n); nextNumber = max(nextNumber, n + 1)
            case .manifest(let n), .temporary(let n): oldFiles.append(name); nextNumber = max(nextNumber, n + 1)
            case .options(let n): nextNumber = max(nextNumber, n + 1)
            default: break
            }
        }
        let region = try leftoverRegion()
        for arena in region?.allocatedArenas() ?? [] { nextNumber = max(nextNumber, arena.tag + 1) }
        // Tables first: the numbers of the tables made from logs come after every number seen.
        let lost = joinPath(directory, DatabaseDirectory.lostDirectoryName)
        for number in tableNumbers.sorted() { try scanTable(number) }
        setAsideCompactedTables(replacements: manifestReplacements(names))
        for number in logNumbers.sorted() { try replayLog(number) }
        if let region { try replayRegion(region) }
        try resolveConflicts()
        try writeManifest()
        // The new manifest is durable: set aside what it replaced, delete merged inputs.
        for name in oldFiles { toSetAside.append((name, "replaced by \(report.manifest)")) }
        if !toSetAside.isEmpty {
            try fileSystem.createDirectory(lost)
            for (name, reason) in toSetAside {
                try fileSystem.rename(
                    path(name), to: try DatabaseDirectory.lostPath(for: name, in: lost, fileSystem: fileSystem))
                report.moved.append((name, reason))
            }
            try fileSystem.syncDirectory(lost)
        }
        for name in toDelete { try fileSystem.remove(path(name)) }
        try fileSystem.syncDirectory(directory)
        report.tables = tables.sorted { $0.info.number < $1.info.number }
        return report
    }

    /// Reads table `number` whole; keeps it when every block reads cleanly, else sets it aside
    /// at once (so a crash cannot leave it named by a manifest).
    func scanTable(_ number: UInt64) throws {
        let name = DatabaseFile.table(number).name
        do {
            let reader = try TableReader(file: try fileSystem.openRandomAccess(path(name)), name: path(name), cache: nil)
            let iterator = reader.makeIterator(fillCache: false)
            try iterator.seekToFirst()
            guard iterator.isValid else {
                toSetAside.append((name, "holds no entry"))
                return
            }
            var summary = EntrySummary()
            while iterator.isValid {
                summary.add(iterator.key)
                try iterator.next()
            }
            tables.append(
                RepairReport.Table(
                    info: summary.info(number: number, sizeBytes: reader.fileSizeBytes), entryCount: summary.count,
                    origin: "read cleanly"))
        } catch let error as MoraineError where error.kind == .corruption {
            toSetAside.append((name, "cannot be read: \(error.message)"))
        }
    }

    /// For each table a manifest edit removed (and did not add back), the tables that edit
    /// added: read from the manifest CURRENT names, or else the newest one, as far as its
    /// records decode (repair trusts it only for this). Empty when there is none to read.
    func manifestReplacements(_ names: [String]) -> [UInt64: [UInt64]] {
        // Best effort throughout: whatever cannot be read here only means fewer tables are set
        // aside, so every table stays (adopted), which loses nothing.
        var manifest: String? = nil
        if let bytes = try? fileSystem.readAll(path(DatabaseFile.current.name)) {
            let name = String(decoding: bytes.last == 10 ? bytes.dropLast() : bytes[...], as: UTF8.self)
            if case .manifest = DatabaseFile(name: name), names.contains(name) { manifest = name }
        }
        manifest = manifest ?? names.filter { if case .manifest = DatabaseFile(name: $0) { true } else { false } }.last
        guard let manifest,
            let reader = try? LogReader(file: try fileSystem.openRandomAccess(path(manifest)), name: path(manifest), mode: .skip)
        else { return [:] }
        var replacements: [UInt64: [UInt64]] = [:]
        while let record = try? reader.nextRecord() {
            guard let edit = try? VersionEdit.decode(record, origin: path(manifest)) else { continue }
            let added = edit.newFiles.map(\.file.number)
            for (_, number) in edit.deletedFiles where !added.contains(number) { replacements[number] = added }
        }
        return replacements
    }

    /// Sets aside kept tables that a recorded compaction replaced, when every replacement is
    /// accounted for: kept, or itself replaced by tables accounted for.
    func setAsideCompactedTables(replacements: [UInt64: [UInt64]]) {
        let kept = Set(tables.map(\.info.number))
        func accounted(_ number: UInt64, depth: Int) -> Bool {
            if kept.contains(number) { return true }
            guard depth < 64, let next = replacements[number] else { return false }
            return next.allSatisfy { accounted($0, depth: depth + 1) }
        }
        let replaced = Set(
            tables.map(\.info.number).filter { number in
                replacements[number].map { !$0.isEmpty && $0.allSatisfy { accounted($0, depth: 0) } } ?? false
            })
        for number in replaced.sorted() {
            let outputs = replacements[number]!.map { DatabaseFile.table($0).name }.joined(separator: ", ")
            toSetAside.append(
                (DatabaseFile.table(number).name, "a compaction the manifest recorded replaced it with \(outputs)"))
        }
        tables.removeAll { replaced.contains($0.info.number) }
    }

    /// Replays WAL `number` into new tables, skipping damaged records.
    func replayLog(_ number: UInt64) throws {
        let name = DatabaseFile.log(number).name
        let reader = try LogReader(file: try fileSystem.openRandomAccess(path(name)), name: path(name), mode: .skip)
        var sink = ReplaySink(repairer: self, origin: name)
        var records = 0
        while true {
            let record: [UInt8]
            do {
                guard let next = try reader.nextRecord() else { break }
                record = next
            } catch let error as MoraineError where error.kind == .corruption {
                break  // skip mode only throws where nothing after can be found
            }
            if WALPredecessor(decoding: record) != nil { continue }
            if try sink.apply(record, origin: path(name)) { records += 1 }
        }
        try sink.finish()
        report.logRecordsReplayed += records
        report.logBytesSkipped += reader.skippedBytes + reader.droppedTailBytes + sink.skippedBytes
        toSetAside.append((name, records == 0 ? "holds no write" : "its \(records) record(s) are now in tables"))
    }

    /// Replays the logs in the arenas of a persistent-memory region (left as they are: the new
    /// manifest's log number is past their tags, so the next open frees them).
    func replayRegion(_ region: PmemRegion) throws {
        for arena in region.allocatedArenas().sorted(by: { $0.tag < $1.tag }) {
            let origin = "\(region.path) arena \(arena.index) (log \(arena.tag))"
            var reader = try PmemLogReader(region: region, arena: arena)
            var sink = ReplaySink(repairer: self, origin: origin)
            var records = 0
            do {
                while let record = try reader.nextRecord() {
                    if try sink.apply(Array(record), origin: origin) { records += 1 }
                }
            } catch let error as MoraineError where error.kind == .corruption {
                // The arena's log ends in damage: what came before is kept.
            }
            try sink.finish()
            report.logRecordsReplayed += records
        }
    }

    /// The region `pmem` durability would use for this database, when one exists.
    func leftoverRegion() throws -> PmemRegion? {
        let regionPath = options.pmemPath ?? Options.defaultPmemPath(for: directory)
        guard try PosixFileSystem.shared.exists(regionPath) else { return nil }
        return try PmemRegion.open(path: regionPath, layout: options.pmemLayout, formatIfNeeded: false)
    }

    /// Writes the new manifest and points CURRENT at it.
    func writeManifest() throws {
        let versions = VersionSet(directory: directory, options: options, sink: ObsoleteFiles())
        var edit = VersionEdit()
        for table in tables { edit.newFiles.append((0, table.info)) }
        let logNumber = newNumber()
        versions.markFileNumberUsed(nextNumber)
        let lastSequence = tables.map(\.info.largestSequence).max() ?? 0
        try versions.adopt(edit, logNumber: logNumber, lastSequence: lastSequence)
        versions.close()
        report.manifest = DatabaseFile.manifest(versions.currentManifestNumber).name
    }
}

/// Key and sequence ranges of a table's entries, gathered as they are read in order.
struct EntrySummary {
    var count = 0
    var smallest: [UInt8] = []
    var largest: [UInt8] = []
    var smallestSequence: SequenceNumber = maxSequenceNumber
    var largestSequence: SequenceNumber = 0

    mutating func add(_ key: UnsafeRawBufferPointer) {
        if count == 0 { smallest = Array(key) }
        count += 1
        let s = sequence(key)
        smallestSequence = min(smallestSequence, s)
        largestSequence = max(largestSequence, s)
        largest = Array(key)
    }

    func info(number: UInt64, sizeBytes: UInt64) -> TableFileInfo {
        TableFileInfo(
            number: number, sizeBytes: sizeBytes, smallest: smallest, largest: largest,
            smallestSequence: smallestSequence, largestSequence: largestSequence)
    }
}

/// Replays log records into memtables and writes each full one as a table.
struct ReplaySink {
    let repairer: Repairer
    var table: MemTable
    var skippedBytes = 0
    /// The log being replayed, for the report.
    let origin: String

    init(repairer: Repairer, origin: String) {
        self.repairer = repairer
        self.origin = origin
        self.table = MemTable(capacityBytes: repairer.options.writeBufferSize + (1 << 20), logNumber: 0)
    }

    /// Applies one record; false (and its bytes counted as skipped) when it is no valid batch.
    mutating func apply(_ record: [UInt8], origin: String) throws -> Bool {
        guard let batch = try? WriteBatch(decoding: record, origin: origin),
            batch.sequence >= 1, batch.sequence <= maxSequenceNumber - SequenceNumber(batch.count)
        else {
            skippedBytes += record.count
            return false
        }
        let needed = batch.sizeBytes + batch.count * MemTable.worstCaseBytes(keyCount: 0, valueCount: 0)
        if !table.hasRoom(forBytes: needed) || table.memoryUsageBytes >= repairer.options.writeBufferSize {
            try finish()
            table = MemTable(capacityBytes: repairer.options.writeBufferSize + needed + (1 << 20), logNumber: 0)
        }
        // WriteBatch(decoding:) walked every entry: a damaged batch was refused whole above.
        var seq = batch.sequence
        try batch.forEach(origin: origin) { type, key, value in
            table.add(sequence: seq, type: type, key: key, value: value)
            seq += 1
        }
        return true
    }

    /// Writes the memtable as a table, if it holds anything.
    mutating func finish() throws {
        if table.isEmpty { return }
        let number = repairer.newNumber()
        let job = FlushJob(
            source: table.makeIterator(), fileNumber: number, directory: repairer.directory,
            fileSystem: repairer.fileSystem, tableOptions: repairer.options.tableOptions)
        if let info = try job.run() {
            repairer.tables.append(RepairReport.Table(info: info, entryCount: table.entryCount, origin: "made from \(origin)"))
        }
        table = MemTable(capacityBytes: repairer.options.writeBufferSize + (1 << 20), logNumber: 0)
    }
}
