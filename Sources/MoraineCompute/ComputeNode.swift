// The compute node's service: it owns the databases it opened (their version sets, sequence
// numbers and write paths) and runs its clients' requests against them. A request names its
// session and database; a database is opened at the first request that names it and stays open
// until the node stops.
//
// Sessions and leases. A client picks a random session id and sends it with every request.
// Snapshots and iterators it takes are leases of that session, by an id the node hands out;
// a session lives `sessionTTL` past its last request (the client renews it while it holds a
// lease), and when it lapses — the client died, hung, or lost its link — every lease it held is
// released, so a vanished client cannot pin old versions for ever. A lease id another session
// holds, or one that expired, is `notFound` naming it; every other session goes on.
//
// Thread-safety: one lock guards the tables (never held across an engine call); opens are
// serialized by their own lock; an iterator is used by one request at a time (its own lock).
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineSystem
import MoraineTransport

/// Where a compute node's databases live and how they are opened.
public struct ComputeNodeConfiguration: Sendable {
    /// How a database of the given name is opened: its path and options (the caller wires a
    /// cluster's storage, memory node and workers in; `createIfMissing` is set per request).
    public var open: @Sendable (String) throws -> (path: String, options: Options)
    /// How long a session's leases outlive its last request.
    public var sessionTTLMillis: UInt32 = 10_000

    public init(open: @escaping @Sendable (String) throws -> (path: String, options: Options)) {
        self.open = open
    }

    /// Databases in directories under `directory` on this machine, with `options`.
    public static func local(directory: String, options: Options) -> ComputeNodeConfiguration {
        ComputeNodeConfiguration { name in (directory + "/" + name, options) }
    }
}

/// A compute node: databases, sessions, leases.
public final class ComputeNode: @unchecked Sendable {
    final class IteratorLease {
        let lock = ConditionLock()
        let iterator: DBIterator
        let database: String

        init(iterator: DBIterator, database: String) {
            self.iterator = iterator
            self.database = database
        }
    }

    struct SnapshotLease {
        let snapshot: Snapshot
        let engine: Engine
    }

    struct Session {
        var expiresNanos: Int64
        var snapshots: [UInt64: SnapshotLease] = [:]
        var iterators: [UInt64: IteratorLease] = [:]
    }

    public let configuration: ComputeNodeConfiguration
    private let lock = ConditionLock()
    private let openLock = ConditionLock()
    private var databases: [String: Engine] = [:]
    /// Databases a front end in this process serves (the Redis one): never destroyed by a client.
    private var pinned: Set<String> = []
    private var sessions: [UInt64: Session] = [:]
    private var nextLease: UInt64 = 1
    private var stopped = false
    private var ttlNanos: Int64 { Int64(configuration.sessionTTLMillis) * 1_000_000 }
    /// Leases released because their session lapsed, since the node started.
    public private(set) var expiredLeases = 0

    public init(configuration: ComputeNodeConfiguration) {
        self.configuration = configuration
        startThread(name: "compute-leases") { [weak self] in
            while let node = self, node.expireSessions() {
                sleepNanos(max(Int64(node.configuration.sessionTTLMillis) * 250_000, 10_000_000))
            }
        }
    }

    /// Closes every database (after releasing every lease); requests after this are refused.
    /// - Throws: the first error a close reported (every database is closed regardless).
    public func close() throws {
        let (engines, leases) = lock.withLock {
            stopped = true
            let engines = Array(databases.values)
            databases = [:]
            let leases = sessions.values
            sessions = [:]
            return (engines, Array(leases))
        }
        for session in leases { release(session) }
        var firstError: (any Error)? = nil
        for engine in engines {
            do { try engine.close() } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// Sessions holding leases, and the leases they hold.
    public var leaseCounts: (sessions: Int, snapshots: Int, iterators: Int) {
        lock.withLock {
            (sessions.count, sessions.values.reduce(0) { $0 + $1.snapshots.count }, sessions.values.reduce(0) { $0 + $1.iterators.count })
        }
    }

    /// The databases open now, by name.
    public var openDatabases: [String: Engine] { lock.withLock { databases } }

    /// Releases the leases of sessions past their time; false once the node is closed.
    private func expireSessions() -> Bool {
        let now = monotonicNanos()
        let lapsed: [Session]? = lock.withLock {
            if stopped { return nil }
            let ids = sessions.filter { $0.value.expiresNanos < now }.map(\.key)
            return ids.compactMap { sessions.removeValue(forKey: $0) }
        }
        guard let lapsed else { return false }
        for session in lapsed {
            let count = session.snapshots.count + session.iterators.count
            if count > 0 {
                lock.withLock { expiredLeases += count }
                SystemLog.info("compute node: a session lapsed; its \(count) lease(s) released")
            }
            release(session)
        }
        return true
    }

    private func release(_ session: Session) {
        for lease in session.snapshots.values { lease.engine.releaseSnapshot(lease.snapshot) }
    }

    // MARK: databases

    static func checkName(_ name: String) throws(TransportError) {
        let valid = !name.isEmpty && name.utf8.count <= 255 && !name.hasPrefix(".")
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
        guard valid else {
            throw TransportError(.invalid, "database name '\(name)': use 1…255 letters, digits, '.', '-' or '_', not starting with '.'")
        }
    }

    /// The open database `name`, opening it (creating it when `create`) if this node has not yet.
    func database(_ name: String, create: Bool = false, errorIfExists: Bool = false) throws(TransportError) -> Engine {
        try Self.checkName(name)
        if !errorIfExists, let engine = try lock.withLock({ () throws(TransportError) -> Engine? in
            if stopped { throw TransportError(.unavailable, "the compute node is stopping") }
            return databases[name]
        }) {
            return engine
        }
        openLock.lock()
        defer { openLock.unlock() }
        if let engine = lock.withLock({ databases[name] }) {
            if errorIfExists { throw TransportError(.invalid, "database \(name) is open already (it exists)") }
            return engine
        }
        var path: String
        var options: Options
        do {
            (path, options) = try configuration.open(name)
        } catch {
            // The cluster's roles as the run directory lists them: one restarting is not listed.
            throw TransportError(.unavailable, "database \(name) cannot open yet: \(error)")
        }
        do {
            options.createIfMissing = create
            options.errorIfExists = errorIfExists
            let engine = try Engine.open(path: path, options: options)
            let refused: Bool = lock.withLock {
                if stopped { return true }
                databases[name] = engine
                return false
            }
            if refused {
                try? engine.close()
                throw TransportError(.unavailable, "the compute node is stopping")
            }
            SystemLog.info("compute node: opened database \(name) at \(path)")
            return engine
        } catch let error as TransportError {
            throw error
        } catch let error as MoraineError where error.kind == .busy || error.kind == .unavailable {
            // Another owner's lease (a predecessor killed before it let go, until it expires) or
            // an unreachable role: the database is not available yet, and a retry will find it.
            throw TransportError(.unavailable, "database \(name) cannot open yet: \(error.message)")
        } catch let error as MoraineError {
            throw TransportError(error)
        } catch {
            throw TransportError(.internalError, "opening \(name): \(error)")
        }
    }

    /// The database `name`, opened (and created when missing) for a front end in this process —
    /// the node's Redis front end — that serves it beside the node's own clients. A client cannot
    /// destroy it while the node runs.
    /// - Throws: `.unavailable` while it cannot open yet (a role of the cluster restarting, a
    ///   predecessor's lease not yet lapsed; ask again), then what opening it throws.
    public func hostedDatabase(_ name: String) throws(MoraineError) -> Engine {
        lock.withLock { _ = pinned.insert(name) }
        do {
            return try database(name, create: true)
        } catch {
            throw error.moraineError
        }
    }

    /// Closes database `name` (when open) and removes its files; returns how many.
    /// - Throws: `.busy` while another session holds a snapshot or an iterator of it, then what
    ///   `Engine.destroy` throws. Sessions that later name it are refused as opening a database
    ///   that does not exist (`invalid`, "no CURRENT file"), never given an empty one.
    func destroy(_ name: String, session: UInt64) throws(TransportError) -> Int {
        try Self.checkName(name)
        openLock.lock()
        defer { openLock.unlock() }
        let engine = try lock.withLock { () throws(TransportError) -> Engine? in
            if stopped { throw TransportError(.unavailable, "the compute node is stopping") }
            guard !pinned.contains(name) else {
                throw TransportError(.busy, "database \(name) cannot be destroyed: this node serves it over the Redis protocol")
            }
            let engine = databases[name]
            let holders = sessions.filter { id, held in
                id != session
                    && (held.iterators.values.contains { $0.database == name } || held.snapshots.values.contains { $0.engine === engine })
            }
            guard holders.isEmpty else {
                throw TransportError(.busy, "database \(name) cannot be destroyed: \(holders.count) other session(s) hold snapshots or iterators of it")
            }
            if let own = sessions[session] {
                let mine = own.snapshots.filter { $0.value.engine === engine }
                for id in mine.keys { sessions[session]!.snapshots.removeValue(forKey: id) }
                for lease in mine.values { lease.engine.releaseSnapshot(lease.snapshot) }
                sessions[session]!.iterators = own.iterators.filter { $0.value.database != name }
            }
            databases.removeValue(forKey: name)
            return engine
        }
        do {
            try engine?.close()
            let (path, options) = try configuration.open(name)
            let removed = try Engine.destroy(path: path, options: options)
            SystemLog.info("compute node: destroyed database \(name) (\(removed) files)")
            return removed
        } catch let error as MoraineError {
            throw TransportError(error)
        } catch {
            throw TransportError(.internalError, "destroying \(name): \(error)")
        }
    }

    // MARK: sessions

    /// Refreshes the session's lease time; creates the session when new.
    private func touch(_ session: UInt64) {
        let expires = monotonicNanos() + ttlNanos
        lock.withLock {
            if sessions[session] == nil {
                sessions[session] = Session(expiresNanos: expires)
            } else {
                sessions[session]!.expiresNanos = expires
            }
        }
    }

    private func newLeaseID() -> UInt64 {
        defer { nextLease += 1 }
        return nextLease
    }

    /// The snapshot lease `id` of `session`, for reads of `database`; nil for 0.
    private func snapshot(_ id: UInt64, session: UInt64, database: String) throws(TransportError) -> Snapshot? {
        if id == 0 { return nil }
        let expires = monotonicNanos() + ttlNanos
        return try lock.withLock { () throws(TransportError) -> Snapshot in
            guard let lease = sessions[session]?.snapshots[id] else {
                throw TransportError(.notFound, "snapshot \(id) is not held by this session (released, expired, or the node restarted)")
            }
            guard databases[database] === lease.engine else {
                throw TransportError(.invalid, "snapshot \(id) belongs to another database than \(database)")
            }
            sessions[session]?.expiresNanos = expires
            return lease.snapshot
        }
    }

    private func iterator(_ id: UInt64, session: UInt64, database: String) throws(TransportError) -> IteratorLease {
        let expires = monotonicNanos() + ttlNanos
        return try lock.withLock { () throws(TransportError) -> IteratorLease in
            guard let lease = sessions[session]?.iterators[id] else {
                throw TransportError(.notFound, "iterator \(id) is not held by this session (closed, expired, or the node restarted)")
            }
            guard lease.database == database else {
                throw TransportError(.invalid, "iterator \(id) belongs to database \(lease.database), not \(database)")
            }
            sessions[session]?.expiresNanos = expires
            return lease
        }
    }

    // MARK: requests

    /// The node's request handlers.
    public func router() -> RequestRouter {
        var router = RequestRouter()
        router.register(ComputeOpcode.open) { [self] request in
            answer(request, ComputeOpen.self) { (message) throws(TransportError) in
                touch(message.header.session)
                _ = try database(message.header.database, create: message.createIfMissing, errorIfExists: message.errorIfExists)
                return []
            }
        }
        router.register(ComputeOpcode.write) { [self] request in
            answer(request, ComputeWrite.self) { (message) throws(TransportError) in try write(message) }
        }
        router.register(ComputeOpcode.read) { [self] request in
            answer(request, ComputeRead.self) { (message) throws(TransportError) in try read(message) }
        }
        router.register(ComputeOpcode.snapshot) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                let engine = try database(header.database)
                touch(header.session)
                let snapshot = engine.snapshot()
                let id = try lock.withLock { () throws(TransportError) -> UInt64 in
                    guard sessions[header.session] != nil else { throw TransportError(.notFound, "the session lapsed") }
                    let id = newLeaseID()
                    sessions[header.session]!.snapshots[id] = SnapshotLease(snapshot: snapshot, engine: engine)
                    return id
                }
                return ComputeLease(id: id, sequence: snapshot.sequence, ttlMillis: configuration.sessionTTLMillis).encoded()
            }
        }
        router.register(ComputeOpcode.release) { [self] request in
            answer(request, ComputeLeaseRelease.self) { (message) throws(TransportError) in
                let lease: SnapshotLease? = lock.withLock {
                    sessions[message.header.session]?.iterators.removeValue(forKey: message.id)
                    return sessions[message.header.session]?.snapshots.removeValue(forKey: message.id)
                }
                if let lease { lease.engine.releaseSnapshot(lease.snapshot) }
                return []
            }
        }
        router.register(ComputeOpcode.iteratorOpen) { [self] request in
            answer(request, ComputeIteratorOpen.self) { (message) throws(TransportError) in try openIterator(message) }
        }
        router.register(ComputeOpcode.iteratorMove) { [self] request in
            answer(request, ComputeIteratorMove.self) { (message) throws(TransportError) in try move(message) }
        }
        router.register(ComputeOpcode.flush) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                let engine = try database(header.database)
                try engineCall { try engine.flush(wait: true) }
                return []
            }
        }
        router.register(ComputeOpcode.compactRange) { [self] request in
            answer(request, ComputeCompactRange.self) { (message) throws(TransportError) in
                let engine = try database(message.header.database)
                let bottommost: BottommostCompaction = [.skip, .ifTombstones, .force][Int(message.bottommost)]
                try engineCall { try engine.compactRange(begin: message.begin, end: message.end, bottommost: bottommost) }
                return []
            }
        }
        router.register(ComputeOpcode.stats) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                let engine = try database(header.database)
                return StatsCoding.encode(engine.stats(), estimatedKeys: engine.estimatedKeyCount()).encoded()
            }
        }
        router.register(ComputeOpcode.renew) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                touch(header.session)
                return []
            }
        }
        router.register(ComputeOpcode.endSession) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                if let session = lock.withLock({ sessions.removeValue(forKey: header.session) }) { release(session) }
                return []
            }
        }
        router.register(ComputeOpcode.backgroundWork) { [self] request in
            answer(request, ComputeBackgroundWork.self) { (message) throws(TransportError) in
                let engine = try database(message.header.database)
                if message.pause { engine.pauseBackgroundWork() } else { engine.continueBackgroundWork() }
                return []
            }
        }
        router.register(ComputeOpcode.destroy) { [self] request in
            answer(request, ComputeHeader.self) { (header) throws(TransportError) in
                var writer = WireWriter()
                writer.u64(UInt64(try destroy(header.database, session: header.session)))
                return writer.bytes
            }
        }
        router.register(ComputeOpcode.status) { [self] _ in
            .success(.bytes(status().encoded()))
        }
        return router
    }

    /// The node's databases with their shape, and its sessions' leases.
    public func status() -> ComputeStatusReply {
        let open = lock.withLock { databases }
        let counts = leaseCounts
        let expired = lock.withLock { expiredLeases }
        let list = open.sorted { $0.key < $1.key }.map { name, engine in
            let stats = engine.stats()
            var database = ComputeStatusReply.Database(
                name: name, lastSequence: stats.lastSequence, memtableBytes: UInt64(max(0, stats.memtableBytes)),
                levelFiles: stats.levels.map { UInt32($0.fileCount) }, levelBytes: stats.levels.map(\.sizeBytes))
            database.blockCacheHits = UInt64(max(0, stats.blockCacheHits))
            database.blockCacheMisses = UInt64(max(0, stats.blockCacheMisses))
            database.sharedCacheHits = UInt64(max(0, stats.secondaryCache.hits))
            database.sharedCacheMisses = UInt64(max(0, stats.secondaryCache.misses))
            return database
        }
        return ComputeStatusReply(
            databases: list, sessions: UInt32(counts.sessions), snapshots: UInt32(counts.snapshots), iterators: UInt32(counts.iterators),
            expiredLeases: UInt64(expired))
    }

    /// The node's metrics, read at scrape time: each open database's (labelled `db`), the
    /// sessions and leases its clients hold, and this process's I/O and transport traffic.
    public func metricSamples() -> [MetricSample] {
        let open = lock.withLock { databases }
        let counts = leaseCounts
        let expired = lock.withLock { expiredLeases }
        var samples: [MetricSample] = [
            .gauge("moraine_compute_databases", "Databases the compute node has open", open.count),
            .gauge("moraine_compute_sessions", "Client sessions holding snapshots or iterators", counts.sessions),
            .gauge("moraine_compute_snapshot_leases", "Snapshots clients hold", counts.snapshots),
            .gauge("moraine_compute_iterator_leases", "Iterators clients hold", counts.iterators),
            .counter("moraine_compute_expired_leases_total", "Leases released because their client's session lapsed", expired),
        ]
        for (name, engine) in open.sorted(by: { $0.key < $1.key }) { samples += engine.stats().metricSamples(database: name) }
        return samples + IOStatistics.samples() + TransportMetrics.samples()
    }

    private func answer<M: WireMessage>(
        _ request: Request, _ type: M.Type, _ body: (M) throws(TransportError) -> [UInt8]
    ) -> Result<Payload, TransportError> {
        do {
            return .success(.bytes(try body(try M.decode(request.payload))))
        } catch {
            return .failure(error)
        }
    }

    private func engineCall<T>(_ body: () throws -> T) throws(TransportError) -> T {
        do {
            return try body()
        } catch let error as MoraineError {
            throw TransportError(error)
        } catch {
            throw TransportError(.internalError, "\(error)")
        }
    }

    private func write(_ message: ComputeWrite) throws(TransportError) -> [UInt8] {
        let engine = try database(message.header.database)
        var batch: WriteBatch?
        do {
            batch = try WriteBatch(decoding: message.batch, origin: "a write batch from a client")
        } catch {
            throw TransportError(.invalid, "\(error)")
        }
        var options = WriteOptions()
        options.sync = message.sync
        options.disableWAL = message.disableWAL
        // Taken, not copied: the engine stamps the sequence into the batch it owns.
        try engineCall { try engine.write(batch.take()!, options: options) }
        return []
    }

    private func read(_ message: ComputeRead) throws(TransportError) -> [UInt8] {
        let engine = try database(message.header.database)
        var options = ReadOptions()
        options.snapshot = try snapshot(message.snapshot, session: message.header.session, database: message.header.database)
        let values: [[UInt8]?] = try engineCall {
            message.keys.count == 1 ? [try engine.get(message.keys[0], options: options)] : try engine.multiGet(message.keys, options: options)
        }
        return ComputeValues(values: values).encoded()
    }

    private func openIterator(_ message: ComputeIteratorOpen) throws(TransportError) -> [UInt8] {
        let name = message.header.database
        let engine = try database(name)
        touch(message.header.session)
        var options = ReadOptions()
        options.snapshot = try snapshot(message.snapshot, session: message.header.session, database: name)
        options.lowerBound = message.lowerBound
        options.upperBound = message.upperBound
        let iterator = try engineCall { try engine.makeIterator(options: options) }
        let lease = IteratorLease(iterator: iterator, database: name)
        let id = try lock.withLock { () throws(TransportError) -> UInt64 in
            guard sessions[message.header.session] != nil else { throw TransportError(.notFound, "the session lapsed") }
            let id = newLeaseID()
            sessions[message.header.session]!.iterators[id] = lease
            return id
        }
        return ComputeLease(id: id, sequence: 0, ttlMillis: configuration.sessionTTLMillis).encoded()
    }

    /// The most bytes of entries one move returns (past the first entry).
    static let moveBytesMax = 1 << 20

    private func move(_ message: ComputeIteratorMove) throws(TransportError) -> [UInt8] {
        let lease = try iterator(message.iterator, session: message.header.session, database: message.header.database)
        lease.lock.lock()
        defer { lease.lock.unlock() }
        let iterator = lease.iterator
        return try engineCall {
            switch message.motion {
            case .seekToFirst: try iterator.seekToFirst()
            case .seekToLast: try iterator.seekToLast()
            case .seek: try iterator.seek(message.target)
            case .seekForPrev: try iterator.seekForPrev(message.target)
            case .seekAfter:
                try iterator.seek(message.target)
                if iterator.isValid && iterator.key == message.target { try iterator.next() }
            case .seekBefore:
                try iterator.seekForPrev(message.target)
                if iterator.isValid && iterator.key == message.target { try iterator.prev() }
            }
            var keys: [[UInt8]] = []
            var values: [[UInt8]] = []
            var bytes = 0
            while iterator.isValid && keys.count < Int(message.count) && (keys.isEmpty || bytes < Self.moveBytesMax) {
                let key = iterator.key
                let value = iterator.value
                bytes += key.count + value.count
                keys.append(key)
                values.append(value)
                if keys.count == Int(message.count) || bytes >= Self.moveBytesMax { break }
                if message.forward { try iterator.next() } else { try iterator.prev() }
            }
            return ComputeEntries(keys: keys, values: values, exhausted: !iterator.isValid).encoded()
        }
    }
}
