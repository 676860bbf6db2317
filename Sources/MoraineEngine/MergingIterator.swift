// Merges sorted child iterators into one sorted stream, forward and backward. The children are
// few (memtables, L0 files, one per deeper level), so the smallest is found by a linear scan.
// On a change of direction every other child is re-positioned around the current key, as in
// LevelDB. Single-threaded.
import MoraineFormat

/// The sorted union of several internal iterators.
///
/// Every child's position (valid or not, its key and value) is cached when the child moves: a
/// child's key stays put until the child moves, and only this iterator moves its children. So a
/// step moves and asks only the current child, and choosing the next one compares cached keys.
/// Each call through a child existential is retained and released around it (two atomic
/// operations), which at several calls per entry was a third of a sequential scan's time.
final class MergingIterator: InternalIterator {
    private let children: [any InternalIterator]
    /// Per child: whether it is valid, and its key and value while it is.
    private let positions: UnsafeMutableBufferPointer<Position>
    /// Index of the current child; -1 when none is valid (also while children are being moved,
    /// so a step that throws leaves the iterator invalid).
    @exclusivity(unchecked) private var current = -1
    @exclusivity(unchecked) private var forward = true

    private struct Position {
        var valid = false
        var key = UnsafeRawBufferPointer(start: nil, count: 0)
        var value = UnsafeRawBufferPointer(start: nil, count: 0)
    }

    init(_ children: [any InternalIterator]) {
        self.children = children
        positions = .allocate(capacity: children.count)
        positions.initialize(repeating: Position())
    }

    deinit { positions.deallocate() }

    var isValid: Bool { current >= 0 }
    var key: UnsafeRawBufferPointer { positions[current].key }
    var value: UnsafeRawBufferPointer { positions[current].value }
    var valueOwner: AnyObject? { children[current].valueOwner }

    /// Caches where `child` (child number `i`) now is.
    @inline(__always) private func note(_ i: Int, _ child: any InternalIterator) {
        if child.isValid {
            positions[i] = Position(valid: true, key: child.key, value: child.value)
        } else {
            positions[i].valid = false
        }
    }

    private func noteAll() {
        for (i, child) in children.enumerated() { note(i, child) }
    }

    private func findSmallest() {
        var best = -1
        for i in 0..<positions.count where positions[i].valid {
            if best < 0 || compareInternalKeys(positions[i].key, positions[best].key) < 0 { best = i }
        }
        current = best
    }

    private func findLargest() {
        var best = -1
        for i in (0..<positions.count).reversed() where positions[i].valid {
            if best < 0 || compareInternalKeys(positions[i].key, positions[best].key) > 0 { best = i }
        }
        current = best
    }

    func seekToFirst() throws {
        current = -1
        for child in children { try child.seekToFirst() }
        noteAll()
        forward = true
        findSmallest()
    }

    func seekToLast() throws {
        current = -1
        for child in children { try child.seekToLast() }
        noteAll()
        forward = false
        findLargest()
    }

    func seek(_ target: UnsafeRawBufferPointer) throws {
        current = -1
        for child in children { try child.seek(target) }
        noteAll()
        forward = true
        findSmallest()
    }

    func next() throws {
        precondition(self.current >= 0, "next() on an invalid iterator")
        let current = self.current
        let currentKey = positions[current].key  // stays valid: child `current` does not move until below
        self.current = -1
        if !forward {
            // Every other child sits before the current key; move each to its first entry after it.
            for (i, child) in children.enumerated() where i != current {
                try child.seek(currentKey)
                if child.isValid && compareInternalKeys(currentKey, child.key) == 0 { try child.next() }
                note(i, child)
            }
            forward = true
        }
        let child = children[current]
        try child.next()
        note(current, child)
        findSmallest()
    }

    func prev() throws {
        precondition(self.current >= 0, "prev() on an invalid iterator")
        let current = self.current
        let currentKey = positions[current].key
        self.current = -1
        if forward {
            // Every other child sits after the current key; move each to its last entry before it.
            for (i, child) in children.enumerated() where i != current {
                try child.seek(currentKey)
                if child.isValid { try child.prev() } else { try child.seekToLast() }
                note(i, child)
            }
            forward = false
        }
        let child = children[current]
        try child.prev()
        note(current, child)
        findLargest()
    }
}

/// Concatenates the disjoint, sorted files of one level (≥ 1), opening tables lazily.
final class LevelIterator: InternalIterator {
    private let files: [FileMetaData]
    private let tables: TableCache
    private let fillCache: Bool
    @exclusivity(unchecked) private var fileIndex: Int
    /// The current file's iterator, and the same unretained: calls on a step go through
    /// `current`, which borrows it, where a call through the optional `var` was retained and
    /// released each time (two atomic operations, several times per entry of a scan).
    @exclusivity(unchecked) private var table: TableIterator? = nil {
        didSet { current = table.map { Unmanaged.passUnretained($0) } }
    }
    @exclusivity(unchecked) private var current: Unmanaged<TableIterator>? = nil

    init(files: [FileMetaData], tables: TableCache, fillCache: Bool) {
        self.files = files
        self.tables = tables
        self.fillCache = fillCache
        self.fileIndex = files.count
    }

    var isValid: Bool { current?._withUnsafeGuaranteedRef { $0.isValid } ?? false }
    var key: UnsafeRawBufferPointer { current!._withUnsafeGuaranteedRef { $0.key } }
    var value: UnsafeRawBufferPointer { current!._withUnsafeGuaranteedRef { $0.value } }
    var valueOwner: AnyObject? { table!.valueOwner }

    /// Positions on file `index` (none when out of range), keeping the iterator already open
    /// on it: a seek within the same file (seekrandom's common case) reuses the table iterator
    /// and its loaded block instead of making new ones (about 4,000 instructions a seek).
    /// An open that throws leaves no table, so the next call opens again (keeping the previous
    /// file's iterator under the new index would have a seek search the wrong file).
    private func open(_ index: Int) throws {
        if index == fileIndex && table != nil { return }
        table = nil
        fileIndex = index
        if index < 0 || index >= files.count { return }
        table = try tables.reader(files[index]).makeIterator(fillCache: fillCache, readahead: .automatic())
    }

    private func skipForward() throws {
        while current?._withUnsafeGuaranteedRef({ $0.isValid }) == false {
            try open(fileIndex + 1)
            try table?.seekToFirst()
        }
    }

    private func skipBackward() throws {
        while current?._withUnsafeGuaranteedRef({ $0.isValid }) == false {
            try open(fileIndex - 1)
            try table?.seekToLast()
        }
    }

    func seekToFirst() throws {
        try open(0)
        try table?.seekToFirst()
        try skipForward()
    }

    func seekToLast() throws {
        try open(files.count - 1)
        try table?.seekToLast()
        try skipBackward()
    }

    func seek(_ target: UnsafeRawBufferPointer) throws {
        // The first file whose largest key is at or after the target.
        var low = 0
        var high = files.count
        while low < high {
            let mid = (low + high) / 2
            let before = files[mid].info.largest.withUnsafeBytes { compareInternalKeys($0, target) < 0 }
            if before { low = mid + 1 } else { high = mid }
        }
        try open(low)
        try table?.seek(target)
        try skipForward()
    }

    func next() throws {
        try current!._withUnsafeGuaranteedRef { try $0.next() }
        try skipForward()
    }

    func prev() throws {
        try current!._withUnsafeGuaranteedRef { try $0.prev() }
        try skipBackward()
    }
}
