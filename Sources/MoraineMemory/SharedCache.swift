// The shared block cache in a memory node's region (docs/MEMORY.md has the byte map): after the
// arenas, sets of `ways` slots of `slotBytes`, each set led by a 64-byte tag line (one 8-byte tag
// per way: a hash of the key it holds, 0 when empty, a hint only). A block's set follows from its
// key (database id, table file number, offset), the same in every process. A slot:
//    0 version (odd while the memory node writes the slot; only ever grows)
//    8 database id (0: empty), 16 file number, 24 offset, 32 length | CRC32C of the payload << 32,
//   40 referenced (set by readers, cleared by the node's CLOCK hand), 48..63 reserved, 64.. payload
// The payload is the block decoded (decompressed, its table CRC checked by the process that read
// it from the file), so a hit costs a copy and a CRC, no decompression.
// The memory node is the only writer of a slot's key, payload and tag (inserts come to it by
// request, and it evicts by CLOCK within the set). A reader on the same box reads the tag line,
// then copies a candidate block out in place and trusts nothing: the version must be even and the
// same before and after the copy, the key must match, and the copy must match its CRC; otherwise
// it is a miss (or, for a CRC mismatch, counted as a damaged slot), never a wrong block. Not
// persistent: a restarted node clears the slots a crash left half written.
//
// Thread-safety: readers any thread; the writer functions are called under the node's lock.
import Atomics
import MoraineSystem

/// Where the shared cache's sets are in a region.
public struct SharedCacheLayout: Sendable, Equatable {
    public static let ways = 8
    public static let defaultSlotBytes = 4608
    static let slotHeaderBytes = 64
    static let tagLineBytes = 64
    static let databaseWord = 8
    static let fileWord = 16
    static let offsetWord = 24
    static let lengthWord = 32
    static let referencedWord = 40

    public let offset: Int
    public let slots: Int
    public let slotBytes: Int

    public var sets: Int { slots / Self.ways }
    /// The largest block a slot holds.
    public var payloadMax: Int { slotBytes - Self.slotHeaderBytes }
    /// Bytes of one set: its tag line and its slots.
    var setBytes: Int { Self.tagLineBytes + Self.ways * slotBytes }
    /// Bytes of the whole cache.
    public var bytes: Int { sets * setBytes }

    /// A key's hash: its set, and (never 0) its tag.
    func hash(database: UInt64, file: UInt64, offset block: UInt64) -> (set: Int, tag: UInt64) {
        var h = database ^ (file &* 0x9e37_79b9_7f4a_7c15)
        h ^= block &* 0xc2b2_ae3d_27d4_eb4f
        h ^= h >> 29
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 32
        return (Int(truncatingIfNeeded: h % UInt64(max(sets, 1))), (h >> 16) | 1)
    }

    func set(database: UInt64, file: UInt64, offset block: UInt64) -> Int { hash(database: database, file: file, offset: block).set }

    func tagOffset(set: Int, way: Int) -> Int { offset + set * setBytes + 8 * way }
    func slotOffset(set: Int, way: Int) -> Int { offset + set * setBytes + Self.tagLineBytes + way * slotBytes }
}

/// What a lookup found.
enum SharedCacheLookup {
    case hit
    case miss
    /// A slot with the key whose copy failed its CRC.
    case damaged
}

extension PmemRegion {
    @inline(__always) func atomicWord(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    /// The block (database, file, offset) copied out of the shared cache in place, checked as
    /// the header says; an owned buffer on a hit.
    func sharedCacheLookup(
        _ layout: SharedCacheLayout, database: UInt64, file: UInt64, offset block: UInt64
    ) -> (SharedCacheLookup, UnsafeMutableRawBufferPointer?) {
        guard layout.sets > 0 else { return (.miss, nil) }
        let (set, tag) = layout.hash(database: database, file: file, offset: block)
        for way in 0..<SharedCacheLayout.ways where atomicWord(layout.tagOffset(set: set, way: way)).load(ordering: .relaxed) == tag {
            let slot = layout.slotOffset(set: set, way: way)
            for _ in 0..<3 {
                let before = atomicWord(slot).load(ordering: .acquiring)
                if before & 1 == 1 { break }  // being written: take it as a miss
                guard loadWord(at: slot + SharedCacheLayout.databaseWord) == database,
                    loadWord(at: slot + SharedCacheLayout.fileWord) == file,
                    loadWord(at: slot + SharedCacheLayout.offsetWord) == block
                else { break }
                let lengthWord = loadWord(at: slot + SharedCacheLayout.lengthWord)
                let length = Int(lengthWord & 0xffff_ffff)
                guard length > 0, length <= layout.payloadMax else { break }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 8)
                buffer.baseAddress!.copyMemory(from: base + slot + SharedCacheLayout.slotHeaderBytes, byteCount: length)
                atomicMemoryFence(ordering: .acquiring)
                guard atomicWord(slot).load(ordering: .relaxed) == before else {  // rewritten under the copy
                    buffer.deallocate()
                    continue
                }
                guard CRC32C.checksum(UnsafeRawBufferPointer(buffer)) == UInt32(truncatingIfNeeded: lengthWord >> 32) else {
                    buffer.deallocate()
                    return (.damaged, nil)
                }
                atomicWord(slot + SharedCacheLayout.referencedWord).store(1, ordering: .relaxed)
                return (.hit, buffer)
            }
        }
        return (.miss, nil)
    }

    /// Stores a block in its set: in the slot that has it, else an empty one, else the one the
    /// set's CLOCK `hand` picks (a referenced slot is passed once, its bit cleared). Writer only.
    func sharedCacheInsert(
        _ layout: SharedCacheLayout, hand: inout UInt8, database: UInt64, file: UInt64, offset block: UInt64, bytes: UnsafeRawBufferPointer
    ) {
        guard layout.sets > 0, bytes.count > 0, bytes.count <= layout.payloadMax else { return }
        let set = layout.set(database: database, file: file, offset: block)
        var victim: Int? = nil
        for way in 0..<SharedCacheLayout.ways {
            let slot = layout.slotOffset(set: set, way: way)
            let holder = loadWord(at: slot + SharedCacheLayout.databaseWord)
            if holder == database && loadWord(at: slot + SharedCacheLayout.fileWord) == file
                && loadWord(at: slot + SharedCacheLayout.offsetWord) == block
            {
                return  // already there (a table's block never changes)
            }
            if holder == 0 && victim == nil { victim = way }
        }
        if victim == nil {
            for _ in 0..<(2 * SharedCacheLayout.ways) {
                let way = Int(hand) % SharedCacheLayout.ways
                hand = UInt8((way + 1) % SharedCacheLayout.ways)
                let referenced = atomicWord(layout.slotOffset(set: set, way: way) + SharedCacheLayout.referencedWord)
                if referenced.load(ordering: .relaxed) == 0 {
                    victim = way
                    break
                }
                referenced.store(0, ordering: .relaxed)
            }
        }
        let way = victim ?? Int(hand)
        writeSlot(layout, set: set, way: way, database: database, file: file, offset: block, bytes: bytes)
    }

    /// Rewrites one slot under its version word (odd while written), its tag cleared meanwhile
    /// and set after.
    func writeSlot(
        _ layout: SharedCacheLayout, set: Int, way: Int, database: UInt64, file: UInt64, offset block: UInt64,
        bytes: UnsafeRawBufferPointer
    ) {
        let slot = layout.slotOffset(set: set, way: way)
        let tag = atomicWord(layout.tagOffset(set: set, way: way))
        tag.store(0, ordering: .relaxed)
        let version = atomicWord(slot)
        let before = version.load(ordering: .relaxed)
        let odd = before & 1 == 1 ? before &+ 2 : before &+ 1
        version.store(odd, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
        (base + slot + SharedCacheLayout.databaseWord).storeBytes(of: database, as: UInt64.self)
        (base + slot + SharedCacheLayout.fileWord).storeBytes(of: file, as: UInt64.self)
        (base + slot + SharedCacheLayout.offsetWord).storeBytes(of: block, as: UInt64.self)
        if let source = bytes.baseAddress, bytes.count > 0 {
            (base + slot + SharedCacheLayout.slotHeaderBytes).copyMemory(from: source, byteCount: bytes.count)
        }
        let crc = bytes.count > 0 ? CRC32C.checksum(bytes) : 0
        (base + slot + SharedCacheLayout.lengthWord).storeBytes(of: UInt64(bytes.count) | UInt64(crc) << 32, as: UInt64.self)
        atomicWord(slot + SharedCacheLayout.referencedWord).store(0, ordering: .relaxed)
        version.store(odd &+ 1, ordering: .releasing)
        if database != 0 { tag.store(layout.hash(database: database, file: file, offset: block).tag, ordering: .releasing) }
    }

    /// Empties the slot holding (database, file, offset), if one does (a slot found damaged, so
    /// the next insert of the block stores it whole). Writer only.
    func sharedCacheDrop(_ layout: SharedCacheLayout, database: UInt64, file: UInt64, offset block: UInt64) {
        guard layout.sets > 0 else { return }
        let set = layout.set(database: database, file: file, offset: block)
        for way in 0..<SharedCacheLayout.ways {
            let slot = layout.slotOffset(set: set, way: way)
            if loadWord(at: slot + SharedCacheLayout.databaseWord) == database && loadWord(at: slot + SharedCacheLayout.fileWord) == file
                && loadWord(at: slot + SharedCacheLayout.offsetWord) == block
            {
                writeSlot(layout, set: set, way: way, database: 0, file: 0, offset: 0, bytes: UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
    }

    /// Empties every slot of `database` (0: every slot a crash left half written). Writer only.
    func sharedCacheClear(_ layout: SharedCacheLayout, database: UInt64) -> Int {
        var cleared = 0
        for set in 0..<layout.sets {
            for way in 0..<SharedCacheLayout.ways {
                let slot = layout.slotOffset(set: set, way: way)
                let halfWritten = atomicWord(slot).load(ordering: .relaxed) & 1 == 1
                let holder = loadWord(at: slot + SharedCacheLayout.databaseWord)
                if (database == 0 && halfWritten) || (database != 0 && holder == database) {
                    writeSlot(layout, set: set, way: way, database: 0, file: 0, offset: 0, bytes: UnsafeRawBufferPointer(start: nil, count: 0))
                    cleared += 1
                }
            }
        }
        return cleared
    }
}
