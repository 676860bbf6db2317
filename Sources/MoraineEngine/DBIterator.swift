// The user-facing iterator: turns the merged stream of internal entries into user keys as of
// one sequence number, hiding deleted and overwritten versions, within optional bounds.
// Going forward, the inner iterator sits on the entry that yields the current key. Going
// backward, it sits before every entry of the current key, whose key and value are then kept
// in saved buffers. Holds the memtables and Version it reads, so nothing is freed under it.
// A step that throws (an I/O error, damage) leaves the iterator invalid until the next seek.
// Single-threaded.
import MoraineFormat
import MoraineSystem

/// An iterator over user keys and values, forward and backward.
///
/// Per-step costs matter here (readseq runs a few hundred instructions per key), so the mutable
/// fields skip the runtime's exclusivity checks (one iterator, one thread, no references handed
/// out), the saved key and value are owned buffers rather than arrays, and the inner iterator is
/// a `let`, which the compiler reads without retaining and releasing it at every access (a
/// `var` was retained around each call).
public final class DBIterator {
    private let inner: any InternalIterator
    private let sequence: SequenceNumber
    private let lowerBound: [UInt8]?
    private let upperBound: [UInt8]?
    private let keepAlive: AnyObject
    @exclusivity(unchecked) private var forward = true
    @exclusivity(unchecked) private var valid = false
    @exclusivity(unchecked) private var savedKey = KeyBuffer()
    @exclusivity(unchecked) private var savedValue = KeyBuffer()
    /// Going backward, a value of at least `pinBytes` is kept by retaining what holds its bytes
    /// (a cached block, a memtable) instead of copying it; a 4 KiB copy per step was a fifth of
    /// readreverse's time. Shorter values are copied: that is cheaper than the retain.
    @exclusivity(unchecked) private var pinnedOwner: AnyObject? = nil
    @exclusivity(unchecked) private var pinnedValue = UnsafeRawBufferPointer(start: nil, count: 0)
    private static let pinBytes = 512
    /// Declared last: stored properties are destroyed in declaration order, so its deinit runs
    /// the close hook after `inner` and `keepAlive` let go of the tables they pin, and the hook
    /// can delete the newly obsolete ones (EngineTests checks that they go).
    private let closeHook: CloseHook

    init(
        inner: any InternalIterator, sequence: SequenceNumber, lowerBound: [UInt8]?, upperBound: [UInt8]?,
        keepAlive: AnyObject, onClose: @escaping () -> Void
    ) {
        self.inner = inner
        self.sequence = sequence
        self.lowerBound = lowerBound
        self.upperBound = upperBound
        self.keepAlive = keepAlive
        self.closeHook = CloseHook(onClose)
    }

    /// Whether the iterator is on an entry.
    public var isValid: Bool { valid }

    /// The current key. Precondition: isValid.
    public var key: [UInt8] {
        precondition(valid)
        return forward ? Array(userKey(inner.key)) : Array(savedKey.bytes)
    }

    /// The current value. Precondition: isValid.
    public var value: [UInt8] {
        precondition(valid)
        return forward ? Array(inner.value) : Array(backwardValue)
    }

    /// Calls `body` with views of the current key and value (no copies).
    public func withCurrent<T>(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        precondition(valid)
        if forward { return try body(userKey(inner.key), inner.value) }
        return try body(savedKey.bytes, backwardValue)
    }

    /// The current value going backward.
    private var backwardValue: UnsafeRawBufferPointer { pinnedOwner == nil ? savedValue.bytes : pinnedValue }

    private func clearSavedValue() {
        savedValue.clear()
        pinnedOwner = nil
    }

    /// Keeps the inner iterator's current value for after it moves on.
    private func saveValue() {
        let value = inner.value
        if value.count >= Self.pinBytes, let owner = inner.valueOwner {
            pinnedOwner = owner
            pinnedValue = value
            savedValue.clear()
        } else {
            pinnedOwner = nil
            savedValue.set(value)
        }
    }

    private func belowLower(_ user: UnsafeRawBufferPointer) -> Bool {
        guard let lowerBound else { return false }
        return lowerBound.withUnsafeBytes { compareBytes(user, $0) < 0 }
    }

    private func atOrAboveUpper(_ user: UnsafeRawBufferPointer) -> Bool {
        guard let upperBound else { return false }
        return upperBound.withUnsafeBytes { compareBytes(user, $0) >= 0 }
    }

    private func seekInner(_ user: [UInt8], sequence: SequenceNumber) throws {
        let target = makeInternalKey(user, sequence, .forSeek)
        try target.withUnsafeBytes { try inner.seek($0) }
    }

    /// Positions at the first key (at or after the lower bound).
    public func seekToFirst() throws { try invalidatingOnError(moveToFirst) }
    /// Positions at the last key (before the upper bound).
    public func seekToLast() throws { try invalidatingOnError(moveToLast) }
    /// Positions at the first key at or after `target`.
    public func seek(_ target: [UInt8]) throws { try invalidatingOnError { try move(to: target) } }
    /// Positions at the last key at or before `target`.
    public func seekForPrev(_ target: [UInt8]) throws { try invalidatingOnError { try moveForPrev(target) } }
    /// Moves to the next key. Precondition: isValid.
    /// - Throws: a read's error (`.io`, `.corruption`); the iterator is then invalid.
    public func next() throws { try invalidatingOnError(stepForward) }
    /// Moves to the previous key. Precondition: isValid.
    /// - Throws: a read's error (`.io`, `.corruption`); the iterator is then invalid.
    public func prev() throws { try invalidatingOnError(stepBackward) }

    /// Runs a positioning step. A throwing step may leave the merged children half-moved, off any
    /// entry, so the iterator turns invalid (as RocksDB's does): reading `key` or stepping again
    /// would otherwise reach a child that is not on an entry. A seek starts over.
    private func invalidatingOnError(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch {
            valid = false
            forward = true
            savedKey.clear()
            clearSavedValue()
            throw error
        }
    }

    private func moveToFirst() throws {
        if let lowerBound { return try seek(lowerBound) }
        forward = true
        try inner.seekToFirst()
        try findNextUserEntry(skipping: false)
    }

    private func moveToLast() throws {
        forward = false
        if let upperBound {
            try seekInner(upperBound, sequence: maxSequenceNumber)
            if inner.isValid { try inner.prev() } else { try inner.seekToLast() }
        } else {
            try inner.seekToLast()
        }
        try findPrevUserEntry()
    }

    private func move(to target: [UInt8]) throws {
        var target = target
        if let lowerBound, target.lexicographicallyPrecedes(lowerBound) { target = lowerBound }
        forward = true
        savedKey.clear()
        try seekInner(target, sequence: sequence)
        try findNextUserEntry(skipping: false)
    }

    private func moveForPrev(_ target: [UInt8]) throws {
        if let upperBound, !target.lexicographicallyPrecedes(upperBound) {
            return try seekToLast()
        }
        try seek(target)
        if !valid {
            try seekToLast()
        } else if key != target {
            try prev()
        }
    }

    private func stepForward() throws {
        precondition(valid)
        if !forward {
            forward = true
            // The inner iterator is before the current key's entries; step onto them.
            if inner.isValid { try inner.next() } else { try inner.seekToFirst() }
            guard inner.isValid else {
                valid = false
                savedKey.clear()
                return
            }
        } else {
            savedKey.set(userKey(inner.key))
            try inner.next()
        }
        try findNextUserEntry(skipping: true)
    }

    /// Entries of one user key stepped over one by one before the iterator seeks past the rest
    /// (RocksDB's `max_sequential_skip_in_iterations`, default 8). A hot key overwritten ten
    /// thousand times in the memtable would otherwise cost ten thousand steps per pass:
    /// YCSB-E's scans after YCSB-A's updates ran at 0.07 of RocksDB before this.
    static let maxSequentialSkip = 8

    /// Moves to the next visible entry, skipping keys <= savedKey when `skipping`.
    private func findNextUserEntry(skipping initialSkipping: Bool) throws {
        var skipping = initialSkipping
        var skipped = 0
        while inner.isValid {
            let ikey = inner.key
            if MoraineFormat.sequence(ikey) <= sequence {
                let user = userKey(ikey)
                if atOrAboveUpper(user) { break }
                switch valueType(ikey) {
                case .deletion:
                    savedKey.set(user)
                    skipping = true
                case .value:
                    let hidden = skipping && compareBytes(user, savedKey.bytes) <= 0
                    if !hidden {
                        valid = true
                        savedKey.clear()
                        return
                    }
                    skipped += 1
                    if skipped > Self.maxSequentialSkip {
                        // Every later entry of savedKey is older and hidden too: seek past them
                        // all, to the (savedKey, 0, deletion) position, the last one possible.
                        skipped = 0
                        try makeInternalKey(savedKey.bytes, 0, .deletion).withUnsafeBytes { try inner.seek($0) }
                        continue
                    }
                case nil:
                    throw MoraineError(.corruption, "unknown value type in key \(describeKey(user))")
                }
            } else {
                // Newer than this iterator's sequence. After a few, seek straight to the first
                // entry of the same user key that this iterator can see.
                skipped += 1
                if skipped > Self.maxSequentialSkip {
                    skipped = 0
                    try makeInternalKey(userKey(ikey), sequence, .forSeek).withUnsafeBytes { try inner.seek($0) }
                    continue
                }
            }
            try inner.next()
        }
        valid = false
        savedKey.clear()
    }

    private func stepBackward() throws {
        precondition(valid)
        if forward {
            // Move the inner iterator before every entry of the current key.
            savedKey.set(userKey(inner.key))
            while true {
                try inner.prev()
                guard inner.isValid else {
                    valid = false
                    savedKey.clear()
                    clearSavedValue()
                    return
                }
                if compareBytes(userKey(inner.key), savedKey.bytes) < 0 { break }
            }
            forward = false
        }
        try findPrevUserEntry()
    }

    /// Walks backward to the newest visible version of the previous user key.
    private func findPrevUserEntry() throws {
        var lastType = ValueType.deletion
        while inner.isValid {
            let ikey = inner.key
            if MoraineFormat.sequence(ikey) <= sequence {
                let user = userKey(ikey)
                if belowLower(user) { break }
                if lastType != .deletion && compareBytes(user, savedKey.bytes) < 0 {
                    break  // the saved key is complete: an older key begins here
                }
                guard let type = valueType(ikey) else {
                    throw MoraineError(.corruption, "unknown value type in key \(describeKey(user))")
                }
                lastType = type
                savedKey.set(user)
                if type == .value { saveValue() } else { clearSavedValue() }
            }
            try inner.prev()
        }
        if lastType == .deletion {
            valid = false
            savedKey.clear()
            clearSavedValue()
            forward = true
        } else {
            valid = true
        }
    }
}

/// Runs an action when released (see `DBIterator.closeHook`).
private final class CloseHook {
    private let action: () -> Void
    init(_ action: @escaping () -> Void) { self.action = action }
    deinit { action() }
}
