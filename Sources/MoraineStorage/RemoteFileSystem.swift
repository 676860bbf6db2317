// The file seam over the storage protocol: the engine, unchanged, keeps its files on a storage
// node. A path `DATABASE/NAME` names file NAME of database DATABASE on the node; a path without a
// `/` names a database's directory (`DATABASE/lost` is a subdirectory, itself a database name).
//
// Calls: each takes a connection from a pool (one per concurrent caller, so concurrent readers
// keep many requests in flight on the node instead of queueing behind one connection), and has a
// deadline (`callTimeoutNanos`). A connection that breaks is dropped and the call is sent again
// on a new one, with backoff, until the deadline; then it fails with `unavailable`. Never a hang,
// never a create-over: every operation is safe to repeat (appends carry their offset, an
// exclusive create that finds its own empty file takes it, a remove or rename that finds its work
// done succeeds). So a storage node that restarts costs only its outage.
//
// The lock is a lease (RemoteLease): `lock(DATABASE/LOCK)` takes the database's lease and its
// epoch, which every mutation of that database then carries; a renewal thread keeps it. A
// mutation refused as `fenced` means a newer owner exists: the error reaches the engine, which
// stops writing.
//
// Thread-safety: a RemoteFileSystem is shared by all threads; the pool and the epochs take one
// lock each.
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A `FileSystem` whose files live on a storage node.
public final class RemoteFileSystem: LeasedFileSystem, @unchecked Sendable {
    /// How calls behave.
    public struct Options: Sendable {
        /// The longest a call may take, retries included, before it fails with `unavailable`.
        public var callTimeoutNanos: Int64 = 10_000_000_000
        /// The lease's time to live; it is renewed every third of it.
        public var leaseTTLMillis: UInt32 = 5_000
        /// Who takes leases, for the node's messages.
        public var owner: String = "pid \(getpid())"
        /// Transport limits of every connection.
        public var limits = TransportLimits()
        /// Idle connections kept for reuse.
        public var idleConnectionsMax = 64
        /// A flush without sync publishes its append and returns: into the ring over shared
        /// memory (the acknowledgement is reaped later), as a quiet request over TCP (an
        /// answered one every so often acknowledges those before it); RemoteWritableFile.
        /// Off: every flush waits for the node's reply.
        public var pipelineAppends = true
        /// The emulated link replies travel over (the node's `--link-delay-ns`, so a link
        /// emulated on both ends is symmetric).
        public var link: LinkEmulation = .none

        public init() {}
    }

    public let endpoint: Endpoint
    let key: ClusterKey
    let options: Options
    private let idle = Mutex<[ConnectionBox]>([])
    private let epochs = Mutex<[String: UInt64]>([:])
    /// Requests sent, for the requests-per-operation a benchmark reports.
    private let requests = Atomic<Int>(0)

    /// Who this file system's leases name: `options.owner` and a tag of this instance, so two
    /// file systems (of one process or of two) never pass for the same owner.
    let leaseOwner: String

    public init(endpoint: Endpoint, key: ClusterKey, options: Options = Options()) {
        self.endpoint = endpoint
        self.key = key
        self.options = options
        leaseOwner = options.owner + " #" + String(UInt64.random(in: 1...UInt64.max), radix: 16)
    }

    deinit {
        for box in idle.withLock({ $0 }) { box.client.close() }
    }

    /// Requests sent to the node so far (retries included).
    public var requestCount: Int { requests.load(ordering: .relaxed) }

    func countRequest() { requests.add(1, ordering: .relaxed) }

    /// Whether files publish their non-sync appends instead of waiting for them: into a ring
    /// over shared memory, as quiet requests over TCP; either way in the node's hands once sent.
    var pipelinesAppends: Bool { options.pipelineAppends }

    // MARK: Calls

    /// Sends one request and returns the reply's bytes, retrying on a new connection while the
    /// node is unreachable and the deadline allows.
    /// - Throws: the node's error as a MoraineError (its kind unchanged), or `unavailable`.
    func call(_ opcode: UInt8, _ message: some WireMessage) throws(MoraineError) -> [UInt8] {
        try call(opcode, message.encoded())
    }

    func call(_ opcode: UInt8, _ bytes: [UInt8]) throws(MoraineError) -> [UInt8] {
        let deadline = monotonicNanos() + options.callTimeoutNanos
        var backoff: Int64 = 5_000_000
        var lastFailure = "no attempt"
        attempts: while true {
            let box: ConnectionBox
            do {
                box = try takeConnection()
            } catch {
                lastFailure = error.description
                guard monotonicNanos() + backoff < deadline else { break attempts }
                sleepNanos(backoff)
                backoff = min(backoff * 2, 200_000_000)
                continue
            }
            requests.add(1, ordering: .relaxed)
            do {
                let left = max(1_000_000, deadline - monotonicNanos())
                let reply = try box.client.call(opcode, .bytes(bytes), timeoutNanos: left)
                giveBack(box)
                guard case .bytes(let result) = reply else {
                    throw MoraineError(.corruption, "storage node \(endpoint): a reference reply to opcode \(opcode)")
                }
                return result
            } catch let error as TransportError {
                switch error.code {
                case .unavailable, .closed, .timedOut, .tooManyInFlight:
                    box.client.close()
                    lastFailure = error.description
                    guard monotonicNanos() < deadline else { break attempts }
                    continue
                default:
                    giveBack(box)
                    throw error.moraineError
                }
            } catch let error as MoraineError {
                throw error
            } catch {
                throw MoraineError(.internalError, "\(error)")
            }
        }
        throw MoraineError(
            .unavailable,
            "storage node \(endpoint) did not answer within \(options.callTimeoutNanos / 1_000_000) ms: \(lastFailure)")
    }

    func takeConnection() throws(TransportError) -> ConnectionBox {
        if let box = idle.withLock({ $0.popLast() }) { return box }
        var limits = options.limits
        limits.handshakeNanos = min(limits.handshakeNanos, options.callTimeoutNanos)
        return ConnectionBox(try endpoint.connect(key: key, limits: limits, link: options.link))
    }

    func giveBack(_ box: ConnectionBox) {
        let kept = idle.withLock { pool -> Bool in
            guard pool.count < options.idleConnectionsMax else { return false }
            pool.append(box)
            return true
        }
        if !kept { box.client.close() }
    }

    // MARK: Names

    /// The storage file a path names: its directory is the database, its last component the name.
    func file(_ path: String) throws(MoraineError) -> StorageFile {
        let trimmed = path.hasPrefix("/") ? String(path.dropFirst()) : path
        guard let slash = trimmed.lastIndex(of: "/") else {
            throw MoraineError(.invalid, "remote path \(path) names no file inside a database (DATABASE/NAME)")
        }
        return StorageFile(database: String(trimmed[..<slash]), name: String(trimmed[trimmed.index(after: slash)...]))
    }

    /// The database a directory path names.
    func database(_ path: String) -> String {
        var trimmed = path.hasPrefix("/") ? String(path.dropFirst()) : path
        if trimmed.hasSuffix("/") { trimmed.removeLast() }
        return trimmed
    }

    /// The epoch mutations of `database` carry: its lease root's, or 0 without a lease.
    func epoch(of database: String) -> UInt64 { epoch(ofRoot: Self.root(of: database)) }

    /// A database's first path component, which its lease is held on (a nested database
    /// `db/tier` writes under `db`'s lease). A file computes it once: a publish per write
    /// that split the name was about 4% of a write's time over shared memory.
    static func root(of database: String) -> String { String(database.split(separator: "/").first ?? "") }

    /// The epoch of the lease on `root` (a database's first component, as `root(of:)`).
    func epoch(ofRoot root: String) -> UInt64 { epochs.withLock { $0[root] ?? 0 } }

    func setEpoch(_ epoch: UInt64?, of root: String) {
        epochs.withLock { $0[root] = epoch }
    }

    /// The lease epoch this file system's mutations of `database` carry (0: none held).
    public func leaseEpoch(of database: String) -> UInt64 { epoch(of: database) }

    /// Makes this file system's mutations of `database` carry `epoch` without holding the lease:
    /// how a worker writes on behalf of the owner that sent it a job. The node fences them as it
    /// would the owner's, so a job of a superseded owner can change nothing.
    public func write(_ database: String, asEpoch epoch: UInt64) {
        setEpoch(epoch, of: Self.root(of: database))
    }

    // MARK: FileSystem

    public func createWritable(_ path: String) throws -> any WritableFile {
        try createWritable(path, hint: .log)
    }

    public func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile {
        let file = try file(path)
        _ = try call(StorageOpcode.create, StorageCreate(file: file, exclusive: false, epoch: epoch(of: file.database)))
        return RemoteWritableFile(fileSystem: self, file: file, hint: hint)
    }

    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        let file = try file(path)
        do throws(MoraineError) {
            _ = try call(StorageOpcode.create, StorageCreate(file: file, exclusive: true, epoch: epoch(of: file.database)))
        } catch {
            // A retried create whose first attempt made the file: an empty file is ours.
            guard error.kind == .invalid, error.message.contains("exists") else { throw error }
            let status = try stat(file)
            if status.kind != .file || status.sizeBytes != 0 { throw error }
        }
        return RemoteWritableFile(fileSystem: self, file: file, hint: hint)
    }

    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile {
        let file = try file(path)
        let status = try stat(file)
        guard status.kind == .file else {
            throw MoraineError(
                status.kind == .absent ? .notFound : .invalid,
                "open \(path) on storage node \(endpoint): \(status.kind == .absent ? "no such file" : "a directory")")
        }
        return RemoteWritableFile(fileSystem: self, file: file, hint: hint, startingAt: status.sizeBytes)
    }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        let file = try file(path)
        let status = try stat(file)
        guard status.kind == .file else {
            throw MoraineError(
                status.kind == .absent ? .notFound : .invalid,
                "open \(path) on storage node \(endpoint): \(status.kind == .absent ? "no such file" : "a directory")")
        }
        return RemoteRandomAccessFile(fileSystem: self, file: file, size: status.sizeBytes)
    }

    public func readAll(_ path: String) throws -> [UInt8] {
        try call(StorageOpcode.readAll, StorageFileQuery(file: file(path)))
    }

    public func exists(_ path: String) throws -> Bool {
        try stat(path).kind != .absent
    }

    public func fileSize(_ path: String) throws -> UInt64 {
        let status = try stat(path)
        guard status.kind != .absent else { throw MoraineError(.notFound, "stat \(path) on storage node \(endpoint): no such file") }
        return status.sizeBytes
    }

    public func children(of directory: String) throws -> [String] {
        let reply = try call(StorageOpcode.list, StorageFileQuery(file: StorageFile(database: database(directory), name: "")))
        return try StorageNames.decode(reply).names
    }

    public func createDirectory(_ path: String) throws {
        _ = try call(StorageOpcode.createDirectory, StorageFileQuery(file: StorageFile(database: database(path), name: "")))
    }

    public func remove(_ path: String) throws {
        let file = try file(path)
        do throws(MoraineError) {
            _ = try call(StorageOpcode.remove, StorageFileMutation(file: file, epoch: epoch(of: file.database)))
        } catch {
            // A retried remove whose first attempt did the work, or a file already gone: either
            // way the file does not exist, which is what was asked.
            guard error.kind == .notFound else { throw error }
        }
    }

    public func rename(_ source: String, to target: String) throws {
        let from = try file(source)
        let to = try file(target)
        guard from.database.split(separator: "/").first == to.database.split(separator: "/").first else {
            throw MoraineError(.invalid, "rename \(source) -> \(target): a storage node renames inside one database")
        }
        let request = StorageRename(
            database: from.database, source: from.name, target: to.name, epoch: epoch(of: from.database), targetDatabase: to.database)
        do throws(MoraineError) {
            _ = try call(StorageOpcode.rename, request)
        } catch {
            // Retried after the first attempt renamed it: the source is gone and the target is there.
            guard error.kind == .notFound else { throw error }
            let (source, target) = (try stat(from), try stat(to))
            if source.kind != .absent || target.kind != .file { throw error }
        }
    }

    public func syncDirectory(_ directory: String) throws {
        _ = try call(StorageOpcode.syncDirectory, StorageFileQuery(file: StorageFile(database: database(directory), name: "")))
    }

    public func lock(_ path: String) throws -> any FileLock {
        let file = try file(path)
        guard !file.database.contains("/") else { throw MoraineError(.invalid, "lock \(path): a lease is taken on a database") }
        // As a second flock of one file fails within a process: one lease per database here.
        // The entry (epoch 0 until granted) is taken before the node is asked, so two threads cannot both ask.
        let reserved = epochs.withLock { epochs -> Bool in
            guard epochs[file.database] == nil else { return false }
            epochs[file.database] = 0
            return true
        }
        guard reserved else {
            throw MoraineError(.busy, "database \(file.database) is already open through this file system (its lease is held)")
        }
        do {
            return try RemoteLease(fileSystem: self, database: file.database)
        } catch {
            setEpoch(nil, of: file.database)
            throw error
        }
    }

    public func read(batch: UnsafeMutableBufferPointer<BatchRead>) {
        guard !batch.isEmpty else { return }
        guard batch.allSatisfy({ $0.file is RemoteRandomAccessFile }) else { return readOneByOne(batch) }
        var start = 0
        while start < batch.count {
            var end = start
            var bytes = 0
            while end < batch.count, end - start < StorageReadBatch.readsMax,
                bytes + batch[end].buffer.count <= StorageNode.readBytesMax || end == start
            {
                bytes += batch[end].buffer.count
                end += 1
            }
            readBatch(UnsafeMutableBufferPointer(rebasing: batch[start..<end]))
            start = end
        }
    }

    private func readBatch(_ batch: UnsafeMutableBufferPointer<BatchRead>) {
        let reads = batch.map { read in
            StorageRead(
                file: (read.file as! RemoteRandomAccessFile).file, offset: read.offset, length: UInt32(read.buffer.count))
        }
        do {
            let reply = try StorageReadBatchReply.decode(try call(StorageOpcode.readBatch, StorageReadBatch(reads: reads)))
            guard reply.results.count == batch.count else {
                throw MoraineError(.corruption, "storage node \(endpoint): \(reply.results.count) results for \(batch.count) reads")
            }
            for (index, result) in reply.results.enumerated() {
                switch result {
                case .success(let bytes) where bytes.count <= batch[index].buffer.count:
                    bytes.withUnsafeBytes { batch[index].buffer.copyMemory(from: $0) }
                    batch[index].bytesRead = bytes.count
                case .success(let bytes):
                    batch[index].error = MoraineError(
                        .corruption, "storage node \(endpoint): \(bytes.count) bytes for a read of \(batch[index].buffer.count)")
                case .failure(let error):
                    batch[index].error = error.moraineError
                }
            }
        } catch {
            let failure = (error as? MoraineError) ?? MoraineError(.internalError, "\(error)")
            for index in batch.indices { batch[index].error = failure }
        }
    }

    /// The node's storage tiers, fastest first (empty: none), with what each holds.
    public func tiers() throws(MoraineError) -> [StorageTierInfo] {
        let reply = try call(StorageOpcode.tiers, [])
        do throws(TransportError) {
            return try StorageTiersReply.decode(reply).tiers
        } catch {
            throw error.moraineError
        }
    }

    /// The node's bytes used and free, and its file count (`moraine status`; also a cheap
    /// "does it answer" check).
    public func capacity() throws(MoraineError) -> StorageCapacityReply {
        let reply = try call(StorageOpcode.capacity, [])
        do throws(TransportError) {
            return try StorageCapacityReply.decode(reply)
        } catch {
            throw error.moraineError
        }
    }

    // MARK: Helpers

    func stat(_ path: String) throws(MoraineError) -> StorageStatReply {
        let trimmed = database(path)
        let file = trimmed.contains("/") ? try file(trimmed) : StorageFile(database: trimmed, name: "")
        return try stat(file)
    }

    func stat(_ file: StorageFile) throws(MoraineError) -> StorageStatReply {
        let reply = try call(StorageOpcode.stat, StorageFileQuery(file: file))
        do throws(TransportError) {
            return try StorageStatReply.decode(reply)
        } catch {
            throw error.moraineError
        }
    }
}

/// A pooled connection (the transport's clients are used by one thread at a time).
final class ConnectionBox: @unchecked Sendable {
    let client: any TransportClient
    init(_ client: any TransportClient) { self.client = client }
}
