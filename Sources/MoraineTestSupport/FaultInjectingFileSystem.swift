// A FileSystem that wraps another and makes chosen calls fail, so tests can run the real
// engine over real files and watch what a failing disk does to it: EIO on reads and writes,
// ENOSPC, short writes, and fdatasync failures that may also drop the unsynced bytes, as Linux
// can after a failed fsync (the kernel marks the dirty pages clean and forgets them).
//
// A fault is armed by a rule: what fails, which files (by kind, from the engine's file names),
// and when (once, N times, after K matching calls succeed, or with a seeded probability).
// Every injected fault is counted and logged, so a test can prove its fault fired. Calls no
// rule picks, `close`, and every directory operation but lookups go straight to the wrapped file system.
// Invariant: a failed call leaves the wrapped file as the real failure would: nothing written
// for EIO or ENOSPC, a prefix for a short write, the synced length after a dropping sync.
// Thread-safety: one lock guards the rules, counters and log, and is never held during I/O on
// the wrapped file system. A wrapped WritableFile has one writer at a time, like any other.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A file system that injects I/O faults into another on demand.
public final class FaultInjectingFileSystem: ForwardingFileSystem, @unchecked Sendable {
    /// What an injected failure does.
    public enum Fault: Sendable, Equatable, CustomStringConvertible {
        /// A read (`read(at:into:)` or `readAll`) fails with EIO.
        case readError
        /// An append or flush fails with EIO; none of its bytes reach the file.
        case writeError
        /// An append or flush fails with ENOSPC; none of its bytes reach the file.
        case noSpace
        /// An append hands the first half of its bytes to the file, then fails with ENOSPC.
        case shortWrite
        /// `sync` fails with EIO after the bytes reached the kernel. With `dropUnsynced`, the
        /// bytes appended since the last good sync are lost: the file is cut back to its synced
        /// length, and later appends land past a hole of zeros.
        case syncError(dropUnsynced: Bool)
        /// An existence check or a directory listing fails with EIO: the file system could not
        /// look (a dying disk, or later an unreachable storage node).
        case lookupError

        /// The error kind the fault surfaces as.
        public var errorKind: MoraineError.Kind {
            switch self {
            case .readError, .writeError, .syncError, .lookupError: .io
            case .noSpace, .shortWrite: .noSpace
            }
        }

        public var description: String {
            switch self {
            case .readError: "read EIO"
            case .writeError: "write EIO"
            case .noSpace: "ENOSPC"
            case .shortWrite: "short write"
            case .syncError(let drop): drop ? "sync EIO, unsynced bytes dropped" : "sync EIO"
            case .lookupError: "lookup EIO"
            }
        }

        func applies(to operation: Operation) -> Bool {
            switch self {
            case .readError: operation == .read
            case .writeError, .noSpace: operation == .append || operation == .flush
            case .shortWrite: operation == .append
            case .syncError: operation == .sync
            case .lookupError: operation == .lookup
            }
        }
    }

    /// Which files a rule targets, by the names the engine gives them.
    public enum Target: Sendable, Equatable, CustomStringConvertible {
        /// Every file.
        case any
        /// Write-ahead logs (`*.log`).
        case wal
        /// Tables (`*.sst`).
        case table
        /// Manifests (`MANIFEST-*`).
        case manifest
        /// `CURRENT` and the temporary file (`*.dbtmp`) that replaces it.
        case current

        /// Whether the file at `path` is one of the target's.
        public func matches(_ path: String) -> Bool {
            let name = path.split(separator: "/").last.map(String.init) ?? path
            switch self {
            case .any: return true
            case .wal: return name.hasSuffix(".log")
            case .table: return name.hasSuffix(".sst")
            case .manifest: return name.hasPrefix("MANIFEST-")
            case .current: return name == "CURRENT" || name.hasSuffix(".dbtmp")
            }
        }

        public var description: String {
            switch self {
            case .any: "any file"
            case .wal: "WAL"
            case .table: "table"
            case .manifest: "manifest"
            case .current: "CURRENT"
            }
        }
    }

    /// When an armed rule fires. A call matches a rule when the fault applies to the call and
    /// the file is one of the target's; only matching calls count.
    public struct Trigger: Sendable, CustomStringConvertible {
        /// Matching calls that succeed before the rule may fire.
        public var skipCount: Int
        /// Faults the rule injects before it goes quiet; nil for no limit.
        public var limit: Int?
        /// The chance that an eligible call fails (1 = every one).
        public var probability: Double
        /// Seeds the draws when `probability` is below 1.
        public var seed: UInt64

        /// Precondition: counts are not negative; `probability` is in 0...1.
        public init(skipCount: Int = 0, limit: Int? = 1, probability: Double = 1, seed: UInt64 = 0) {
            precondition(skipCount >= 0 && (limit ?? 0) >= 0, "fault trigger counts must not be negative")
            precondition(probability >= 0 && probability <= 1, "fault probability \(probability) outside 0...1")
            self.skipCount = skipCount
            self.limit = limit
            self.probability = probability
            self.seed = seed
        }

        /// The next matching call fails.
        public static let once = Trigger()
        /// Every matching call fails (a dead disk, a full one).
        public static let always = Trigger(limit: nil)
        /// The next `count` matching calls fail.
        public static func times(_ count: Int) -> Trigger { Trigger(limit: count) }
        /// `successes` matching calls succeed, then `count` fail (nil: all later ones).
        public static func after(_ successes: Int, times count: Int? = 1) -> Trigger {
            Trigger(skipCount: successes, limit: count)
        }
        /// Each matching call fails with `probability`, drawn from a generator seeded by `seed`.
        public static func random(probability: Double, seed: UInt64, limit: Int? = nil) -> Trigger {
            Trigger(limit: limit, probability: probability, seed: seed)
        }

        public var description: String {
            var parts: [String] = []
            if skipCount > 0 { parts.append("after \(skipCount) successes") }
            parts.append(limit.map { $0 == 1 ? "once" : "\($0) times" } ?? "always")
            if probability < 1 { parts.append("with probability \(probability) (seed \(seed))") }
            return parts.joined(separator: ", ")
        }
    }

    /// The call a fault strikes.
    public enum Operation: String, Sendable {
        /// `RandomAccessFile.read(at:into:)` or `FileSystem.readAll`.
        case read
        /// `WritableFile.append`.
        case append
        /// `WritableFile.flush`.
        case flush
        /// `WritableFile.sync`.
        case sync
        /// `FileSystem.exists` or `FileSystem.children(of:)`.
        case lookup
    }

    /// One fault that fired.
    public struct Event: Sendable, CustomStringConvertible {
        /// What was injected.
        public let fault: Fault
        /// The call that failed.
        public let operation: Operation
        /// The file it failed on.
        public let path: String
        public var description: String { "\(fault) on \(operation.rawValue) of \(path)" }
    }

    private struct Rule {
        let fault: Fault
        let target: Target
        let trigger: Trigger
        var random: SplitMix64
        var matchedCount = 0
        var firedCount = 0
    }

    /// The file system underneath.
    public let base: any FileSystem
    private let lock = ConditionLock()
    private var rules: [Rule] = []
    private var events: [Event] = []

    /// Wraps `base`; nothing fails until a rule is armed.
    public init(wrapping base: any FileSystem) {
        self.base = base
    }

    /// Adds a rule; rules are consulted in the order they were armed, and the first that fires
    /// decides the call.
    /// Precondition: a fault that drops unsynced bytes needs a base that can truncate files.
    public func arm(_ fault: Fault, on target: Target = .any, trigger: Trigger = .once) {
        if case .syncError(dropUnsynced: true) = fault {
            precondition(base is any TruncatingFileSystem, "dropping unsynced bytes needs a TruncatingFileSystem base")
        }
        lock.withLock {
            rules.append(Rule(fault: fault, target: target, trigger: trigger, random: SplitMix64(seed: trigger.seed)))
        }
    }

    /// Removes every rule. Counters and the log of injected faults are kept.
    public func disarm() {
        lock.withLock { rules.removeAll() }
    }

    /// How many faults were injected since this file system was made.
    public var injectedCount: Int { lock.withLock { events.count } }

    /// Every injected fault, oldest first.
    public var injectedFaults: [Event] { lock.withLock { events } }

    /// The fault to inject into `operation` on `path`, if a rule fires; counts and logs it.
    func fault(for operation: Operation, path: String) -> Fault? {
        lock.withLock {
            for index in rules.indices {
                let rule = rules[index]
                guard rule.fault.applies(to: operation), rule.target.matches(path) else { continue }
                if let limit = rule.trigger.limit, rule.firedCount >= limit { continue }
                rules[index].matchedCount += 1
                if rules[index].matchedCount <= rule.trigger.skipCount { continue }
                if rule.trigger.probability < 1 {
                    let draw = Double(rules[index].random.next() >> 11) / Double(1 << 53)
                    if draw >= rule.trigger.probability { continue }
                }
                rules[index].firedCount += 1
                events.append(Event(fault: rule.fault, operation: operation, path: path))
                return rule.fault
            }
            return nil
        }
    }

    /// Cuts `path` back to `sizeBytes` (a dropping sync). Precondition: checked by `arm`.
    func dropUnsynced(_ path: String, keeping sizeBytes: UInt64) throws {
        try (base as! any TruncatingFileSystem).truncate(path, toBytes: sizeBytes)
    }

    // MARK: FileSystem

    public func createWritable(_ path: String) throws -> any WritableFile {
        FaultInjectingWritableFile(base: try base.createWritable(path), fileSystem: self, path: path)
    }

    public func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
        FaultInjectingWritableFile(base: try base.createNew(path, hint: hint), fileSystem: self, path: path)
    }

    public func openForAppend(_ path: String, hint: WriteHint) throws -> any WritableFile {
        FaultInjectingWritableFile(base: try base.openForAppend(path, hint: hint), fileSystem: self, path: path)
    }

    public func openRandomAccess(_ path: String) throws -> any RandomAccessFile {
        FaultInjectingRandomAccessFile(base: try base.openRandomAccess(path), fileSystem: self, path: path)
    }

    public func readAll(_ path: String) throws -> [UInt8] {
        if fault(for: .read, path: path) != nil { throw injectedEIO("read", path) }
        return try base.readAll(path)
    }

    public func exists(_ path: String) throws -> Bool {
        if fault(for: .lookup, path: path) != nil { throw injectedEIO("stat", path) }
        return try base.exists(path)
    }
    public func children(of directory: String) throws -> [String] {
        if fault(for: .lookup, path: directory) != nil { throw injectedEIO("opendir", directory) }
        return try base.children(of: directory)
    }
}

/// The error an injected EIO raises, worded like PosixFileSystem's.
func injectedEIO(_ call: String, _ path: String, _ detail: String = "") -> MoraineError {
    MoraineError(.io, "\(call) \(path): injected EIO\(detail) (errno 5)")
}

/// The error an injected ENOSPC raises, worded like PosixFileSystem's.
func injectedENOSPC(_ call: String, _ path: String, _ detail: String = "") -> MoraineError {
    MoraineError(.noSpace, "\(call) \(path): injected ENOSPC\(detail) (errno 28)")
}

/// A file system that can cut a file back to a length, which dropping unsynced bytes needs.
public protocol TruncatingFileSystem: FileSystem {
    /// Cuts the file at `path` to `sizeBytes`.
    func truncate(_ path: String, toBytes sizeBytes: UInt64) throws
}

extension PosixFileSystem: TruncatingFileSystem {
    /// Cuts the file with truncate(2).
    public func truncate(_ path: String, toBytes sizeBytes: UInt64) throws {
        if Glibc.truncate(path, off_t(sizeBytes)) != 0 {
            throw MoraineError(.io, "truncate \(path): \(String(cString: strerror(errno))) (errno \(errno))")
        }
    }
}

/// A writable file whose calls the file system's rules may fail.
final class FaultInjectingWritableFile: WritableFile {
    private let base: any WritableFile
    private let fileSystem: FaultInjectingFileSystem
    private let path: String
    /// The base's size at the last successful sync: what a dropping sync keeps.
    private var syncedBytes: UInt64 = 0

    init(base: any WritableFile, fileSystem: FaultInjectingFileSystem, path: String) {
        self.base = base
        self.fileSystem = fileSystem
        self.path = path
    }

    var size: UInt64 { base.size }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        switch fileSystem.fault(for: .append, path: path) {
        case .writeError: throw injectedEIO("write", path)
        case .noSpace: throw injectedENOSPC("write", path)
        case .shortWrite:
            // A real short write: the prefix is in the file (handed to the kernel), the rest is not.
            let written = bytes.count / 2
            try base.append(UnsafeRawBufferPointer(rebasing: bytes[0..<written]))
            try base.flush()
            throw injectedENOSPC("write", path, " after a short write of \(written) of \(bytes.count) bytes")
        default: try base.append(bytes)
        }
    }

    func flush() throws {
        switch fileSystem.fault(for: .flush, path: path) {
        case .writeError: throw injectedEIO("write", path)
        case .noSpace: throw injectedENOSPC("write", path)
        default: try base.flush()
        }
    }

    func sync() throws {
        if case .syncError(let drop) = fileSystem.fault(for: .sync, path: path) {
            try base.flush()  // the bytes reached the kernel; writing them back is what failed
            if drop {
                try fileSystem.dropUnsynced(path, keeping: syncedBytes)
                throw injectedEIO("fdatasync", path, ", \(base.size - syncedBytes) unsynced bytes dropped")
            }
            throw injectedEIO("fdatasync", path)
        }
        try base.sync()
        syncedBytes = base.size
    }

    func close() throws { try base.close() }
}

/// A random-access file whose reads the file system's rules may fail.
final class FaultInjectingRandomAccessFile: RandomAccessFile {
    private let base: any RandomAccessFile
    private let fileSystem: FaultInjectingFileSystem
    private let path: String

    init(base: any RandomAccessFile, fileSystem: FaultInjectingFileSystem, path: String) {
        self.base = base
        self.fileSystem = fileSystem
        self.path = path
    }

    var size: UInt64 { base.size }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if fileSystem.fault(for: .read, path: path) != nil {
            throw injectedEIO("pread", path, " reading \(buffer.count) bytes at offset \(offset)")
        }
        return try base.read(at: offset, into: buffer)
    }
}
