// Opening an existing database: replay the manifest (VersionSet.recover), check that every
// table it names exists, replay the logs from the manifest's log number on (WAL files and, in
// `pmem` durability, the persistent logs of the region's arenas, in log-number order) into
// memtables, flush what was replayed to L0, start a new manifest, then deal with the files the
// recovered state does not name (`planCleanup`), free arenas nothing references, and start a
// new log. A read-only open stops after the replay, keeping the memtables in memory.
//
// Files the recovered state does not name are deleted only when it proves them obsolete, and set
// aside in `lost/` when it cannot; a table that holds writes the recovered state lacks fails the
// open (docs/ARCHITECTURE.md, "What an open deletes", has the table of rules).
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    func recover() throws {
        try versions.recover()
        // The memory node's arenas are adopted before the directory is listed: from then on an
        // earlier owner still running is fenced there, so it cannot add a log (a write log kept
        // by request is a file of the listing) that the listing would miss.
        let attachedTables = try attachRegionMemtables()
        let names = try fileSystem.children(of: path)
        var logs: [UInt64] = []
        for name in names {
            if case .log(let n) = DatabaseFile(name: name), n >= versions.logNumber { logs.append(n) }
        }
        let listings = try listTableDirectories(databaseNames: names)
        try checkTierMarkers(listings)
        for listing in listings {
            for name in listing.names {
                // A file numbered past the manifest's next file number (an unfinished job's
                // output) must not be overwritten by a file this open writes: its fate is
                // decided below.
                switch DatabaseFile(name: name) {
                case .table(let n), .log(let n), .manifest(let n), .temporary(let n), .options(let n): versions.markFileNumberUsed(n)
                default: break
                }
            }
        }
        let relocations = try locateTables(listings)
        var sources: [(number: UInt64, arena: PmemArena?, attached: MemTable?)] = logs.map { ($0, nil, nil) }
        let replayRegion = pmemRegion ?? leftoverRegion
        for arena in replayRegion?.allocatedArenas() ?? [] where arena.tag >= versions.logNumber {
            sources.append((arena.tag, arena, nil))
        }
        for table in attachedTables { sources.append((table.logNumber, nil, table)) }
        sources.sort { $0.number < $1.number }
        // Memtables re-attached from a memory node's region stay as they are (immutable, flushed
        // in the background) unless logs must be replayed too: then everything goes to L0 in
        // log order, as the replayed logs do.
        let attached = sources.compactMap(\.attached)
        let keepAttached = !attached.isEmpty && attached.count == sources.count
        let attachedReach = attached.map(\.committedSequence).max() ?? 0
        if let newest = sources.last { versions.markFileNumberUsed(newest.number) }
        var replay = Replay(engine: self)
        // The WAL replayed last and how far its whole records reach, for the next WAL's
        // predecessor check.
        var previousWAL: (number: UInt64, validLength: UInt64)? = nil
        // WALs after a broken chain: not replayed, and never deleted by an open.
        var unreplayedLogs = Set<UInt64>()
        replaying: for (position, source) in sources.enumerated() {
            if let table = source.attached {
                event("recovery: memtable of log \(table.logNumber) re-attached from the memory node (\(table.entryCount) entries)")
                if options.readOnly {
                    replay.keep(table)
                } else if !keepAttached {
                    try replay.flushAttached(table)
                }
                previousWAL = nil
            } else if let arena = source.arena, let replayRegion {
                let origin = "\(replayRegion.path) arena \(arena.index) (log \(arena.tag))"
                var reader = try PmemLogReader(region: replayRegion, arena: arena)
                var records = 0
                while let record = try reader.nextRecord() {
                    try replay.apply(Array(record), origin: origin)
                    records += 1
                }
                event("recovery: replayed \(origin): \(records) records")
                previousWAL = nil
            } else {
                let logPath = path(.log(source.number))
                let reader = try LogReader(
                    file: try fileSystem.openRandomAccess(logPath), name: logPath, mode: options.walRecoveryMode)
                var first = true
                var records = 0
                while let record = try reader.nextRecord() {
                    defer { first = false }
                    if first, let predecessor = WALPredecessor(decoding: record) {
                        if let gap = walGap(before: logPath, predecessor: predecessor, previous: previousWAL) {
                            // Power loss kept this WAL but not the end of an older one: its
                            // writes came after ones that are gone. None was synced (a sync
                            // write syncs older WALs first), so replaying up to here leaves a
                            // consistent prefix of the writes. This WAL and later ones are set
                            // aside, not deleted.
                            SystemLog.info("\(gap); replay stops there")
                            event("recovery: \(gap); replay stops there, this log and later ones set aside")
                            unreplayedLogs = Set(sources[position...].filter { $0.arena == nil }.map(\.number))
                            break replaying
                        }
                        continue
                    }
                    try replay.apply(record, origin: logPath)
                    records += 1
                }
                // A log holding nothing (made, then its first record never written: a crash, or a
                // memory node's arena whose making failed half-way) is no link in the chain: the
                // next log names the one before it.
                if reader.validEndOffset > 0 { previousWAL = (source.number, UInt64(reader.validEndOffset)) }
                var damage: [String] = []
                if reader.droppedTailBytes > 0 { damage.append("dropped a torn tail of \(reader.droppedTailBytes) bytes (a write cut short)") }
                if reader.skippedBytes > 0 { damage.append("skipped \(reader.skippedBytes) damaged bytes (wal_recovery_mode skip)") }
                event("recovery: replayed \(logPath): \(records) records" + (damage.isEmpty ? "" : "; " + damage.joined(separator: "; ")))
            }
        }
        var edit = try replay.finish()
        // The tables this replay wrote: a refused open takes them back (and only them: the
        // relocated ones below are the database's own).
        let replayed = edit.newFiles.map(\.file)
        for (level, file) in relocations {
            edit.deletedFiles.append((level, file.number))
            edit.newFiles.append((level, file))
        }
        // No sequence at or below one a table already holds may be handed out again: a reused
        // sequence would sort a new write below the older entry of its key in an iterator's merge
        // (a get, reading the memtable first, would still see it — the chaos test found the two
        // disagreeing after a compute node's restart). The manifest's last sequence covers
        // every table in the normal order of things; the tables' own largest sequences bound it
        // whatever that order was.
        let tablesReach = versions.current.levels.joined().map(\.info.largestSequence).max() ?? 0
        let recoveredSequence = max(replay.maxSequence, attachedReach, tablesReach)
        lastSequence.store(recoveredSequence, ordering: .releasing)
        allocatedSequence = recoveredSequence
        let cleanup: [CleanupStep]
        do {
            var liveTiers: [UInt64: Int] = [:]
            for file in versions.current.levels.joined() { liveTiers[file.number] = file.info.tier }
            for (_, file) in relocations { liveTiers[file.number] = file.tier }
            cleanup = try planCleanup(
                listings: listings, liveTiers: liveTiers, lastReplayed: max(replay.lastReplayed, attachedReach),
                unreplayedLogs: unreplayedLogs)
        } catch {
            // Refused: take back the tables this replay wrote, so a refused open leaves the
            // directory as it found it.
            for file in replayed { try? fileSystem.remove(tablePath(file)) }
            throw error
        }
        if options.readOnly {
            mutex.withLock {
                if let newest = replay.kept.last { mem = newest }
                imms = Array(replay.kept.dropLast())
                installSuperVersion()
            }
            return
        }

        // The replayed logs are now in tables. The new log's number goes into the manifest
        // first; the log itself is created once the old ones are released (so a region never
        // needs a spare arena at open). A crash in between leaves nothing to replay.
        let logNumber = versions.newFileNumber()
        logFileNumber = logNumber
        mem = try makeMemTable(number: logNumber, neededBytes: 0)
        // Re-attached memtables are live until flushed: the log number stays at the oldest.
        edit.logNumber = keepAttached ? attached[0].logNumber : logNumber
        if keepAttached {
            imms = attached
            counters.update { $0.reattachedMemtables = attached.count }
            SystemLog.info(
                "\(path): re-attached \(attached.count) memtable\(attached.count == 1 ? "" : "s") "
                    + "(\(attached.map(\.entryCount).reduce(0, +)) entries, up to sequence \(attachedReach)) from the memory node's region")
        }
        // The jobs the last owner had in flight are over: their outputs go with the cleanup.
        edit.releasedReservations = versions.pendingReservations.keys.sorted()
        // Start a new manifest on every open: the old one may end in a torn record.
        versions.close()
        try install(edit)
        try carryOut(cleanup)
        (pmemRegion ?? leftoverRegion).map { releaseObsoleteArenas(in: $0) }
        releaseObsoleteRegionArenas()
        if regionMemtables == nil { log = try makeCommitLog(number: logNumber) }
        mutex.withLock { installSuperVersion() }
    }

    /// Takes over the arenas the database's earlier owners left at the memory node (fencing
    /// them) and re-attaches the memtables of those the manifest still needs; the others are
    /// given back. Nothing when no memory node holds the memtables, or for a read-only open.
    private func attachRegionMemtables() throws -> [MemTable] {
        guard let provider = options.memtableRegion else { return [] }
        var tables: [MemTable] = []
        let path = path
        if options.readOnly {
            // Not ours: a private copy of what the owner has committed, taken without fencing it.
            for grant in try provider.list(database: path) where grant.logNumber >= versions.logNumber {
                let name = "\(provider.description) arena \(grant.index) (log \(grant.logNumber))"
                tables.append(try MemTable.copyCommitted(grant.arena, logNumber: grant.logNumber, name: name))
            }
            return tables
        }
        var live: [MemtableArenaGrant] = []
        for grant in try provider.adopt(database: path) {
            heldArenas[grant.logNumber] = grant
            guard grant.logNumber >= versions.logNumber else { continue }  // flushed; given back below
            live.append(grant)
            versions.markFileNumberUsed(grant.logNumber)
        }
        // Each arena's check walks its whole skiplist: one thread per arena, as many as the
        // background jobs may use.
        let description = provider.description
        let grants = live
        tables = try parallelMap(grants.count, threads: options.maxBackgroundJobs) { i in
            let grant = grants[i]
            return try MemTable.attach(grant.arena, logNumber: grant.logNumber, name: "\(description) arena \(grant.index) (log \(grant.logNumber))")
        }
        return tables
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
        /// The last sequence number a replayed batch used (0: none replayed).
        var lastReplayed: SequenceNumber = 0
        /// Full memtables kept instead of flushed (read-only opens), oldest first.
        var kept: [MemTable] = []

        init(engine: Engine) {
            self.engine = engine
            self.maxSequence = engine.versions.recordedLastSequence
            self.table = Self.freshTable(engine, extraBytes: 0)
        }

        /// A memtable for replayed writes, shaped by the engine's options.
        static func freshTable(_ engine: Engine, extraBytes: Int) -> MemTable {
            MemTable(
                capacityBytes: engine.options.writeBufferSize + extraBytes + (1 << 20), logNumber: 0,
                hashIndex: engine.options.memtableHashIndex, hugePages: engine.options.memtableHugePages)
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
                try retire(table)
                table = Self.freshTable(engine, extraBytes: needed)
            }
            var seq = batch.sequence
            try batch.forEach(origin: origin) { type, key, value in
                table.add(sequence: seq, type: type, key: key, value: value)
                seq += 1
            }
            maxSequence = max(maxSequence, seq - 1)
        }

        /// Keeps a re-attached memtable in its turn among the logs (a read-only open).
        mutating func keep(_ attached: MemTable) {
            if !table.isEmpty { kept.append(table) }
            table = Self.freshTable(engine, extraBytes: 0)
            if !attached.isEmpty { kept.append(attached) }
            maxSequence = max(maxSequence, attached.committedSequence)
            lastReplayed = max(lastReplayed, attached.committedSequence)
        }

        /// Writes a re-attached memtable to L0 in its turn among the logs.
        mutating func flushAttached(_ attached: MemTable) throws {
            try retire(table)
            table = Self.freshTable(engine, extraBytes: 0)
            if let info = try engine.flushReplayed(attached) { edit.newFiles.append((0, info)) }
            maxSequence = max(maxSequence, attached.committedSequence)
            lastReplayed = max(lastReplayed, attached.committedSequence)
        }

        mutating func finish() throws -> VersionEdit {
            try retire(table)
            return edit
        }

        /// Flushes a full memtable to L0, or keeps it when nothing may be written.
        private mutating func retire(_ full: MemTable) throws {
            if engine.options.readOnly {
                if !full.isEmpty { kept.append(full) }
            } else if let info = try engine.flushReplayed(full) {
                edit.newFiles.append((0, info))
            }
        }
    }

    /// Writes a memtable replayed from the WAL to an L0 table.
    func flushReplayed(_ table: MemTable) throws -> TableFileInfo? {
        if table.isEmpty { return nil }
        let tier = tiers.outputTier(level: 0, incomingBytes: UInt64(table.memoryUsageBytes))
        let job = FlushJob(
            source: table.makeIterator(), fileNumber: versions.newFileNumber(), directory: tiers.directories[tier], tier: tier,
            fileSystem: fileSystem, tableOptions: options.tableOptions)
        return try job.run()
    }

    /// One directory's names at open: the database directory, or a tier's.
    struct TableListing {
        var directory: String
        /// The tier the directory is (nil: the database directory, not a tier).
        var tier: Int?
        var isDatabaseDirectory: Bool
        var names: [String]
    }

    /// A file's fate under `planCleanup`, and where it is.
    struct CleanupStep {
        var directory: String
        var name: String
        var fate: FileFate
    }

    /// What recovery does with a file the recovered state does not name.
    enum FileFate {
        /// Provably obsolete.
        case delete
        /// Not provably obsolete, but no part of the recovered state: moved to `lost/` with the
        /// reason, for an operator or `moraine repair` to look at.
        case setAside(String)
    }

    /// Decides, before anything is changed, the fate of every file in `names` (the directory's
    /// listing at open) that the recovered manifest does not name; `lastReplayed` is the last
    /// sequence the replayed logs reached (0: none), `unreplayedLogs` the WALs after a broken
    /// chain. Tables the manifest does not name:
    /// - removed by one of the manifest's own edits, or inside a job's unreleased output
    ///   reservation: delete;
    /// - unreadable (torn or damaged): set aside (a crash mid-write leaves these, but no proof);
    /// - every sequence number at or below what the live tables or the replayed logs reach:
    ///   delete (an unfinished flush or compaction, whose data the recovered state holds);
    /// - starting inside the replayed range but reaching past it: set aside (a flush of a WAL
    ///   whose unsynced end a power loss took; those writes were never synced);
    /// - otherwise the table holds writes the recovered state does not: a lost manifest edit.
    ///   The open fails with `.corruption` naming it; `moraine repair` adopts it.
    /// - Throws: that corruption, and I/O errors reading a table.
    func planCleanup(
        listings: [TableListing], liveTiers: [UInt64: Int], lastReplayed: SequenceNumber, unreplayedLogs: Set<UInt64>
    ) throws -> [CleanupStep] {
        let reserved = Array(versions.pendingReservations.values)
        let liveReach = versions.current.levels.joined().map(\.info.largestSequence).max() ?? 0
        let reach = max(liveReach, lastReplayed)
        var plan: [CleanupStep] = []
        var unexplained: [String] = []
        for listing in listings {
            for name in listing.names.sorted() {
                if let fate = try fate(
                    of: name, in: listing, liveTiers: liveTiers, reserved: reserved, reach: reach, lastReplayed: lastReplayed,
                    unreplayedLogs: unreplayedLogs, unexplained: &unexplained)
                {
                    plan.append(CleanupStep(directory: listing.directory, name: name, fate: fate))
                }
            }
        }
        if !unexplained.isEmpty {
            throw MoraineError(
                .corruption,
                "\(unexplained.joined(separator: ", ")) named by no manifest, with writes newer than the recovered state "
                    + "reaches (sequence \(reach)): a manifest edit was lost. Nothing was changed; run "
                    + "`moraine repair --db \(path)` to adopt the table\(unexplained.count == 1 ? "" : "s")")
        }
        return plan
    }

    /// The fate of one file of `listing` under `planCleanup`'s rules; nil: it stays. A table
    /// holding writes the recovered state lacks is added to `unexplained`.
    private func fate(
        of name: String, in listing: TableListing, liveTiers: [UInt64: Int], reserved: [Range<UInt64>], reach: SequenceNumber,
        lastReplayed: SequenceNumber, unreplayedLogs: Set<UInt64>, unexplained: inout [String]
    ) throws -> FileFate? {
        let file = DatabaseFile(name: name)
        if case .table(let n) = file, let liveTier = liveTiers[n] {
            // Live on another tier: the copy a move left behind (its manifest edit made the
            // other copy the table, or never happened and this one is a partial copy).
            // (Outside the tiers, in the database directory, a copy is left alone.)
            return listing.tier != nil && liveTier != listing.tier ? .delete : nil
        }
        // On a tier that is not the database directory, only tables and a move's temporary
        // copies are the engine's to judge.
        switch file {
        case .table?, .temporary?: break
        default: if !listing.isDatabaseDirectory { return nil }
        }
        switch file {
        case .table(let n):
            // An output of a job in flight when the last owner stopped (its reservation is in
            // the manifest): never installed, and it holds nothing its inputs do not.
            if versions.recoveredDeletedTables.contains(n) || reserved.contains(where: { $0.contains(n) }) { return .delete }
            let tablePath = joinPath(listing.directory, name)
            let properties: TableProperties
            do {
                properties = try TableReader(file: try fileSystem.openRandomAccess(tablePath), name: tablePath, cache: nil).properties
            } catch let error as MoraineError where error.kind == .corruption {
                return .setAside("unreadable and named by no manifest (\(error.message))")
            }
            if properties.largestSequence <= reach { return .delete }
            if lastReplayed > 0 && properties.smallestSequence <= lastReplayed {
                return .setAside(
                    "holds sequences \(properties.smallestSequence)...\(properties.largestSequence), past the "
                        + "replayed logs' end at \(lastReplayed) (writes never synced before a power loss)")
            }
            unexplained.append("\(tablePath) (sequences \(properties.smallestSequence)...\(properties.largestSequence))")
            return nil
        case .log(let n) where unreplayedLogs.contains(n):
            return .setAside("follows a gap in the WAL chain; not replayed")
        case .log(let n) where n != logFileNumber:
            return .delete  // older than the manifest's log number, or replayed
        case .manifest(let n) where n != versions.currentManifestNumber:
            return .delete
        case .temporary:
            return .delete
        default:
            return nil
        }
    }

    /// Carries out a plan of `planCleanup`: sets files aside in `lost/` of their own directory
    /// (logging each), then deletes the obsolete ones.
    func carryOut(_ plan: [CleanupStep]) throws {
        for directory in Set(plan.map(\.directory)).sorted() {
            let asides = plan.compactMap { step -> (String, String)? in
                if step.directory == directory, case .setAside(let why) = step.fate { return (step.name, why) } else { return nil }
            }
            if asides.isEmpty { continue }
            let lost = joinPath(directory, DatabaseDirectory.lostDirectoryName)
            try fileSystem.createDirectory(lost)
            for (name, why) in asides {
                let source = joinPath(directory, name)
                try fileSystem.rename(source, to: try DatabaseDirectory.lostPath(for: name, in: lost, fileSystem: fileSystem))
                SystemLog.warning("\(source) \(why): moved to \(lost)/")
                event("recovery: \(source) \(why): moved to \(lost)/")
            }
            try fileSystem.syncDirectory(lost)
            try fileSystem.syncDirectory(directory)
        }
        for step in plan {
            if case .delete = step.fate { try? fileSystem.remove(joinPath(step.directory, step.name)) }
        }
    }
}
