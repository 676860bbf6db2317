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
final class RemoteWritableFile: WritableFile {
    private let fileSystem: RemoteFileSystem
    private let file: StorageFile
    private var buffer: [UInt8] = []
    private let bufferBytes: Int
    /// Bytes the node has acknowledged.
    private var sent: UInt64 = 0
    private var closed = false
    /// The largest append one request carries.
    static let appendBytesMax = 4 << 20

    init(fileSystem: RemoteFileSystem, file: StorageFile, hint: WriteHint) {
        self.fileSystem = fileSystem
        self.file = file
        bufferBytes = hint == .bulk ? 1 << 20 : 64 << 10
        buffer.reserveCapacity(bufferBytes)
    }

    var size: UInt64 { sent + UInt64(buffer.count) }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw MoraineError(.closed, "append to closed file \(file)") }
        buffer.append(contentsOf: bytes)
        if buffer.count >= bufferBytes { try send(sync: false) }
    }

    func flush() throws {
        guard !buffer.isEmpty else { return }
        try send(sync: false)
    }

    func sync() throws {
        guard !closed else { throw MoraineError(.closed, "sync of closed file \(file)") }
        try send(sync: true)
    }

    func close() throws {
        guard !closed else { return }
        closed = true
        if !buffer.isEmpty { try send(sync: false) }
        _ = try fileSystem.call(StorageOpcode.close, StorageFileQuery(file: file))
    }

    /// Sends what is buffered in requests of at most `appendBytesMax`; the last one syncs when asked.
    private func send(sync: Bool) throws {
        var start = 0
        repeat {
            let end = min(buffer.count, start + Self.appendBytesMax)
            let last = end == buffer.count
            let request = StorageAppend(
                file: file, offset: sent, sync: sync && last, epoch: fileSystem.epoch(of: file.database),
                bytes: Array(buffer[start..<end]))
            let reply = try fileSystem.call(StorageOpcode.append, request)
            let size = try decodeSize(reply)
            guard size == sent + UInt64(end - start) else {
                throw MoraineError(
                    .corruption, "storage node holds \(size) bytes of \(file) after an append that should end at \(sent + UInt64(end - start))")
            }
            sent = size
            start = end
        } while start < buffer.count
        buffer.removeAll(keepingCapacity: true)
    }

    private func decodeSize(_ reply: [UInt8]) throws(MoraineError) -> UInt64 {
        do throws(TransportError) {
            return try StorageSize.decode(reply).sizeBytes
        } catch {
            throw error.moraineError
        }
    }
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
        let request = StorageLease(database: database, owner: fileSystem.options.owner, epoch: 0, ttlMillis: fileSystem.options.leaseTTLMillis)
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
        let request = StorageLease(database: database, owner: fileSystem.options.owner, epoch: held, ttlMillis: 0)
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
                database: database, owner: fileSystem.options.owner, epoch: currentEpoch, ttlMillis: fileSystem.options.leaseTTLMillis)
            do throws(MoraineError) {
                _ = try fileSystem.call(StorageOpcode.leaseRenew, request)
            } catch {
                guard error.kind == .fenced else { continue }  // unreachable: keep trying
                state.withLock { lost = error }
                SystemLog.info("storage: lease of database \(database) lost: \(error.message)")
                return
            }
        }
    }
}
