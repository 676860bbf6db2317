// The storage node: serves the files of many databases under one data directory, through the
// same POSIX file system (and io_uring queue) the embedded engine uses. Files are named by
// (database, name), confined to `DATA/<database>/` (StorageName); mutations are fenced by the
// database's lease epoch (LeaseTable). The node keeps a table of files being written (their
// handle and size, so an append at an expected offset can be checked and a retried one
// recognised) and a bounded cache of read handles; a create, remove or rename drops the entries
// of the names it touches, so no handle outlives its file.
//
// Durability: an append returns once its bytes are written to the kernel (pwrite): a node killed
// with SIGKILL loses nothing it acknowledged; with `sync` it also returns after fdatasync. A
// deferred append (one a writer published into a ring) is taken into the file's buffer and
// written, with the others of its run, once the connection has run the requests it had (the
// router's `drained`); its reply says how far the file is written, and the writer keeps every
// byte past that mark, so a node killed before the write loses nothing the writer cannot send
// again.
//
// Thread-safety: handlers run on many carrier threads at once. The tables take one lock each,
// held only for lookups; each file being written has its own lock, so appends to different files
// run in parallel and reads never wait for writes.
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Serves file I/O for compute nodes and workers.
public final class StorageNode: Sendable {
    /// The directory that holds one subdirectory per database (and `.moraine/`, the node's own).
    public let dataDirectory: String
    /// The node's storage tiers, fastest first: a database's directory on tier K (`DATABASE/@tierK`
    /// in requests) is `tiers[K].path/DATABASE`. Empty: every file in the data directory.
    public let tiers: [StorageNodeTier]
    /// The node's own file system: POSIX (and io_uring), or a wrapper of it in tests.
    let files: any FileSystem
    /// Reads bypass the page cache (O_DIRECT; `--direct-reads`): every read a compute node's
    /// block cache misses reaches the device, as with RocksDB's `use_direct_reads`.
    public let directReads: Bool
    let leases: LeaseTable
    let writers = Mutex<[StorageFile: WriterSlot]>([:])
    /// Files whose deferred appends are not written yet.
    let deferredSlots = Mutex<[StorageFile: WriterSlot]>([:])
    let readers = Mutex<[StorageFile: ReaderSlot]>([:])
    /// The first failure of a quiet append to each file (one its writer sent without asking
    /// an answer), answered to the file's next answered append; the quiet appends between are
    /// dropped. At most `quietFailuresMax` files at once.
    let quietFailures = Mutex<[StorageFile: TransportError]>([:])
    static let quietFailuresMax = 4096
    /// Malformed quiet requests are answered with nothing, so they are logged, a few a window.
    let quietRefusals = LogThrottle(subject: "malformed quiet requests dropped by the storage node")
    /// The last capacity a metrics scrape read, and when (StorageNode+Metrics).
    let lastCapacity = Mutex<(Int64, StorageCapacityReply)?>(nil)
    /// The same handles by the bytes of a read request that name the file (`read(encoded:)`);
    /// emptied whenever a handle is dropped.
    let wireReaders = Mutex<[WireFileKey: ReaderSlot]>([:])
    /// Read handles kept open at once; past it, the cache is emptied and refilled as reads come.
    static let readersMax = 1024
    /// The most bytes one read or one batch may ask for.
    static let readBytesMax = 32 << 20

    /// Serves `dataDirectory`, which must exist and be writable.
    /// - Throws: `.invalid` when it is missing, not a directory or not writable, or when
    ///   `directReads` is asked of a file system that refuses O_DIRECT (tmpfs before Linux 6.6).
    public init(
        dataDirectory: String, tiers: [StorageNodeTier] = [], fileSystem: any FileSystem = PosixFileSystem.shared,
        directReads: Bool = false, clock: @escaping @Sendable () -> Int64 = monotonicNanos
    ) throws(TransportError) {
        files = fileSystem
        self.directReads = directReads
        guard tiers.count <= StorageTiersReply.tiersMax else {
            throw TransportError(.invalid, "\(tiers.count) tiers pass \(StorageTiersReply.tiersMax)")
        }
        // A tier that is missing is an error, never an empty tier: create it first.
        for (index, tier) in tiers.enumerated() {
            guard let status = fileStatus(tier.path), status.st_mode & S_IFMT == S_IFDIR, access(tier.path, W_OK | X_OK) == 0 else {
                throw TransportError(.invalid, "tier \(index) directory \(tier.path) is missing, not a directory or not writable; create it first")
            }
        }
        self.tiers = tiers.map { tier in
            StorageNodeTier(path: tier.path.hasSuffix("/") ? String(tier.path.dropLast()) : tier.path, budgetBytes: tier.budgetBytes, mapped: tier.mapped)
        }
        guard let status = fileStatus(dataDirectory) else {
            throw TransportError(
                .invalid, "data directory \(dataDirectory): \(String(cString: strerror(errno))); create it first")
        }
        guard status.st_mode & S_IFMT == S_IFDIR else {
            throw TransportError(.invalid, "data directory \(dataDirectory) is not a directory")
        }
        guard access(dataDirectory, W_OK | X_OK) == 0 else {
            throw TransportError(.invalid, "data directory \(dataDirectory) is not writable by this process")
        }
        self.dataDirectory = dataDirectory.hasSuffix("/") ? String(dataDirectory.dropLast()) : dataDirectory
        if directReads {
            for directory in [self.dataDirectory] + self.tiers.filter({ !$0.mapped }).map(\.path) {
                guard PosixFileSystem.supportsDirectReads(in: directory) else {
                    throw TransportError(.invalid, "direct reads: the file system of \(directory) does not support O_DIRECT (or a file cannot be made there)")
                }
            }
        }
        leases = try LeaseTable(directory: self.dataDirectory + "/.moraine/epochs", clock: clock)
    }

    /// A router that serves the storage protocol.
    public func router() -> RequestRouter {
        var router = RequestRouter()
        register(in: &router)
        return router
    }

    /// Registers the storage opcodes in `router`.
    public func register(in router: inout RequestRouter) {
        router.drained = { [self] in writeAllDeferred() }
        for opcode in StorageOpcode.create...StorageOpcode.tiers {
            router.register(opcode) { [self] request in
                do throws(TransportError) {
                    if request.quiet {
                        handleQuietly(request)
                        return .success(.bytes([]))
                    }
                    return .success(try handle(request.opcode, request.payload))
                } catch {
                    return .failure(error)
                }
            }
        }
    }

    /// Runs a quiet request (the client asks no answer). A quiet append that fails is kept for
    /// the file's next answered append, and the quiet appends to that file until then are
    /// dropped (each would find a gap after it); any other quiet request just runs.
    private func handleQuietly(_ request: Request) {
        guard request.opcode == StorageOpcode.append else {
            _ = try? handle(request.opcode, request.payload)
            return
        }
        guard let append = try? StorageAppend.decode(request.payload) else {
            quietRefusals.info("storage: a malformed quiet append (request \(request.requestID)) was dropped")
            return
        }
        if quietFailures.withLock({ !$0.isEmpty && $0[append.file] != nil }) { return }
        do throws(TransportError) {
            _ = try self.append(append)
        } catch {
            // A stale owner's append is refused, and its next answered request is fenced by the
            // lease check itself; recorded, the refusal would be handed to the file's new writer.
            if error.code == .fenced { return }
            let failure = TransportError(error.code, "an append sent without waiting failed: \(error.message)")
            quietFailures.withLock { table in
                if table.count < Self.quietFailuresMax { table[append.file] = failure }
            }
        }
    }

    /// Runs one request.
    private func handle(_ opcode: UInt8, _ payload: Payload) throws(TransportError) -> Payload {
        switch opcode {
        case StorageOpcode.create: try create(.decode(payload))
        case StorageOpcode.append: try append(.decode(payload))
        case StorageOpcode.sync: try sync(.decode(payload))
        case StorageOpcode.close: try close(.decode(payload))
        case StorageOpcode.read:
            if case .bytes(let bytes) = payload { try read(encoded: bytes) } else { try read(.decode(payload)) }
        case StorageOpcode.readBatch: try readBatch(.decode(payload))
        case StorageOpcode.readAll: try readAll(.decode(payload))
        case StorageOpcode.stat: try statFile(.decode(payload))
        case StorageOpcode.list: try list(.decode(payload))
        case StorageOpcode.remove: try remove(.decode(payload))
        case StorageOpcode.rename: try rename(.decode(payload))
        case StorageOpcode.createDirectory: try createDirectory(.decode(payload))
        case StorageOpcode.syncDirectory: try syncDirectory(.decode(payload))
        case StorageOpcode.capacity: try capacity()
        case StorageOpcode.leaseAcquire: try acquireLease(.decode(payload))
        case StorageOpcode.leaseRenew: try renewLease(.decode(payload))
        case StorageOpcode.leaseRelease: try releaseLease(.decode(payload))
        case StorageOpcode.tiers: try tierReport()
        default: throw TransportError(.unknownOpcode, "storage opcode 0x\(String(opcode, radix: 16)) is not served")
        }
    }

    /// The local path of a checked file (or of its database, for an empty name). `DATABASE/@tierK`
    /// is the database's directory on tier K (and a file named `@tierK` in `DATABASE` names it too).
    /// - Throws: `.invalid` for a tier the node does not have.
    func path(_ file: StorageFile) throws(TransportError) -> String {
        if !file.database.contains("/") && file.name.hasPrefix("@") { return try directoryPath(file.database + "/" + file.name) }
        let directory = try directoryPath(file.database)
        return file.name.isEmpty ? directory : directory + "/" + file.name
    }

    /// The tier a database name (`DATABASE/@tierK`) names, if it names one the node has.
    func tierIndex(of database: String) -> Int? {
        guard let slash = database.firstIndex(of: "/") else { return nil }
        let sub = database[database.index(after: slash)...]
        guard sub.hasPrefix("@tier"), let index = Int(sub.dropFirst(5)), index >= 0, index < tiers.count else { return nil }
        return index
    }

    /// The local directory of a checked database name (`DATABASE`, `DATABASE/SUBDIRECTORY` or
    /// `DATABASE/@tierK`).
    /// - Throws: `.invalid` for a tier the node does not have.
    func directoryPath(_ database: String) throws(TransportError) -> String {
        guard let slash = database.firstIndex(of: "/") else { return dataDirectory + "/" + database }
        let sub = database[database.index(after: slash)...]
        guard sub.hasPrefix("@") else { return dataDirectory + "/" + database }
        let digits = sub.dropFirst(5)
        guard sub.hasPrefix("@tier"), let index = Int(digits), String(index) == digits, index < tiers.count else {
            throw TransportError(
                .invalid, "database name \(StorageName.quoted(database)): no such tier on this node (it has \(tiers.count): @tier0…)")
        }
        return tiers[index].path + "/" + database[..<slash]
    }

    /// Runs a file-system call, turning its error into the transport's (kinds travel unchanged).
    func perform<T>(_ body: () throws -> T) throws(TransportError) -> T {
        do {
            return try body()
        } catch let error as MoraineError {
            throw TransportError(error)
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError(.internalError, "\(error)")
        }
    }
}

/// A file being written: its handle and the bytes it holds.
final class WriterSlot: @unchecked Sendable {
    let lock = ConditionLock()
    /// Guarded by `lock`.
    var file: (any WritableFile)?
    /// Bytes taken (written, or held in the handle's buffer by deferred appends).
    var sizeBytes: UInt64
    /// Bytes written to the kernel.
    var writtenBytes: UInt64
    /// A deferred write that failed after its appends were answered.
    var failure: TransportError?

    init(file: any WritableFile, sizeBytes: UInt64) {
        self.file = file
        self.sizeBytes = sizeBytes
        writtenBytes = sizeBytes
    }
}

/// The bytes of an encoded read request that name its file (two length-prefixed strings, as
/// `StorageFile` encodes them), with the offset and length that follow them. Equal keys name
/// the same file; the name is not checked here.
struct WireFileKey: Hashable, @unchecked Sendable {
    private let bytes: [UInt8]
    private let nameByteCount: Int
    let offset: UInt64
    let length: UInt32

    /// Nil unless `bytes` has the shape of a read request (the full decoder says what is wrong).
    init?(readRequest bytes: [UInt8]) {
        guard
            let (count, offset, length) = bytes.withUnsafeBytes({ raw -> (Int, UInt64, UInt32)? in
                guard raw.count >= 4 else { return nil }
                let database = Int(UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self)))
                guard raw.count >= 4 + database else { return nil }
                let name = Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 + database, as: UInt16.self)))
                let count = 4 + database + name
                guard raw.count == count + 12 else { return nil }
                return (
                    count, UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: count, as: UInt64.self)),
                    UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: count + 8, as: UInt32.self))
                )
            })
        else { return nil }
        self.bytes = bytes
        nameByteCount = count
        self.offset = offset
        self.length = length
    }

    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0[0..<nameByteCount])) }
    }

    static func == (lhs: WireFileKey, rhs: WireFileKey) -> Bool {
        guard lhs.nameByteCount == rhs.nameByteCount else { return false }
        return lhs.bytes.withUnsafeBytes { left in
            rhs.bytes.withUnsafeBytes { right in memcmp(left.baseAddress!, right.baseAddress!, lhs.nameByteCount) == 0 }
        }
    }
}

/// An open read handle, shared by concurrent readers; closed when the last one lets it go.
final class ReaderSlot: @unchecked Sendable {
    let file: any RandomAccessFile
    init(file: any RandomAccessFile) { self.file = file }
}

/// `stat(2)` of `path`, or nil with `errno` set.
func fileStatus(_ path: String) -> stat? {
    var status = stat()
    return stat(path, &status) == 0 ? status : nil
}

/// A storage tier of a node: a directory holding one subdirectory per database, how many bytes
/// its tables should take (nil: unbounded; the compute node's engine keeps to it), and whether it
/// is persistent memory.
public struct StorageNodeTier: Sendable, Equatable {
    public var path: String
    public var budgetBytes: UInt64?
    public var mapped: Bool

    public init(path: String, budgetBytes: UInt64?, mapped: Bool = false) {
        self.path = path
        self.budgetBytes = budgetBytes
        self.mapped = mapped
    }
}
