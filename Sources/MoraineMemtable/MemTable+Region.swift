// A memtable whose arena is an arena of a shared, persistent region (a memory node's; docs/
// MEMORY.md has the byte map): the skiplist itself lives there, not a copy, and so does its state,
// so a successor process can re-attach it after a crash without replaying a log.
//
// Arena = a 256-byte header, then the skiplist area (MemTable's node layout, offsets relative to
// the area's start). Header words (8 bytes, little-endian):
//    0 magic, 8 tag (the memtable's log number), 16 database id, 24 owner epoch   (the region's
//      allocator writes these; the epoch changes when a new owner adopts the arena)
//   64 skiplist format "MORSKIP1", 72 capacity of the skiplist area, 80 commit generation g,
//   96 and 136: two state slots of five words each — bytes used, committed sequence (the last
//   acknowledged write's), entry count, smallest sequence, height; slot g & 1 is the current one
//                                                                             (the memtable writes these)
//
// Persistence, per write group (`commit`): the nodes and the level-0 links that reach them are
// persisted, then the other state slot, then the generation word that makes it current (the one
// 8-byte store that publishes a commit), then the write is acknowledged. On real persistent memory a
// node is also persisted before any link to it is stored, so no persisted link ever leads to bytes
// that did not persist. Upper-level links are never persisted on their own: a crash may leave them
// stale, which a search tolerates (they still point at whole, persisted nodes in key order).
// Recovery (`attach`) trusts nothing: it walks every level with bounds, height and key-order
// checks, counts the entries at or below the committed sequence, and hides the rest (a group a
// crash cut short was never acknowledged). An attached memtable is read-only.
//
// Fencing: the writer checks the arena's owner epoch before a group and after its commit; a new
// owner's adoption changes it, so a stalled old owner stops (`fenced`) instead of acknowledging
// writes the new owner will not see.
// Thread-safety: as MemTable; `commit` is the writer's.
import Atomics
import MoraineFormat
import MoraineSystem

/// Where a region memtable's arena is and whose it is.
public struct MemTableRegionArena: @unchecked Sendable {
    public let region: PmemRegion
    /// Offset of the arena (its header) in the region.
    public let offset: Int
    /// Bytes of the arena, header included.
    public let bytes: Int
    /// The epoch of the owner writing it.
    public let epoch: UInt64

    public init(region: PmemRegion, offset: Int, bytes: Int, epoch: UInt64) {
        self.region = region
        self.offset = offset
        self.bytes = bytes
        self.epoch = epoch
    }
}

/// The byte map of a region memtable's arena header.
public enum RegionArenaLayout {
    public static let headerBytes = 256
    public static let magicOffset = 0
    public static let tagOffset = 8
    public static let databaseOffset = 16
    public static let epochOffset = 24
    public static let formatOffset = 64
    public static let capacityOffset = 72
    static let generationOffset = 80
    /// The state slot of commit generation `generation`, and its words.
    static func slotOffset(_ generation: UInt64) -> Int { generation & 1 == 0 ? 96 : 136 }
    static let usedWord = 0
    static let sequenceWord = 8
    static let entriesWord = 16
    static let smallestWord = 24
    static let heightWord = 32
    /// "MORSKIP1" little-endian.
    public static let format: UInt64 = 0x3150_494B_5352_4F4D
    /// An arena kept as a write log by request (a peer across boxes), not a skiplist: "MORLOG01"
    /// little-endian at `formatOffset`, its capacity at `capacityOffset`, the bytes appended so
    /// far at `logLengthOffset` (persisted after them), the log from `headerBytes` on.
    public static let logFormat: UInt64 = 0x3130_474F_4C52_4F4D
    public static let logLengthOffset = 88
}

/// What persisting a region memtable needs: the arena, and what the writer changed since the last
/// commit. Owned by the writer.
final class RegionPlacement: @unchecked Sendable {
    let arena: MemTableRegionArena
    /// Real persistent memory: cache-line flushes, so each range is flushed on its own.
    let flushesLines: Bool
    /// Skiplist-area offset of the first node written since the last commit (nil: none).
    @exclusivity(unchecked) var firstNode: UInt32? = nil
    /// Level-0 predecessors whose link changed since the last commit (up to `linksMax`; past
    /// that the whole used area is flushed).
    @exclusivity(unchecked) var links: [UInt32] = []
    static let linksMax = 64

    init(arena: MemTableRegionArena) {
        self.arena = arena
        flushesLines = arena.region.isPersistentMemory
        links.reserveCapacity(Self.linksMax + 1)
    }

    /// Region offset of a skiplist-area offset.
    @inline(__always) func regionOffset(_ areaOffset: Int) -> Int { arena.offset + RegionArenaLayout.headerBytes + areaOffset }

    /// A node is whole and about to be linked: on persistent memory, persist it first, so no
    /// link that persists can lead to bytes that did not.
    @inline(__always) func wrote(node: UInt32, bytes: Int) {
        let region = arena.region
        region.noteStore(regionOffset(Int(node)), bytes)
        if flushesLines {
            try? region.flush(regionOffset(Int(node)), bytes)
            region.fence()
        }
        if firstNode == nil { firstNode = node }
    }

    /// `predecessor`'s level-0 link now leads to a new node: the commit persists it.
    @inline(__always) func linked(predecessor: UInt32) {
        arena.region.noteStore(regionOffset(Int(predecessor) + MemTable.headerBytes), 4)
        if links.count <= Self.linksMax { links.append(predecessor) }
    }

    /// More links changed than are remembered: the commit persists the whole used area.
    var linksOverflowed: Bool { links.count > Self.linksMax }
    /// Test-only: commits publish without persisting the nodes and links first (the bug the
    /// crash-image test must catch).
    @exclusivity(unchecked) var skipsDataPersistForTesting = false
}

extension MemTable {
    /// A new, empty memtable in `arena` (its allocator wrote the region's own header words):
    /// writes the skiplist's head and state and persists them.
    /// - Throws: `.io` when the region cannot persist.
    /// With `hashIndex`, the memtable keeps the point-lookup index in this process's memory (it
    /// is a reader's shortcut, not state: a re-attached memtable walks the list).
    public static func inRegion(_ arena: MemTableRegionArena, logNumber: UInt64, seed: UInt64 = 0x5eed, hashIndex: Bool = false) throws -> MemTable {
        let capacity = arena.bytes - RegionArenaLayout.headerBytes
        precondition(capacity >= 64 << 10 && capacity < Int(UInt32.max), "region arena of \(arena.bytes) bytes")
        let region = arena.region
        let table = MemTable(
            base: region.base + arena.offset + RegionArenaLayout.headerBytes, capacityBytes: capacity,
            placement: RegionPlacement(arena: arena), logNumber: logNumber, ceiling: maxSequenceNumber, seed: seed, hashIndex: hashIndex)
        let head = headerBytes + 4 * maxHeight
        table.base.initializeMemory(as: UInt8.self, repeating: 0, count: head)
        table.base.storeBytes(of: UInt8(maxHeight), toByteOffset: 8, as: UInt8.self)
        region.noteStore(arena.offset + RegionArenaLayout.headerBytes, head)
        table.usedPublished.store(table.used, ordering: .relaxed)
        region.storeWord(RegionArenaLayout.format, at: arena.offset + RegionArenaLayout.formatOffset)
        region.storeWord(UInt64(capacity), at: arena.offset + RegionArenaLayout.capacityOffset)
        try region.persist(arena.offset, RegionArenaLayout.headerBytes + head)
        try table.publishCommittedState(sequence: 0)
        return table
    }

    /// Test-only: see `RegionPlacement.skipsDataPersistForTesting`.
    func skipDataPersistForTesting() { placement?.skipsDataPersistForTesting = true }

    /// The last sequence this memtable holds committed: its ceiling when attached in place, else
    /// its newest entry's.
    public var committedSequence: SequenceNumber { ceiling == maxSequenceNumber ? largestSequence : ceiling }

    /// Whether the arena is in a region (its writes are persisted by `commit`).
    public var isInRegion: Bool { placement != nil }

    /// Whether another owner has adopted this memtable's arena since this one started writing it.
    public var isFenced: Bool {
        guard let arena = placement?.arena else { return false }
        // Orders this writer's earlier stores before the load (the adopter does the mirror image).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // The tag too: an arena re-granted to another database whose owner has the same epoch.
        return arena.region.loadWord(at: arena.offset + RegionArenaLayout.epochOffset) != arena.epoch
            || arena.region.loadWord(at: arena.offset + RegionArenaLayout.tagOffset) != logNumber
    }

    /// Makes every entry added so far durable in the region and records `sequence` (the group's
    /// last) as committed: nodes and level-0 links first, then the state words. A no-op for a
    /// memtable in private memory.
    /// - Throws: `.io` when the region cannot persist.
    public func commit(sequence: SequenceNumber) throws {
        guard let placement else { return }
        let region = placement.arena.region
        let areaStart = placement.regionOffset(0)
        if let first = placement.firstNode, !placement.skipsDataPersistForTesting {
            if placement.flushesLines && !placement.linksOverflowed {
                // The nodes were persisted as they were written; their level-0 predecessors' links now.
                for link in placement.links { try region.flush(areaStart + Int(link) + Self.headerBytes, 4) }
            } else {
                // One span (msync works in pages, not lines): every changed link and the new nodes.
                let low = placement.linksOverflowed ? 0 : placement.links.reduce(Int(first)) { min($0, Int($1)) }
                try region.flush(areaStart + low, used - low)
            }
            region.fence()
        }
        placement.firstNode = nil
        placement.links.removeAll(keepingCapacity: true)
        try publishCommittedState(sequence: sequence)
    }

    /// Writes the state after this commit into the slot not in use, persists it, then publishes
    /// it with the generation word (one atomic 8-byte store), persisted.
    private func publishCommittedState(sequence: SequenceNumber) throws {
        guard let arena = placement?.arena else { return }
        let region = arena.region
        let generation = region.loadWord(at: arena.offset + RegionArenaLayout.generationOffset) &+ 1
        let slot = arena.offset + RegionArenaLayout.slotOffset(generation)
        region.storeWord(UInt64(used), at: slot + RegionArenaLayout.usedWord)
        region.storeWord(sequence, at: slot + RegionArenaLayout.sequenceWord)
        region.storeWord(UInt64(entries), at: slot + RegionArenaLayout.entriesWord)
        region.storeWord(smallestSequence, at: slot + RegionArenaLayout.smallestWord)
        region.storeWord(UInt64(currentHeight.load(ordering: .relaxed)), at: slot + RegionArenaLayout.heightWord)
        try region.persist(slot, 40)
        region.storeWord(generation, at: arena.offset + RegionArenaLayout.generationOffset)
        try region.persist(arena.offset + RegionArenaLayout.generationOffset, 8)
    }

    /// Re-attaches the memtable a crashed (or stopped) owner left in `arena`, read-only, showing
    /// the entries up to its committed sequence. Nothing read from the arena is trusted: every
    /// offset, length, height and the key order of every level are checked before it is used,
    /// and level 0 must reach every committed entry. When the links fail that (a power loss on
    /// media that persists pages, not lines, can keep a link without the node it leads to), the
    /// memtable is rebuilt in private memory from the committed nodes themselves, which lie one
    /// after another in the order they were written.
    /// - Throws: `.corruption` naming the arena and what is wrong, when neither works.
    public static func attach(_ arena: MemTableRegionArena, logNumber: UInt64, name: String) throws -> MemTable {
        guard let state = try committedState(arena, name: name) else {
            // Granted, but no commit was ever published (a crash inside `inRegion`): nothing
            // was acknowledged. (The memory node zeroes the generation when it grants an arena.)
            return MemTable(capacityBytes: 64 << 10, logNumber: logNumber)
        }
        let (used, ceiling, committedEntries) = (state.used, state.ceiling, state.entries)
        let capacity = arena.bytes - RegionArenaLayout.headerBytes
        let table = MemTable(
            base: arena.region.base + arena.offset + RegionArenaLayout.headerBytes, capacityBytes: capacity,
            placement: RegionPlacement(arena: arena), logNumber: logNumber, ceiling: ceiling, seed: 1)
        let problem: String
        do {
            let walk = try table.checkLinks(capacity: capacity, name: name)
            if walk.visible == committedEntries {
                table.used = used
                table.usedPublished.store(used, ordering: .relaxed)
                table.currentHeight.store(walk.tallest, ordering: .relaxed)
                table.entries = walk.visible
                table.smallestSequence = walk.smallest
                table.largestSequence = walk.largest
                return table
            }
            problem = "level 0 reaches \(walk.visible) of its \(committedEntries) committed entries"
        } catch let error as MoraineError {
            problem = error.message
        }
        SystemLog.info("\(name): \(problem); rebuilding the memtable from its committed nodes")
        return try table.rebuildFromNodes(used: used, committedEntries: committedEntries, logNumber: logNumber, name: name)
    }

    /// A private copy of the entries another process has committed in `arena` so far, for a
    /// reader that does not own it (a read-only open): the owner may go on writing, or flush
    /// and give the arena back, meanwhile. The nodes are read one after another with every bound
    /// checked, never through links; an arena given to another memtable under the copy is
    /// detected by its tag.
    /// - Throws: `.corruption` naming the arena when the copy is not whole.
    public static func copyCommitted(_ arena: MemTableRegionArena, logNumber: UInt64, name: String) throws -> MemTable {
        let tagOffset = arena.offset + RegionArenaLayout.tagOffset
        let tag = arena.region.loadWord(at: tagOffset)
        guard let state = try committedState(arena, name: name) else { return MemTable(capacityBytes: 64 << 10, logNumber: logNumber) }
        let view = MemTable(
            base: arena.region.base + arena.offset + RegionArenaLayout.headerBytes, capacityBytes: arena.bytes - RegionArenaLayout.headerBytes,
            placement: RegionPlacement(arena: arena), logNumber: logNumber, ceiling: state.ceiling, seed: 1)
        let copy = try view.rebuildFromNodes(used: state.used, committedEntries: state.entries, logNumber: logNumber, name: name)
        guard arena.region.loadWord(at: tagOffset) == tag, tag == logNumber else {
            throw MoraineError.corruption("memtable arena: given to another memtable while it was read", file: name)
        }
        return copy
    }

    /// Calls `body` with every committed entry of `arena`, in key order, read in place by a
    /// level-0 walk that checks every offset, length and the key order before using it, for a
    /// reader in another process (a flush worker). Reads nothing outside the arena, whatever the
    /// arena holds (even a memtable given to another owner under the walk).
    /// - Returns: the entries passed to `body`.
    /// - Throws: `.corruption` naming the arena when the walk does not find exactly the committed
    ///   entries; what `body` throws.
    public static func forEachCommitted(
        _ arena: MemTableRegionArena, name: String, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws -> Int {
        func corrupt(_ why: String) -> MoraineError { MoraineError.corruption("memtable arena: \(why)", file: name) }
        guard let state = try committedState(arena, name: name) else { return 0 }
        let capacity = arena.bytes - RegionArenaLayout.headerBytes
        let view = MemTable(
            base: arena.region.base + arena.offset + RegionArenaLayout.headerBytes, capacityBytes: capacity,
            placement: RegionPlacement(arena: arena), logNumber: 0, ceiling: state.ceiling, seed: 1)
        let head = headerBytes + 4 * maxHeight
        var node: UInt32 = 0
        var visited = 0
        var count = 0
        while true {
            let next = view.link(node, 0).load(ordering: .acquiring)
            if next == 0 { break }
            visited += 1
            let offset = Int(next)
            guard visited <= capacity / (headerBytes + 4 + internalKeyTagBytes) + 1, offset >= head, offset & 3 == 0,
                offset + headerBytes + 4 <= capacity
            else { throw corrupt("level 0 link to \(offset) after \(visited) nodes") }
            let nodeHeight = view.height(next)
            let keyBytes = view.keyLength(next)
            guard nodeHeight >= 1, nodeHeight <= maxHeight, keyBytes >= internalKeyTagBytes,
                offset + headerBytes + 4 * nodeHeight + keyBytes + view.valueLength(next) <= capacity
            else { throw corrupt("node at \(offset): height \(nodeHeight), key \(keyBytes) bytes, overruns the arena") }
            if node != 0 && compareInternalKeys(view.key(node), view.key(next)) >= 0 {
                throw corrupt("level 0 keys out of order at node \(offset)")
            }
            if MoraineFormat.sequence(view.key(next)) <= state.ceiling {
                try body(view.key(next), view.value(next))
                count += 1
            }
            node = next
        }
        guard count == state.entries else { throw corrupt("level 0 reaches \(count) of its \(state.entries) committed entries") }
        return count
    }

    /// The committed state of `arena` (nil: never committed), read consistently: the generation
    /// is read before and after its slot, and the read is repeated while a commit moves it.
    /// - Throws: `.corruption` for a state that cannot be the arena's.
    private static func committedState(_ arena: MemTableRegionArena, name: String) throws -> (used: Int, ceiling: SequenceNumber, entries: Int)? {
        let region = arena.region
        func word(_ offset: Int) -> UInt64 { region.loadWord(at: arena.offset + offset) }
        func corrupt(_ why: String) -> MoraineError { MoraineError.corruption("memtable arena: \(why)", file: name) }
        let capacity = arena.bytes - RegionArenaLayout.headerBytes
        // A write log kept by request is not an empty skiplist: refused, never re-attached as one.
        guard word(RegionArenaLayout.formatOffset) != RegionArenaLayout.logFormat else {
            throw corrupt("the arena holds a write log of \(word(RegionArenaLayout.logLengthOffset)) bytes kept by request, not a skiplist")
        }
        for _ in 0..<1000 {
            let generation = word(RegionArenaLayout.generationOffset)
            if generation == 0 { return nil }
            guard word(RegionArenaLayout.formatOffset) == RegionArenaLayout.format else {
                throw corrupt("commit generation \(generation) but no skiplist format word")
            }
            guard word(RegionArenaLayout.capacityOffset) == UInt64(capacity) else {
                throw corrupt("skiplist capacity \(word(RegionArenaLayout.capacityOffset)), the arena holds \(capacity)")
            }
            let slot = RegionArenaLayout.slotOffset(generation)
            let used = word(slot + RegionArenaLayout.usedWord)
            let ceiling = word(slot + RegionArenaLayout.sequenceWord)
            let entries = word(slot + RegionArenaLayout.entriesWord)
            atomicMemoryFence(ordering: .acquiring)
            guard word(RegionArenaLayout.generationOffset) == generation else { continue }
            let head = UInt64(headerBytes + 4 * maxHeight)
            guard used >= head, used <= UInt64(capacity), entries <= used / 16 else {
                throw corrupt("committed size \(used) outside \(head)...\(capacity), or \(entries) entries in it")
            }
            return (Int(used), ceiling, Int(entries))
        }
        throw corrupt("its commit generation kept moving while it was read")
    }

    /// Walks every level from the head: nodes inside the area and whole, tall enough for the
    /// level, keys strictly rising (so no cycle), at most as many as could fit. Counts the level-0
    /// entries at or below the ceiling.
    private func checkLinks(capacity: Int, name: String) throws
        -> (visible: Int, smallest: SequenceNumber, largest: SequenceNumber, tallest: Int)
    {
        func corrupt(_ why: String) -> MoraineError { MoraineError.corruption("memtable arena: \(why)", file: name) }
        guard height(0) == Self.maxHeight else { throw corrupt("head node of height \(height(0))") }
        let head = Self.headerBytes + 4 * Self.maxHeight
        let hopsMax = capacity / (Self.headerBytes + 4 + internalKeyTagBytes) + 1
        var visible = 0
        var smallest = maxSequenceNumber
        var largest: SequenceNumber = 0
        var tallest = 1
        for level in (0..<Self.maxHeight).reversed() {
            var node: UInt32 = 0
            var hops = 0
            while true {
                let next = link(node, level).load(ordering: .acquiring)
                if next == 0 { break }
                hops += 1
                let offset = Int(next)
                guard hops <= hopsMax, offset >= head, offset & 3 == 0, offset + Self.headerBytes + 4 <= capacity else {
                    throw corrupt("level \(level) link to \(offset) after \(hops) nodes")
                }
                let nodeHeight = height(next)
                let keyBytes = keyLength(next)
                guard nodeHeight > level, nodeHeight <= Self.maxHeight, keyBytes >= internalKeyTagBytes,
                    offset + Self.headerBytes + 4 * nodeHeight + keyBytes + valueLength(next) <= capacity
                else {
                    throw corrupt("node at \(offset) on level \(level): height \(nodeHeight), key \(keyBytes) bytes, overruns or misfits")
                }
                if node != 0 && compareInternalKeys(key(node), key(next)) >= 0 {
                    throw corrupt("level \(level) keys out of order at node \(offset)")
                }
                tallest = max(tallest, level + 1)
                if level == 0 {
                    let sequence = MoraineFormat.sequence(key(next))
                    if sequence <= ceiling {
                        visible += 1
                        smallest = min(smallest, sequence)
                        largest = max(largest, sequence)
                    }
                }
                node = next
            }
        }
        return (visible, smallest, largest, tallest)
    }

    /// A private copy holding the committed nodes, found by stepping through the arena's nodes
    /// in the order they were written (each node's size follows from its header).
    private func rebuildFromNodes(used: Int, committedEntries: Int, logNumber: UInt64, name: String) throws -> MemTable {
        func corrupt(_ why: String) -> MoraineError { MoraineError.corruption("memtable arena: \(why)", file: name) }
        let rebuilt = MemTable(capacityBytes: 2 * used + (64 << 10), logNumber: logNumber)
        var offset = Self.headerBytes + 4 * Self.maxHeight
        var sequences = Set<SequenceNumber>()
        while offset < used {
            let node = UInt32(offset)
            guard offset + Self.headerBytes <= used else { throw corrupt("a node header at \(offset) overruns the committed \(used) bytes") }
            let nodeHeight = height(node)
            let keyBytes = keyLength(node)
            let nodeBytes = (Self.headerBytes + 4 * nodeHeight + keyBytes + valueLength(node) + 3) & ~3
            guard nodeHeight >= 1, nodeHeight <= Self.maxHeight, keyBytes >= internalKeyTagBytes, offset + nodeBytes <= used else {
                throw corrupt("node at \(offset): height \(nodeHeight), key \(keyBytes) bytes, overruns the committed \(used) bytes")
            }
            let internalKey = key(node)
            let sequence = MoraineFormat.sequence(internalKey)
            if sequence <= ceiling {
                guard let type = valueType(internalKey), sequences.insert(sequence).inserted else {
                    throw corrupt("node at \(offset): a bad entry type or a repeated sequence \(sequence)")
                }
                rebuilt.add(sequence: sequence, type: type, key: userKey(internalKey), value: value(node))
            }
            offset += nodeBytes
        }
        guard rebuilt.entryCount == committedEntries else {
            throw corrupt("\(rebuilt.entryCount) nodes at or below sequence \(ceiling), \(committedEntries) committed")
        }
        return rebuilt
    }
}
