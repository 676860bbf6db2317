// The memtable: a skiplist of internal entries laid out in one contiguous arena and linked by
// 32-bit offsets (never pointers), so the same bytes can later live in a shared or persistent
// region and be read by another process. No per-entry heap allocation.
//
// Node at offset o (4-byte aligned): keyLength u32 | valueLength u32 | height u8, 3 pad |
// next[height] u32 | internal key | value. Offset 0 is the head node, which is never anyone's
// successor, so 0 doubles as "none".
//
// Thread-safety: one writer at a time (the engine's write leader), any number of concurrent
// readers without locks. A new node is fully written before a release-store of the link that
// publishes it; readers follow links with acquire loads, so they see whole nodes or none.
//
// The arena is private anonymous memory, or (MemTable+Region.swift) an arena of a shared,
// persistent region (a memory node's), where the memtable also keeps its state in the arena's
// header so that another process can read or re-attach it.
//
// A memtable in private memory may also keep a point-lookup index (`hashIndex`): an open-addressing
// table over user keys whose slots hold (32 bits of the key's hash, the key's newest node). A get
// then costs a hash and a probe or two instead of a descent of ~20 levels that misses the CPU
// cache at most of them (43% of a Redis-protocol server's GET time went to that walk; a miss, the
// common case of a point read in the memtable, is answered by the first empty slot). The index
// holds at most half its slots; past that, new keys are not indexed and a get the index cannot
// answer walks the list as before (existing keys' slots keep following their newest node). It
// lives in its own anonymous memory, 8 bytes a slot, about 1/8 of the arena (RocksDB's
// `memtable_whole_key_filtering` bloom answers the same misses, but not the hits).
import Atomics
import MoraineFormat
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The outcome of a memtable lookup.
public enum LookupResult: Equatable, Sendable {
    case notFound
    case deleted
    case found([UInt8])
}

/// An arena-backed, lock-free-read skiplist memtable.
public final class MemTable: @unchecked Sendable {
    public static let maxHeight = 12
    static let headerBytes = 12

    let base: UnsafeMutableRawPointer
    /// Bytes reserved for the arena (virtual; pages are touched only as used).
    public let capacityBytes: Int
    /// The shared region the arena is in (nil: private memory), and what persisting there needs.
    let placement: RegionPlacement?
    /// Entries with a newer sequence are invisible (an attached memtable's committed sequence:
    /// anything newer was never acknowledged). `maxSequenceNumber` for a memtable of one's own.
    public let ceiling: SequenceNumber
    // The writer-only fields skip Swift's dynamic exclusivity checks: the single-writer rule
    // above already guarantees exclusive access, and the checks cost ~4% of a put (profiled).
    @exclusivity(unchecked) var used: Int
    let usedPublished = ManagedAtomic<Int>(0)
    let currentHeight = ManagedAtomic<Int>(1)
    @exclusivity(unchecked) private var randomState: UInt64
    @exclusivity(unchecked) var entries = 0
    /// The WAL file holding this memtable's writes (0 when no WAL is written).
    public let logNumber: UInt64
    /// Sequence range of entries, for flush metadata.
    @exclusivity(unchecked) public internal(set) var smallestSequence: SequenceNumber = maxSequenceNumber
    @exclusivity(unchecked) public internal(set) var largestSequence: SequenceNumber = 0

    /// Where the arena goes when this memtable is freed (nil: unmapped).
    private let pool: MemTableArenaPool?

    /// The point-lookup index's slots (nil: none), each `tag << 32 | node` or 0 for empty.
    private let indexSlots: UnsafeMutableRawPointer?
    private let indexMask: Int
    /// The most keys the index takes (half its slots, so a probe soon meets an empty slot).
    private let indexLimit: Int
    @exclusivity(unchecked) private var indexedKeys = 0
    /// Set (before the first key left out is linked) once the index stopped taking new keys:
    /// from then on an empty slot no longer proves a key absent.
    private let indexFull = ManagedAtomic<Bool>(false)
    /// Whether the point-lookup index stopped taking new keys.
    var hashIndexIsFull: Bool { indexFull.load(ordering: .relaxed) }
    /// Where the arena starts (to find its mapping in /proc/self/smaps).
    public var arenaStart: UnsafeRawPointer { UnsafeRawPointer(base) }
    /// Bytes of the point-lookup index (0: none).
    public var hashIndexBytes: Int { indexSlots == nil ? 0 : (indexMask + 1) * 8 }

    /// Reserves an arena of `capacityBytes` (rounded up to pages): a recycled one from `pool`
    /// when it holds one large enough, else fresh anonymous memory; with `hashIndex`, also the
    /// point-lookup index (about 1/8 of the arena, in pages touched as keys arrive). With
    /// `hugePages`, fresh memory is advised for transparent huge pages (`MADV_HUGEPAGE`).
    public init(
        capacityBytes: Int, logNumber: UInt64, seed: UInt64 = 0x5eed, pool: MemTableArenaPool? = nil, hashIndex: Bool = false,
        hugePages: Bool = false
    ) {
        let page = 4096
        let capacity = (max(capacityBytes, 64 << 10) + page - 1) / page * page
        precondition(capacity < Int(UInt32.max), "memtable arena over 4 GiB")
        if let recycled = pool?.take(atLeast: capacity) {
            base = recycled.base
            self.capacityBytes = recycled.capacity
        } else {
            let mapped = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            precondition(mapped != MAP_FAILED && mapped != nil, "cannot reserve \(capacity) bytes for a memtable")
            // Huge pages on request (Options.memtableHugePages): fewer TLB misses in a descent,
            // but the first write into each 2 MiB zeroes all of it in the page fault (15% of a
            // fill into a fresh arena on a virtual machine here, docs/PERFORMANCE.md §12).
            // Advisory; ignored where unsupported.
            if hugePages { _ = madvise(mapped, capacity, MADV_HUGEPAGE) }
            base = mapped!
            self.capacityBytes = capacity
        }
        self.pool = pool
        self.placement = nil
        self.ceiling = maxSequenceNumber
        self.logNumber = logNumber
        randomState = seed | 1
        (indexSlots, indexMask, indexLimit) = hashIndex ? Self.makeIndex(capacityBytes: self.capacityBytes, hugePages: hugePages) : (nil, 0, 0)
        // The head node: full height, empty key, no successors. (Every other node is written
        // whole before it is linked, so a recycled arena needs no other clearing.)
        used = Self.headerBytes + 4 * Self.maxHeight
        base.initializeMemory(as: UInt8.self, repeating: 0, count: used)
        base.storeBytes(of: UInt8(Self.maxHeight), toByteOffset: 8, as: UInt8.self)
        usedPublished.store(used, ordering: .relaxed)
    }

    /// The point-lookup index for an arena of `capacityBytes`, in private memory: the largest
    /// power of two of slots at most capacity / 64 (1M slots, 8 MiB, for a 64 MiB memtable, whose
    /// 100-byte values make about 450K entries). None when the memory cannot be had: lookups then
    /// walk the list, as without one.
    static func makeIndex(capacityBytes: Int, hugePages: Bool) -> (UnsafeMutableRawPointer?, Int, Int) {
        var slots = 1024
        while slots * 2 <= capacityBytes / 64 { slots *= 2 }
        let mapped = mmap(nil, slots * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else { return (nil, 0, 0) }
        if hugePages { _ = madvise(mapped, slots * 8, MADV_HUGEPAGE) }
        return (mapped, slots - 1, slots / 2)
    }

    /// A memtable over an arena someone else owns (a region's): nothing is allocated or
    /// initialized here; MemTable+Region.swift sets up or checks the arena.
    init(
        base: UnsafeMutableRawPointer, capacityBytes: Int, placement: RegionPlacement, logNumber: UInt64, ceiling: SequenceNumber,
        seed: UInt64, hashIndex: Bool = false
    ) {
        self.base = base
        self.capacityBytes = capacityBytes
        self.placement = placement
        self.pool = nil
        self.logNumber = logNumber
        self.ceiling = ceiling
        randomState = seed | 1
        used = Self.headerBytes + 4 * Self.maxHeight
        (indexSlots, indexMask, indexLimit) = hashIndex ? Self.makeIndex(capacityBytes: capacityBytes, hugePages: false) : (nil, 0, 0)
    }

    deinit {
        if let indexSlots { munmap(indexSlots, (indexMask + 1) * 8) }
        guard placement == nil else { return }
        if pool?.giveBack(base: base, capacity: capacityBytes) != true { munmap(base, capacityBytes) }
    }

    /// Bytes of the arena in use.
    public var memoryUsageBytes: Int { usedPublished.load(ordering: .relaxed) }
    public var entryCount: Int { entries }
    public var isEmpty: Bool { entries == 0 }

    /// The most arena bytes one entry can take.
    @inlinable
    public static func worstCaseBytes(keyCount: Int, valueCount: Int) -> Int {
        headerBytesPublic + 4 * maxHeight + keyCount + internalKeyTagBytes + valueCount + 3
    }
    public static let headerBytesPublic = 12

    /// Whether entries needing `bytes` more arena bytes still fit.
    public func hasRoom(forBytes bytes: Int) -> Bool { used + bytes <= capacityBytes }

    // MARK: Node access

    @inline(__always) func keyLength(_ node: UInt32) -> Int {
        Int(base.load(fromByteOffset: Int(node), as: UInt32.self))
    }
    @inline(__always) func valueLength(_ node: UInt32) -> Int {
        Int(base.load(fromByteOffset: Int(node) + 4, as: UInt32.self))
    }
    @inline(__always) func height(_ node: UInt32) -> Int {
        Int(base.load(fromByteOffset: Int(node) + 8, as: UInt8.self))
    }
    @inline(__always) func link(_ node: UInt32, _ level: Int) -> UnsafeAtomic<UInt32> {
        let p = (base + Int(node) + Self.headerBytes + 4 * level)
            .assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self)
        return UnsafeAtomic(at: p)
    }
    @inline(__always) func next(_ node: UInt32, _ level: Int) -> UInt32 {
        link(node, level).load(ordering: .acquiring)
    }
    @inline(__always) func key(_ node: UInt32) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + Int(node) + Self.headerBytes + 4 * height(node), count: keyLength(node))
    }
    @inline(__always) func value(_ node: UInt32) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(
            start: base + Int(node) + Self.headerBytes + 4 * height(node) + keyLength(node), count: valueLength(node))
    }

    // MARK: Search

    /// The first node whose key is >= `target`, or 0; fills `previous` per level when given.
    @inline(__always)
    func findGreaterOrEqual(_ target: UnsafeRawBufferPointer, previous: UnsafeMutablePointer<UInt32>?) -> UInt32 {
        search(target, previous: previous).atOrAfter
    }

    /// The last node whose key is < `target`, or 0 (the head).
    func findLessThan(_ target: UnsafeRawBufferPointer) -> UInt32 {
        search(target, previous: nil).before
    }

    /// One descent: the last node before `target` and the first at or after it on level 0
    /// (0 for the head or the end); fills `previous` per level when given.
    @inline(__always)
    private func search(_ target: UnsafeRawBufferPointer, previous: UnsafeMutablePointer<UInt32>?)
        -> (before: UInt32, atOrAfter: UInt32)
    {
        var node: UInt32 = 0
        var level = currentHeight.load(ordering: .relaxed) - 1
        while true {
            let candidate = next(node, level)
            if candidate != 0 && compareInternalKeys(key(candidate), target) < 0 {
                node = candidate
            } else {
                previous?[level] = node
                if level == 0 { return (node, candidate) }
                level -= 1
            }
        }
    }

    /// The last node, or 0 when empty.
    func findLast() -> UInt32 {
        var node: UInt32 = 0
        var level = currentHeight.load(ordering: .relaxed) - 1
        while true {
            let candidate = next(node, level)
            if candidate != 0 {
                node = candidate
            } else {
                if level == 0 { return node }
                level -= 1
            }
        }
    }

    // MARK: Writing

    private func randomHeight() -> Int {
        var h = 1
        while h < Self.maxHeight {
            randomState ^= randomState << 13
            randomState ^= randomState >> 7
            randomState ^= randomState << 17
            if randomState & 3 != 0 { break }
            h += 1
        }
        return h
    }

    /// Inserts an entry. Precondition: the caller is the only writer, `sequence` is new, and
    /// `hasRoom(forBytes: worstCaseBytes(...))` holds.
    public func add(
        sequence: SequenceNumber, type: ValueType, key userKey: UnsafeRawBufferPointer,
        value: UnsafeRawBufferPointer
    ) {
        precondition(ceiling == maxSequenceNumber, "an attached memtable is read-only")
        // The key's index slot is a cache miss at a random place (a sequential fill otherwise
        // stays in cache): ask for it now, so it arrives during the descent below.
        let hash = indexSlots == nil ? 0 : hashBytes(userKey)
        if let indexSlots { prefetchForWrite(indexSlots + 8 * (Int(truncatingIfNeeded: hash) & indexMask)) }
        let h = randomHeight()
        let internalLength = userKey.count + internalKeyTagBytes
        let nodeBytes = (Self.headerBytes + 4 * h + internalLength + value.count + 3) & ~3
        precondition(used + nodeBytes <= capacityBytes, "memtable arena overflow")
        let node = UInt32(used)
        let p = base + used
        p.storeBytes(of: UInt32(internalLength), as: UInt32.self)
        p.storeBytes(of: UInt32(value.count), toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: UInt8(h), toByteOffset: 8, as: UInt8.self)
        let keyStart = p + Self.headerBytes + 4 * h
        if userKey.count > 0 { keyStart.copyMemory(from: userKey.baseAddress!, byteCount: userKey.count) }
        (keyStart + userKey.count).storeBytes(of: packTag(sequence, type).littleEndian, as: UInt64.self)
        if value.count > 0 {
            (keyStart + internalLength).copyMemory(from: value.baseAddress!, byteCount: value.count)
        }
        used += nodeBytes

        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: Self.maxHeight) { previous in
            let found = findGreaterOrEqual(self.key(node), previous: previous.baseAddress!)
            precondition(
                found == 0 || compareInternalKeys(self.key(found), self.key(node)) != 0, "duplicate internal key")
            // Indexed before it is linked: a reader that finds it there but may not see it yet
            // (its sequence is above the reader's) walks the list instead.
            if self.indexSlots != nil { self.index(node, userKey: userKey, sequence: sequence, hash: hash) }
            let current = currentHeight.load(ordering: .relaxed)
            if h > current {
                for level in current..<h { previous[level] = 0 }
                // Readers that see the new height before the links find 0 (end) at the new
                // levels and simply drop a level: safe.
                currentHeight.store(h, ordering: .relaxed)
            }
            // The node is whole (its own links too) before any link to it is stored: then a
            // crash anywhere leaves a valid list, and in a region the node can be persisted
            // before it is reachable.
            for level in 0..<h { link(node, level).store(next(previous[level], level), ordering: .relaxed) }
            if let placement { placement.wrote(node: node, bytes: nodeBytes) }
            for level in 0..<h { link(previous[level], level).store(node, ordering: .releasing) }
            if let placement { placement.linked(predecessor: previous[0]) }
        }
        entries += 1
        smallestSequence = min(smallestSequence, sequence)
        largestSequence = max(largestSequence, sequence)
        usedPublished.store(used, ordering: .relaxed)
    }

    // MARK: The point-lookup index

    @inline(__always) private func indexSlot(_ slot: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (indexSlots! + 8 * slot).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    private static let tagMask: UInt64 = 0xFFFF_FFFF_0000_0000

    /// Points `userKey`'s slot at `node`, its newest entry (a new slot while the index has room).
    /// Writer only.
    private func index(_ node: UInt32, userKey: UnsafeRawBufferPointer, sequence: SequenceNumber, hash: UInt64) {
        let tag = hash & Self.tagMask
        var slot = Int(truncatingIfNeeded: hash) & indexMask
        while true {
            let current = indexSlot(slot).load(ordering: .relaxed)  // only this writer stores
            if current == 0 {
                guard indexedKeys < indexLimit else {
                    indexFull.store(true, ordering: .releasing)
                    return
                }
                indexedKeys += 1
                indexSlot(slot).store(tag | UInt64(node), ordering: .releasing)
                return
            }
            if current & Self.tagMask == tag {
                let other = key(UInt32(truncatingIfNeeded: current))
                if compareBytes(MoraineFormat.userKey(other), userKey) == 0 {
                    if MoraineFormat.sequence(other) < sequence { indexSlot(slot).store(tag | UInt64(node), ordering: .releasing) }
                    return
                }
            }
            slot = (slot + 1) & indexMask
        }
    }

    /// What the index knows of `userKey` at `sequence`; nil when only a walk can tell (the
    /// key's newest entry is newer than `sequence`, or the index is full and lacks the key).
    @inline(__always)
    private func indexedLookup(_ userKey: UnsafeRawBufferPointer, sequence: SequenceNumber) -> LookupResult? {
        let hash = hashBytes(userKey)
        let tag = hash & Self.tagMask
        var slot = Int(truncatingIfNeeded: hash) & indexMask
        while true {  // ends: at most half the slots are ever taken
            let current = indexSlot(slot).load(ordering: .acquiring)
            if current == 0 { return indexFull.load(ordering: .acquiring) ? nil : .notFound }
            if current & Self.tagMask == tag {
                let node = UInt32(truncatingIfNeeded: current)
                let found = key(node)
                if compareBytes(MoraineFormat.userKey(found), userKey) == 0 {
                    guard MoraineFormat.sequence(found) <= sequence else { return nil }
                    switch valueType(found) {
                    case .value: return .found(Array(value(node)))
                    case .deletion: return .deleted
                    case nil: return nil
                    }
                }
            }
            slot = (slot + 1) & indexMask
        }
    }

    /// Looks up the newest entry for `userKey` with sequence <= `sequence`.
    public func get(_ userKey: UnsafeRawBufferPointer, sequence requested: SequenceNumber) -> LookupResult {
        if indexSlots != nil, let known = indexedLookup(userKey, sequence: requested) { return known }
        let sequence = min(requested, ceiling)
        return withUnsafeTemporaryAllocation(byteCount: userKey.count + internalKeyTagBytes, alignment: 8) { lookup in
            if userKey.count > 0 {
                lookup.baseAddress!.copyMemory(from: userKey.baseAddress!, byteCount: userKey.count)
            }
            (lookup.baseAddress! + userKey.count).storeBytes(
                of: packTag(sequence, .forSeek).littleEndian, as: UInt64.self)
            let node = findGreaterOrEqual(UnsafeRawBufferPointer(lookup), previous: nil)
            guard node != 0 else { return .notFound }
            let found = key(node)
            guard compareBytes(MoraineFormat.userKey(found), userKey) == 0 else { return .notFound }
            switch valueType(found) {
            case .value: return .found(Array(value(node)))
            case .deletion: return .deleted
            case nil: return .notFound
            }
        }
    }

    public func makeIterator() -> MemTableIterator { MemTableIterator(self) }
}

/// A cursor over a memtable. Holds the memtable alive; sees entries published before each move.
public final class MemTableIterator: InternalIterator {
    private let table: MemTable
    private var node: UInt32 = 0

    init(_ table: MemTable) { self.table = table }

    public var isValid: Bool { node != 0 }
    public var key: UnsafeRawBufferPointer { table.key(node) }
    public var value: UnsafeRawBufferPointer { table.value(node) }
    public var valueOwner: AnyObject? { table }

    public func seekToFirst() {
        node = table.next(0, 0)
        skipInvisibleForward()
    }
    public func seekToLast() {
        node = table.findLast()
        skipInvisibleBackward()
    }
    public func seek(_ target: UnsafeRawBufferPointer) {
        node = table.findGreaterOrEqual(target, previous: nil)
        skipInvisibleForward()
    }
    public func next() {
        node = table.next(node, 0)
        skipInvisibleForward()
    }
    public func prev() {
        node = table.findLessThan(table.key(node))
        skipInvisibleBackward()
    }

    /// Steps over entries past the table's ceiling (only an attached memtable has them).
    @inline(__always) private func skipInvisibleForward() {
        guard table.ceiling != maxSequenceNumber else { return }
        while node != 0 && MoraineFormat.sequence(table.key(node)) > table.ceiling { node = table.next(node, 0) }
    }
    @inline(__always) private func skipInvisibleBackward() {
        guard table.ceiling != maxSequenceNumber else { return }
        while node != 0 && MoraineFormat.sequence(table.key(node)) > table.ceiling { node = table.findLessThan(table.key(node)) }
    }
}

/// Arenas of freed memtables, kept for the next ones. A fresh arena's pages fault in (and are
/// zeroed by the kernel) one at a time as the writer first touches them: for a 64 MiB memtable of
/// 4 KiB values that was about a third of the write path's time. A recycled arena is already
/// resident. Holds at most `limit` arenas; the rest are unmapped, as are all of them when the
/// pool goes. (RocksDB gets the same reuse from malloc handing back a freed memtable's blocks.)
/// Thread-safe.
public final class MemTableArenaPool: @unchecked Sendable {
    private let lock = ConditionLock()
    private var arenas: [(base: UnsafeMutableRawPointer, capacity: Int)] = []
    public let limit: Int
    /// Larger arenas (made for one oversized batch) are not kept.
    public let maxCapacity: Int

    public init(limit: Int = 1, maxCapacity: Int) {
        self.limit = limit
        self.maxCapacity = maxCapacity
    }

    deinit { for arena in arenas { munmap(arena.base, arena.capacity) } }

    /// An arena of at least `capacity` bytes, if the pool holds one.
    func take(atLeast capacity: Int) -> (base: UnsafeMutableRawPointer, capacity: Int)? {
        lock.withLock {
            guard let index = arenas.firstIndex(where: { $0.capacity >= capacity }) else { return nil }
            return arenas.remove(at: index)
        }
    }

    /// Keeps the arena if there is room; false means the caller unmaps it.
    func giveBack(base: UnsafeMutableRawPointer, capacity: Int) -> Bool {
        lock.withLock {
            guard arenas.count < limit, capacity <= maxCapacity else { return false }
            arenas.append((base, capacity))
            return true
        }
    }

    /// Arenas held now.
    public var count: Int { lock.withLock { arenas.count } }
}
