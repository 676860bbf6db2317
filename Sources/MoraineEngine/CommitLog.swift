// Where a write group becomes durable before it reaches the memtable: a WAL file (durability
// `wal`) or a persistent log in a persistent-memory arena (durability `pmem`). One commit log
// belongs to one memtable and carries its log number; it is released (file deleted, arena
// freed) once a manifest edit with a later log number is durable.
// Thread-safety: appended to only by the write-group leader, under the engine's write protocol;
// once retired, synced and closed from any thread.
import MoraineFormat
import MoraineSystem

/// The active memtable's log.
final class CommitLog {
    let number: UInt64
    private let wal: LogWriter?
    private let pmem: PmemLogWriter?
    /// Guards a retired WAL's sync and close, which the write leader and the thread deleting
    /// the log may both reach.
    private let retiredLock = ConditionLock()
    private var retired = false
    private var synced = false
    private var closed = false

    /// The most bytes the WAL's file holds, where bounded (a log in a memory node's arena).
    let walCapacity: UInt64?

    init(number: UInt64, wal: LogWriter) {
        self.number = number
        self.wal = wal
        self.pmem = nil
        self.walCapacity = wal.file.capacity
    }

    init(number: UInt64, pmem: PmemLogWriter) {
        self.number = number
        self.wal = nil
        self.pmem = pmem
        self.walCapacity = nil
    }

    /// Whether a record of `bytes` fits (a WAL file has room unless its file is bounded).
    func hasRoom(forRecordBytes bytes: Int) -> Bool {
        if let pmem { return pmem.hasRoom(payloadBytes: bytes) }
        guard let walCapacity, let wal else { return true }
        return wal.length + UInt64(LogWriter.framedBytesMax(payload: bytes)) <= walCapacity
    }

    /// Appends one record. WAL: synced when `sync`, else handed to the kernel. PMem: persisted
    /// (flushed and fenced, then published) whatever `sync` says.
    func append(_ record: [UInt8], sync: Bool) throws {
        if let wal {
            try wal.addRecord(record)
            if sync { try wal.file.sync() } else { try wal.file.flush() }
        } else {
            try record.withUnsafeBytes { try pmem!.append($0) }
        }
    }

    /// Sends again what an append that failed left buffered (synced when `sync`): the WAL's
    /// file keeps every byte until its storage acknowledges it (Engine+Resume).
    func settle(sync: Bool) throws {
        guard let wal else { return }
        if sync { try wal.file.sync() } else { try wal.file.flush() }
    }

    /// Hands a WAL's buffered bytes to the kernel as a newer log takes over, without a sync:
    /// syncing here made every memtable switch wait for the disk in the write path, and
    /// wrote to disk WALs that are usually deleted (their memtable flushed) before the kernel
    /// writes them back. What stays owed: `syncRetired` before any later sync write counts,
    /// and the next WAL's `WALPredecessor` record for recovery. A persistent log already is
    /// durable. Returns the predecessor record for the next WAL (nil for a persistent log).
    func retire(lastSequence: SequenceNumber) throws -> WALPredecessor? {
        guard let wal else { return nil }
        try retiredLock.withLock {
            try wal.file.flush()
            retired = true
        }
        return WALPredecessor(logNumber: number, length: wal.length, lastSequence: lastSequence)
    }

    /// Makes a retired WAL durable (once; later calls and a closed log do nothing). A sync
    /// write calls it for every retired WAL before its own sync, so it never outlives an
    /// earlier write. Safe to call from any thread.
    func syncRetired() throws {
        guard let wal else { return }
        try retiredLock.withLock {
            guard retired, !synced, !closed else { return }
            try wal.file.sync()
            synced = true
        }
    }

    /// Closes without syncing (the next open replays what the kernel has). Safe to call from
    /// any thread, more than once.
    func close() throws {
        try retiredLock.withLock {
            guard !closed else { return }
            closed = true
            try wal?.file.close()
        }
    }
}
