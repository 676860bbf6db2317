// Background work: flushes of immutable memtables (oldest first, one at a time) and leveled
// compactions (automatic ones side by side on disjoint tables, up to what the job runner can
// take; a manual one alone). Each runs as a job outside `mutex`, then
// its result is installed through the manifest under `installLock`. A failed job sets the
// sticky background error: writes stop with that error, reads go on.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    func startBackgroundThreads() {
        mutex.lock()
        backgroundThreads = options.maxBackgroundJobs
        mutex.unlock()
        for i in 0..<options.maxBackgroundJobs {
            startThread(name: "moraine-bg\(i)") { [self] in backgroundLoop() }
        }
    }

    private func backgroundLoop() {
        mutex.lock()
        while !shuttingDown {
            if backgroundPauses > 0 {
                mutex.wait()
                continue
            }
            if backgroundError == nil, !flushRunning, let imm = imms.first {
                flushRunning = true
                runFlush(imm)
                flushRunning = false
                mutex.broadcast()
                purgeWithoutMutex()
                continue
            }
            if backgroundError == nil, !manualCompaction, !options.disableAutoCompactions,
                runningCompactions.count < compactionLimit,
                let spec = CompactionPicker.pick(
                    version: versions.current, options: options, pointers: versions.compactPointers, running: runningCompactions)
            {
                runningCompactions.add(spec)
                runCompaction(spec)
                runningCompactions.remove(spec)
                mutex.broadcast()
                purgeWithoutMutex()
                continue
            }
            if backgroundPauses == 0, runTierMoveIfDue() {
                mutex.broadcast()
                purgeWithoutMutex()
                continue
            }
            mutex.wait()
        }
        backgroundThreads -= 1
        mutex.broadcast()
        mutex.unlock()
    }

    /// Waits until no flush or compaction runs or is due (RocksDB's WaitForCompact): every
    /// immutable memtable flushed, no compaction running, and the picker finding nothing to do.
    /// Returns false when `timeoutNanos` passed first, or background work is paused, failed or
    /// shutting down (it would never become idle by itself then).
    public func waitForBackgroundIdle(timeoutNanos: Int64) -> Bool {
        let deadline = monotonicNanos() + timeoutNanos
        mutex.lock()
        defer { mutex.unlock() }
        while true {
            if backgroundError != nil || backgroundPauses > 0 || shuttingDown { return false }
            let due =
                !options.disableAutoCompactions
                && CompactionPicker.pick(
                    version: versions.current, options: options, pointers: versions.compactPointers, running: runningCompactions) != nil
            let moveDue =
                tiers.isTiered && runningCompactions.moving == nil && monotonicNanos() >= tierMoveNotBeforeNanos
                && tiers.pickMove(in: versions.current, held: runningCompactions.files) != nil
            if !flushRunning && imms.isEmpty && !compactionRunning && !due && !moveDue { return true }
            let left = deadline - monotonicNanos()
            if left <= 0 { return false }
            mutex.wait(seconds: min(Double(left) / 1e9, 0.05))
        }
    }

    /// How many automatic compactions may run at once: as many as the job runner can take
    /// (one, in this process), leaving a background thread free for flushes.
    var compactionLimit: Int {
        max(1, min(options.jobRunner.parallelism, options.maxBackgroundJobs - 1))
    }

    /// Stops starting flushes and compactions, and waits for running ones to finish (RocksDB's
    /// PauseBackgroundWork). Writes go on until the memtables fill, then wait. Calls nest: each
    /// needs a `continueBackgroundWork`.
    public func pauseBackgroundWork() {
        mutex.lock()
        backgroundPauses += 1
        while flushRunning || compactionRunning { mutex.wait(seconds: 0.1) }
        mutex.unlock()
    }

    /// Undoes one `pauseBackgroundWork`.
    public func continueBackgroundWork() {
        mutex.lock()
        backgroundPauses = max(0, backgroundPauses - 1)
        mutex.broadcast()
        mutex.unlock()
    }

    private func purgeWithoutMutex() {
        mutex.unlock()
        purgeObsoleteFiles()
        mutex.lock()
    }

    /// Flushes the oldest immutable memtable through the job runner. Precondition: `mutex`
    /// held; released meanwhile.
    private func runFlush(_ imm: MemTable) {
        // After this flush, the oldest memtable still unflushed decides which WALs are needed.
        let nextLog = imms.count > 1 ? imms[1].logNumber : mem.logNumber
        // A memtable in a memory node's region: a worker on the same box may read it there.
        let arena = imm.isInRegion ? heldArenas[imm.logNumber] : nil
        mutex.unlock()
        let started = monotonicNanos()
        defer {
            let micros = Int((monotonicNanos() - started) / 1000)
            counters.update { $0.flushMicros += micros }
        }
        var failure: MoraineError? = nil
        do {
            let (spec, result, reserved) = try runFlushJob(imm, arena: arena)
            var edit = VersionEdit()
            edit.logNumber = nextLog
            if reserved { edit.releasedReservations = [spec.outputNumber] }
            if let info = result.output {
                edit.newFiles.append((0, info))
                counters.update {
                    $0.flushes += 1
                    $0.flushBytesWritten += Int(info.sizeBytes)
                }
            }
            try install(edit)
            let output = result.output.map { "L0 #\($0.number) (\(EventLog.bytes($0.sizeBytes)))" } ?? "nothing (every entry deleted)"
            event(
                "flush: memtable of log \(imm.logNumber) (\(imm.entryCount) entries, \(EventLog.bytes(imm.memoryUsageBytes))) -> \(output) "
                    + "in \((monotonicNanos() - started) / 1_000_000) ms" + (arena != nil ? ", read from the memory node's region" : ""))
        } catch {
            failure = asMoraineError(error)
        }
        // The memtable's keys now have the tables' answer; it leaves the read path only after
        // the row cache forgets what the tables answered before.
        if failure == nil { invalidateRowCache(imm) }
        mutex.lock()
        if let failure {
            recordBackgroundError(failure, "flush")
            return
        }
        imms.removeFirst()
        installSuperVersion()
        deleteObsoleteLogs()
    }

    /// Drops the row cache's entries for every key of `memtable`, which is being flushed
    /// (RowCache.swift): the epoch first, then each key once (the walk meets a key's versions one
    /// after another; their bytes stay in the memtable's arena, so the last key needs no copy).
    func invalidateRowCache(_ memtable: MemTable) {
        guard let rowCache else { return }
        rowCache.advanceEpoch()
        let entries = memtable.makeIterator()
        entries.seekToFirst()
        var previous: UnsafeRawBufferPointer? = nil
        while entries.isValid {
            let key = userKey(entries.key)
            if previous.map({ compareBytes($0, key) != 0 }) ?? true {
                rowCache.invalidate(key, hash: rowCache.hash(key))
                previous = key
            }
            entries.next()
        }
    }

    /// Makes `edit` durable and current, with the reservation releases waiting for an edit.
    /// Safe to call without `mutex`.
    func install(_ edit: VersionEdit) throws {
        try installLock.withLock {
            // New tables' directory entries must be durable before the manifest names them.
            for tier in Set(edit.newFiles.map(\.file.tier)).sorted() { try fileSystem.syncDirectory(tiers.directories[tier]) }
            var edit = edit
            let releases = reservations.takeReleases()
            edit.releasedReservations += releases
            let before = versions.manifestCount
            do {
                // The last sequence recorded covers the new tables' entries even if a group
                // that wrote some of them has not published its sequence yet.
                let newest = edit.newFiles.map(\.file.largestSequence).max() ?? 0
                _ = try versions.logAndApply(edit, lastSequence: max(lastSequence.load(ordering: .acquiring), newest))
            } catch {
                reservations.putBack(releases)
                throw error
            }
            if versions.manifestCount != before { counters.update { $0.manifestRolls += 1 } }
        }
    }

    /// Removes WAL files and frees arenas every memtable has flushed past (the manifest edit
    /// saying so is durable). Precondition: `mutex` held (released while a memory node is asked).
    func deleteObsoleteLogs() {
        let keep = versions.logNumber
        while let oldest = retiredLogs.first, oldest.number < keep {
            try? oldest.close()
            retiredLogs.removeFirst()
        }
        pmemRegion.map { releaseObsoleteArenas(in: $0) }
        releaseObsoleteRegionArenas(unlockingMutex: true)
        guard let names = try? fileSystem.children(of: path) else { return }
        for name in names {
            if case .log(let n) = DatabaseFile(name: name), n < keep, n != logFileNumber {
                try? fileSystem.remove(joinPath(path, name))
            }
        }
    }

    /// Runs a picked compaction. Precondition: `mutex` held; released meanwhile.
    func runCompaction(_ spec: CompactionSpec) {
        mutex.unlock()
        let started = monotonicNanos()
        defer {
            let micros = Int((monotonicNanos() - started) / 1000)
            counters.update { $0.compactionMicros += micros }
        }
        var failure: MoraineError? = nil
        do {
            try executeCompaction(spec)
        } catch {
            failure = asMoraineError(error)
        }
        mutex.lock()
        if let failure {
            recordBackgroundError(failure, "compaction")
            return
        }
        installSuperVersion()
    }

    /// Runs a compaction job (or a trivial move) and installs its result. Called without `mutex`.
    func executeCompaction(_ spec: CompactionSpec) throws {
        var edit = VersionEdit()
        for file in spec.inputs { edit.deletedFiles.append((spec.inputLevel, file.number)) }
        for file in spec.outputLevelInputs { edit.deletedFiles.append((spec.outputLevel, file.number)) }
        if let pointer = spec.compactPointer { edit.compactPointers.append((spec.inputLevel, pointer)) }
        if spec.isTrivialMove {
            for file in spec.inputs { edit.newFiles.append((spec.outputLevel, file.info)) }
            try install(edit)
            counters.update { $0.trivialMoves += 1 }
            event("compaction: moved \(spec.inputs.map { "#\($0.number)" }.joined(separator: ",")) from L\(spec.inputLevel) to L\(spec.outputLevel)")
            return
        }
        let (job, result, reserved) = try runJob(for: spec)
        if reserved { edit.releasedReservations = [job.outputFileNumbers.lowerBound] }
        for output in result.outputs { edit.newFiles.append((spec.outputLevel, output)) }
        // If the install fails, the outputs stay: the manifest may already name them. The next
        // open deletes whichever tables no manifest references.
        try install(edit)
        let inputs =
            "L\(spec.inputLevel) " + spec.inputs.map { "#\($0.number)" }.joined(separator: ",")
            + (spec.outputLevelInputs.isEmpty ? "" : " + L\(spec.outputLevel) " + spec.outputLevelInputs.map { "#\($0.number)" }.joined(separator: ","))
        event(
            "compaction: \(inputs) -> L\(spec.outputLevel) \(result.outputs.map { "#\($0.number)" }.joined(separator: ","))"
                + "\(result.outputs.isEmpty ? "(nothing)" : ""): read \(EventLog.bytes(result.bytesRead)), wrote \(EventLog.bytes(result.bytesWritten)), "
                + "dropped \(result.entriesDropped) entries")
        counters.update {
            $0.compactions += 1
            $0.compactionBytesRead += Int(result.bytesRead)
            $0.compactionBytesWritten += Int(result.bytesWritten)
            $0.entriesDropped += Int(result.entriesDropped)
        }
    }

    /// Moves every memtable's contents into tables and, if `wait`, waits until done (else it
    /// only switches the memtable; the flush runs in the background).
    public func flush(wait: Bool = true) throws {
        try checkWritable("flush")
        if wait && mutex.withLock({ backgroundPauses > 0 }) {
            throw MoraineError(.invalid, "flush of \(path) would wait for ever: background work is paused")
        }
        try enqueue(Writer(batch: nil, options: WriteOptions()))
        mutex.lock()
        defer { mutex.unlock() }
        mutex.broadcast()
        if !wait { return }
        while !imms.isEmpty {
            if let backgroundError { throw backgroundError }
            try checkOpen()
            mutex.wait(seconds: 0.1)
        }
        if let backgroundError { throw backgroundError }
    }

    /// Compacts every table overlapping [begin, end] (nil = unbounded) down level by level to
    /// the deepest level holding data, after a flush. Returns when done.
    /// - Parameter bottommost: whether the deepest level is also rewritten in place (see
    ///   `BottommostCompaction`); by default only when that can drop something.
    public func compactRange(
        begin: [UInt8]? = nil, end: [UInt8]? = nil, bottommost: BottommostCompaction = .ifTombstones
    ) throws {
        try checkWritable("compactRange")
        try flush()
        mutex.lock()
        while compactionRunning {
            if let backgroundError {
                mutex.unlock()
                throw backgroundError
            }
            mutex.wait(seconds: 0.1)
        }
        manualCompaction = true
        mutex.unlock()
        defer {
            mutex.lock()
            manualCompaction = false
            mutex.broadcast()
            mutex.unlock()
            purgeObsoleteFiles()
        }
        // Move everything in range down to the deepest level holding data. Then, if asked, rewrite
        // that level in place, so tombstones no snapshot needs are gone. (A level holds one
        // version of a key, so only tombstones can go; and a compaction into the deepest level
        // already drops them. RocksDB's default, kIfHaveCompactionFilter without a filter, never
        // rewrites it; an unconditional rewrite made `compact` cost a whole extra pass.)
        let deepest = max(1, versions.current.deepestNonEmptyLevel ?? 0)
        for level in 0...deepest {
            let version = versions.current
            let spec: CompactionSpec?
            if level < deepest {
                spec = CompactionPicker.manual(version: version, level: level, begin: begin, end: end)
            } else {
                let inputs = version.overlapping(level: level, lower: begin, upper: end)
                let rewrite: Bool
                switch bottommost {
                case .skip: rewrite = false
                case .force: rewrite = true
                case .ifTombstones: rewrite = try inputs.contains { try tableCache.reader($0).properties.deletionCount > 0 }
                }
                spec = rewrite ? CompactionPicker.rewriteInPlace(version: version, level: level, begin: begin, end: end) : nil
            }
            guard let spec else { continue }
            try executeCompaction(spec)
            mutex.lock()
            installSuperVersion()
            mutex.unlock()
            purgeObsoleteFiles()
        }
    }

    /// Flushes every memtable synchronously (close with unlogged writes). Precondition: `mutex`
    /// held and no background threads running.
    func flushAllForClose() throws {
        var pending = imms
        if !mem.isEmpty { pending.append(mem) }
        for (i, table) in pending.enumerated() {
            let number = versions.newFileNumber()
            let tier = tiers.outputTier(level: 0, incomingBytes: UInt64(table.memoryUsageBytes))
            let job = FlushJob(
                source: table.makeIterator(), fileNumber: number, directory: tiers.directories[tier], tier: tier,
                fileSystem: fileSystem, tableOptions: options.tableOptions)
            var edit = VersionEdit()
            if let info = try job.run() { edit.newFiles.append((0, info)) }
            // The last edit moves the log number past the current WAL: everything in it is now in
            // tables, and naming it live would make the next open replay it into a second table
            // with the same sequence range.
            edit.logNumber = i + 1 < pending.count ? pending[i + 1].logNumber : versions.newFileNumber()
            try install(edit)
        }
        imms = []
        rowCache?.clear()
        mem = MemTable(capacityBytes: 64 << 10, logNumber: logFileNumber)
        unloggedWrites = false
        installSuperVersion()
    }
}

extension Engine {
    /// Frees the arenas of logs the manifest has moved past (their memtables are in tables and
    /// that manifest edit is durable). Best effort: a failure leaves an arena for the next open.
    func releaseObsoleteArenas(in region: PmemRegion) {
        for arena in region.allocatedArenas() where arena.tag < versions.logNumber && arena.tag != logFileNumber {
            try? region.freeArena(arena)
        }
    }
}

func asMoraineError(_ error: Error) -> MoraineError {
    (error as? MoraineError) ?? MoraineError(.internalError, "\(error)")
}
