// Riding out an unreachable storage node (RocksDB's auto-recovery from retryable errors). A
// failure of kind `unavailable` says the file system could not reach the files — nothing is
// known to be damaged — so it stops writes only until the files answer again, instead of until
// a reopen as any other I/O failure does:
//
// - A write group whose WAL append failed so has an unknown outcome: its record may be on the
//   node. It is kept (`PendingGroup`), and the writers hear `unavailable`. Files of a storage
//   node keep every byte appended until the node acknowledges it (RemoteWritableFile), so the
//   record is whole in the WAL's buffer, never half.
// - The next write (or flush) resumes: it settles the WAL (sends what is buffered again, at its
//   offset; the node recognises bytes it already has), applies the pending group to the
//   memtable as a recovery would, clears the error and wakes the background work, which retries
//   the flush or compaction that failed. A group that never reached the WAL is dropped.
//   While the node is still down the attempt fails with `unavailable` within the file system's
//   call deadline, and the write with it.
//
// So a failed write is settled as applied or as never made, the same way for a read now and
// for a reopen later. A background error of any other kind still stops writes until reopened.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

/// A write group whose WAL append failed with `unavailable`.
struct PendingGroup {
    var batch: WriteBatch
    var memtable: MemTable
    var log: CommitLog?
    var sync: Bool
    /// Whether the record was handed to the WAL (false: a retired WAL's sync failed first).
    var inWAL: Bool
}

extension Engine {
    /// Whether `error` only says the files could not be reached.
    static func isRetryable(_ error: MoraineError) -> Bool { error.kind == .unavailable }

    /// Records a background error: one of kind `unavailable` stops writes until the files
    /// answer again, any other until the database is reopened. The first error stays.
    /// Precondition: `mutex` held.
    func recordBackgroundError(_ failure: MoraineError, _ what: String) {
        guard backgroundError == nil else { return }
        if Self.isRetryable(failure) {
            backgroundErrorRetryable = true
            backgroundError = MoraineError(
                failure.kind, "\(what) failed; writes resume once the storage answers again: \(failure.message)")
            SystemLog.warning("engine: \(path): \(backgroundError!.message)")
        } else {
            backgroundErrorRetryable = false
            backgroundError = MoraineError(failure.kind, "\(what) failed, database is read-only until reopened: \(failure.message)")
        }
        event("background error: \(backgroundError!.message)")
    }

    /// Settles a pending group and clears a retryable background error. Called by the write
    /// leader with `mutex` held (released meanwhile).
    /// - Throws: the failure when the files still do not answer (the error stays, retryable),
    ///   or a failure of another kind (the error becomes sticky).
    func resumeAfterOutage() throws {
        guard backgroundErrorRetryable, backgroundError != nil else { return }
        let pending = pendingGroup
        mutex.unlock()
        var failure: MoraineError? = nil
        do {
            if let pending, pending.inWAL, let log = pending.log {
                try log.settle(sync: pending.sync)
                let first = pending.batch.sequence
                var seq = first
                try pending.batch.forEach { type, key, value in
                    pending.memtable.add(sequence: seq, type: type, key: key, value: value)
                    seq += 1
                }
            } else {
                // Nothing to settle: ask the directory, as a probe.
                _ = try fileSystem.exists(path)
            }
        } catch {
            failure = asMoraineError(error)
        }
        mutex.lock()
        if let failure {
            if !Self.isRetryable(failure) {
                backgroundErrorRetryable = false
                backgroundError = MoraineError(
                    failure.kind, "resuming after an outage failed, database is read-only until reopened: \(failure.message)")
            }
            throw failure
        }
        if let pending, pending.inWAL {
            let last = pending.batch.sequence + SequenceNumber(pending.batch.count) - 1
            if last > lastSequence.load(ordering: .acquiring) { lastSequence.store(last, ordering: .releasing) }
            counters.update {
                $0.writeGroups += 1
                $0.walBytes += pending.batch.sizeBytes
            }
        }
        pendingGroup = nil
        backgroundError = nil
        backgroundErrorRetryable = false
        counters.update { $0.resumes += 1 }
        SystemLog.info("engine: \(path): the storage answers again; writes resume")
        event("the storage answers again; writes resume")
        mutex.broadcast()
    }
}
