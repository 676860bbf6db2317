// An in-memory FileSystem that can "crash" like a machine losing power: a crash image keeps
// every byte that was synced, a random prefix of each file's unsynced bytes, and a random
// prefix of the directory operations (create, rename, remove) made since the directory was
// last synced. Recovery from such an image must lose no synced write.
// Thread-safe: one lock guards everything.
import MoraineSystem
import Synchronization

/// An in-memory file system with power-loss crash images.
public final class SimulatedFileSystem: FileSystem, @unchecked Sendable {
    final class Inode: @unchecked Sendable {
        var data: [UInt8] = []
        var syncedLength = 0
        init() {}
        init(data: [UInt8]) {
            self.data = data
            self.syncedLength = data.count
        }
    }

    enum DirectoryOp {
        case link(String, Inode)
        case unlink(String)
        case rename(String, String)
    }

    private let lock = ConditionLock()
    private var names: [String: Inode] = [:]
    private var durableNames: [String: Inode] = [:]
    private var pending: [DirectoryOp] = []
    private var directories: Set<String> = []
    private var locks: Set<String> = []

    public init() {}

    private static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }

    /// A power-loss image: what a machine would find on its disk after rebooting.
    public func crashImage(using rng: inout SeededRandom) -> SimulatedFileSystem {
        lock.withLock {
            var survivors = durableNames
            let keep = pending.isEmpty ? 0 : Int.random(in: 0...pending.count, using: &rng)
            for op in pending.prefix(keep) {
                switch op {
                case .link(let name, let inode): survivors[name] = inode
                case .unlink(let name): survivors[name] = nil
                case .rename(let from, let to):
                    if let inode = survivors[from] {
                        survivors[to] = inode
                        survivors[from] = nil
                    }
                }
            }
            let image = SimulatedFileSystem()
            var copies: [ObjectIdentifier: Inode] = [:]
            // In name order: each file draws from `rng`, so the image must not depend on a
            // dictionary's per-process order for the seed to replay it.
            for (name, inode) in survivors.sorted(by: { $0.key < $1.key }) {
                let copy =
                    copies[ObjectIdentifier(inode)]
                    ?? {
                        let unsynced = inode.data.count - inode.syncedLength
                        let kept = inode.syncedLength + (unsynced > 0 ? Int.random(in: 0...unsynced, using: &rng) : 0)
                        return Inode(data: Array(inode.data[0..<kept]))
                    }()
                copies[ObjectIdentifier(inode)] = copy
                image.names[name] = copy
                image.durableNames[name] = copy
            }
            image.directories = directories
            return image
        }
    }

    // MARK: FileSystem

    public func createWritable(_ path: String) throws -> any WritableFile {
        try create(path, exclusive: false)
    }

    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        try create(path, exclusive: true)
    }

    private func create(_ path: String, exclusive: Bool) throws -> any WritableFile {
        try lock.withLock {
            guard directories.contains(Self.parent(path)) else {
                throw MoraineError(.notFound, "open \(path): no such directory")
            }
            if exclusive && names[path] != nil {
                throw MoraineError(.invalid, "create \(path): the file exists and is not truncated")
            }
            let inode = Inode()
            names[path] = inode
            pending.append(.link(path, inode))
            return SimulatedWritableFile(inode: inode, fs: self, path: path)
        }
    }

    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile {
        try lock.withLock {
            guard let inode = names[path] else { throw MoraineError(.notFound, "open \(path): no such file") }
            return SimulatedWritableFile(inode: inode, fs: self, path: path, size: UInt64(inode.data.count))
        }
    }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        try lock.withLock {
            guard let inode = names[path] else { throw MoraineError(.notFound, "open \(path): no such file") }
            return SimulatedRandomAccessFile(inode: inode, fs: self, size: UInt64(inode.data.count))
        }
    }

    public func readAll(_ path: String) throws -> [UInt8] {
        try lock.withLock {
            guard let inode = names[path] else { throw MoraineError(.notFound, "open \(path): no such file") }
            return inode.data
        }
    }

    public func exists(_ path: String) throws -> Bool {
        lock.withLock { names[path] != nil || directories.contains(path) }
    }

    public func fileSize(_ path: String) throws -> UInt64 {
        try lock.withLock {
            guard let inode = names[path] else { throw MoraineError(.notFound, "stat \(path): no such file") }
            return UInt64(inode.data.count)
        }
    }

    public func children(of directory: String) throws -> [String] {
        try lock.withLock {
            guard directories.contains(directory) else {
                throw MoraineError(.notFound, "opendir \(directory): no such directory")
            }
            // Sorted, as a seeded run must not depend on a dictionary's per-process order.
            return names.keys.filter { Self.parent($0) == directory }.map { String($0.dropFirst(directory.count + 1)) }
                .sorted()
        }
    }

    public func createDirectory(_ path: String) throws {
        lock.withLock { _ = directories.insert(path) }
    }

    public func remove(_ path: String) throws {
        try lock.withLock {
            guard names.removeValue(forKey: path) != nil else {
                throw MoraineError(.notFound, "unlink \(path): no such file")
            }
            pending.append(.unlink(path))
        }
    }

    public func rename(_ source: String, to target: String) throws {
        try lock.withLock {
            guard let inode = names.removeValue(forKey: source) else {
                throw MoraineError(.notFound, "rename \(source): no such file")
            }
            names[target] = inode
            pending.append(.rename(source, target))
        }
    }

    public func syncDirectory(_ directory: String) throws {
        lock.withLock {
            durableNames = names
            pending.removeAll()
        }
    }

    public func lock(_ path: String) throws -> any FileLock {
        try lock.withLock {
            guard !locks.contains(path) else { throw MoraineError(.busy, "database is locked (lock file \(path))") }
            locks.insert(path)
            return SimulatedLock(fs: self, path: path)
        }
    }

    fileprivate func release(_ path: String) { lock.withLock { _ = locks.remove(path) } }
    fileprivate func append(_ inode: Inode, _ bytes: UnsafeRawBufferPointer) {
        lock.withLock { inode.data.append(contentsOf: bytes) }
    }
    fileprivate func sync(_ inode: Inode) { lock.withLock { inode.syncedLength = inode.data.count } }
    fileprivate func read(_ inode: Inode, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        lock.withLock {
            guard offset < UInt64(inode.data.count) else { return 0 }
            let n = min(buffer.count, inode.data.count - Int(offset))
            inode.data.withUnsafeBytes { raw in
                buffer.baseAddress!.copyMemory(from: raw.baseAddress! + Int(offset), byteCount: n)
            }
            return n
        }
    }
}

final class SimulatedLock: FileLock, @unchecked Sendable {
    private let fs: SimulatedFileSystem
    private let path: String
    private var held = true
    init(fs: SimulatedFileSystem, path: String) {
        self.fs = fs
        self.path = path
    }
    func unlock() {
        if held { fs.release(path) }
        held = false
    }
    deinit { unlock() }
}

final class SimulatedWritableFile: WritableFile {
    private let inode: SimulatedFileSystem.Inode
    private let fs: SimulatedFileSystem
    private let path: String
    private var closed = false
    private(set) var size: UInt64 = 0

    init(inode: SimulatedFileSystem.Inode, fs: SimulatedFileSystem, path: String, size: UInt64 = 0) {
        self.inode = inode
        self.fs = fs
        self.path = path
        self.size = size
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw MoraineError(.closed, "append to closed file \(path)") }
        fs.append(inode, bytes)
        size += UInt64(bytes.count)
    }
    func flush() throws {}
    func sync() throws {
        guard !closed else { throw MoraineError(.closed, "sync of closed file \(path)") }
        fs.sync(inode)
    }
    func close() throws { closed = true }
}

final class SimulatedRandomAccessFile: RandomAccessFile, @unchecked Sendable {
    private let inode: SimulatedFileSystem.Inode
    private let fs: SimulatedFileSystem
    let size: UInt64
    init(inode: SimulatedFileSystem.Inode, fs: SimulatedFileSystem, size: UInt64) {
        self.inode = inode
        self.fs = fs
        self.size = size
    }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        fs.read(inode, at: offset, into: buffer)
    }
}
