// The iterator protocol shared by blocks, tables, memtables, levels and merges. Keys are
// internal keys. `key` and `value` are views valid until the iterator next moves; holders copy
// what they keep. Errors (a corrupt block) are thrown from the move that met them.
// Thread-safety: an iterator is used by one thread at a time.

/// An ordered cursor over internal entries.
public protocol InternalIterator: AnyObject {
    var isValid: Bool { get }
    func seekToFirst() throws
    func seekToLast() throws
    /// Positions at the first entry whose internal key is at or after `target`.
    func seek(_ target: UnsafeRawBufferPointer) throws
    /// Precondition: isValid.
    func next() throws
    /// Precondition: isValid.
    func prev() throws
    /// The current internal key. Precondition: isValid.
    var key: UnsafeRawBufferPointer { get }
    /// The current value. Precondition: isValid.
    var value: UnsafeRawBufferPointer { get }
    /// An object that, while retained, keeps the current value's bytes alive and unchanged after
    /// the iterator moves on (a cached block, a memtable), or nil if there is none: then the
    /// bytes last only until the next step. Lets a backward scan keep a value without copying
    /// it (RocksDB pins the block for the same reason). Precondition: isValid.
    var valueOwner: AnyObject? { get }
}

extension InternalIterator {
    public var valueOwner: AnyObject? { nil }
}

/// An iterator over nothing (an empty level, a failed open reported elsewhere).
public final class EmptyIterator: InternalIterator {
    public init() {}
    public var isValid: Bool { false }
    public func seekToFirst() {}
    public func seekToLast() {}
    public func seek(_ target: UnsafeRawBufferPointer) {}
    public func next() {}
    public func prev() {}
    public var key: UnsafeRawBufferPointer { preconditionFailure("EmptyIterator has no key") }
    public var value: UnsafeRawBufferPointer { preconditionFailure("EmptyIterator has no value") }
}

/// A growable owned byte buffer for keys that iterators assemble or save.
public struct KeyBuffer: ~Copyable {
    public private(set) var pointer: UnsafeMutableRawPointer
    public private(set) var capacity: Int
    public private(set) var count: Int = 0

    public init(capacity: Int = 64) {
        self.capacity = capacity
        self.pointer = .allocate(byteCount: capacity, alignment: 8)
    }

    deinit { pointer.deallocate() }

    @inlinable
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }

    public mutating func reserve(_ needed: Int) {
        guard needed > capacity else { return }
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newPointer = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 8)
        newPointer.copyMemory(from: pointer, byteCount: count)
        pointer.deallocate()
        pointer = newPointer
        capacity = newCapacity
    }

    /// Keeps the first `prefix` bytes and appends `suffix`.
    public mutating func set(prefix: Int, suffix: UnsafeRawBufferPointer) {
        reserve(prefix + suffix.count)
        if suffix.count > 0 {
            (pointer + prefix).copyMemory(from: suffix.baseAddress!, byteCount: suffix.count)
        }
        count = prefix + suffix.count
    }

    public mutating func set(_ bytes: UnsafeRawBufferPointer) { set(prefix: 0, suffix: bytes) }

    public mutating func clear() { count = 0 }
}
