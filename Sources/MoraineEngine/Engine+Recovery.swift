// Opening an existing database: replay the manifest (VersionSet.recover), check that every
// table it names exists, replay WAL files from the manifest's log number on into memtables,
// flush what was replayed to L0, start a new WAL and a new manifest, and delete files that
// nothing references (left by crashes mid-flush or mid-compaction).
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
        var maxSequence = versions.recordedLastSequence
        var replayed = MemTable(capacityBytes: options.writeBufferSize + (1 << 20), logNumber: 0)
        var edit = VersionEdit()
        var lastReplayed: SequenceNumber = 0
        for number in logs.sorted() {
            let logPath = path(.log(number))
            let reader = try LogReader(
                file: try fileSystem.openRandomAccess(logPath), name: logPath, mode: options.walRecoveryMode)
            while let record = try reader.nextRecord() {
                let batch = try WriteBatch(decoding: record, origin: logPath)
                guard batch.sequence > lastReplayed, batch.sequence <= maxSequenceNumber - SequenceNumber(batch.count)
                else {
                    throw MoraineError.corruption(
                        "write batch sequence \(batch.sequence) does not follow \(lastReplayed)", file: logPath)
                }
                lastReplayed = batch.sequence + SequenceNumber(batch.count) - 1
                let needed = batch.sizeBytes + batch.count * MemTable.worstCaseBytes(keyCount: 0, valueCount: 0)
                if !replayed.hasRoom(forBytes: needed) || replayed.memoryUsageBytes >= options.writeBufferSize {
                    if let info = try flushReplayed(replayed) { edit.newFiles.append((0, info)) }
                    replayed = MemTable(capacityBytes: options.writeBufferSize + needed + (1 << 20), logNumber: 0)
                }
                var seq = batch.sequence
                try batch.forEach(origin: logPath) { type, key, value in
                    replayed.add(sequence: seq, type: type, key: key, value: value)
                    seq += 1
                }
                maxSequence = max(maxSequence, seq - 1)
            }
        }
        if let info = try flushReplayed(replayed) { edit.newFiles.append((0, info)) }
        lastSequence.store(maxSequence, ordering: .releasing)
        allocatedSequence = maxSequence

        // A fresh WAL; the replayed ones are now in tables.
        let logNumber = versions.newFileNumber()
        let file = try fileSystem.createWritable(path(.log(logNumber)))
        log = LogWriter(file: file)
        logFileNumber = logNumber
        mem = MemTable(capacityBytes: options.writeBufferSize + (1 << 20), logNumber: logNumber)
        edit.logNumber = logNumber
        // Start a new manifest on every open: the old one may end in a torn record.
        versions.close()
        try install(edit)
        mutex.withLock { installSuperVersion() }
        removeUnreferencedFiles()
    }

    /// Writes a memtable replayed from the WAL to an L0 table.
    private func flushReplayed(_ table: MemTable) throws -> TableFileInfo? {
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
    }
}
