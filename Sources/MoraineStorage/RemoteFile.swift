// The files of a RemoteFileSystem. A writable file buffers appends and sends them, at the offset
// they start at, when the buffer fills, on `flush` (the bytes are then in the storage process's
// hands) and on `sync` (the same request, with fdatasync on the node). A read-only file reads by
// (database, name, offset, length); it holds nothing on the node. The lease holds a database's
// epoch and renews it from a thread of its own.
//
// Thread-safety: as the seam says: a writable file has one writer at a time; a random-access
// file is read by many threads; the lease's state takes a lock.
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

/// A file being written on a storage node.
///
/// Over shared memory a flush without sync is *published*, not waited for: the append goes into
/// the ring of a connection this file keeps (its lane), and the node's acknowledgement is reaped
/// later — at the next flush, once too much is in flight, at sync and at close. The node serves
/// every request a client published even after the client died (SharedMemoryServer), so
/// published bytes are in its hands, as the durability contract asks of a non-sync write — if
/// the node is alive: a publish is checked against the lane's socket (one poll), and onto a lane
/// whose node has gone the flush instead waits for a live node's answer through the pool. Bytes
/// stay held here until acknowledged; a lane that breaks is given up and they are sent again
/// through the pool at the offset they start at (the node recognises bytes it already has). An
/// error the node reports for a published append is thrown by the file's next call. Over TCP a
/// published append is a quiet request (no reply; `publishQuietly` says how they are
/// acknowledged), in the node's hands once in the socket: the node runs every request it
/// received, even from a client that has gone.
final class RemoteWritableFile: WritableFile {
    private let fileSystem: RemoteFileSystem
    private let file: StorageFile
    /// The database whose lease epoch the appends carry (`RemoteFileSystem.root(of:)`).
    private let leaseRoot: String
    /// Bytes not yet sent.
    private var buffer: [UInt8] = []
    private let bufferBytes: Int
    /// Written in records (a WAL or a manifest), not in blocks (a table).
    private let isLog: Bool
    /// Bytes the node has acknowledged.
    private var sent: UInt64 = 0
    /// Bytes published on the lane and not yet acknowledged; they start at `sent`.
    private var unacknowledged: [UInt8] = []
    /// Published appends awaiting acknowledgement, oldest first: request id and the file size
    /// once it is applied.
    private var inFlight: [(id: UInt64, end: UInt64)] = []
    private var inFlightHead = 0
    private var lane: ConnectionBox?
    /// Quiet appends sent on a TCP lane since the last answered one.
    private var quietRun = 0
    /// An error the node reported for a published append; thrown by the next call.
    private var laneFailure: MoraineError?
    private var closed = false
    /// The largest append one request carries.
    static let appendBytesMax = 4 << 20
    /// Published appends (and their bytes) allowed in flight before a flush waits for the oldest.
    static let inFlightMax = 64
    static let inFlightBytesMax = 2 << 20
    /// A publish polls the lane's socket only when the node has not taken the previous append
    /// off the ring or this long has passed since the last poll (docs/STORAGE.md, Durability):
    /// one poll(2) a write was 9% of a write's time over shared memory.
    static let livenessPollNanos: Int64 = 1_000_000

    init(fileSystem: RemoteFileSystem, file: StorageFile, hint: WriteHint, startingAt size: UInt64 = 0) {
        self.fileSystem = fileSystem
        self.file = file
        leaseRoot = RemoteFileSystem.root(of: file.database)
        sent = size
        bufferBytes = hint == .bulk ? 1 << 20 : 64 << 10
        isLog = hint != .bulk
        buffer.reserveCapacity(bufferBytes)
    }

    deinit { releaseLane() }

    var size: UInt64 { sent + UInt64(unacknowledged.count + buffer.count) }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw MoraineError(.closed, "append to closed file \(file)") }
        buffer.append(contentsOf: bytes)
        guard buffer.count >= bufferBytes else { return }
        do {
            try flush()
        } catch let error as MoraineError where error.kind == .unavailable && isLog {
            // A log's record is several appends: failing one of them would leave the record
            // half in this buffer. The bytes stay buffered; the record's flush or sync sends
            // them again and reports the failure.
        }
    }

    func flush() throws {
        guard !closed else { throw MoraineError(.closed, "flush of closed file \(file)") }
        if let laneFailure { throw laneFailure }
        guard !buffer.isEmpty else { return }
        guard fileSystem.pipelinesAppends, buffer.count <= Self.appendBytesMax else { return try settle(sync: false) }
        do {
            if try publish() { return }
        } catch let error as MoraineError where Self.isResendable(error) {
            // An earlier published append failed on the node, which cut the file back to its
            // written mark; its bytes are back in the buffer. They go again now, through the
            // pool: the flush fails only if that fails too.
        }
        try settle(sync: false)
    }

    func sync() throws {
        guard !closed else { throw MoraineError(.closed, "sync of closed file \(file)") }
        if let laneFailure { throw laneFailure }
        try settle(sync: true)
    }

    func close() throws {
        guard !closed else { return }
        if let laneFailure {
            closed = true
            releaseLane()
            throw laneFailure
        }
        if !buffer.isEmpty || !unacknowledged.isEmpty { try settle(sync: false) }
        closed = true
        releaseLane()
        _ = try fileSystem.call(StorageOpcode.close, StorageFileQuery(file: file))
    }

    // MARK: The lane

    /// Publishes what is buffered as one append on the lane and reaps what has been
    /// acknowledged; false when the lane could not take it (the caller settles instead).
    private func publish() throws -> Bool {
        do {
            switch try laneClient() {
            case .sharedMemory(let client): try publish(on: client)
            case .tcp(let client):
                guard client.acceptsQuietRequests else {
                    // A node of protocol version 1: every flush waits for its reply.
                    releaseLane()
                    return false
                }
                try publishQuietly(on: client)
            }
            return true
        } catch is TransportError {
            // The lane broke (or timed out): what it did not acknowledge is settled through the pool.
            releaseLane(broken: true)
            return false
        }
    }

    private func publish(on client: SharedMemoryClient) throws {
        let end = size
        let request = StorageAppend(
            file: file, offset: sent + UInt64(unacknowledged.count), mode: .deferred,
            epoch: fileSystem.epoch(ofRoot: leaseRoot), bytes: buffer)
        let id = try client.send(opcode: StorageOpcode.append, payload: .bytes(request.encoded()))
        fileSystem.countRequest()
        inFlight.append((id, end))
        unacknowledged.append(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
        while let oldest = inFlight.element(at: inFlightHead) {
            let waiting = inFlight.count - inFlightHead > Self.inFlightMax || unacknowledged.count > Self.inFlightBytesMax
            let response =
                waiting
                ? try client.receive(requestID: oldest.id, timeoutNanos: fileSystem.options.callTimeoutNanos)
                : try client.receiveIfArrived(requestID: oldest.id)
            guard let response else { break }
            try acknowledge(response, end: oldest.end)
        }
        // Published is in the node's hands only if a node will drain the ring: one that had
        // died (and is restarting) will not, and a write acknowledged on that would rest on
        // this process alone until the node is back. Then the bytes go through the pool,
        // waiting for the node's answer.
        if client.serverHasGone(pollingAfter: Self.livenessPollNanos) {
            throw TransportError(.unavailable, "the storage node's end of the lane hung up")
        }
    }

    /// Over TCP an append goes quiet (the node answers nothing; it keeps a failure for the
    /// file's next answered append); once `inFlightMax` have gone quiet (the next is the 65th),
    /// or when `inFlightBytesMax` bytes would wait unacknowledged, it goes answered
    /// (`sendAnswered`). No answer is ever left unread on the lane, so a compute process that
    /// dies ends the connection in order and its kernel delivers what was sent (an unread
    /// answer would make the kernel reset the connection instead, dropping what it had not
    /// sent yet).
    private func publishQuietly(on client: DirectTCPClient) throws {
        let end = size
        let answered = quietRun >= Self.inFlightMax || unacknowledged.count + buffer.count > Self.inFlightBytesMax
        let request = StorageAppend(
            file: file, offset: sent + UInt64(unacknowledged.count), mode: answered ? .write : .deferred,
            epoch: fileSystem.epoch(ofRoot: leaseRoot), bytes: buffer)
        if answered {
            unacknowledged.append(contentsOf: buffer)
            buffer.removeAll(keepingCapacity: true)
            return try sendAnswered(request, on: client, end: end)
        }
        // A lost connection must not be replaced unnoticed: the quiet appends it carried may
        // be lost with it (sendQuiet never reconnects).
        try client.sendQuiet(opcode: StorageOpcode.append, payload: .bytes(request.encoded()))
        fileSystem.countRequest()
        quietRun += 1
        unacknowledged.append(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
        // As over shared memory: sent to a node that has died is not in any node's hands.
        if client.serverHasGone { throw TransportError(.unavailable, "the storage node ended the lane's connection") }
    }

    /// Applies one acknowledgement: the node's size must be where the append ends; the bytes
    /// it has written are let go.
    private func acknowledge(_ response: Response, end: UInt64) throws {
        inFlightHead += 1
        if inFlightHead == inFlight.count {
            inFlight.removeAll(keepingCapacity: true)
            inFlightHead = 0
        }
        switch response.result {
        case .success(.bytes(let bytes)):
            let reply = try decodeReply(bytes)
            guard reply.sizeBytes == end else {
                laneFailure = MoraineError(
                    .corruption, "storage node holds \(reply.sizeBytes) bytes of \(file) after an append that should end at \(end)")
                throw laneFailure!
            }
            written(through: reply.writtenBytes)
        case .success:
            laneFailure = MoraineError(.corruption, "storage node \(fileSystem.endpoint): a reference reply to an append")
            throw laneFailure!
        case .failure(let error):
            let failure = MoraineError(error.moraineError.kind, "append to \(file) failed on the storage node: \(error.message)")
            guard Self.isResendable(failure) else {
                // Refused (fenced, invalid): nothing more goes to this file.
                laneFailure = failure
                throw failure
            }
            // The node cut the file back to what it had written. The rest is still here and
            // goes again with the next flush, sync or close (after space is freed, it lands).
            releaseLane(broken: true)
            buffer.insert(contentsOf: unacknowledged, at: 0)
            unacknowledged.removeAll(keepingCapacity: true)
            throw failure
        }
    }

    /// A failure of a published append after which the node cut the file back to its written
    /// mark (ENOSPC, EIO): the bytes past the mark, held here, can be sent again.
    private static func isResendable(_ error: MoraineError) -> Bool { error.kind == .noSpace || error.kind == .io }

    /// Lets go of the bytes the node has written up to `mark`.
    private func written(through mark: UInt64) {
        guard mark > sent else { return }
        unacknowledged.removeFirst(Int(mark - sent))
        sent = mark
    }

    /// The connection a lane publishes on, by carrier.
    private enum LaneClient {
        case sharedMemory(SharedMemoryClient)
        case tcp(DirectTCPClient)
    }

    private func laneClient() throws(TransportError) -> LaneClient {
        if lane == nil { lane = try fileSystem.takeConnection() }
        if let client = lane!.client as? SharedMemoryClient { return .sharedMemory(client) }
        if let client = lane!.client as? DirectTCPClient { return .tcp(client) }
        throw TransportError(.invalid, "a lane needs a shared-memory or direct TCP connection")
    }

    /// Lets the lane go: back to the pool when nothing is in flight on it, else closed.
    private func releaseLane(broken: Bool = false) {
        guard let box = lane else { return }
        lane = nil
        if broken || inFlight.count > inFlightHead { box.client.close() } else { fileSystem.giveBack(box) }
        inFlight.removeAll()
        inFlightHead = 0
        quietRun = 0
    }

    // MARK: Settling

    /// Makes the node hold every byte written so far (synced when asked), waiting for it: the
    /// lane's acknowledgements first, then what is left through the pool, at the offset it
    /// starts at. A lane that fails on the way leaves its bytes to the second step.
    private func settle(sync: Bool) throws {
        var laneHeld = false
        if lane != nil {
            do {
                switch try laneClient() {
                case .sharedMemory(let client):
                    while let oldest = inFlight.element(at: inFlightHead) {
                        let response = try client.receive(requestID: oldest.id, timeoutNanos: fileSystem.options.callTimeoutNanos)
                        try acknowledge(response, end: oldest.end)
                    }
                case .tcp(let client):
                    if quietRun > 0, try settleOnLane(client, sync: sync) { return }
                }
                laneHeld = true
            } catch let error as MoraineError where Self.isResendable(error) {
                // A published append failed on the node; its bytes are back in the buffer and
                // go again below (a full disk may have room by now; if not, that send says so).
            } catch let error as MoraineError {
                throw error
            } catch {
                releaseLane(broken: true)
            }
        }
        if !laneHeld {
            // What the node may not hold goes again, from the mark it wrote.
            buffer.insert(contentsOf: unacknowledged, at: 0)
            unacknowledged.removeAll(keepingCapacity: true)
        }
        // Else the node took every published byte: this request writes them with the rest.
        do {
            try send(sync: sync)
        } catch let error as MoraineError where Self.isResendable(error) && !unacknowledged.isEmpty {
            // The node took them but its write failed after it answered (ENOSPC, EIO) and cut
            // the file back to the written mark: everything past the mark goes again.
            buffer.insert(contentsOf: unacknowledged, at: 0)
            unacknowledged.removeAll(keepingCapacity: true)
            try send(sync: sync)
        }
    }

    /// After quiet appends: one answered append on the lane, which runs after them, so its
    /// answer acknowledges them all (were it sent through the pool it could arrive first and
    /// find a gap). It carries what is buffered when that fits in one request, with the sync;
    /// true when it did (nothing is left to send).
    private func settleOnLane(_ client: DirectTCPClient, sync: Bool) throws -> Bool {
        let carried = buffer.count <= Self.appendBytesMax
        let start = sent + UInt64(unacknowledged.count)
        let request = StorageAppend(
            file: file, offset: start, mode: sync && carried ? .sync : .write, epoch: fileSystem.epoch(ofRoot: leaseRoot),
            bytes: carried ? buffer : [])
        if carried {
            unacknowledged.append(contentsOf: buffer)
            buffer.removeAll(keepingCapacity: true)
        }
        try sendAnswered(request, on: client, end: start + UInt64(request.bytes.count))
        return carried
    }

    /// Sends an append on the TCP lane and waits for its answer, which acknowledges it and,
    /// as it ran after them, every quiet append before it. Its bytes are already counted in
    /// `unacknowledged`, where a failure leaves them to be sent again.
    private func sendAnswered(_ request: StorageAppend, on client: DirectTCPClient, end: UInt64) throws {
        let id = try client.send(opcode: StorageOpcode.append, payload: .bytes(request.encoded()))
        fileSystem.countRequest()
        inFlight.append((id, end))
        let response = try client.receive(requestID: id, timeoutNanos: fileSystem.options.callTimeoutNanos)
        quietRun = 0
        try acknowledge(response, end: end)
    }

    /// Sends what is buffered, after what the node already holds, in requests of at most
    /// `appendBytesMax`, each waiting for its reply (which writes everything the node holds);
    /// the last one syncs when asked (an empty buffer still syncs).
    private func send(sync: Bool) throws {
        var start = 0
        // Bytes a request landed are let go even when a later one fails, so that a retry starts
        // after them (sent has moved past them).
        defer { if start == buffer.count { buffer.removeAll(keepingCapacity: true) } else { buffer.removeFirst(start) } }
        repeat {
            let end = min(buffer.count, start + Self.appendBytesMax)
            let last = end == buffer.count
            let offset = sent + UInt64(unacknowledged.count)
            let request = StorageAppend(
                file: file, offset: offset, sync: sync && last, epoch: fileSystem.epoch(ofRoot: leaseRoot),
                bytes: Array(buffer[start..<end]))
            let reply = try decodeReply(try fileSystem.call(StorageOpcode.append, request))
            let expected = offset + UInt64(end - start)
            guard reply.sizeBytes == expected, reply.writtenBytes == expected else {
                throw MoraineError(
                    .corruption,
                    "storage node holds \(reply.sizeBytes) bytes of \(file) (\(reply.writtenBytes) written) after an append "
                        + "that should end at \(expected)")
            }
            unacknowledged.removeAll(keepingCapacity: true)
            sent = expected
            start = end
        } while start < buffer.count
    }

    private func decodeReply(_ reply: [UInt8]) throws(MoraineError) -> StorageAppendReply {
        do throws(TransportError) {
            return try StorageAppendReply.decode(reply)
        } catch {
            throw error.moraineError
        }
    }
}

extension Array {
    /// The element at `index`, or nil past the end.
    fileprivate func element(at index: Int) -> Element? { index < count ? self[index] : nil }
}

/// A file on a storage node, read at offsets.
final class RemoteRandomAccessFile: RandomAccessFile, @unchecked Sendable {
    private let fileSystem: RemoteFileSystem
    let file: StorageFile
    let size: UInt64

    init(fileSystem: RemoteFileSystem, file: StorageFile, size: UInt64) {
        self.fileSystem = fileSystem
        self.file = file
        self.size = size
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let length = min(buffer.count - done, StorageNode.readBytesMax)
            let bytes = try fileSystem.call(
                StorageOpcode.read, StorageRead(file: file, offset: offset + UInt64(done), length: UInt32(length)))
            guard bytes.count <= length else {
                throw MoraineError(.corruption, "storage node sent \(bytes.count) bytes for a read of \(length) from \(file)")
            }
            bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + bytes.count]).copyMemory(from: $0) }
            done += bytes.count
            if bytes.count < length { break }  // the end of the file
        }
        return done
    }
}

/// A database's lease on a storage node, renewed until unlocked.
final class RemoteLease: FileLock, @unchecked Sendable {
    private let fileSystem: RemoteFileSystem
    private let database: String
    private let state = ConditionLock()
    /// Guarded by `state`.
    private var epoch: UInt64
    private var released = false
    private var renewing = true
    /// Why the lease was lost, once it was.
    private var lost: MoraineError? = nil

    init(fileSystem: RemoteFileSystem, database: String) throws {
        self.fileSystem = fileSystem
        self.database = database
        let request = StorageLease(database: database, owner: fileSystem.leaseOwner, epoch: 0, ttlMillis: fileSystem.options.leaseTTLMillis)
        let reply = try fileSystem.call(StorageOpcode.leaseAcquire, request)
        epoch = try StorageLeaseReply.decode(reply).epoch
        fileSystem.setEpoch(epoch, of: database)
        startThread(name: "lease-renew") { [self] in renewLoop() }
    }

    /// The epoch this lease holds.
    var currentEpoch: UInt64 { state.withLock { epoch } }

    /// Why the lease is lost (a newer owner exists), or nil while it is held.
    var lostReason: MoraineError? { state.withLock { lost } }

    func unlock() {
        let held: UInt64? = state.withLock {
            guard !released else { return nil }
            released = true
            state.broadcast()
            while renewing { state.wait() }
            return epoch
        }
        guard let held else { return }
        fileSystem.setEpoch(nil, of: database)
        let request = StorageLease(database: database, owner: fileSystem.leaseOwner, epoch: held, ttlMillis: 0)
        _ = try? fileSystem.call(StorageOpcode.leaseRelease, request)
    }

    deinit { unlock() }

    /// Renews every third of the TTL until unlocked or fenced. While the node cannot be reached
    /// the lease stays ours on the node's side (no other owner can take it from a node that is
    /// down), so renewal just goes on.
    private func renewLoop() {
        defer { state.withLock { renewing = false; state.broadcast() } }
        let period = Int64(fileSystem.options.leaseTTLMillis) * 1_000_000 / 3
        while true {
            let stop: Bool = state.withLock {
                let until = monotonicNanos() + period
                while !released, monotonicNanos() < until { state.wait(seconds: Double(until - monotonicNanos()) / 1e9) }
                return released
            }
            if stop { return }
            let request = StorageLease(
                database: database, owner: fileSystem.leaseOwner, epoch: currentEpoch, ttlMillis: fileSystem.options.leaseTTLMillis)
            do throws(MoraineError) {
                _ = try fileSystem.call(StorageOpcode.leaseRenew, request)
            } catch {
                guard error.kind == .fenced else { continue }  // unreachable: keep trying
                state.withLock { lost = error }
                SystemLog.warning("storage: lease of database \(database) lost: \(error.message)")
                return
            }
        }
    }
}
