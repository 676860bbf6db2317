// Opening an existing database: replay the manifest (VersionSet.recover), check that every
// table it names exists, replay the logs from the manifest's log number on (WAL files and, in
// `pmem` durability, the persistent logs of the region's arenas, in log-number order) into
// memtables, flush what was replayed to L0, start a new manifest, delete files and free arenas
// that nothing references (left by crashes mid-flush or mid-compaction), then start a new log.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    func recover() throws {
        try versions.recover()
        let names = try fileSystem.children(of: path)
        var present = Set<UInt64>()
        var logs: [UInt64] = []
        for name in names {
            switch DatabaseFile(name: name) {
            case .table(let n): present.insert(n)
            case .log(let n) where n >= versions.logNumber: logs.append(n)
            default: break
            }
        }
        for level in versions.current.levels {
            for file in level where !present.contains(file.number) {
                throw MoraineError(
                    .corruption,
                    "table \(path(.table(file.number))) named by the manifest is missing")
            }
        }
        var sources: [(number: UInt64, arena: PmemArena?)] = logs.map { ($0, nil) }
        let replayRegion = pmemRegion ?? leftoverRegion
        for arena in replayRegion?.allocatedArenas() ?? [] where arena.tag >= versions.logNumber {
            sources.append((arena.tag, arena))
        }
        sources.sort { $0.number < $1.number }
        if let newest = sources.last { versions.markFileNumberUsed(newest.number) }
        var replay = Replay(engine: self)
        // The WAL replayed last and how far its whole records reach, for the next WAL's
        // predecessor check.
        var previousWAL: (number: UInt64, validLength: UInt64)? = nil
        replaying: for source in sources {
            if let arena = source.arena, let replayRegion {
                let origin = "\(replayRegion.path) arena \(arena.index) (log \(arena.tag))"
                var reader = try PmemLogReader(region: replayRegion, arena: arena)
                while let record = try reader.nextRecord() { try replay.apply(Array(record), origin: origin) }
                previousWAL = nil
            } else {
                let logPath = path(.log(source.number))
                let reader = try LogReader(
                    file: try fileSystem.openRandomAccess(logPath), name: logPath, mode: options.walRecoveryMode)
                var first = true
                while let record = try reader.nextRecord() {
                    defer { first = false }
                    if first, let predecessor = WALPredecessor(decoding: record) {
                        if let gap = walGap(before: logPath, predecessor: predecessor, previous: previousWAL) {
                            // Power loss kept this WAL but not the end of an older one: its
                            // writes came after ones that are gone. None was synced (a sync
                            // write syncs older WALs first), so dropping this WAL and every later
                            // one leaves a consistent prefix of the writes.
                            SystemLog.info("\(gap); replay stops there, this log and later ones are dropped")
                            break replaying
                        }
                        continue
                    }
                    try replay.apply(record, origin: logPath)
                }
                previousWAL = (source.number, UInt64(reader.validEndOffset))
            }
        }
        var edit = try replay.finish()
        lastSequence.store(replay.maxSequence, ordering: .releasing)
        allocatedSequence = replay.maxSequence

        // The replayed logs are now in tables. The new log's number goes into the manifest
        // first; the log itself is created once the old ones are released (so a region never
        // needs a spare arena at open). A crash in between leaves nothing to replay.
        let logNumber = versions.newFileNumber()
        logFileNumber = logNumber
        mem = MemTable(capacityBytes: options.writeBufferSize + (1 << 20), logNumber: logNumber, pool: memtableArenas)
        edit.logNumber = logNumber
        // Start a new manifest on every open: the old one may end in a torn record.
        versions.close()
        try install(edit)
        removeUnreferencedFiles()
        log = try makeCommitLog(number: logNumber)
        mutex.withLock { installSuperVersion() }
    }

    /// Why the WAL at `path`, whose first record is `predecessor`, must not be replayed after
    /// `previous` (the WAL replayed just before it, nil if none), or nil if it may. An older WAL
    /// the manifest no longer needs (its memtable was flushed) is no gap.
    func walGap(
        before path: String, predecessor: WALPredecessor, previous: (number: UInt64, validLength: UInt64)?
    ) -> String? {
        if predecessor.logNumber < versions.logNumber { return nil }
        guard let previous, previous.number == predecessor.logNumber else {
            return "\(path) follows WAL \(predecessor.logNumber) (\(predecessor.length) bytes), which is missing"
        }
        if previous.validLength < predecessor.length {
            return "\(path) follows WAL \(predecessor.logNumber), whose whole records end at byte \(previous.validLength) of the "
                + "\(predecessor.length) it held (writes up to sequence \(predecessor.lastSequence))"
        }
        return nil
    }

    /// Replays log records into memtables, flushing each full one to an L0 table.
    struct Replay {
        let engine: Engine
        var maxSequence: SequenceNumber
        var table: MemTable
        var edit = VersionEdit()
        var lastReplayed: SequenceNumber = 0

        init(engine: Engine) {
            self.engine = engine
            self.maxSequence = engine.versions.recordedLastSequence
            self.table = MemTable(capacityBytes: engine.options.writeBufferSize + (1 << 20), logNumber: 0)
        }

        mutating func apply(_ record: [UInt8], origin: String) throws {
            let batch = try WriteBatch(decoding: record, origin: origin)
            guard batch.sequence > lastReplayed, batch.sequence <= maxSequenceNumber - SequenceNumber(batch.count) else {
                throw MoraineError.corruption(
                    "write batch sequence \(batch.sequence) does not follow \(lastReplayed)", file: origin)
            }
            lastReplayed = batch.sequence + SequenceNumber(batch.count) - 1
            let needed = batch.sizeBytes + batch.count * MemTable.worstCaseBytes(keyCount: 0, valueCount: 0)
            if !table.hasRoom(forBytes: needed) || table.memoryUsageBytes >= engine.options.writeBufferSize {
                if let info = try engine.flushReplayed(table) { edit.newFiles.append((0, info)) }
                table = MemTable(capacityBytes: engine.options.writeBufferSize + needed + (1 << 20), logNumber: 0)
            }
            var seq = batch.sequence
            try batch.forEach(origin: origin) { type, key, value in
                table.add(sequence: seq, type: type, key: key, value: value)
                seq += 1
            }
            maxSequence = max(maxSequence, seq - 1)
        }

        mutating func finish() throws -> VersionEdit {
            if let info = try engine.flushReplayed(table) { edit.newFiles.append((0, info)) }
            return edit
        }
    }

    /// Writes a memtable replayed from the WAL to an L0 table.
    func flushReplayed(_ table: MemTable) throws -> TableFileInfo? {
        if table.isEmpty { return nil }
        let job = FlushJob(
            source: table.makeIterator(), fileNumber: versions.newFileNumber(), directory: path,
            fileSystem: fileSystem, tableOptions: options.tableOptions)
        return try job.run()
    }

    /// Deletes tables, WALs, manifests and temporaries that the current state does not use.
    func removeUnreferencedFiles() {
        guard let names = try? fileSystem.children(of: path) else { return }
        let live = versions.liveTableNumbers
        for name in names {
            let remove: Bool
            switch DatabaseFile(name: name) {
            case .table(let n): remove = !live.contains(n)
            case .log(let n): remove = n < versions.logNumber && n != logFileNumber
            case .manifest(let n): remove = n != versions.currentManifestNumber
            case .temporary: remove = true
            default: remove = false
            }
            if remove { try? fileSystem.remove(joinPath(path, name)) }
        }
        (pmemRegion ?? leftoverRegion).map { releaseObsoleteArenas(in: $0) }
    }
}
