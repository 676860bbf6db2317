// A Version is one immutable state of the tree: the table files of each level. Readers hold a
// Version for as long as they read; a file leaves the disk only when it has been removed from
// the current version (marked obsolete) and no Version holding it is alive any more, which ARC
// tells us through FileMetaData's deinit. L0 files may overlap and are ordered newest first;
// files of deeper levels are disjoint in user keys and sorted.
// Thread-safety: immutable after construction; shared freely.
import MoraineFormat
import MoraineSystem
import Synchronization

/// Collects table files (number and tier) that became unreferenced after being marked obsolete.
public final class ObsoleteFiles: @unchecked Sendable {
    /// Guards `numbers`: a pthread mutex, which ThreadSanitizer sees through (it does not see
    /// through Synchronization.Mutex on Linux).
    private let lock = ConditionLock()
    private var numbers: [(number: UInt64, tier: Int)] = []
    public init() {}
    func add(_ number: UInt64, tier: Int) { lock.withLock { numbers.append((number, tier)) } }
    /// Takes every pending file.
    func drain() -> [(number: UInt64, tier: Int)] {
        lock.withLock {
            defer { numbers = [] }
            return numbers
        }
    }
}

/// A live table file: its manifest record plus run-time state.
public final class FileMetaData: Sendable {
    public let info: TableFileInfo
    /// User-key range, for overlap checks.
    public let smallestUserKey: [UInt8]
    public let largestUserKey: [UInt8]
    private let obsolete = Atomic<Bool>(false)
    private let sink: ObsoleteFiles
    /// Set while a compaction has this file among its inputs (guarded by the engine's mutex).
    nonisolated(unsafe) var beingCompacted = false

    init(_ info: TableFileInfo, sink: ObsoleteFiles) {
        self.info = info
        self.sink = sink
        smallestUserKey = info.smallest.withUnsafeBytes { Array(userKey($0)) }
        largestUserKey = info.largest.withUnsafeBytes { Array(userKey($0)) }
    }

    public var number: UInt64 { info.number }
    public var sizeBytes: UInt64 { info.sizeBytes }

    /// Called when an installed edit removes this file; the file is deleted once unreferenced.
    func markObsolete() { obsolete.store(true, ordering: .releasing) }

    deinit {
        if obsolete.load(ordering: .acquiring) { sink.add(info.number, tier: info.tier) }
    }

    /// Whether the file's user-key range meets [lower, upper] (nil = unbounded).
    func overlaps(lower: [UInt8]?, upper: [UInt8]?) -> Bool {
        if let lower, largestUserKey.lexicographicallyPrecedes(lower) { return false }
        if let upper, upper.lexicographicallyPrecedes(smallestUserKey) { return false }
        return true
    }
}

/// One immutable state of the LSM tree.
public final class Version: Sendable {
    /// Files per level. Level 0 newest first; deeper levels sorted by key.
    public let levels: [[FileMetaData]]

    init(levels: [[FileMetaData]]) {
        self.levels = levels
    }

    static func empty(levelCount: Int) -> Version {
        Version(levels: Array(repeating: [], count: levelCount))
    }

    public func bytes(level: Int) -> UInt64 { levels[level].reduce(0) { $0 + $1.sizeBytes } }

    /// The deepest level holding a file, or nil when the tree is empty.
    public var deepestNonEmptyLevel: Int? { levels.lastIndex { !$0.isEmpty } }

    /// Files of `level` whose user-key range meets [lower, upper].
    func overlapping(level: Int, lower: [UInt8]?, upper: [UInt8]?) -> [FileMetaData] {
        levels[level].filter { $0.overlaps(lower: lower, upper: upper) }
    }

    /// A new version with `edit` applied, and the files it removes (not counting files the same
    /// edit adds back on the same tier, as a trivial move does; a file added back on another
    /// tier was copied there, and its old copy goes once unreferenced). The caller marks those
    /// obsolete once the edit is durable.
    func applying(_ edit: VersionEdit, sink: ObsoleteFiles) -> (version: Version, removed: [FileMetaData]) {
        var removed: [FileMetaData] = []
        var levels = self.levels
        var moved: [UInt64: FileMetaData] = [:]
        let addedTiers = Dictionary(edit.newFiles.map { ($0.file.number, $0.file.tier) }, uniquingKeysWith: { _, last in last })
        for (level, number) in edit.deletedFiles {
            if let index = levels[level].firstIndex(where: { $0.number == number }) {
                let file = levels[level].remove(at: index)
                if addedTiers[number] == file.info.tier { moved[number] = file } else { removed.append(file) }
            }
        }
        for (level, info) in edit.newFiles {
            levels[level].append(moved[info.number] ?? FileMetaData(info, sink: sink))
        }
        // Newest first. Nothing in the manifest forbids two L0 files with one largest sequence;
        // then the later file number is the newer file, so the order never rests on how the
        // sort happens to break a tie.
        levels[0].sort { a, b in
            a.info.largestSequence != b.info.largestSequence
                ? a.info.largestSequence > b.info.largestSequence : a.number > b.number
        }
        for level in 1..<levels.count {
            levels[level].sort { a, b in
                a.info.smallest.withUnsafeBytes { x in
                    b.info.smallest.withUnsafeBytes { y in compareInternalKeys(x, y) < 0 }
                }
            }
        }
        return (Version(levels: levels), removed)
    }

    /// Checks that deeper levels are sorted and disjoint (debug builds and tests).
    func checkInvariants() -> String? {
        for level in 1..<levels.count {
            let files = levels[level]
            for i in files.indices.dropFirst() {
                if !files[i - 1].largestUserKey.lexicographicallyPrecedes(files[i].smallestUserKey) {
                    return "level \(level): files \(files[i - 1].number) and \(files[i].number) overlap"
                }
            }
        }
        return nil
    }
}
