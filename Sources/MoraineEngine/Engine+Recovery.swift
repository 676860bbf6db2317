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
        for source in sources {
            if let arena = source.arena, let replayRegion {
                let origin = "\(replayRegion.path) arena \(arena.index) (log \(arena.tag))"
                var reader = try PmemLogReader(region: replayRegion, arena: arena)
                while let record = try reader.nextRecord() { try replay.apply(Array(record), origin: origin) }
            } else {
                let logPath = path(.log(source.number))
                let reader = try LogReader(
                    file: try fileSystem.openRandomAccess(logPath), name: logPath, mode: options.walRecoveryMode)
                while let record = try reader.nextRecord() { try replay.apply(record, origin: logPath) }
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
        mem = MemTable(capacityBytes: options.writeBufferSize + (1 << 20), logNumber: logNumber)
        edit.logNumber = logNumber
        // Start a new manifest on every open: the old one may end in a torn record.
        versions.close()
        try install(edit)
        removeUnreferencedFiles()
        log = try makeCommitLog(number: logNumber)
        mutex.withLock { installSuperVersion() }
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
