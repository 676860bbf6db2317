// The embedded engine: one database directory, opened by one process at a time.
//
// State and locking:
// - `mutex` guards the writer queue, the active and immutable memtables, the WAL, background
//   scheduling flags, and the sticky background error. Waiting (writer queue, stalls, flush
//   waits) happens on its condition.
// - `installLock` serializes version installs (flush, compaction, recovery), so the manifest is
//   written without holding `mutex`.
// - Readers take no global lock: they grab the current SuperVersion (memtables + Version) from
//   a tiny lock of its own, then read lock-free; the memtable skiplist is safe for concurrent
//   reads beside its single writer.
// - `lastSequence` is published (release) after a write group is in the memtable, so readers
//   never see half a batch.
import MoraineFormat
import MoraineMemtable
import MoraineSystem
import Synchronization

/// What a reader needs: the memtables and the Version, taken together.
final class SuperVersion: Sendable {
    let mem: MemTable
    /// Immutable memtables, newest first.
    let imms: [MemTable]
    let version: Version

    init(mem: MemTable, imms: [MemTable], version: Version) {
        self.mem = mem
        self.imms = imms
        self.version = version
    }
}

/// A waiting writer in the group-commit queue.
final class Writer {
    /// The batch, until a leader applying it alone takes it.
    var batch: WriteBatch?
    let options: WriteOptions
    /// An asynchronous writer's: no thread waits for this writer, and this runs once its group
    /// is applied (or failed), on the thread that led the group.
    let completion: (@Sendable (MoraineError?) -> Void)?
    var done = false
    var error: MoraineError? = nil
    /// Set (after `done`, or once this writer heads the queue) by the thread that made it so: a
    /// waiting writer watches it for a few microseconds before it sleeps on `writerTurn`.
    let ready = Atomic<Bool>(false)
    init(batch: WriteBatch?, options: WriteOptions, completion: (@Sendable (MoraineError?) -> Void)? = nil) {
        self.batch = batch
        self.options = options
        self.completion = completion
    }
}

/// An open database.
public final class Engine: @unchecked Sendable {
    public let path: String
    public let options: Options
    let fileSystem: any FileSystem
    let mutex = ConditionLock()
    /// Where queued writers wait for their turn or their group's completion; only the writer
    /// queue broadcasts it. `mutex`'s own condition is for background progress.
    let writerTurn: LockCondition
    let installLock = ConditionLock()
    let versions: VersionSet
    /// Where tables live: the database directory, or the options' storage tiers.
    let tiers: TierLayout
    let tableCache: TableCache
    let blockCache: BlockCache?
    /// The tables' answers per user key (`Options.rowCacheSize`), or nil.
    let rowCache: RowCache?
    let snapshots = SnapshotList()
    let obsolete = ObsoleteFiles()
    let lastSequence = Atomic<UInt64>(0)
    /// Whether the last write group had to make room (switch memtables, slow down, stop, or an
    /// error stood): `writesMayWait`'s hint.
    let lastWriteMadeRoom = Atomic<Bool>(false)
    /// The most bytes one WAL holds, where its file is bounded (a log in a memory node's arena);
    /// Int.max: unbounded. Set when a WAL is made, read by a write's checks.
    let walCapacityBytes = Atomic<Int>(Int.max)
    /// Numbers the compaction jobs this engine dispatches.
    /// Job ids start at the open's wall-clock time in milliseconds, so a job of this open never
    /// takes the id of one an earlier open of the database left on a worker (a compute node
    /// restarted by its supervisor asked a worker for "job 1" while the worker still held the
    /// last incarnation's job 1: refused, the database went read-only; found by the chaos long
    /// run). Ids of two opens could meet only if the first ran more jobs than milliseconds passed
    /// between the two.
    let nextJobID = Atomic<UInt64>(UInt64(max(1, wallClockNanos() / 1_000_000)))
    /// Job reservations to sweep and release (Engine+Jobs).
    let reservations = ReservationBook()
    private let superVersionLock = Mutex<SuperVersion?>(nil)
    let counters = Counters()
    /// Arenas of flushed memtables, reused by the next ones (already resident).
    let memtableArenas: MemTableArenaPool

    // Guarded by `mutex`. The fields every write touches skip the runtime's exclusivity checks
    // (the mutex already orders every access; the checks and their thread-local lookups were
    // about 670 instructions a put).
    @exclusivity(unchecked) var writers: [Writer] = []
    @exclusivity(unchecked) var mem: MemTable
    @exclusivity(unchecked) var imms: [MemTable] = []  // oldest first
    @exclusivity(unchecked) var log: CommitLog? = nil
    var logFileNumber: UInt64 = 0
    /// Outstanding `pauseBackgroundWork` calls.
    var backgroundPauses = 0
    /// Older WALs, retired unsynced, whose memtables are not flushed yet (oldest first).
    @exclusivity(unchecked) var retiredLogs: [CommitLog] = []
    /// The persistent-memory region of `pmem` durability (nil for `wal`).
    let pmemRegion: PmemRegion?
    /// Where new memtables are made when they live in a memory node's region (`pmem`
    /// durability with `Options.memtableRegion`); nil: private memory.
    var regionMemtables: (any MemtableArenaProvider)? {
        options.durability == .pmem && !options.readOnly ? options.memtableRegion : nil
    }
    /// Region arenas this engine holds, by memtable log number (given back once flushed).
    var heldArenas: [UInt64: MemtableArenaGrant] = [:]
    /// A region left by `pmem` durability, found when opening in `wal` mode: its logs are
    /// replayed and its arenas freed by recovery, then it is dropped.
    var leftoverRegion: PmemRegion? = nil
    /// Sequence numbers handed out (may run ahead of `lastSequence` while a group is applied).
    @exclusivity(unchecked) var allocatedSequence: SequenceNumber = 0
    @exclusivity(unchecked) var backgroundError: MoraineError? = nil
    /// Whether `backgroundError` only says the files could not be reached (Engine+Resume).
    @exclusivity(unchecked) var backgroundErrorRetryable = false
    /// The write group an unreachable storage left unsettled (Engine+Resume).
    @exclusivity(unchecked) var pendingGroup: PendingGroup? = nil
    @exclusivity(unchecked) var shuttingDown = false
    @exclusivity(unchecked) var closed = false
    var flushRunning = false
    /// Automatic compactions running now, with the tables they hold.
    var runningCompactions = InFlightCompactions()
    /// A manual compaction holds the tree: no automatic one starts meanwhile.
    var manualCompaction = false
    /// No move between tiers starts before this monotonic time (set after one failed).
    var tierMoveNotBeforeNanos: Int64 = 0
    /// Whether any compaction (or a move between tiers) runs.
    var compactionRunning: Bool { runningCompactions.count > 0 || manualCompaction || runningCompactions.moving != nil }
    var backgroundThreads = 0
    /// Asynchronous writers left at the head of the queue by a leader that led its share: the
    /// write helper leads them (`mutex`).
    @exclusivity(unchecked) var orphanedWriters = false
    /// Whether the write helper thread runs (started at the first orphaned writers; `mutex`).
    @exclusivity(unchecked) var writeHelperRunning = false
    @exclusivity(unchecked) var unloggedWrites = false
    /// Whether a leader is applying a group with `mutex` released (its WAL append and memtable
    /// inserts): close waits for it before it flushes the memtables and closes the WAL.
    @exclusivity(unchecked) var applyingGroup = false
    /// The database's LOG (nil for a read-only open, or when it could not be started).
    var eventLog: EventLog? = nil

    /// One line in the database's LOG.
    func event(_ line: @autoclosure () -> String) { eventLog?.write(line()) }
    private var fileLock: (any FileLock)?

    private init(path: String, options: Options, lock: (any FileLock)?, pmemRegion: PmemRegion?) {
        self.path = path
        self.pmemRegion = pmemRegion
        self.options = options
        self.fileSystem = options.fileSystem
        writerTurn = LockCondition(on: mutex)
        self.fileLock = lock
        self.blockCache = options.blockCacheSize > 0 ? BlockCache(capacityBytes: options.blockCacheSize) : nil
        self.rowCache = options.rowCacheSize > 0 ? RowCache(capacityBytes: options.rowCacheSize) : nil
        self.tiers = TierLayout(databasePath: path, options: options)
        self.tableCache = TableCache(
            layout: tiers, fileSystem: options.fileSystem, blockCache: blockCache, capacity: options.maxOpenFiles,
            secondary: options.secondaryBlockCache, mapAll: options.allowMmapReads, direct: options.useDirectReads)
        self.versions = VersionSet(directory: path, options: options, sink: obsolete)
        self.memtableArenas = MemTableArenaPool(limit: 1, maxCapacity: options.writeBufferSize + (2 << 20))
        self.mem = MemTable(capacityBytes: options.writeBufferSize + (1 << 20), logNumber: 0)
    }

    /// Opens (or with `createIfMissing`, creates) the database in `path`, recovering from the
    /// manifest and replaying the WAL. A database is created only where none exists: see
    /// `DatabaseDirectory`. With `options.readOnly`, nothing is written (see `Options.readOnly`).
    /// - Throws: `.notFound` for a missing directory (without `createIfMissing`), `.invalid` for
    ///   bad options or a directory that holds no database, `.busy` when another process has it
    ///   open, `.corruption` naming the damaged file (or the files that no CURRENT explains),
    ///   and whatever the file system throws when it cannot look.
    public static func open(path: String, options: Options) throws -> Engine {
        try options.validate()
        if options.readOnly { return try openReadOnly(path: path, options: options) }
        let fs = options.fileSystem
        switch try DatabaseDirectory.inspect(path, fileSystem: fs) {
        case .absent:
            guard options.createIfMissing else {
                throw MoraineError(
                    .notFound, "database directory \(path) does not exist (set create_if_missing to create it)")
            }
            try fs.createDirectory(path)
        case .empty:
            guard options.createIfMissing else {
                throw MoraineError(
                    .invalid, "\(path) is not a Moraine database (no CURRENT file); set create_if_missing to create one")
            }
        case .existing:
            if options.errorIfExists {
                throw MoraineError(.invalid, "database \(path) already exists (error_if_exists is set)")
            }
        }
        let lock = try fs.lock(joinPath(path, DatabaseFile.lock.name))
        let region: PmemRegion?
        do {
            region =
                options.durability == .pmem && options.memtableRegion == nil ? try openRegion(options: options, directory: path) : nil
        } catch {
            lock.unlock()
            throw error
        }
        let engine = Engine(path: path, options: options, lock: lock, pmemRegion: region)
        engine.eventLog = EventLog(directory: path, fileSystem: fs)
        engine.event("open \(path): \(engine.describeOptions())")
        do {
            // Decided again under the lock: another process may have created it meanwhile.
            let existing = try DatabaseDirectory.inspect(path, fileSystem: fs) == .existing
            if region == nil && existing {
                engine.leftoverRegion = try openLeftoverRegion(options: options, directory: path)
            }
            if !existing {
                if let provider = options.memtableRegion, case let leftover = try provider.list(database: path), !leftover.isEmpty {
                    throw MoraineError(
                        .invalid,
                        "\(provider.description) holds \(leftover.count) memtable arena(s) of an earlier database named \(path); "
                            + "destroy it (moraine destroy with the same --cluster) to give them back, or use another name")
                }
                if let region, !region.allocatedArenas().isEmpty {
                    throw MoraineError(
                        .invalid,
                        "persistent-memory region \(region.path) holds the logs of another database; remove it or set pmem_path")
                }
                // An interrupted create may have left manifests that record nothing: the new
                // manifest takes a number after theirs (it is created exclusively), and the
                // recovery below deletes them as old manifests.
                for name in try fs.children(of: path) {
                    if case .manifest(let number) = DatabaseFile(name: name) { engine.versions.markFileNumberUsed(number) }
                }
                // A new database reuses file numbers an earlier one of its name had: nothing the
                // second tier holds for that name can be its.
                try options.secondaryBlockCache?.invalidateAll()
                try engine.prepareNewTiers()
                try engine.versions.writeNewManifest(lastSequence: 0)
            }
            try checkDirectReads(engine.tiers, options: options, mayCreate: true)
            try engine.recover()
            if let leftover = engine.leftoverRegion {
                SystemLog.infoOnce("replayed the logs left in persistent-memory region \(leftover.path); it holds none now")
                engine.leftoverRegion = nil
            }
        } catch {
            // The LOG never started: a refused open leaves the directory as it found it.
            engine.eventLog = nil
            engine.versions.close()
            lock.unlock()
            throw error
        }
        engine.eventLog?.start()
        engine.writeOptionsFile()
        engine.event("opened: last sequence \(engine.lastSequence.load(ordering: .acquiring)); \(engine.describeShape())")
        engine.startBackgroundThreads()
        return engine
    }

    /// With `useDirectReads` on POSIX files: every directory that holds tables read directly
    /// (the database's, or its tiers not read through mappings) must take O_DIRECT, so an open
    /// is refused at once, not at its first table read. A read-only open (`mayCreate` false)
    /// writes nothing: it asks only the files already there.
    /// - Throws: `.invalid` naming the directory.
    static func checkDirectReads(_ tiers: TierLayout, options: Options, mayCreate: Bool) throws {
        guard options.useDirectReads, options.fileSystem is PosixFileSystem else { return }
        for (directory, mapped) in zip(tiers.directories, tiers.mapped) where !mapped {
            guard PosixFileSystem.supportsDirectReads(in: directory, mayCreate: mayCreate) else {
                throw MoraineError(
                    .invalid, "use_direct_reads: the file system of \(directory) does not support O_DIRECT (or a file cannot be made there)")
            }
        }
    }

    /// Opens an existing database for reading only: no lock, no file written or removed, the
    /// logs replayed into memory. A writer in another process may change the directory while
    /// this reads it (a flush deletes a WAL, a compaction its inputs), so a recovery that fails
    /// while the manifest moved on is tried again, a few times.
    private static func openReadOnly(path: String, options: Options) throws -> Engine {
        let fs = options.fileSystem
        switch try DatabaseDirectory.inspect(path, fileSystem: fs) {
        case .absent: throw MoraineError(.notFound, "database directory \(path) does not exist")
        case .empty: throw MoraineError(.invalid, "\(path) is not a Moraine database (no CURRENT file)")
        case .existing: break
        }
        try checkDirectReads(TierLayout(databasePath: path, options: options), options: options, mayCreate: false)
        let attemptsMax = 4
        for attempt in 1...attemptsMax {
            let before = try fs.readAll(joinPath(path, DatabaseFile.current.name))
            let region =
                options.durability == .pmem
                ? try openExistingRegion(options.pmemPath ?? Options.defaultPmemPath(for: path), options: options)
                : nil
            let engine = Engine(path: path, options: options, lock: nil, pmemRegion: region)
            do {
                if region == nil { engine.leftoverRegion = try openLeftoverRegion(options: options, directory: path) }
                try engine.recover()
                engine.leftoverRegion = nil
                return engine
            } catch let error as MoraineError {
                engine.closed = true
                let after = try? fs.readAll(joinPath(path, DatabaseFile.current.name))
                let moved = after != before || engine.versions.manifestGrew()
                guard moved, attempt < attemptsMax else { throw error }
                SystemLog.info("read-only open of \(path) raced a writer (\(error)); trying again")
            }
        }
        preconditionFailure("unreachable: the last attempt returns or throws")
    }

    /// The region `pmem` durability left at the database's region path, when opening in `wal`
    /// mode: acknowledged writes may still sit in its arenas, so recovery replays them.
    private static func openLeftoverRegion(options: Options, directory: String) throws -> PmemRegion? {
        let regionPath = options.pmemPath ?? Options.defaultPmemPath(for: directory)
        return try openExistingRegion(regionPath, options: options)
    }

    /// The formatted region at `regionPath`, nil when there is none; never formats.
    private static func openExistingRegion(_ regionPath: String, options: Options) throws -> PmemRegion? {
        guard try PosixFileSystem.shared.exists(regionPath) else { return nil }
        return try PmemRegion.open(path: regionPath, layout: options.pmemLayout, formatIfNeeded: false)
    }

    func path(_ file: DatabaseFile) -> String { joinPath(path, file.name) }

    /// The path of table `file`.
    func tablePath(_ file: TableFileInfo) -> String { tiers.tablePath(file.number, tier: file.tier) }

    /// Opens (or creates) the region of `pmem` durability and says what it gives.
    private static func openRegion(options: Options, directory: String) throws -> PmemRegion {
        let regionPath = options.pmemPath ?? Options.defaultPmemPath(for: directory)
        let region = try PmemRegion.open(path: regionPath, layout: options.pmemLayout, numaNode: options.pmemNumaNode)
        let layout = region.layout
        SystemLog.infoOnce(
            "durability pmem: region \(regionPath), \(layout.arenaCount) arenas of \(layout.arenaBytes >> 10) KiB"
                + (options.pmemNumaNode.map { ", bound to NUMA node \($0)" } ?? "") + "; \(region.durabilityDescription)")
        if layout.arenaBytes < options.pmemLayout.arenaBytes {
            SystemLog.infoOnce("the region's arenas are smaller than write_buffer_size asks; memtables switch when an arena fills")
        }
        return region
    }

    /// Publishes the current memtables and version to readers. Precondition: `mutex` held.
    func installSuperVersion() {
        let fresh = SuperVersion(mem: mem, imms: imms.reversed(), version: versions.current)
        let old = superVersionLock.withLock { sv in
            let old = sv
            sv = fresh
            return old
        }
        _ = old  // released here, outside the lock
    }

    func currentSuperVersion() -> SuperVersion {
        superVersionLock.withLock { $0! }
    }

    /// Stops background work, closes the WAL and releases the lock. Pending writes in the WAL
    /// are replayed by the next open. Idempotent.
    public func close() throws {
        mutex.lock()
        if closed {
            mutex.unlock()
            return
        }
        if options.readOnly {
            // Nothing was written, nothing runs in the background, no lock is held.
            closed = true
            mutex.unlock()
            return
        }
        shuttingDown = true
        mutex.broadcast()
        while backgroundThreads > 0 || applyingGroup { mutex.wait() }
        var firstError: MoraineError? = nil
        if unloggedWrites && backgroundError == nil {
            // Writes made without the WAL live only in memtables: persist them before closing.
            do {
                try flushAllForClose()
            } catch {
                firstError = error as? MoraineError
            }
        }
        closed = true
        for log in retiredLogs + (log.map { [$0] } ?? []) {
            do { try log.close() } catch { firstError = firstError ?? (error as? MoraineError) }
        }
        log = nil
        retiredLogs = []
        mutex.unlock()
        versions.close()
        purgeObsoleteFiles()
        eventLog?.close(firstError.map { "closed, with an error: \($0)" } ?? "closed cleanly")
        fileLock?.unlock()
        fileLock = nil
        if let firstError { throw firstError }
    }

    deinit {
        if !closed { try? close() }
    }

    /// Deletes table files that left the tree and are no longer read by anyone.
    func purgeObsoleteFiles() {
        for (number, tier) in obsolete.drain() {
            tableCache.evict(number, tier: tier)
            try? fileSystem.remove(tiers.tablePath(number, tier: tier))
        }
        sweepAbandonedOutputs()
    }

    func checkOpen() throws {
        if closed || shuttingDown { throw MoraineError(.closed, "database \(path) is closed") }
    }

    /// Throws `.invalid` when the database was opened read-only; `what` names the refused call.
    func checkWritable(_ what: String) throws {
        if options.readOnly { throw MoraineError(.invalid, "\(what) refused: \(path) is open read-only") }
    }
}

/// Counters reported by `stats`.
struct CounterValues: Sendable {
    var flushes = 0
    var compactions = 0
    var trivialMoves = 0
    var compactionBytesRead = 0
    var compactionBytesWritten = 0
    var flushBytesWritten = 0
    var entriesDropped = 0
    var writeGroups = 0
    var writes = 0
    var walSyncs = 0
    var walBytes = 0
    var stallSlowdowns = 0
    var stallStops = 0
    /// Wall time writers spent delayed or stopped, and background jobs spent running.
    var stallMicros = 0
    var flushMicros = 0
    var compactionMicros = 0
    var manifestRolls = 0
    var multiGetBatches = 0
    var multiGetBlockReads = 0
    var resumes = 0
    /// Compaction jobs given up on mid-way (their worker died, hung or passed the deadline).
    var lostJobs = 0
    /// CPU time of flush and compaction jobs, wherever they ran (a worker's results say theirs).
    var jobCPUMicros = 0
    var reattachedMemtables = 0
    /// Tables moved one tier down, their bytes, and moves that failed.
    var tierMoves = 0
    var tierMoveBytes = 0
    var tierMoveFailures = 0
}

/// Engine counters behind one small lock (updated once per group or job, not per key). A pthread
/// lock, so ThreadSanitizer understands it.
final class Counters: @unchecked Sendable {
    private let lock = ConditionLock()
    /// Under `lock`, so without the runtime's exclusivity check (one per write group).
    @exclusivity(unchecked) private var values = CounterValues()
    func update(_ body: (inout CounterValues) -> Void) { lock.withLock { body(&values) } }
    var snapshot: CounterValues { lock.withLock { values } }
}
