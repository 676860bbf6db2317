// The thin client of a compute node: one database on it, reached over the transport (shared
// memory on the same box, TCP across). What `Database(connect:)` and `--connect` run on.
//
// Connections: a pool, one connection per calling thread at a time (a transport client belongs to
// one thread); a connection that failed (the node went away, a request timed out) is dropped and
// the next call dials again, so a restarted compute node is found at its endpoint. A request
// that could not be answered throws `unavailable` naming the endpoint; its effect is unknown
// (a write may have landed), as with any remote store.
//
// Leases: the client's session id is random; the compute node keeps the session's snapshots and
// iterators while it hears from the session, and a thread here renews it every third of the
// lease time while a lease is held. `close` ends the session (the node releases everything).
//
// Thread-safe.
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineSystem
import MoraineTransport

/// A database on a compute node.
public final class ComputeClient: @unchecked Sendable {
    /// How a client connects.
    public struct Settings: Sendable {
        /// The longest wait for an answer to a read or write (flush and compactRange wait without limit).
        public var requestTimeoutNanos: Int64 = 30_000_000_000
        /// Injected delay on this client's link (emulation of distance to the compute node).
        public var link: LinkEmulation = .none
        /// Entries the first step of an iterator fetches; later steps double it up to 1024.
        public var iteratorBatch: UInt32 = 2

        public init() {}
    }

    public let endpoint: Endpoint
    public let database: String
    public let settings: Settings
    private let key: ClusterKey
    let header: ComputeHeader
    private let lock = ConditionLock()
    private var idle: [any TransportClient] = []
    private var closed = false
    private var liveLeases = 0
    private var renewMillis: UInt32 = 3000

    /// Connects to the compute node at `endpoint` and opens `database` there.
    /// - Throws: `unavailable` when nothing answers, `authenticationFailed`, or the open's error
    ///   (`notFound` for a missing database without `createIfMissing`, `invalid` for a bad name).
    public init(
        endpoint: Endpoint, key: ClusterKey, database: String, createIfMissing: Bool, errorIfExists: Bool = false,
        settings: Settings = Settings()
    ) throws(MoraineError) {
        self.endpoint = endpoint
        self.key = key
        self.database = database
        self.settings = settings
        var generator = SystemRandomNumberGenerator()
        header = ComputeHeader(session: UInt64.random(in: 1...UInt64.max, using: &generator), database: database)
        _ = try call(ComputeOpcode.open, ComputeOpen(header: header, createIfMissing: createIfMissing, errorIfExists: errorIfExists))
        startThread(name: "compute-renew") { [weak self] in
            while let client = self, client.renewStep() {}
        }
    }

    deinit { close() }

    /// Ends the session (the compute node releases its leases) and hangs up. Idempotent. A
    /// client holding a lease tells the node even when no pooled connection is left (they all
    /// failed, or other threads hold them): its snapshots would otherwise pin old versions until
    /// the lease expires.
    public func close() {
        let state: (connections: [any TransportClient], leases: Int)? = lock.withLock {
            if closed { return nil }
            closed = true
            lock.broadcast()
            defer { idle = [] }
            return (idle, liveLeases)
        }
        guard let (connections, leases) = state else { return }
        if leases > 0, let connection = connections.first ?? (try? endpoint.connect(key: key, link: settings.link)) {
            _ = try? connection.call(ComputeOpcode.endSession, header.encoded(), timeoutNanos: 2_000_000_000)
            if connections.isEmpty { connection.close() }
        }
        for connection in connections { connection.close() }
    }

    /// Waits a third of the lease time (or, holding no lease, until one is taken or a second
    /// passes), then renews the session if it holds a lease; false once closed.
    private func renewStep() -> Bool {
        lock.lock()
        if !closed { lock.wait(seconds: liveLeases > 0 ? Double(renewMillis) / 1000 : 1) }
        let (isClosed, renew) = (closed, liveLeases > 0)
        lock.unlock()
        if isClosed { return false }
        if renew { _ = try? call(ComputeOpcode.renew, header) }
        return true
    }

    func leaseTaken(_ lease: ComputeLease) {
        lock.withLock {
            liveLeases += 1
            renewMillis = max(50, lease.ttlMillis / 3)
            lock.broadcast()
        }
    }

    func leaseGiven(_ id: UInt64) {
        lock.withLock { liveLeases = max(0, liveLeases - 1) }
        _ = try? call(ComputeOpcode.release, ComputeLeaseRelease(header: header, id: id))
    }

    /// Closes the database `database` on the node at `endpoint` and removes its files (the node
    /// refuses with `busy` while a session holds a snapshot or an iterator of it). Returns how
    /// many files were removed: 0 when there was no such database.
    public static func destroy(endpoint: Endpoint, key: ClusterKey, database: String) throws(MoraineError) -> Int {
        let connection: any TransportClient
        do {
            connection = try endpoint.connect(key: key)
        } catch {
            throw MoraineError(error.code == .authenticationFailed ? .invalid : .unavailable, "compute node \(endpoint): \(error.message)")
        }
        defer { connection.close() }
        var generator = SystemRandomNumberGenerator()
        let header = ComputeHeader(session: UInt64.random(in: 1...UInt64.max, using: &generator), database: database)
        let response: Response
        do {
            let id = try connection.send(opcode: ComputeOpcode.destroy, payload: .bytes(header.encoded()))
            response = try connection.receive(requestID: id, timeoutNanos: nil)
        } catch {
            throw MoraineError(.unavailable, "compute node \(endpoint): \(error.message)")
        }
        switch response.result {
        case .success(.bytes(let bytes)):
            var reader = WireReader(bytes, what: "compute destroy reply")
            do {
                return Int(try reader.u64("files removed"))
            } catch {
                throw MoraineError(.corruption, "compute node \(endpoint): \(error.message)")
            }
        case .success: throw MoraineError(.corruption, "compute node \(endpoint): a reference where bytes were expected")
        case .failure(let error): throw error.moraineError
        }
    }

    // MARK: calls

    private func connection() throws(MoraineError) -> any TransportClient {
        let pooled: (any TransportClient)? = try lock.withLock { () throws(MoraineError) -> (any TransportClient)? in
            if closed { throw MoraineError(.invalid, "the connection to database \(database) on \(endpoint) is closed") }
            return idle.popLast()
        }
        if let pooled { return pooled }
        do {
            return try endpoint.connect(key: key, link: settings.link)
        } catch {
            throw MoraineError(error.code == .authenticationFailed ? .invalid : .unavailable, "compute node \(endpoint): \(error.message)")
        }
    }

    /// Sends one request and returns the answer's bytes.
    /// - Throws: the node's error (as the engine would have thrown it), or `unavailable` when
    ///   the node could not be reached or did not answer in time.
    func call(_ opcode: UInt8, _ message: some WireMessage, timeoutNanos: Int64? = -1) throws(MoraineError) -> [UInt8] {
        let connection = try connection()
        let response: Response
        do {
            let id = try connection.send(opcode: opcode, payload: .bytes(message.encoded()))
            response = try connection.receive(requestID: id, timeoutNanos: timeoutNanos == -1 ? settings.requestTimeoutNanos : timeoutNanos)
        } catch {
            connection.close()
            let kind: MoraineError.Kind = error.code == .frameTooLarge || error.code == .malformed ? .invalid : .unavailable
            throw MoraineError(kind, "compute node \(endpoint): \(error.message)")
        }
        let keep = lock.withLock {
            if closed { return false }
            idle.append(connection)
            return true
        }
        if !keep { connection.close() }
        switch response.result {
        case .success(.bytes(let bytes)): return bytes
        case .success: throw MoraineError(.corruption, "compute node \(endpoint): a reference where bytes were expected")
        case .failure(let error): throw error.moraineError
        }
    }

    func decode<M: WireMessage>(_ type: M.Type, _ bytes: [UInt8]) throws(MoraineError) -> M {
        do {
            return try M.decode(bytes)
        } catch {
            throw MoraineError(.corruption, "compute node \(endpoint): \(error.message)")
        }
    }

    // MARK: the database's operations

    public func write(_ batch: WriteBatch, options: WriteOptions) throws(MoraineError) {
        _ = try call(ComputeOpcode.write, ComputeWrite(header: header, sync: options.sync, disableWAL: options.disableWAL, batch: batch.rep))
    }

    public func put(_ key: [UInt8], _ value: [UInt8], options: WriteOptions) throws(MoraineError) {
        var batch = WriteBatch()
        batch.put(key, value)
        try write(batch, options: options)
    }

    public func delete(_ key: [UInt8], options: WriteOptions) throws(MoraineError) {
        var batch = WriteBatch()
        batch.delete(key)
        try write(batch, options: options)
    }

    public func get(_ key: [UInt8], options: ReadOptions) throws(MoraineError) -> [UInt8]? {
        let values = try decode(
            ComputeValues.self, try call(ComputeOpcode.read, ComputeRead(header: header, snapshot: try leaseID(options.snapshot), keys: [key])))
        guard values.values.count == 1 else { throw MoraineError(.corruption, "compute node \(endpoint): \(values.values.count) values for one key") }
        return values.values[0]
    }

    public func multiGet(_ keys: [[UInt8]], options: ReadOptions) throws(MoraineError) -> [[UInt8]?] {
        if keys.isEmpty { return [] }
        if keys.count == 1 { return [try get(keys[0], options: options)] }
        var result: [[UInt8]?] = []
        result.reserveCapacity(keys.count)
        let snapshot = try leaseID(options.snapshot)
        var start = 0
        while start < keys.count {
            let end = min(keys.count, start + ComputeRead.keysMax)
            let part = Array(keys[start..<end])
            let values = try decode(ComputeValues.self, try call(ComputeOpcode.read, ComputeRead(header: header, snapshot: snapshot, keys: part)))
            guard values.values.count == part.count else {
                throw MoraineError(.corruption, "compute node \(endpoint): \(values.values.count) values for \(part.count) keys")
            }
            result.append(contentsOf: values.values)
            start = end
        }
        return result
    }

    private func leaseID(_ snapshot: Snapshot?) throws(MoraineError) -> UInt64 {
        guard let snapshot else { return 0 }
        guard snapshot.leaseID != 0 else {
            throw MoraineError(.invalid, "a snapshot of an embedded database cannot read database \(database) on \(endpoint)")
        }
        return snapshot.leaseID
    }

    public func snapshot() throws(MoraineError) -> Snapshot {
        let lease = try decode(ComputeLease.self, try call(ComputeOpcode.snapshot, header))
        leaseTaken(lease)
        return Snapshot(leaseID: lease.id, sequence: lease.sequence) { [weak self] in self?.leaseGiven(lease.id) }
    }

    public func makeIterator(options: ReadOptions) throws(MoraineError) -> RemoteIterator {
        let message = ComputeIteratorOpen(
            header: header, snapshot: try leaseID(options.snapshot), lowerBound: options.lowerBound, upperBound: options.upperBound)
        let lease = try decode(ComputeLease.self, try call(ComputeOpcode.iteratorOpen, message))
        leaseTaken(lease)
        return RemoteIterator(client: self, id: lease.id)
    }

    public func flush() throws(MoraineError) {
        _ = try call(ComputeOpcode.flush, header, timeoutNanos: nil)
    }

    public func compactRange(begin: [UInt8]?, end: [UInt8]?, bottommost: BottommostCompaction) throws(MoraineError) {
        let code: UInt8 =
            switch bottommost {
            case .skip: 0
            case .ifTombstones: 1
            case .force: 2
            }
        _ = try call(ComputeOpcode.compactRange, ComputeCompactRange(header: header, begin: begin, end: end, bottommost: code), timeoutNanos: nil)
    }

    /// The database's statistics and estimated key count, as the compute node sees them.
    public func stats() throws(MoraineError) -> (stats: EngineStats, estimatedKeys: Int) {
        StatsCoding.decode(try decode(ComputeStats.self, try call(ComputeOpcode.stats, header)))
    }

    public func setBackgroundWork(paused: Bool) throws(MoraineError) {
        _ = try call(ComputeOpcode.backgroundWork, ComputeBackgroundWork(header: header, pause: paused), timeoutNanos: nil)
    }
}

/// An iterator of a database on a compute node: a lease there, read ahead in batches. It sees
/// the database as of its opening (or its snapshot), as an engine's iterator does. Single-threaded.
public final class RemoteIterator {
    private let client: ComputeClient
    private let id: UInt64
    /// Entries fetched, in ascending key order, and the current one.
    private var keys: [[UInt8]] = []
    private var values: [[UInt8]] = []
    private var index = 0
    private var valid = false
    /// Whether the node may hold entries beyond either end of what was fetched.
    private var moreBelow = false
    private var moreAbove = false
    private var batch: UInt32

    init(client: ComputeClient, id: UInt64) {
        self.client = client
        self.id = id
        batch = client.settings.iteratorBatch
    }

    deinit { client.leaseGiven(id) }

    public var isValid: Bool { valid }

    public var key: [UInt8] {
        precondition(valid, "key of an iterator not on an entry")
        return keys[index]
    }

    public var value: [UInt8] {
        precondition(valid, "value of an iterator not on an entry")
        return values[index]
    }

    public func withCurrent<T>(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        precondition(valid, "an iterator not on an entry")
        return try keys[index].withUnsafeBytes { key in try values[index].withUnsafeBytes { value in try body(key, value) } }
    }

    public func seekToFirst() throws { try fetch(.seekToFirst, []) }
    public func seekToLast() throws { try fetch(.seekToLast, []) }
    public func seek(_ target: [UInt8]) throws { try fetch(.seek, target) }
    public func seekForPrev(_ target: [UInt8]) throws { try fetch(.seekForPrev, target) }

    public func next() throws {
        guard valid else { return }
        if index + 1 < keys.count {
            index += 1
        } else if moreAbove {
            try fetch(.seekAfter, keys[index], growing: true)
        } else {
            valid = false
        }
    }

    public func prev() throws {
        guard valid else { return }
        if index > 0 {
            index -= 1
        } else if moreBelow {
            try fetch(.seekBefore, keys[index], growing: true)
        } else {
            valid = false
        }
    }

    private func fetch(_ motion: ComputeIteratorMove.Motion, _ target: [UInt8], growing: Bool = false) throws {
        valid = false
        batch = growing ? min(batch * 2, 1024) : client.settings.iteratorBatch
        let message = ComputeIteratorMove(header: client.header, iterator: id, motion: motion, target: target, count: batch)
        let entries = try client.decode(ComputeEntries.self, try client.call(ComputeOpcode.iteratorMove, message))
        guard entries.keys.count == entries.values.count, entries.keys.count <= Int(batch) else {
            throw MoraineError(.corruption, "compute node \(client.endpoint): \(entries.keys.count) entries for a move of \(batch)")
        }
        if message.forward {
            keys = entries.keys
            values = entries.values
            index = 0
            moreAbove = !entries.exhausted
            moreBelow = motion != .seekToFirst
        } else {
            keys = entries.keys.reversed()
            values = entries.values.reversed()
            index = keys.count - 1
            moreBelow = !entries.exhausted
            moreAbove = motion != .seekToLast
        }
        valid = !keys.isEmpty
    }
}
