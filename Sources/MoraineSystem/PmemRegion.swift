// A persistent-memory region: a file on a DAX file system, a device-dax path, or (as the
// emulation on machines without PMem) a file in /dev/shm, mapped with libpmem.
//
// Whether the mapping is real persistent memory is decided once, at mapping time
// (pmem_is_pmem, which honours PMEM_IS_PMEM_FORCE), and fixes how bytes are made durable:
// - real persistent memory: `flush` writes CPU cache lines back (pmem_flush) and `fence`
//   waits for them (pmem_drain); a store is durable after flush + fence, even across power loss;
// - anything else: `flush` is pmem_msync of the range (flush and wait in one) and `fence` has
//   nothing left to do. On tmpfs that survives a process crash, not a power loss or reboot.
// Every store that must persist goes through `store`/`storeWord`, and every flush and fence
// through this type, so a PersistenceTracer sees the region's whole persistence history.
// The layout inside the region (header, arena table, arenas) is in PmemRegion+Arenas.swift.
// Thread-safety: the mapping is fixed for the region's lifetime; callers coordinate stores.
import CSystemShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A mapped persistent-memory region.
public final class PmemRegion: @unchecked Sendable {
    public let path: String
    public let base: UnsafeMutableRawPointer
    public let sizeBytes: Int
    /// True when libpmem found real persistent memory (or PMEM_IS_PMEM_FORCE=1 said so).
    public let isPersistentMemory: Bool
    /// Records every store, flush and fence when set (crash-consistency tests).
    public let tracer: PersistenceTracer?
    /// The geometry read from (or written to) the header.
    public internal(set) var layout: PmemLayout
    /// The NUMA node the region's pages are bound to, if any.
    public let numaNode: Int?

    init(
        path: String, base: UnsafeMutableRawPointer, sizeBytes: Int, isPersistentMemory: Bool,
        tracer: PersistenceTracer?, layout: PmemLayout, numaNode: Int?
    ) {
        self.path = path
        self.base = base
        self.sizeBytes = sizeBytes
        self.isPersistentMemory = isPersistentMemory
        self.tracer = tracer
        self.layout = layout
        self.numaNode = numaNode
    }

    deinit { pmem_unmap(base, sizeBytes) }

    /// Maps the existing file at `path` as it is.
    /// - Throws: `.io` naming libpmem's message.
    static func map(path: String) throws -> (UnsafeMutableRawPointer, Int, Bool) {
        try mapFile(path, sizeBytes: 0, flags: 0)
    }

    /// Creates a region file that appears at `path` only once `prepare` has formatted it: the
    /// file is sized and prepared under a temporary name beside `path`, then linked into place.
    /// A process killed while creating (sizing a large region takes a while) leaves no file
    /// at `path` — never a short or headerless one the next open would have to refuse.
    /// - Returns: nil when another process created `path` first (open that one instead).
    /// - Throws: `.io`/`.noSpace` naming libpmem's message, the mbind failure, or what
    ///   `prepare` throws.
    static func create(
        path: String, sizeBytes: Int, sparse: Bool, numaNode: Int?, tracer: PersistenceTracer?, layout: PmemLayout,
        prepare: (PmemRegion) throws -> Void
    ) throws -> PmemRegion? {
        removeAbandonedCreations(of: path)
        let temporary = "\(path).creating-\(getpid())"
        unlink(temporary)
        defer { unlink(temporary) }
        let flags = Int32(PMEM_FILE_CREATE) | Int32(PMEM_FILE_EXCL) | (sparse ? Int32(PMEM_FILE_SPARSE) : 0)
        let region = try bound(path: path, try mapFile(temporary, sizeBytes: sizeBytes, flags: flags), tracer: tracer, layout: layout, numaNode: numaNode)
        try prepare(region)
        guard link(temporary, path) == 0 else {
            let code = errno
            if code == EEXIST { return nil }
            throw posixError("link", path, code)
        }
        try? PosixFileSystem.shared.syncDirectory(parentDirectory(of: path))
        return region
    }

    private static func mapFile(_ path: String, sizeBytes: Int, flags: Int32) throws -> (UnsafeMutableRawPointer, Int, Bool) {
        var mappedBytes = 0
        var isPmem: Int32 = 0
        guard let pointer = pmem_map_file(path, sizeBytes, flags, 0o600, &mappedBytes, &isPmem) else {
            let code = errno
            let reason = String(cString: pmem_errormsg())
            throw MoraineError(code == ENOSPC ? .noSpace : .io, "pmem_map_file \(path): \(reason)")
        }
        return (pointer, mappedBytes, isPmem != 0)
    }

    private static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Deletes the temporary files of creations whose process is gone (killed mid-creation).
    private static func removeAbandonedCreations(of path: String) {
        let directory = parentDirectory(of: path)
        let prefix = String(path[(path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex)...]) + ".creating-"
        guard let entries = try? PosixFileSystem.shared.children(of: directory) else { return }
        for name in entries where name.hasPrefix(prefix) {
            guard let pid = pid_t(name.dropFirst(prefix.count)), pid > 0 else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(directory == "/" ? "/" + name : directory + "/" + name) }
        }
    }

    /// Maps the file at `path` as it is, or creates it with `sizeBytes` (sparse: pages are
    /// allocated as they are first touched) when `create` and it does not exist, for a region
    /// whose layout the caller keeps itself (a memory node's); `layout` is then meaningless.
    /// A created file appears at `path` only after `prepare` (the caller's format) returns.
    /// - Throws: `.notFound` for a missing file not to be created, `.io`/`.noSpace` naming
    ///   libpmem's message, the mbind failure, or what `prepare` throws.
    public static func mapping(
        path: String, sizeBytes: Int, create: Bool, numaNode: Int? = nil, tracer: PersistenceTracer? = nil,
        prepare: (PmemRegion) throws -> Void = { _ in }
    ) throws -> PmemRegion {
        let placeholder = PmemLayout(arenaBytes: 4096, arenaCount: 1)
        if access(path, F_OK) != 0 {
            guard create else { throw MoraineError(.notFound, "no region file at \(path)") }
            if let region = try Self.create(
                path: path, sizeBytes: sizeBytes, sparse: true, numaNode: numaNode, tracer: tracer, layout: placeholder,
                prepare: prepare)
            {
                return region
            }
        }
        return try bound(path: path, try map(path: path), tracer: tracer, layout: placeholder, numaNode: numaNode)
    }

    /// The region over a mapping of `path`, its pages bound to `numaNode` when given.
    /// - Throws: the mbind failure, naming the node.
    static func bound(
        path: String, _ mapping: (base: UnsafeMutableRawPointer, bytes: Int, isPmem: Bool), tracer: PersistenceTracer?, layout: PmemLayout,
        numaNode: Int?
    ) throws -> PmemRegion {
        let region = PmemRegion(
            path: path, base: mapping.base, sizeBytes: mapping.bytes, isPersistentMemory: mapping.isPmem, tracer: tracer, layout: layout,
            numaNode: numaNode)
        if let numaNode {
            let code = NUMATopology.bindMemory(mapping.base, length: mapping.bytes, node: numaNode)
            if code != 0 { throw posixError("mbind to NUMA node \(numaNode)", path, code) }
        }
        return region
    }

    /// What a write persisted in this region survives, in one sentence for start-up logs.
    public var durabilityDescription: String {
        if isPersistentMemory {
            return "real persistent memory (pmem_is_pmem): stores persist with cache-line flushes and a fence; they survive power loss"
        }
        let tmpfs = path.hasPrefix("/dev/shm/") || path.hasPrefix("/run/")
        return "not persistent memory (pmem_is_pmem=0): stores persist with msync"
            + (tmpfs ? "; on tmpfs that survives a process crash, not power loss or reboot" : " to the backing file")
    }

    // MARK: Stores, flushes, fences

    /// Copies `bytes` into the region at `offset` (not yet durable).
    @inline(__always)
    public func store(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && offset + bytes.count <= sizeBytes, "store outside the region")
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        (base + offset).copyMemory(from: source, byteCount: bytes.count)
        tracer?.recordStore(offset: offset, bytes: bytes)
    }

    /// Stores an 8-byte word at an 8-aligned `offset`: the unit the hardware writes atomically,
    /// used to publish.
    @inline(__always)
    public func storeWord(_ value: UInt64, at offset: Int) {
        precondition(offset & 7 == 0 && offset >= 0 && offset + 8 <= sizeBytes, "unaligned or outside word store")
        (base + offset).storeBytes(of: value.littleEndian, as: UInt64.self)
        if let tracer { withUnsafeBytes(of: value.littleEndian) { tracer.recordStore(offset: offset, bytes: $0) } }
    }

    /// Tells the tracer (if any) about bytes stored at [offset, offset+length) directly through
    /// `base` (a structure written in place, such as a region memtable).
    @inline(__always)
    public func noteStore(_ offset: Int, _ length: Int) {
        guard let tracer else { return }
        tracer.recordStore(offset: offset, bytes: bytes(offset, length))
    }

    /// Reads an 8-byte word at an 8-aligned `offset`.
    @inline(__always)
    public func loadWord(at offset: Int) -> UInt64 {
        precondition(offset & 7 == 0 && offset >= 0 && offset + 8 <= sizeBytes, "unaligned or outside word load")
        return UInt64(littleEndian: (base + offset).load(as: UInt64.self))
    }

    /// Starts writing [offset, offset+length) back to the media.
    /// - Throws: `.io` when msync fails (the emulation's only failure mode).
    public func flush(_ offset: Int, _ length: Int) throws {
        precondition(offset >= 0 && length >= 0 && offset + length <= sizeBytes, "flush outside the region")
        if length == 0 { return }
        tracer?.recordFlush(offset: offset, length: length)
        if isPersistentMemory {
            pmem_flush(base + offset, length)
        } else if pmem_msync(base + offset, length) != 0 {
            throw posixError("msync", path)
        }
    }

    /// Waits until every earlier flush reached the media.
    public func fence() {
        tracer?.recordFence()
        if isPersistentMemory { pmem_drain() }
    }

    /// Flush and fence.
    public func persist(_ offset: Int, _ length: Int) throws {
        try flush(offset, length)
        fence()
    }

    /// A read-only view of [offset, offset+length).
    public func bytes(_ offset: Int, _ length: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= 0 && length >= 0 && offset + length <= sizeBytes, "view outside the region")
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }
}

/// The persistence history of a region: every store (with its bytes), flush and fence, in
/// order. Test builds attach one to a region and build crash images from it.
public final class PersistenceTracer: @unchecked Sendable {
    /// One persistence event.
    public enum Event: Sendable {
        case store(offset: Int, bytes: [UInt8])
        case flush(offset: Int, length: Int)
        case fence
    }

    private let lock = ConditionLock()
    private var recorded: [Event] = []

    public init() {}

    /// Everything recorded so far.
    public var events: [Event] { lock.withLock { recorded } }
    /// How many events were recorded so far (a position to crash at).
    public var count: Int { lock.withLock { recorded.count } }

    func recordStore(offset: Int, bytes: UnsafeRawBufferPointer) {
        let copy = Array(bytes)
        lock.withLock { recorded.append(.store(offset: offset, bytes: copy)) }
    }

    func recordFlush(offset: Int, length: Int) {
        lock.withLock { recorded.append(.flush(offset: offset, length: length)) }
    }

    func recordFence() {
        lock.withLock { recorded.append(.fence) }
    }
}
