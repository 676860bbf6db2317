// The write path: writers queue under `mutex`; the writer at the head becomes the leader,
// gathers the batches queued behind it into one group, appends one WAL record for all of them
// (syncing when any asked for it), inserts them into the memtable outside the mutex, then
// publishes the new last sequence and wakes the group. Memtable switches happen here, by the
// leader only, so the single-writer rule of the memtable holds.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    /// Largest group a leader assembles.
    static let maxGroupBytes = 1 << 20

    /// A hint, read without locks: whether a write now might wait for more than its group
    /// commit (the last write group had to switch memtables, slow down or stop for compactions,
    /// or met an error). A caller that must not block for long (an event loop) sends its writes
    /// elsewhere while it is true; a write can still meet a stall that begins after the check.
    public var writesMayWait: Bool { lastWriteMadeRoom.load(ordering: .relaxed) }

    /// Applies `batch` atomically.
    /// - Throws: `.invalid` for an oversized key or value or a read-only database, `.closed`
    ///   after close, or the sticky
    ///   background error (an I/O failure) that stopped writes.
    public func write(_ batch: consuming WriteBatch, options writeOptions: WriteOptions = WriteOptions()) throws {
        try validate(batch, writeOptions)
        if batch.isEmpty { return }
        // Consumed, not copied: the leader stamps the sequence into the batch it takes from the
        // writer, and a second reference would make that a copy of the whole batch.
        try enqueue(Writer(batch: consume batch, options: writeOptions))
    }

    /// Applies `batch` atomically without waiting for another thread's group commit: `completion`
    /// runs (with nil, or the error) once the batch is applied or failed. When no other writer
    /// leads, this thread applies it, with whatever queued behind it, before returning; otherwise
    /// the thread leading the group commit applies it and runs `completion`. For a caller that
    /// must not sleep while another thread writes (an event loop, which goes on with its other
    /// connections instead). A slowdown or stop (`writesMayWait`) still blocks whichever thread
    /// leads. `completion` must not block or write to this database.
    ///
    /// With `lead` false, this thread never applies the batch: when no writer leads, the engine's
    /// write helper thread does (for a caller whose log appends are round trips to a storage node,
    /// which must not hold up an event loop even when no one else writes).
    public func write(
        _ batch: consuming WriteBatch, options writeOptions: WriteOptions = WriteOptions(), lead: Bool = true,
        completion: @escaping @Sendable (MoraineError?) -> Void
    ) {
        do {
            try validate(batch, writeOptions)
        } catch {
            completion(asMoraineError(error))
            return
        }
        if batch.isEmpty { return completion(nil) }
        let w = Writer(batch: consume batch, options: writeOptions, completion: completion)
        mutex.lock()
        writers.append(w)
        guard writers.first === w else {
            mutex.unlock()  // a leader (or the write helper) is at work: it applies this one too
            return
        }
        if !lead && !shuttingDown {
            orphanedWriters = true
            startWriteHelperIfNeeded()
            mutex.broadcast()
            mutex.unlock()
            return
        }
        leadGroups()
    }

    /// How long a queued writer watches its `ready` flag before it sleeps on `writerTurn`.
    static let writerSpinNanos: Int64 = 30_000

    /// Waits up to `writerSpinNanos` for `w.ready`, yielding the CPU between looks (RocksDB's
    /// adaptive yield in its write thread). A group commit without a sync takes a few
    /// microseconds; the wake-up from a condition variable on another CPU took 25–46 µs here,
    /// which with two writer threads was most of the second thread's wait.
    private func awaitReady(_ w: Writer) {
        let deadline = monotonicNanos() + Self.writerSpinNanos
        var looks = 0
        while !w.ready.load(ordering: .acquiring) {
            looks += 1
            if looks & 15 == 0 {
                if monotonicNanos() > deadline { return }
                sched_yield()
            }
        }
    }

    /// Groups a thread leads for other writers before handing the rest to the write helper.
    static let groupsLedForOthers = 4

    /// Checks a batch against the limits before it is queued.
    private func validate(_ batch: WriteBatch, _ writeOptions: WriteOptions) throws {
        try checkWritable("write")
        if batch.maxKeyBytes > options.maxKeySize {
            throw MoraineError(.invalid, "key of \(batch.maxKeyBytes) bytes exceeds the limit of \(options.maxKeySize) bytes")
        }
        if batch.maxValueBytes > options.maxValueSize {
            throw MoraineError(
                .invalid, "value of \(batch.maxValueBytes) bytes exceeds the limit of \(options.maxValueSize) bytes")
        }
        if batch.sizeBytes > 1 << 30 {
            throw MoraineError(.invalid, "write batch of \(batch.sizeBytes) bytes exceeds 1 GiB")
        }
        if let pmemRegion, !writeOptions.disableWAL,
            !PmemLogWriter.fits(payloadBytes: batch.sizeBytes, arenaBytes: pmemRegion.layout.arenaBytes)
        {
            throw MoraineError(
                .invalid,
                "write batch of \(batch.sizeBytes) bytes exceeds a persistent-memory arena (\(pmemRegion.layout.arenaBytes) bytes)")
        }
        if !writeOptions.disableWAL, case let capacity = walCapacityBytes.load(ordering: .relaxed), capacity != Int.max,
            batch.sizeBytes > Self.walPayloadMax(capacity: capacity)
        {
            throw MoraineError(.invalid, "write batch of \(batch.sizeBytes) bytes exceeds a write log's capacity (\(capacity) bytes)")
        }
        if let provider = regionMemtables, !writeOptions.disableWAL,
            batch.sizeBytes + batch.count * MemTable.worstCaseBytes(keyCount: 0, valueCount: 0) + (4 << 10)
                > provider.arenaBytes - RegionArenaLayout.headerBytes
        {
            throw MoraineError(
                .invalid, "write batch of \(batch.sizeBytes) bytes exceeds a memtable arena of \(provider.description) (\(provider.arenaBytes) bytes)")
        }
    }

    public func put(_ key: [UInt8], _ value: [UInt8], options: WriteOptions = WriteOptions()) throws {
        var batch = WriteBatch()
        batch.put(key, value)
        try write(consume batch, options: options)
    }

    /// Stores a value given as raw bytes (no intermediate arrays).
    public func put(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, options: WriteOptions = WriteOptions()) throws {
        var batch = WriteBatch(reservingCapacity: key.count + value.count + 11)
        batch.put(key: key, value: value)
        try write(consume batch, options: options)
    }

    public func delete(_ key: [UInt8], options: WriteOptions = WriteOptions()) throws {
        var batch = WriteBatch()
        batch.delete(key)
        try write(consume batch, options: options)
    }

    /// Queues a writer and runs the group if it leads. A writer with no batch forces a memtable
    /// switch (used by `flush`).
    func enqueue(_ w: Writer) throws {
        mutex.lock()
        writers.append(w)
        // A group with a sync waits for an fsync, far longer than the watch: sleep at once.
        if !w.done && writers.first !== w && !w.options.sync && writers.first?.options.sync != true {
            mutex.unlock()
            awaitReady(w)
            mutex.lock()
        }
        while !w.done && writers.first !== w { writerTurn.wait() }
        if w.done {
            mutex.unlock()
            if let error = w.error { throw error }
            return
        }
        leadGroups()
        if let error = w.error { throw error }
    }

    /// Leads the group at the head of the queue, then each next group whose head is an
    /// asynchronous writer (no thread waits to lead it), wakes the waiting writers, and runs the
    /// asynchronous writers' completions once the mutex is released. Precondition: `mutex` held
    /// and the head is this thread's writer or an asynchronous one; returns with it released.
    ///
    /// A thread leads at most `groupsLedForOthers` groups after its own: an event loop that
    /// led every group queued behind it could go on leading while the other loop kept queueing,
    /// and its own connections would wait. The rest goes to the write helper, a thread of the
    /// engine that only leads (`helper`: that thread, which leads until the queue's head is not
    /// asynchronous).
    func leadGroups(helper: Bool = false) {
        var completions: [(@Sendable (MoraineError?) -> Void, MoraineError?)] = []
        var led = 0
        repeat {
            if !helper && led > Self.groupsLedForOthers && !shuttingDown && !closed {
                orphanedWriters = true
                startWriteHelperIfNeeded()
                mutex.broadcast()
                break
            }
            led += 1
            let w = writers.first!
            // The group is the queue's first `groupSize` writers (no array of its own: only the
            // leader removes from the queue, and others only append while it works).
            var groupSize = 1
            var groupError: MoraineError? = nil
            do {
                try checkOpen()
                if let batch = w.batch {
                    var bytes = batch.sizeBytes
                    var limit = bytes <= 128 << 10 ? bytes + (128 << 10) : Self.maxGroupBytes
                    // A log of bounded size (a memory node's arena) takes a group only within it
                    // (each batch alone fits: `write` checks).
                    let capacity = walCapacityBytes.load(ordering: .relaxed)
                    if capacity != Int.max { limit = min(limit, max(bytes, Self.walPayloadMax(capacity: capacity))) }
                    for other in writers.dropFirst() {
                        guard let otherBatch = other.batch,
                            !other.options.sync || w.options.sync,
                            other.options.disableWAL == w.options.disableWAL,
                            bytes + otherBatch.sizeBytes <= limit
                        else { break }
                        groupSize += 1
                        bytes += otherBatch.sizeBytes
                    }
                    try applyGroup(size: groupSize)
                } else {
                    try makeRoomForWrite(neededBytes: 0, force: true)
                }
            } catch let error as MoraineError {
                groupError = error
            } catch {
                groupError = MoraineError(.internalError, "\(error)")
            }
            for member in writers[0..<groupSize] {
                member.done = true
                member.error = groupError
                member.ready.store(true, ordering: .releasing)
                if let completion = member.completion { completions.append((completion, groupError)) }
            }
            writers.removeFirst(groupSize)
        } while writers.first?.completion != nil
        // Only writers wait for this. Work for the background threads (a switched memtable) was
        // announced on `mutex` where it was made.
        writers.first?.ready.store(true, ordering: .releasing)
        writerTurn.broadcast()
        mutex.unlock()
        for (completion, error) in completions { completion(error) }
    }

    /// Starts the write helper unless it runs. Precondition: `mutex` held.
    private func startWriteHelperIfNeeded() {
        guard !writeHelperRunning else { return }
        writeHelperRunning = true
        backgroundThreads += 1  // close waits for it as for the background threads
        startThread(name: "moraine-writes") { [self] in writeHelperLoop() }
    }

    /// The write helper: leads the asynchronous writers a leader left, until the engine closes.
    private func writeHelperLoop() {
        mutex.lock()
        while true {
            if orphanedWriters {
                orphanedWriters = false
                if writers.first?.completion != nil {
                    leadGroups(helper: true)
                    mutex.lock()
                    continue
                }
            }
            if shuttingDown { break }
            mutex.wait()
        }
        writeHelperRunning = false
        backgroundThreads -= 1
        mutex.broadcast()
        mutex.unlock()
    }

    /// Writes the group (the queue's first `size` writers) to the WAL and the memtable.
    /// Precondition: `mutex` held by the leader; released while doing I/O.
    private func applyGroup(size: Int) throws {
        let head = writers[0]
        var combined: WriteBatch
        if size == 1 {
            // Taken, so that stamping the sequence below does not copy it.
            combined = head.batch.take()!
        } else {
            combined = WriteBatch()
            for member in writers[0..<size] { combined.append(member.batch!) }
        }
        let needed = combined.sizeBytes + combined.count * MemTable.worstCaseBytes(keyCount: 0, valueCount: 0)
        try makeRoomForWrite(neededBytes: needed, force: false, recordBytes: head.options.disableWAL ? 0 : combined.sizeBytes)
        let first = allocatedSequence + 1
        combined.sequence = first
        allocatedSequence += SequenceNumber(combined.count)
        let memtable = mem
        let commitLog = log
        let sync = head.options.sync
        let skipWAL = head.options.disableWAL
        if skipWAL { unloggedWrites = true }
        let unsyncedPredecessors = sync && !skipWAL ? retiredLogs : []
        applyingGroup = true
        mutex.unlock()
        var failure: Error? = nil
        var inWAL = false
        do {
            // A sync write must not outlive an earlier write: older WALs become durable first.
            for old in unsyncedPredecessors { try old.syncRetired() }
            if !skipWAL, let commitLog {
                inWAL = true
                try commitLog.append(combined.rep, sync: sync)
            }
            if memtable.isInRegion && memtable.isFenced { throw fencedInRegion() }
            var seq = first
            try combined.forEach { type, key, value in
                memtable.add(sequence: seq, type: type, key: key, value: value)
                seq += 1
            }
            if memtable.isInRegion {
                // The region is the log: the group is durable once committed there, and only
                // acknowledged if no newer owner took the arena meanwhile.
                try memtable.commit(sequence: seq - 1)
                if memtable.isFenced { throw fencedInRegion() }
            }
        } catch {
            failure = error
        }
        mutex.lock()
        applyingGroup = false
        if shuttingDown { mutex.broadcast() }  // close waits for this group
        if let failure {
            // The WAL may now end in a partial record: stop taking writes until reopened, or,
            // when the storage could not be reached, until it answers (Engine+Resume).
            let error = (failure as? MoraineError) ?? MoraineError(.io, "\(failure)")
            if Self.isRetryable(error) && backgroundError == nil {
                pendingGroup = PendingGroup(batch: combined, memtable: memtable, log: commitLog, sync: sync, inWAL: inWAL)
            }
            recordBackgroundError(error, "WAL write")
            throw error
        }
        lastSequence.store(first + SequenceNumber(combined.count) - 1, ordering: .releasing)
        counters.update {
            $0.writeGroups += 1
            $0.writes += size
            if !skipWAL { $0.walBytes += combined.sizeBytes }
            if sync && !skipWAL { $0.walSyncs += 1 }
        }
    }

    /// Ensures the active memtable can take `neededBytes`, switching memtables and applying the
    /// L0 slowdown and stop rules. Precondition: `mutex` held; may wait on it.
    func makeRoomForWrite(neededBytes: Int, force initialForce: Bool, recordBytes: Int = 0) throws {
        // The common case first, before the stall bookkeeping below (whose variables, captured
        // by a nested function and a defer, are boxed and checked at every access).
        if !initialForce && backgroundError == nil && !closed && !shuttingDown
            && versions.current.levels[0].count < options.level0SlowdownWritesTrigger
            && mem.memoryUsageBytes < options.writeBufferSize && mem.hasRoom(forBytes: neededBytes)
            && (log?.hasRoom(forRecordBytes: recordBytes) ?? true)
        {
            if lastWriteMadeRoom.load(ordering: .relaxed) { lastWriteMadeRoom.store(false, ordering: .relaxed) }
            return
        }
        lastWriteMadeRoom.store(true, ordering: .relaxed)
        try makeRoomForWriteWaiting(neededBytes: neededBytes, force: initialForce, recordBytes: recordBytes)
    }

    /// `makeRoomForWrite` when the memtable is full, a switch is forced, writes must slow down
    /// or stop, or an error stands.
    private func makeRoomForWriteWaiting(neededBytes: Int, force initialForce: Bool, recordBytes: Int) throws {
        var force = initialForce
        var allowDelay = !force
        var stalledSince: Int64? = nil
        // Why writes stopped, for the LOG (slowdowns, one per write, are only counted).
        var stopReason: String? = nil
        func stopping(_ reason: String) {
            if stalledSince == nil { stalledSince = monotonicNanos() }
            if stopReason == nil {
                stopReason = reason
                event("write stall: writes wait for \(reason)")
            }
        }
        defer {
            if let stalledSince {
                let micros = Int((monotonicNanos() - stalledSince) / 1000)
                counters.update { $0.stallMicros += micros }
                if stopReason != nil { event("write stall over after \(micros / 1000) ms") }
            }
        }
        while true {
            if let backgroundError {
                guard backgroundErrorRetryable else { throw backgroundError }
                try resumeAfterOutage()
                continue
            }
            try checkOpen()
            let level0Files = versions.current.levels[0].count
            if allowDelay && level0Files >= options.level0SlowdownWritesTrigger {
                // Near the stop limit: delay this write by 1 ms once, to share the disk with
                // compaction instead of stalling hard later.
                counters.update { $0.stallSlowdowns += 1 }
                if stalledSince == nil { stalledSince = monotonicNanos() }
                mutex.unlock()
                sleepMicroseconds(1000)
                mutex.lock()
                allowDelay = false
                continue
            }
            let full =
                mem.memoryUsageBytes >= options.writeBufferSize || !mem.hasRoom(forBytes: neededBytes)
                || !(log?.hasRoom(forRecordBytes: recordBytes) ?? true)
            if !force && !full { return }
            if force && mem.isEmpty { return }
            if mem.isEmpty, let log, !log.hasRoom(forRecordBytes: recordBytes) {
                // A fresh log too small for the group (the check in `write` keeps one batch
                // within it): switching again would not help.
                throw MoraineError(.invalid, "a write group of \(recordBytes) bytes exceeds a write log's capacity")
            }
            if mem.isEmpty && !mem.hasRoom(forBytes: neededBytes) {
                // One batch larger than the arena: give the empty memtable a bigger arena.
                mem = MemTable(
                    capacityBytes: options.writeBufferSize + neededBytes + (1 << 20), logNumber: mem.logNumber,
                    hashIndex: options.memtableHashIndex, hugePages: options.memtableHugePages)
                installSuperVersion()
                return
            }
            if imms.count >= options.maxWriteBufferNumber - 1 {
                counters.update { $0.stallStops += 1 }
                stopping("a flush: \(imms.count) immutable memtables (max_write_buffer_number \(options.maxWriteBufferNumber))")
                mutex.broadcast()
                mutex.wait(seconds: 1)
                continue
            }
            if let pmemRegion, pmemRegion.freeArenaCount == 0 {
                // Every arena holds a memtable that is not flushed yet: wait for a flush.
                counters.update { $0.stallStops += 1 }
                stopping("a flush: every arena of the persistent-memory region holds an unflushed memtable")
                mutex.broadcast()
                mutex.wait(seconds: 1)
                continue
            }
            if level0Files >= options.level0StopWritesTrigger {
                counters.update { $0.stallStops += 1 }
                stopping("compaction: \(level0Files) L0 files (level0_stop_writes_trigger \(options.level0StopWritesTrigger))")
                mutex.broadcast()
                mutex.wait(seconds: 1)
                continue
            }
            do {
                try switchMemtable(neededBytes: neededBytes)
            } catch let error as MoraineError where error.kind == .busy && (regionMemtables != nil || logsInArenas) {
                // Every arena of the memory node holds an unflushed memtable: wait for a flush.
                counters.update { $0.stallStops += 1 }
                stopping("a flush: every arena the memory node grants holds an unflushed memtable")
                mutex.broadcast()
                mutex.wait(seconds: 1)
                continue
            }
            force = false
        }
    }

    /// The largest write group a fresh log of `capacity` bytes takes: its framing adds less than
    /// 1/2048 of a record and 26 bytes, and the predecessor record before it well under 8 KiB.
    static func walPayloadMax(capacity: Int) -> Int { capacity - capacity / 1024 - (8 << 10) }

    /// Whether the WAL's files are bounded logs in a memory node's arenas (CommitLog.walCapacity).
    var logsInArenas: Bool { walCapacityBytes.load(ordering: .relaxed) != Int.max }

    /// The error of a write into an arena another owner has adopted.
    func fencedInRegion() -> MoraineError {
        MoraineError(.fenced, "database \(path): a newer owner adopted this memtable's arena at the memory node; this process stops writing")
    }

    /// A memtable for log `number`: in an arena granted by the memory node when memtables live
    /// there, else in private memory. Precondition: `mutex` held.
    /// - Throws: `busy` when the memory node has no free arena, `unavailable` when it cannot be
    ///   reached.
    func makeMemTable(number: UInt64, neededBytes: Int) throws -> MemTable {
        guard let provider = regionMemtables else {
            return MemTable(
                capacityBytes: options.writeBufferSize + max(neededBytes, 1 << 20), logNumber: number, pool: memtableArenas,
                hashIndex: options.memtableHashIndex, hugePages: options.memtableHugePages)
        }
        let grant = try provider.allocate(database: path, logNumber: number)
        do {
            let table = try MemTable.inRegion(grant.arena, logNumber: number, hashIndex: options.memtableHashIndex)
            heldArenas[number] = grant
            return table
        } catch {
            try? provider.release(database: path, grant)
            throw error
        }
    }

    /// Gives back the region arenas of memtables the manifest has moved past (their flush is
    /// durable). Best effort: one not given back now is tried again later, or by the next open.
    /// Precondition: `mutex` held, or recovery (single-threaded). With `unlockingMutex`, the
    /// requests go out with the mutex released (a stopped memory node must not hold writers for
    /// its timeout); the arenas are taken out of `heldArenas` first, so no one else gives them
    /// back meanwhile, and those not given back are put back.
    func releaseObsoleteRegionArenas(unlockingMutex: Bool = false) {
        guard let provider = options.memtableRegion else { return }
        let obsolete = heldArenas.keys.sorted().filter { $0 < versions.logNumber && $0 != logFileNumber }
        let grants = obsolete.compactMap { heldArenas.removeValue(forKey: $0) }
        guard !grants.isEmpty else { return }
        if unlockingMutex { mutex.unlock() }
        var kept: ArraySlice<MemtableArenaGrant> = []
        for (index, grant) in grants.enumerated() {
            do {
                try provider.release(database: path, grant)
            } catch {
                SystemLog.warning("could not give back \(provider.description) arena \(grant.index) (log \(grant.logNumber)): \(error)")
                kept = grants[index...]
                break
            }
        }
        if unlockingMutex { mutex.lock() }
        for grant in kept { heldArenas[grant.logNumber] = grant }
    }

    /// Starts a new commit log and memtable; the old memtable joins the flush queue.
    /// Precondition: `mutex` held by the write leader.
    func switchMemtable(neededBytes: Int) throws {
        // The old WAL goes to the kernel unsynced (see CommitLog.retire); a later sync write
        // syncs it first, and the new WAL's first record names its length for recovery.
        let predecessor: WALPredecessor?
        do {
            predecessor = try log?.retire(lastSequence: allocatedSequence)
        } catch {
            // The old WAL may now end in a partial record: stop taking writes, as a failed WAL
            // write does (applyGroup). Nothing changed yet, so a resume retries the switch.
            recordBackgroundError(asMoraineError(error), "WAL write")
            throw error
        }
        let number = versions.newFileNumber()
        if regionMemtables != nil {
            // The region is the log: a new arena, no WAL.
            let table = try makeMemTable(number: number, neededBytes: neededBytes)
            logFileNumber = number
            imms.append(mem)
            mem = table
            installSuperVersion()
            mutex.broadcast()
            return
        }
        let fresh: CommitLog
        do {
            fresh = try makeCommitLog(number: number, predecessor: predecessor)
        } catch {
            // The old WAL is retired and the new one could not be written: stop taking writes,
            // as a failed WAL write does (applyGroup), rather than go on in the retired log. A log
            // in a memory node's arena that found every arena held is not a failure: the caller
            // waits for a flush to give one back and switches again (the old log takes nothing
            // meanwhile; its retirement is redone then).
            let busy = (error as? MoraineError)?.kind == .busy && logsInArenas
            if predecessor != nil && !busy { recordBackgroundError(asMoraineError(error), "WAL write") }
            throw error
        }
        if let old = log, predecessor != nil { retiredLogs.append(old) }
        log = fresh
        logFileNumber = number
        imms.append(mem)
        mem = try makeMemTable(number: number, neededBytes: neededBytes)  // private memory here: cannot fail
        installSuperVersion()
        mutex.broadcast()
    }

    /// Creates the log numbered `number`: a WAL file whose directory entry is durable, or a
    /// freshly allocated persistent-memory arena.
    func makeCommitLog(number: UInt64, predecessor: WALPredecessor? = nil) throws -> CommitLog {
        if let pmemRegion {
            guard let arena = try pmemRegion.allocateArena(tag: number) else {
                throw MoraineError(
                    .unavailable,
                    "no free arena in persistent-memory region \(pmemRegion.path) (\(pmemRegion.layout.arenaCount) arenas hold unflushed memtables)")
            }
            return CommitLog(number: number, pmem: PmemLogWriter(region: pmemRegion, arena: arena))
        }
        let file = try fileSystem.createNew(path(.log(number)), hint: .log)
        let writer = LogWriter(file: file)
        walCapacityBytes.store(file.capacity.map { Int(clamping: $0) } ?? Int.max, ordering: .relaxed)
        do {
            try fileSystem.syncDirectory(path)
            if let predecessor {
                try writer.addRecord(predecessor.encoded)
                try file.flush()
            }
        } catch {
            try? file.close()
            try? fileSystem.remove(path(.log(number)))
            throw error
        }
        return CommitLog(number: number, wal: writer)
    }

    /// Deletes log `number` (its WAL file or its arena), best effort.
    func releaseLog(_ number: UInt64) {
        if let pmemRegion, let arena = pmemRegion.allocatedArenas().first(where: { $0.tag == number }) {
            try? pmemRegion.freeArena(arena)
        }
        try? fileSystem.remove(path(.log(number)))
    }
}

#if canImport(Glibc)
    import Glibc
#endif

func sleepMicroseconds(_ micros: Int) {
    usleep(UInt32(micros))
}
