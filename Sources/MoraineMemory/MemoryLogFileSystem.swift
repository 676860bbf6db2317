// A cluster's file system with the databases' write logs kept in arenas of the memory node's
// region, by request: `pmem` durability for a compute node that cannot map the region (another
// box, or a node serving it by request only). The engine writes its WAL as it always does; this
// seam puts each `NNNNNN.log` in an arena tagged with the log number, appends a write group there
// in one request at the expected offset (durable in the region before the reply, so before the
// write is acknowledged), reads the log back by request at the next open, and gives the arena
// back when the engine deletes the log (after the manifest edit that flushed its memtable is
// durable). Every other file is the storage node's (`base`).
//
// Why the memtable (the index) stays in the compute node: a request to the memory node costs
// tens of microseconds (BENCHMARKS.md, "Memory node"), a read of a memtable in this process well
// under one; a write group costs one request either way (docs/MEMORY.md, "Memtables across boxes").
//
// The logs are also seen where the engine does not place new ones there (`placesNewLogs` false:
// `wal` durability, or a compute node that maps the region): listed, read and deleted, so logs
// an owner on another box left are replayed, never taken for absent.
//
// Thread-safety: the file system is shared by all threads; a log file has one writer at a time.
import MoraineEngine
import MoraineMemtable
import MoraineMessages
import MoraineSystem
import Synchronization

/// Write logs in the memory node's arenas, every other file on `base`.
public final class MemoryLogFileSystem: LeasedFileSystem, Sendable {
    public let base: any FileSystem
    public let arenas: MemoryNodeArenas
    /// Whether new logs are made in arenas (else on `base`).
    public let placesNewLogs: Bool

    public init(base: any FileSystem, arenas: MemoryNodeArenas, placesNewLogs: Bool) {
        self.base = base
        self.arenas = arenas
        self.placesNewLogs = placesNewLogs
        arenas.logsAreFiles.store(true, ordering: .relaxed)
    }

    public func leaseEpoch(of database: String) -> UInt64 { (base as? any LeasedFileSystem)?.leaseEpoch(of: database) ?? 0 }

    /// The directory and log number of `path` when it names a write log.
    private static func log(_ path: String) -> (directory: String, number: UInt64)? {
        guard let slash = path.lastIndex(of: "/") else { return nil }
        guard case .log(let number) = DatabaseFile(name: String(path[path.index(after: slash)...])) else { return nil }
        return (String(path[..<slash]), number)
    }

    /// The arena holding log `number` of `directory`, if one does; `fresh` asks the node (for
    /// its length) even where this process owns the database.
    private func arena(_ directory: String, _ number: UInt64, fresh: Bool = false) throws -> MemoryArena? {
        try arenas.logs(database: directory, fresh: fresh).first { $0.tag == number }
    }

    // MARK: Writing

    public func createWritable(_ path: String) throws -> any WritableFile {
        try createWritable(path, hint: .log)
    }

    public func createWritable(_ path: String, hint: WriteHint) throws -> any WritableFile {
        guard placesNewLogs, let (directory, number) = Self.log(path) else { return try base.createWritable(path, hint: hint) }
        if let old = try arena(directory, number) { try arenas.releaseLog(database: directory, arena: old) }  // truncated
        return try newLog(directory, number)
    }

    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        guard placesNewLogs, let (directory, number) = Self.log(path) else { return try base.createNew(path, hint: hint) }
        if try arena(directory, number) != nil || base.exists(path) {
            throw MoraineError(.invalid, "\(path) already exists (a log number used twice)")
        }
        return try newLog(directory, number)
    }

    private func newLog(_ directory: String, _ number: UInt64) throws -> any WritableFile {
        let arena = try arenas.createLog(database: directory, tag: number)
        return MemoryLogFile(arenas: arenas, database: directory, arena: arena, capacity: try arenas.logCapacity, length: 0)
    }

    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile {
        guard let (directory, number) = Self.log(path), let arena = try arena(directory, number, fresh: true) else {
            return try base.openForAppend(path, hint: hint)
        }
        return MemoryLogFile(arenas: arenas, database: directory, arena: arena, capacity: try arenas.logCapacity, length: arena.logLength)
    }

    // MARK: Reading

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        guard let (directory, number) = Self.log(path), let arena = try arena(directory, number, fresh: true) else {
            return try base.openRandomAccess(path)
        }
        return MemoryLogReadFile(arenas: arenas, database: directory, arena: arena)
    }

    public func openDirect(_ path: String) throws -> any RandomAccessFile {
        Self.log(path) == nil ? try base.openDirect(path) : try openRandomAccess(path)
    }

    public func openMapped(_ path: String) throws -> any RandomAccessFile {
        Self.log(path) == nil ? try base.openMapped(path) : try openRandomAccess(path)
    }

    public func readAll(_ path: String) throws -> [UInt8] {
        guard let (directory, number) = Self.log(path), let arena = try arena(directory, number, fresh: true) else {
            return try base.readAll(path)
        }
        return try MemoryLogReadFile(arenas: arenas, database: directory, arena: arena).readAll()
    }

    public func read(batch: UnsafeMutableBufferPointer<BatchRead>) {
        if batch.contains(where: { $0.file is MemoryLogReadFile }) { return readOneByOne(batch) }
        base.read(batch: batch)
    }

    // MARK: The directory

    /// A log is there when its arena is. A directory is there when `base` has it, or when the node
    /// holds logs of a database of that name (a database whose directory went while its logs
    /// stayed: an open must see them, never create a database over them).
    public func exists(_ path: String) throws -> Bool {
        if let (directory, number) = Self.log(path) { return try arena(directory, number) != nil || base.exists(path) }
        if try base.exists(path) { return true }
        let name = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
        if DatabaseFile(name: name) != nil { return false }  // a database's file, not a directory
        return try !arenas.logs(database: path).isEmpty
    }

    public func fileSize(_ path: String) throws -> UInt64 {
        guard let (directory, number) = Self.log(path), let arena = try arena(directory, number, fresh: true) else {
            return try base.fileSize(path)
        }
        return arena.logLength
    }

    /// The directory's files on `base` and its logs at the memory node. A node that cannot be
    /// asked fails the listing: logs there must never look absent.
    public func children(of directory: String) throws -> [String] {
        let names: [String]
        do {
            names = try base.children(of: directory)
        } catch let error as MoraineError where error.kind == .notFound {
            let logs = try arenas.logs(database: directory)
            if logs.isEmpty { throw error }
            return logs.map { DatabaseFile.log($0.tag).name }
        }
        let logs = try arenas.logs(database: directory)
        if logs.isEmpty { return names }
        let present = Set(names)
        return names + logs.map { DatabaseFile.log($0.tag).name }.filter { !present.contains($0) }
    }

    public func createDirectory(_ path: String) throws { try base.createDirectory(path) }

    public func remove(_ path: String) throws {
        guard let (directory, number) = Self.log(path), let arena = try arena(directory, number) else { return try base.remove(path) }
        try arenas.releaseLog(database: directory, arena: arena)
    }

    /// A log in an arena moves to `base` (an open setting it aside in `lost/`, a repair): its
    /// bytes are written there and synced, then its arena goes back. Any other file is `base`'s.
    public func rename(_ source: String, to target: String) throws {
        guard let (directory, number) = Self.log(source), let arena = try arena(directory, number, fresh: true) else {
            return try base.rename(source, to: target)
        }
        let bytes = try MemoryLogReadFile(arenas: arenas, database: directory, arena: arena).readAll()
        if try base.exists(target) { try base.remove(target) }
        let file = try base.createNew(target, hint: .bulk)
        try bytes.withUnsafeBytes { try file.append($0) }
        try file.sync()
        try file.close()
        try base.syncDirectory(target.lastIndex(of: "/").map { String(target[..<$0]) } ?? ".")
        try arenas.releaseLog(database: directory, arena: arena)
    }

    /// A log's arena is the node's record of it from the grant on: only `base` has directories.
    public func syncDirectory(_ directory: String) throws { try base.syncDirectory(directory) }

    /// The lock of a database whose directory went while its logs stayed here makes the
    /// directory again (a destroy or a repair takes it).
    /// Taking or giving up the lock starts or ends an owner's session: what this process knew of
    /// the database's logs is forgotten then (another process may have owned it meanwhile).
    public func lock(_ path: String) throws -> any FileLock {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        arenas.forgetOwnedLogs(database: directory)
        let held: any FileLock
        do {
            held = try base.lock(path)
        } catch let error as MoraineError where error.kind == .notFound {
            guard try !base.exists(directory), try !arenas.logs(database: directory).isEmpty else { throw error }
            try base.createDirectory(directory)
            held = try base.lock(path)
        }
        return SessionLock(held: held) { [arenas] in arenas.forgetOwnedLogs(database: directory) }
    }
}

/// A database's lock that forgets what this process knew of its logs when given up.
final class SessionLock: FileLock, @unchecked Sendable {
    let held: any FileLock
    let ended: @Sendable () -> Void

    init(held: any FileLock, ended: @escaping @Sendable () -> Void) {
        self.held = held
        self.ended = ended
    }

    func unlock() {
        ended()
        held.unlock()
    }

    deinit { ended() }
}

/// A write log being appended to in an arena: bytes wait here until `flush`, which sends them in
/// requests of at most 4 MiB at the offset the node's copy ends; a failed request keeps them,
/// and sending them again is harmless (the node keeps what it holds).
final class MemoryLogFile: WritableFile {
    let arenas: MemoryNodeArenas
    let database: String
    let arena: MemoryArena
    let capacity: UInt64?
    /// Bytes the node holds.
    private var persisted: UInt64
    private var pending: [UInt8] = []
    static let requestBytes = 4 << 20

    init(arenas: MemoryNodeArenas, database: String, arena: MemoryArena, capacity: UInt64, length: UInt64) {
        self.arenas = arenas
        self.database = database
        self.arena = arena
        self.capacity = capacity
        self.persisted = length
    }

    var size: UInt64 { persisted + UInt64(pending.count) }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        if let capacity, size + UInt64(bytes.count) > capacity {
            throw MoraineError(.noSpace, "\(database) log \(arena.tag): \(size + UInt64(bytes.count)) bytes pass its arena's \(capacity)")
        }
        pending.append(contentsOf: bytes)
    }

    func flush() throws {
        var sent = 0
        defer { pending.removeFirst(sent) }
        while sent < pending.count {
            let end = min(pending.count, sent + Self.requestBytes)
            let length = try arenas.appendLog(database: database, arena: arena, offset: persisted, bytes: Array(pending[sent..<end]))
            guard length == persisted + UInt64(end - sent) else {
                throw MoraineError(
                    .corruption, "\(database) log \(arena.tag): the memory node holds \(length) bytes after an append to \(persisted + UInt64(end - sent))")
            }
            persisted = length
            sent = end
        }
    }

    /// Every flushed byte is already durable in the region.
    func sync() throws { try flush() }

    func close() throws { try flush() }
}

/// A write log in an arena, read by request (a recovery reads it once, start to end).
final class MemoryLogReadFile: RandomAccessFile, @unchecked Sendable {
    let arenas: MemoryNodeArenas
    let database: String
    let arena: MemoryArena

    init(arenas: MemoryNodeArenas, database: String, arena: MemoryArena) {
        self.arenas = arenas
        self.database = database
        self.arena = arena
    }

    var size: UInt64 { arena.logLength }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count, offset + UInt64(done) < size {
            let count = min(buffer.count - done, MemoryLogRead.countMax)
            let bytes = try arenas.readLog(database: database, arena: arena, offset: offset + UInt64(done), count: count)
            if bytes.isEmpty { break }
            guard bytes.count <= count else {
                throw MoraineError(.corruption, "\(database) log \(arena.tag): the memory node sent \(bytes.count) bytes for \(count)")
            }
            bytes.withUnsafeBytes { (buffer.baseAddress! + done).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            done += bytes.count
        }
        return done
    }

    func readAll() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let count = try bytes.withUnsafeMutableBytes { try read(at: 0, into: $0) }
        return Array(bytes[0..<count])
    }

    func prefetch(at offset: UInt64, length: Int) -> Bool { false }
}
