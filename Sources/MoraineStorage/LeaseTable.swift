// One writer per database, fenced. A database's lease is held by one owner (a compute process)
// for a TTL it renews; each new grant raises the database's epoch, which the node persists
// (`DATA/.moraine/epochs/<database>`, written to a temporary, synced, renamed, and the directory
// synced) before it answers. Every mutation carries the epoch of the lease its sender holds:
//   - epoch equal to the database's current epoch: allowed, even when the lease has lapsed but
//     nobody took it since (no newer owner exists whose data could be hurt);
//   - any other epoch: refused as `fenced`.
// A new grant is possible only while no unexpired lease of another owner exists. After a restart
// of the node the epochs are read back from disk and no lease is held: the old owner's next
// renewal, with the current epoch, takes it up again, so a restart costs only its outage.
//
// Thread-safe: one lock; the disk write of a new epoch happens under it (grants are rare).
import MoraineSystem
import MoraineTransport
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

final class LeaseTable: Sendable {
    private struct Lease {
        var owner: String
        var expiresNanos: Int64
    }

    private struct State {
        var epochs: [String: UInt64] = [:]
        var leases: [String: Lease] = [:]
    }

    private let directory: String
    private let clock: @Sendable () -> Int64
    private let state = Mutex(State())
    /// The longest TTL granted; a longer request is cut to it.
    static let ttlMillisMax: UInt32 = 600_000

    init(directory: String, clock: @escaping @Sendable () -> Int64) throws(TransportError) {
        self.directory = directory
        self.clock = clock
        do {
            try PosixFileSystem.shared.createDirectory(directory)
        } catch {
            throw TransportError(.io, "cannot create the lease directory \(directory): \(error)")
        }
    }

    /// Each database root this node has seen since it started: its newest epoch, and whether a
    /// lease on it runs now.
    func epochs() -> [(root: String, epoch: UInt64, leased: Bool)] {
        let now = clock()
        return state.withLock { state in
            state.epochs.sorted { $0.key < $1.key }.map { root, epoch in
                (root, epoch, state.leases[root].map { $0.expiresNanos > now } ?? false)
            }
        }
    }

    /// Grants the lease of `root` to `owner`, with a new epoch.
    /// - Throws: `.busy` while another owner's lease runs; `.io` when the epoch cannot be persisted.
    func acquire(_ root: String, owner: String, ttlMillis: UInt32) throws(TransportError) -> UInt64 {
        let ttl = min(max(ttlMillis, 1), Self.ttlMillisMax)
        let now = clock()
        let result: Result<UInt64, TransportError> = state.withLock { state in
            if let lease = state.leases[root], lease.expiresNanos > now, lease.owner != owner {
                return .failure(
                    TransportError(
                        .busy,
                        "database \(root) is leased to \(lease.owner) for \((lease.expiresNanos - now) / 1_000_000) ms more"
                            + " (epoch \(state.epochs[root] ?? 0))"))
            }
            let epoch: UInt64
            do throws(TransportError) {
                epoch = try Self.epoch(of: root, in: &state, directory: directory) + 1
                try Self.persist(epoch, of: root, directory: directory)
            } catch {
                return .failure(error)
            }
            state.epochs[root] = epoch
            state.leases[root] = Lease(owner: owner, expiresNanos: now + Int64(ttl) * 1_000_000)
            return .success(epoch)
        }
        return try result.get()
    }

    /// Extends the lease of `root` held at `epoch`.
    /// - Throws: `.fenced` when a newer epoch exists (someone else owns the database now).
    func renew(_ root: String, owner: String, epoch: UInt64, ttlMillis: UInt32) throws(TransportError) {
        let ttl = min(max(ttlMillis, 1), Self.ttlMillisMax)
        let now = clock()
        let failure: TransportError? = state.withLock { state in
            do throws(TransportError) {
                try Self.check(epoch, of: root, in: &state, directory: directory)
            } catch {
                return error
            }
            state.leases[root] = Lease(owner: owner, expiresNanos: now + Int64(ttl) * 1_000_000)
            return nil
        }
        if let failure { throw failure }
    }

    /// Gives the lease back (an epoch that is not current is ignored: it was already lost).
    func release(_ root: String, epoch: UInt64) {
        state.withLock { state in
            if state.epochs[root] == epoch { state.leases[root] = nil }
        }
    }

    /// Throws unless `epoch` is the current epoch of `root` (0 for a database never leased).
    func checkMutation(_ root: String, epoch: UInt64) throws(TransportError) {
        let failure: TransportError? = state.withLock { state in
            do throws(TransportError) {
                try Self.check(epoch, of: root, in: &state, directory: directory)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// The current epoch of `root` (0: never leased).
    func currentEpoch(_ root: String) throws(TransportError) -> UInt64 {
        let result: Result<UInt64, TransportError> = state.withLock { state in
            Result { () throws(TransportError) -> UInt64 in try Self.epoch(of: root, in: &state, directory: directory) }
        }
        return try result.get()
    }

    private static func check(_ epoch: UInt64, of root: String, in state: inout State, directory: String) throws(TransportError) {
        let current = try Self.epoch(of: root, in: &state, directory: directory)
        guard epoch == current else {
            throw TransportError(
                .fenced,
                epoch < current
                    ? "database \(root): epoch \(epoch) is older than the owner's \(current); this writer lost its lease"
                    : "database \(root): epoch \(epoch) was never granted (the current one is \(current))")
        }
    }

    private static func epoch(of root: String, in state: inout State, directory: String) throws(TransportError) -> UInt64 {
        if let known = state.epochs[root] { return known }
        let path = directory + "/" + root
        let bytes: [UInt8]
        do {
            guard try PosixFileSystem.shared.exists(path) else {
                state.epochs[root] = 0
                return 0
            }
            bytes = try PosixFileSystem.shared.readAll(path)
        } catch {
            throw TransportError(.io, "cannot read the epoch of database \(root) from \(path): \(error)")
        }
        let text = String(decoding: bytes, as: UTF8.self).trimmingSuffix(while: { $0 == "\n" })
        guard let epoch = UInt64(text) else {
            throw TransportError(.corruption, "the epoch file \(path) holds \(StorageName.quoted(text)), not a number")
        }
        state.epochs[root] = epoch
        return epoch
    }

    private static func persist(_ epoch: UInt64, of root: String, directory: String) throws(TransportError) {
        let path = directory + "/" + root
        let temporary = directory + "/.tmp-" + root  // a root never starts with "."
        do {
            let file = try PosixFileSystem.shared.createWritable(temporary)
            try file.append(Array("\(epoch)\n".utf8))
            try file.sync()
            try file.close()
            try PosixFileSystem.shared.rename(temporary, to: path)
            try PosixFileSystem.shared.syncDirectory(directory)
        } catch {
            throw TransportError(.io, "cannot persist epoch \(epoch) of database \(root) at \(path): \(error)")
        }
    }
}

extension String {
    fileprivate func trimmingSuffix(while predicate: (Character) -> Bool) -> String {
        var text = self
        while let last = text.last, predicate(last) { text.removeLast() }
        return text
    }
}
