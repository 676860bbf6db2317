// Where a write group becomes durable before it reaches the memtable: a WAL file (durability
// `wal`) or a persistent log in a persistent-memory arena (durability `pmem`). One commit log
// belongs to one memtable and carries its log number; it is released (file deleted, arena
// freed) once a manifest edit with a later log number is durable.
// Thread-safety: written only by the write-group leader, under the engine's write protocol.
import MoraineFormat
import MoraineSystem

/// The active memtable's log.
final class CommitLog {
    let number: UInt64
    private let wal: LogWriter?
    private let pmem: PmemLogWriter?

    init(number: UInt64, wal: LogWriter) {
        self.number = number
        self.wal = wal
        self.pmem = nil
    }

    init(number: UInt64, pmem: PmemLogWriter) {
        self.number = number
        self.wal = nil
        self.pmem = pmem
    }

    /// Whether a record of `bytes` fits (a WAL file always has room).
    func hasRoom(forRecordBytes bytes: Int) -> Bool {
        pmem?.hasRoom(payloadBytes: bytes) ?? true
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

    /// Makes everything appended durable before a newer log takes over (a WAL syncs and
    /// closes; a persistent log already is).
    func retire() throws {
        if let wal {
            try wal.file.sync()
            try wal.file.close()
        }
    }

    /// Closes without syncing (the next open replays what the kernel has).
    func close() throws {
        try wal?.file.close()
    }
}
