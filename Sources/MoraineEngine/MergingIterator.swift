// Merges sorted child iterators into one sorted stream, forward and backward. The children are
// few (memtables, L0 files, one per deeper level), so the smallest is found by a linear scan.
// On a change of direction every other child is re-positioned around the current key, as in
// LevelDB. Single-threaded.
import MoraineFormat

/// The sorted union of several internal iterators.
///
/// The current child is an index, and its key is cached when it is chosen: a child's key stays
/// put until the child moves, and only this iterator moves its children. Each access to a child
/// retains and releases it, which at a few calls per entry was a quarter of a sequential scan's
/// instructions.
final class MergingIterator: InternalIterator {
    private let children: [any InternalIterator]
    /// Index of the current child; -1 when none is valid (also while children are being moved,
    /// so a step that throws leaves the iterator invalid).
    @exclusivity(unchecked) private var current = -1
    @exclusivity(unchecked) private var currentKey = UnsafeRawBufferPointer(start: nil, count: 0)
    @exclusivity(unchecked) private var forward = true

    init(_ children: [any InternalIterator]) {
        self.children = children
    }

    var isValid: Bool { current >= 0 }
    var key: UnsafeRawBufferPointer { currentKey }
    var value: UnsafeRawBufferPointer { children[current].value }
    var valueOwner: AnyObject? { children[current].valueOwner }

    private func findSmallest() {
        var best = -1
        var bestKey = UnsafeRawBufferPointer(start: nil, count: 0)
        for i in children.indices {
            let child = children[i]
            guard child.isValid else { continue }
            let key = child.key
            if best < 0 || compareInternalKeys(key, bestKey) < 0 {
                best = i
                bestKey = key
            }
        }
        current = best
        currentKey = bestKey
    }

    private func findLargest() {
        var best = -1
        var bestKey = UnsafeRawBufferPointer(start: nil, count: 0)
        for i in children.indices.reversed() {
            let child = children[i]
            guard child.isValid else { continue }
            let key = child.key
            if best < 0 || compareInternalKeys(key, bestKey) > 0 {
                best = i
                bestKey = key
            }
        }
        current = best
        currentKey = bestKey
    }

    func seekToFirst() throws {
        current = -1
        for child in children { try child.seekToFirst() }
        forward = true
        findSmallest()
    }

    func seekToLast() throws {
        current = -1
        for child in children { try child.seekToLast() }
        forward = false
        findLargest()
    }

    func seek(_ target: UnsafeRawBufferPointer) throws {
        current = -1
        for child in children { try child.seek(target) }
        forward = true
        findSmallest()
    }

    func next() throws {
        precondition(self.current >= 0, "next() on an invalid iterator")
        let current = children[self.current]
        let currentKey = self.currentKey  // stays valid: `current` does not move until below
        self.current = -1
        if !forward {
            // Every other child sits before the current key; move each to its first entry after it.
            for child in children where child !== current {
                try child.seek(currentKey)
                if child.isValid && compareInternalKeys(currentKey, child.key) == 0 { try child.next() }
            }
            forward = true
        }
        try current.next()
        findSmallest()
    }

    func prev() throws {
        precondition(self.current >= 0, "prev() on an invalid iterator")
        let current = children[self.current]
        let currentKey = self.currentKey
        self.current = -1
        if forward {
            // Every other child sits after the current key; move each to its last entry before it.
            for child in children where child !== current {
                try child.seek(currentKey)
                if child.isValid { try child.prev() } else { try child.seekToLast() }
            }
            forward = false
        }
        try current.prev()
        findLargest()
    }
}

/// Concatenates the disjoint, sorted files of one level (≥ 1), opening tables lazily.
final class LevelIterator: InternalIterator {
    private let files: [FileMetaData]
    private let tables: TableCache
    private let fillCache: Bool
    @exclusivity(unchecked) private var fileIndex: Int
    @exclusivity(unchecked) private var table: TableIterator? = nil

    init(files: [FileMetaData], tables: TableCache, fillCache: Bool) {
        self.files = files
        self.tables = tables
        self.fillCache = fillCache
        self.fileIndex = files.count
    }

    var isValid: Bool { table?.isValid ?? false }
    var key: UnsafeRawBufferPointer { table!.key }
    var value: UnsafeRawBufferPointer { table!.value }
    var valueOwner: AnyObject? { table!.valueOwner }

    private func open(_ index: Int) throws {
        fileIndex = index
        if index < 0 || index >= files.count {
            table = nil
            return
        }
        table = try tables.reader(files[index]).makeIterator(fillCache: fillCache, readahead: .automatic())
    }

    private func skipForward() throws {
        while let t = table, !t.isValid {
            try open(fileIndex + 1)
            try table?.seekToFirst()
        }
    }

    private func skipBackward() throws {
        while let t = table, !t.isValid {
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
        try table!.next()
        try skipForward()
    }

    func prev() throws {
        try table!.prev()
        try skipBackward()
    }
}
