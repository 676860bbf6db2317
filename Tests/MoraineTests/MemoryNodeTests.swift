// The memory node in this process, reached over a real carrier: its region (geometry checks, a
// restart that keeps the table), its fencing of stale owners, memtables written in place in its
// arenas and re-attached (only what was committed, damage refused, every crash image of the
// persistence trace), the engine's `pmem` durability through it (no WAL; a reopen re-attaches
// instead of replaying), and a fuzz of its messages. Randomized parts print their seed
// (MORAINE_SEED replays it).
import Foundation
import Moraine
import MoraineCluster
@testable import MoraineEngine
import MoraineFormat
@testable import MoraineMemory
@testable import MoraineMemtable
import MoraineMessages
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import MoraineWorker
import Testing

/// A memory node served in this process on a Unix socket (or TCP on 127.0.0.1), with its region
/// in a temporary directory.
final class MemoryTestNode: @unchecked Sendable {
    let directory = TempDir("moraine-memory")
    let key = TestService.defaultKey()
    let layout: MemoryRegionLayout
    let mappable: Bool
    private(set) var node: MemoryNode
    private(set) var endpoint: Endpoint
    private var server: EndpointServer?

    /// - Parameter mappable: false: the node serves its region by request only.
    init(arenaBytes: Int = 1 << 20, arenaCount: Int = 8, cacheSlots: Int = 0, carrier: Carrier = .sharedMemory, mappable: Bool = true) throws {
        layout = MemoryRegionLayout(arenaBytes: arenaBytes, arenaCount: arenaCount, cacheSlots: cacheSlots)
        self.mappable = mappable
        node = MemoryNode(region: try MemoryRegion.open(path: directory.file("region"), layout: layout), mappable: mappable)
        endpoint = carrier == .sharedMemory ? .sharedMemory(socketPath: directory.file("memory.sock")) : .tcp(host: "127.0.0.1", port: 0)
        let server = try endpoint.serve(key: key, router: node.router())
        endpoint = server.endpoint
        self.server = server
    }

    var regionPath: String { directory.file("region") }

    /// A provider of this node's arenas whose requests carry `epoch`.
    func arenas(epoch: UInt64 = 1) -> MemoryNodeArenas {
        let endpoint = endpoint
        return MemoryNodeArenas(key: key, epoch: { _ in epoch }) { () throws(TransportError) -> Endpoint in endpoint }
    }

    /// Stops serving; a later `restart` reads the region afresh, as a restarted process would.
    func stop() {
        server?.close()
        server = nil
    }

    func restart() throws {
        stop()
        node = MemoryNode(region: try MemoryRegion.open(path: regionPath, layout: layout), mappable: mappable)
        server = try endpoint.serve(key: key, router: node.router())
    }

    deinit {
        stop()
        directory.remove()
    }
}

@Suite("Memory node")
struct MemoryNodeTests {
    static func key(_ i: Int) -> [UInt8] { Array(String(format: "key%08d", i).utf8) }

    @Test("the region keeps its table across a restart and refuses another geometry or a foreign file, naming what differs")
    func regionGeometry() throws {
        let directory = TempDir("moraine-region")
        defer { directory.remove() }
        let path = directory.file("region")
        let layout = MemoryRegionLayout(arenaBytes: 256 << 10, arenaCount: 4)
        do {
            let region = try MemoryRegion.open(path: path, layout: layout)
            #expect(region.freeArenaCount == 4)
            #expect(try region.grant(database: 7, epoch: 3, tag: 11) { _ in false }?.index == 0)
            #expect(try region.grant(database: 8, epoch: 1, tag: 12) { _ in false }?.index == 1)
            try region.release(0, nowNanos: wallClockNanos())
        }
        let reopened = try MemoryRegion.open(path: path, layout: layout)
        #expect(reopened.entries() == [MemoryRegionEntry(index: 1, tag: 12, database: 8, epoch: 1)])
        let other = MemoryRegionLayout(arenaBytes: 512 << 10, arenaCount: 4)
        #expect {
            try MemoryRegion.open(path: path, layout: other)
        } throws: { error in
            let error = error as? MoraineError
            return error?.kind == .invalid && error?.message.contains("arenas of 262144 bytes, not 524288") == true
        }
        let foreign = directory.file("foreign")
        FileManager.default.createFile(atPath: foreign, contents: Data(repeating: 0x41, count: 1 << 20))
        #expect {
            try MemoryRegion.open(path: foreign, layout: layout)
        } throws: { error in
            (error as? MoraineError)?.kind == .invalid && "\(error)".contains("not a memory region")
        }
    }

    @Test("an older epoch is fenced; adopting moves a database's arenas to the new epoch, in the table and in the arena")
    func fencing() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 3)
        let node = memory.node
        #expect(try node.adopt(MemoryAdopt(database: "a", epoch: 5)).arenas.isEmpty)
        let first = try node.allocate(MemoryAllocate(database: "a", epoch: 5, tag: 7))
        #expect(throws: TransportError.self) { try node.adopt(MemoryAdopt(database: "a", epoch: 4)) }
        do {
            _ = try node.allocate(MemoryAllocate(database: "a", epoch: 4, tag: 8))
            Issue.record("an old epoch was granted an arena")
        } catch {
            #expect(error.code == .fenced)
        }
        // A newer owner must adopt what the database holds before it asks for more.
        do {
            _ = try node.allocate(MemoryAllocate(database: "a", epoch: 6, tag: 8))
            Issue.record("a new epoch took an arena without adopting the old ones")
        } catch {
            #expect(error.code == .invalid)
        }
        let adopted = try node.adopt(MemoryAdopt(database: "a", epoch: 6))
        #expect(adopted.arenas == [MemoryArena(index: first.index, tag: 7)])
        let arenaOffset = memory.layout.arenaOffset(Int(first.index))
        #expect(node.region.mapping.loadWord(at: arenaOffset + RegionArenaLayout.epochOffset) == 6)
        do {
            try node.release(MemoryRelease(database: "a", epoch: 5, arena: MemoryArena(index: first.index, tag: 7)))
            Issue.record("the old owner gave back an arena it no longer holds")
        } catch {
            #expect(error.code == .fenced)
        }
        do {
            try node.release(MemoryRelease(database: "b", epoch: 6, arena: MemoryArena(index: first.index, tag: 7)))
            Issue.record("another database gave back a's arena")
        } catch {
            #expect(error.code == .invalid)
        }
        _ = try node.allocate(MemoryAllocate(database: "b", epoch: 1, tag: 1))
        let b2 = try node.allocate(MemoryAllocate(database: "b", epoch: 1, tag: 2))
        do {
            _ = try node.allocate(MemoryAllocate(database: "a", epoch: 6, tag: 9))
            Issue.record("a full region granted an arena")
        } catch {
            #expect(error.code == .busy)
        }
        // b's arena was never adopted: free at once. a's was (epoch 5 may still write there): it
        // goes to quarantine, not back to the grants (`quarantine` below).
        try node.release(MemoryRelease(database: "b", epoch: 1, arena: MemoryArena(index: b2.index, tag: 2)))
        #expect(try node.allocate(MemoryAllocate(database: "a", epoch: 6, tag: 10)).index == b2.index)
        try node.release(MemoryRelease(database: "a", epoch: 6, arena: MemoryArena(index: first.index, tag: 7)))
        do {
            _ = try node.allocate(MemoryAllocate(database: "b", epoch: 1, tag: 3))
            Issue.record("an arena in quarantine was granted")
        } catch {
            #expect(error.code == .busy)
        }
        // A restarted node still fences epoch 5 of a: the newest epoch is rebuilt from the table.
        try memory.restart()
        do {
            _ = try memory.node.adopt(MemoryAdopt(database: "a", epoch: 5))
            Issue.record("a restarted node forgot the newest epoch")
        } catch {
            #expect(error.code == .fenced)
        }
        #expect(memory.node.status.freeArenas == 0)
    }

    /// A memtable in arena 0 of a fresh region at `path`, granted to database 1 under epoch 1.
    @Test("an adopted arena given back stays in quarantine, across a restart, then is granted again; a log's or an unadopted one is free at once")
    func quarantine() throws {
        let directory = TempDir("moraine-memory")
        defer { directory.remove() }
        let layout = MemoryRegionLayout(arenaBytes: 256 << 10, arenaCount: 2, cacheSlots: 0)
        let quarantine: Int64 = 400_000_000
        func node() throws -> MemoryNode {
            MemoryNode(region: try MemoryRegion.open(path: directory.file("region"), layout: layout), quarantineNanos: quarantine)
        }
        func refusal(_ node: MemoryNode, _ request: MemoryAllocate) -> TransportError? {
            do throws(TransportError) {
                _ = try node.allocate(request)
                return nil
            } catch {
                return error
            }
        }
        let first = try node()
        // Owner of epoch 1 writes into arena `taken`; epoch 2 adopts it (epoch 1 may still be
        // writing there), flushes it and gives it back.
        let taken = try first.allocate(MemoryAllocate(database: "db", epoch: 1, tag: 5))
        _ = try first.adopt(MemoryAdopt(database: "db", epoch: 2))
        try first.release(MemoryRelease(database: "db", epoch: 2, arena: MemoryArena(index: taken.index, tag: 5)))
        let other = try first.allocate(MemoryAllocate(database: "other", epoch: 1, tag: 9))
        #expect(other.index != taken.index, "the adopted arena was granted again at once")
        let refused = refusal(first, MemoryAllocate(database: "other", epoch: 1, tag: 10))
        #expect(refused?.code == .busy && refused?.message.contains("quarantine") == true, "\(String(describing: refused))")
        #expect(first.info.freeArenas == 0)
        // A retried release (its reply lost) is harmless; the quarantine's tag names no arena.
        try first.release(MemoryRelease(database: "db", epoch: 2, arena: MemoryArena(index: taken.index, tag: 5)))
        #expect(refusal(first, MemoryAllocate(database: "db", epoch: 2, tag: MemoryRegion.quarantineTag))?.code == .invalid)
        #expect(throws: TransportError.self) {
            try first.logAppend(
                MemoryLogAppend(database: "db", epoch: 2, arena: MemoryArena(index: taken.index, tag: MemoryRegion.quarantineTag), offset: 0, bytes: [1]))
        }
        // The epoch of a database whose only arena is in quarantine survives a restart: 1 stays fenced.
        // A restarted node keeps the quarantine (it is in the region's table).
        let restarted = try node()
        #expect(throws: TransportError.self) { try restarted.adopt(MemoryAdopt(database: "db", epoch: 1)) }
        #expect(refusal(restarted, MemoryAllocate(database: "other", epoch: 1, tag: 10))?.code == .busy)
        #expect(restarted.status.holders.map(\.arenas) == [1], "a quarantined arena counted as a database's")
        var regranted: MemoryArenaGrant? = nil
        #expect(eventually(seconds: 5) {
            regranted = try? restarted.allocate(MemoryAllocate(database: "other", epoch: 1, tag: 10))
            return regranted != nil
        }, "the arena never left quarantine")
        #expect(regranted?.index == taken.index)
        // Never adopted: free at once.
        try restarted.release(MemoryRelease(database: "other", epoch: 1, arena: MemoryArena(index: other.index, tag: 9)))
        let again = try restarted.allocate(MemoryAllocate(database: "logs", epoch: 1, tag: 3))
        #expect(again.index == other.index)
        // A write log, adopted and given back: free at once (only the node writes it).
        _ = try restarted.logAppend(MemoryLogAppend(database: "logs", epoch: 1, arena: MemoryArena(index: again.index, tag: 3), offset: 0, bytes: [1]))
        _ = try restarted.adopt(MemoryAdopt(database: "logs", epoch: 2))
        try restarted.release(MemoryRelease(database: "logs", epoch: 2, arena: MemoryArena(index: again.index, tag: 3)))
        #expect(try restarted.allocate(MemoryAllocate(database: "logs", epoch: 2, tag: 4)).index == again.index)
    }

    static func regionMemtable(path: String, tracer: PersistenceTracer? = nil) throws -> (MemoryRegion, MemTable, MemTableRegionArena) {
        let layout = MemoryRegionLayout(arenaBytes: 256 << 10, arenaCount: 1)
        let region = try MemoryRegion.open(path: path, layout: layout, tracer: tracer)
        let entry = try #require(try region.grant(database: 1, epoch: 1, tag: 5) { _ in false })
        let arena = MemTableRegionArena(region: region.mapping, offset: layout.arenaOffset(entry.index), bytes: layout.arenaBytes, epoch: 1)
        return (region, try MemTable.inRegion(arena, logNumber: 5), arena)
    }

    static func add(_ table: MemTable, _ key: [UInt8], _ value: [UInt8], _ sequence: UInt64) {
        key.withUnsafeBytes { k in value.withUnsafeBytes { v in table.add(sequence: sequence, type: .value, key: k, value: v) } }
    }

    static func visible(_ table: MemTable) -> [(key: [UInt8], sequence: UInt64, value: [UInt8])] {
        var found: [(key: [UInt8], sequence: UInt64, value: [UInt8])] = []
        let iterator = table.makeIterator()
        iterator.seekToFirst()
        while iterator.isValid {
            found.append((Array(userKey(iterator.key)), sequence(iterator.key), Array(iterator.value)))
            iterator.next()
        }
        return found
    }

    @Test("a region memtable re-attaches with exactly its committed entries; a damaged arena is refused, not followed")
    func attachCommitted() throws {
        let directory = TempDir("moraine-region")
        defer { directory.remove() }
        let (_, table, arena) = try Self.regionMemtable(path: directory.file("region"))
        var sequence: UInt64 = 0
        for group in 0..<20 {
            for i in 0..<10 {
                sequence += 1
                Self.add(table, Self.key((i * 37 + group) % 150), Array("v\(sequence)".utf8), sequence)
            }
            try table.commit(sequence: sequence)
        }
        // A group the writer never committed (it died mid-group): never acknowledged, not seen.
        for i in 0..<5 { Self.add(table, Self.key(1000 + i), Array("torn".utf8), sequence + UInt64(i) + 1) }
        let attached = try MemTable.attach(arena, logNumber: 5, name: "test arena")
        #expect(attached.ceiling == 200)
        #expect(attached.entryCount == 200)
        let seen = Self.visible(attached)
        #expect(seen.count == 200)
        #expect(seen.allSatisfy { $0.sequence <= 200 && $0.value == Array("v\($0.sequence)".utf8) })
        #expect(attached.get(Self.key(1000).withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[...]) }, sequence: maxSequenceNumber) == .notFound)
        let last = seen.filter { $0.key == Self.key(3) }.map(\.sequence).max()
        if let last {
            let found = Self.key(3).withUnsafeBytes { attached.get($0, sequence: maxSequenceNumber) }
            #expect(found == .found(Array("v\(last)".utf8)))
        }
        // Damaged links (one past the arena, then a cycle): the memtable is rebuilt from its
        // committed nodes, all of them.
        let headLink = arena.offset + RegionArenaLayout.headerBytes + MemTable.headerBytes
        let original = arena.region.base.load(fromByteOffset: headLink, as: UInt32.self)
        arena.region.base.storeBytes(of: UInt32(arena.bytes), toByteOffset: headLink, as: UInt32.self)
        #expect(Self.visible(try MemTable.attach(arena, logNumber: 5, name: "test arena")).count == 200)
        arena.region.base.storeBytes(of: original, toByteOffset: headLink, as: UInt32.self)
        let firstNode = arena.offset + RegionArenaLayout.headerBytes + Int(original)
        let second = arena.region.base.load(fromByteOffset: firstNode + MemTable.headerBytes, as: UInt32.self)
        let secondNode = arena.offset + RegionArenaLayout.headerBytes + Int(second)
        arena.region.base.storeBytes(of: original, toByteOffset: secondNode + MemTable.headerBytes, as: UInt32.self)
        let rebuilt = Self.visible(try MemTable.attach(arena, logNumber: 5, name: "test arena"))
        #expect(rebuilt.count == 200 && rebuilt.allSatisfy { $0.value == Array("v\($0.sequence)".utf8) })
        // A damaged node as well: nothing to rebuild from. Refused, naming the arena.
        arena.region.base.storeBytes(of: UInt8(0), toByteOffset: secondNode + 8, as: UInt8.self)
        do {
            _ = try MemTable.attach(arena, logNumber: 5, name: "test arena")
            Issue.record("an arena with a damaged node and damaged links was attached")
        } catch let error as MoraineError {
            #expect(error.kind == .corruption && error.message.contains("test arena"))
        }
    }

    @Test("every crash image of the persistence trace re-attaches a memtable holding every acknowledged entry, none torn")
    func traceCrashImages() throws {
        let seed = SeededRandom.testSeed()
        let result = try Self.traceRound(seed: seed, skipDataPersist: false)
        #expect(result.failure == nil, "MORAINE_SEED=\(seed): \(result.failure ?? "")")
        #expect(result.checked > 100, "too few crash images to test anything")
    }

    @Test("the same checker catches commits that publish before the nodes are persisted")
    func missingPersistIsCaught() throws {
        let seed = SeededRandom.testSeed()
        var caught = false
        for round in 0..<4 where !caught {
            caught = try Self.traceRound(seed: seed &+ UInt64(round), skipDataPersist: true).failure != nil
        }
        #expect(caught, "MORAINE_SEED=\(seed): every crash image of a memtable that never persists its nodes recovered")
    }

    /// Writes random groups into a traced region memtable, then checks crash images at every
    /// fence: the first failure, if any, and how many images were checked.
    static func traceRound(seed: UInt64, skipDataPersist: Bool) throws -> (failure: String?, checked: Int) {
        var rng = SeededRandom(seed: seed)
        let directory = TempDir("moraine-region")
        defer { directory.remove() }
        let tracer = PersistenceTracer()
        let path = directory.file("region")
        let (region, table, arena) = try Self.regionMemtable(path: path, tracer: tracer)
        if skipDataPersist { table.skipDataPersistForTesting() }
        let initial = [UInt8](repeating: 0, count: region.layout.regionBytes)
        var written: [UInt64: [UInt8]] = [:]  // sequence -> key
        var acked: [(event: Int, sequence: UInt64)] = []
        var sequence: UInt64 = 0
        for _ in 0..<40 {
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                sequence += 1
                let key = Self.key(Int.random(in: 0..<500, using: &rng))
                Self.add(table, key, Array("v\(sequence)".utf8), sequence)
                written[sequence] = key
            }
            try table.commit(sequence: sequence)
            acked.append((tracer.count, sequence))
        }
        let images = PersistenceCrashImages(initial: initial, events: tracer.events)
        var checked = 0
        var failure: String? = nil
        for crashAt in images.interestingCrashPoints where failure == nil {
            for _ in 0..<2 {
                let image = images.image(crashAt: crashAt, using: &rng)
                let imagePath = directory.file("image")
                FileManager.default.createFile(atPath: imagePath, contents: Data(image))
                checked += 1
                let ackedSequence = acked.last { $0.event <= crashAt }?.sequence ?? 0
                guard let copy = try? MemoryRegion.open(path: imagePath, layout: region.layout), copy.entries().count == 1 else {
                    if ackedSequence > 0 { failure = "crash at \(crashAt): the granted arena is gone" }
                    continue
                }
                let copied = MemTableRegionArena(region: copy.mapping, offset: arena.offset, bytes: arena.bytes, epoch: 1)
                let attached: MemTable
                do {
                    attached = try MemTable.attach(copied, logNumber: 5, name: "image")
                } catch {
                    if ackedSequence > 0 || crashAt >= tracer.count { failure = "crash at \(crashAt): \(error)" }
                    continue
                }
                // Visible: exactly the writes 1...k of some whole group k, at least the acknowledged ones.
                let seen = Self.visible(attached)
                let sequences: [UInt64] = seen.map(\.sequence).sorted()
                let count = UInt64(sequences.count)
                let expected: [UInt64] = count == 0 ? [] : Array(1...count)
                let wholeGroups = count == 0 || acked.contains { $0.sequence == count }
                if sequences != expected || count < ackedSequence || !wholeGroups {
                    failure = "crash at \(crashAt): \(seen.count) entries visible, \(ackedSequence) acknowledged, or not a prefix of whole groups"
                } else if let wrong = seen.first(where: { written[$0.sequence] != $0.key || $0.value != Array("v\($0.sequence)".utf8) }) {
                    failure = "crash at \(crashAt): entry \(wrong.sequence) is not what was written"
                }
            }
        }
        return (failure, checked)
    }

    static func options(_ arenas: MemoryNodeArenas) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.durability = .pmem
        options.memtableRegion = arenas
        options.writeBufferSize = 256 << 10
        options.disableAutoCompactions = true
        return options
    }

    @Test("pmem durability through a memory node: no WAL; a reopen re-attaches the memtables; flushed arenas go back")
    func engineReattach() throws {
        let memory = try MemoryTestNode(arenaBytes: 512 << 10, arenaCount: 8)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        var expected: [Int: [UInt8]] = [:]
        do {
            var options = Self.options(memory.arenas(epoch: 1))
            options.maxWriteBufferNumber = 6
            let db = try Database(path: path, options: options)
            // No flush meanwhile: the memtables pile up in the region, as a busy flusher leaves them.
            db.engine!.pauseBackgroundWork()
            for i in 0..<6000 {
                let value = Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i & 0xff), count: 60)
                try db.put(Self.key(i), value)
                expected[i] = value
            }
            #expect(!FileManager.default.fileExists(atPath: path + "/000000.log"))
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).allSatisfy { !$0.hasSuffix(".log") })
            #expect(memory.node.status.holders.first?.arenas ?? 0 >= 2, "the writes did not spread over several arenas")
            // A close leaves the memtables in the region, unflushed, as a crash would.
            try db.close()
        }
        let held = memory.node.status.holders.first?.arenas ?? 0
        #expect(held >= 2)
        let reopened = try Database(path: path, options: Self.options(memory.arenas(epoch: 2)))
        defer { try? reopened.close() }
        #expect(reopened.engine!.stats().reattachedMemtables == held, "the open did not re-attach every arena it held")
        var wrong = 0
        for (i, value) in expected where try reopened.get(Self.key(i)) != value { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(expected.count) writes read back wrong after the re-attach")
        try reopened.flush()
        #expect(eventually(seconds: 10) { memory.node.status.holders.first?.arenas == 1 }, "flushed arenas were not given back")
        for (i, value) in expected.prefix(100) where try reopened.get(Self.key(i)) != value { wrong += 1 }
        #expect(wrong == 0)
    }

    @Test("a read-only open copies what the live owner committed in its arenas, and fences nobody")
    func readOnlyCopies() throws {
        let memory = try MemoryTestNode()
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        let db = try Database(path: path, options: Self.options(memory.arenas(epoch: 1)))
        defer { try? db.close() }
        db.engine!.pauseBackgroundWork()
        for i in 0..<500 { try db.put(Self.key(i), Array("v\(i)".utf8)) }
        var options = Self.options(memory.arenas(epoch: 1))
        options.readOnly = true
        options.createIfMissing = false
        let reader = try Database(path: path, options: options)
        for i in stride(from: 0, to: 500, by: 7) { #expect(try reader.get(Self.key(i)) == Array("v\(i)".utf8)) }
        try reader.close()
        // The owner was not fenced: it writes on.
        try db.put(Self.key(9999), Array("after".utf8))
        #expect(try db.get(Self.key(9999)) == Array("after".utf8))
        db.engine!.continueBackgroundWork()
    }

    @Test("a new database refuses arenas an earlier one of its name left; destroy gives them back")
    func leftoverArenas() throws {
        let memory = try MemoryTestNode()
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        do {
            let db = try Database(path: path, options: Self.options(memory.arenas()))
            try db.put(Self.key(1), Array("acknowledged".utf8))
            try db.close()
        }
        // The directory is removed behind the database's back: its memtable is still in the region.
        removeTree(path)
        do {
            _ = try Database(path: path, options: Self.options(memory.arenas(epoch: 2)))
            Issue.record("a new database took over another's memtable arenas")
        } catch let error as MoraineError {
            #expect(error.kind == .invalid && error.message.contains("arena"), "\(error)")
        }
        #expect(memory.node.status.holders.first?.arenas == 1)
        #expect(try Database.destroy(path: path, options: Self.options(memory.arenas(epoch: 3))) == 1)
        #expect(memory.node.status.holders.isEmpty)
        let fresh = try Database(path: path, options: Self.options(memory.arenas(epoch: 4)))
        #expect(try fresh.get(Self.key(1)) == nil)
        try fresh.close()
    }

    /// A memory node that takes `seconds` to answer a release (a stopped node, on demand).
    final class SlowRelease: MemtableArenaProvider, @unchecked Sendable {
        let inner: MemoryNodeArenas
        let seconds: Double
        init(_ inner: MemoryNodeArenas, seconds: Double) {
            self.inner = inner
            self.seconds = seconds
        }
        func adopt(database: String) throws -> [MemtableArenaGrant] { try inner.adopt(database: database) }
        func list(database: String) throws -> [MemtableArenaGrant] { try inner.list(database: database) }
        func allocate(database: String, logNumber: UInt64) throws -> MemtableArenaGrant {
            try inner.allocate(database: database, logNumber: logNumber)
        }
        func release(database: String, _ grant: MemtableArenaGrant) throws {
            sleepNanos(Int64(seconds * 1e9))
            try inner.release(database: database, grant)
        }
        var arenaBytes: Int { inner.arenaBytes }
        var description: String { inner.description }
    }

    @Test("a memory node slow to take an arena back holds no writer: arenas go back with the engine's mutex released")
    func slowReleaseHoldsNoWriter() throws {
        let memory = try MemoryTestNode()
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        var options = Self.options(memory.arenas())
        options.memtableRegion = SlowRelease(memory.arenas(), seconds: 3)
        let db = try Database(path: directory.file("db"), options: options)
        defer { try? db.close() }
        for i in 0..<200 { try db.put(Self.key(i), Array("v\(i)".utf8)) }
        let started = monotonicNanos()
        try db.flush()  // the flushed memtable's arena goes back in the background, slowly
        for i in 200..<250 { try db.put(Self.key(i), Array("v\(i)".utf8)) }
        let millis = (monotonicNanos() - started) / 1_000_000
        #expect(millis < 1_500, "a flush and 50 writes took \(millis) ms while an arena was being given back")
        #expect(eventually(seconds: 10) { memory.node.status.holders.first?.arenas == 1 }, "the flushed arena never went back")
        #expect(try db.get(Self.key(240)) == Array("v240".utf8))
    }

    @Test("an owner whose arena a newer owner adopted stops with fenced instead of acknowledging")
    func staleOwnerFenced() throws {
        let memory = try MemoryTestNode()
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let db = try Database(path: directory.file("db"), options: Self.options(memory.arenas(epoch: 1)))
        defer { try? db.close() }
        try db.put(Self.key(1), Array("before".utf8))
        _ = try memory.arenas(epoch: 2).adopt(database: directory.file("db"))
        #expect {
            try db.put(Self.key(2), Array("after".utf8))
        } throws: { error in
            (error as? MoraineError)?.kind == .fenced
        }
    }

    /// Every slot of the shared cache holding a block of `database`.
    static func cachedSlots(_ memory: MemoryTestNode, database: String) -> [Int] {
        let cache = memory.layout.cache
        let id = MemoryDatabaseID.of(database)
        return (0..<cache.slots).map { cache.slotOffset(set: $0 / SharedCacheLayout.ways, way: $0 % SharedCacheLayout.ways) }.filter {
            memory.node.region.mapping.loadWord(at: $0 + SharedCacheLayout.databaseWord) == id
        }
    }

    /// A database at `path` whose block cache (a few blocks: most reads miss there) sits over the
    /// memory node's shared cache, uncompressed.
    static func sharedCacheDatabase(
        _ path: String, _ memory: MemoryTestNode, askArenas: Bool = false
    ) throws -> (Database, MemoryNodeBlockCache) {
        var options = Options()
        options.createIfMissing = true
        options.blockCacheSize = 32 << 10
        options.compression = .none
        let secondary = MemoryNodeBlockCache(database: path, arenas: memory.arenas())
        options.secondaryBlockCache = secondary
        if askArenas { options.memtableRegion = memory.arenas() }
        return (try Database(path: path, options: options), secondary)
    }

    @Test("the shared cache serves blocks the local cache lost, catches a damaged slot by its CRC, and keeps serving with the node stopped")
    func sharedCache() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2, cacheSlots: 1024)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        let (db, secondary) = try Self.sharedCacheDatabase(path, memory)
        defer { try? db.close() }
        for i in 0..<20_000 { try db.put(Self.key(i), Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i & 0xff), count: 40)) }
        try db.flush()
        func readAll() throws -> Int {
            var wrong = 0
            for i in stride(from: 0, to: 20_000, by: 3) {
                if try db.get(Self.key(i)) != Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i & 0xff), count: 40) { wrong += 1 }
            }
            return wrong
        }
        #expect(try readAll() == 0)
        #expect(eventually(seconds: 10) { secondary.counters.inserts >= 100 }, "\(secondary.counters)")
        let before = secondary.counters.hits
        #expect(try readAll() == 0)
        #expect(secondary.counters.hits > before + 100, "the second pass did not read from the shared cache: \(secondary.counters)")
        #expect(db.stats().secondaryCache.hits == secondary.counters.hits)
        // A damaged slot (a test hook: a payload byte flipped in the region) is caught by its CRC.
        let slots = Self.cachedSlots(memory, database: path)
        #expect(slots.count > 50)
        for slot in slots.prefix(50) {
            let byte = memory.node.region.mapping.base.load(fromByteOffset: slot + 64 + 10, as: UInt8.self)
            memory.node.region.mapping.base.storeBytes(of: byte ^ 0x5a, toByteOffset: slot + 64 + 10, as: UInt8.self)
        }
        #expect(try readAll() == 0, "a damaged slot was returned")
        #expect(secondary.counters.corrupt > 0 && db.stats().secondaryCache.corrupt == secondary.counters.corrupt)
        // The node stopped: the region still serves in place, and nothing fails.
        memory.stop()
        let hits = secondary.counters.hits
        #expect(try readAll() == 0)
        #expect(secondary.counters.hits > hits, "no hit in place with the node stopped")
    }

    @Test(
        "a peer that cannot map the region gets shared-cache blocks by request, batched for a multiGet, catches a damaged slot, reads on with the node stopped",
        arguments: [Carrier.sharedMemory, Carrier.tcp])
    func sharedCacheByRequest(carrier: Carrier) throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2, cacheSlots: 1024, carrier: carrier, mappable: false)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        // An open in any durability mode asks the node for earlier arenas; with none, it needs no mapping.
        let (db, secondary) = try Self.sharedCacheDatabase(path, memory, askArenas: true)
        defer { try? db.close() }
        func value(_ i: Int) -> [UInt8] { Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i & 0xff), count: 40) }
        for i in 0..<20_000 { try db.put(Self.key(i), value(i)) }
        try db.flush()
        func readAll() throws -> Int {
            var wrong = 0
            for i in stride(from: 0, to: 20_000, by: 3) where try db.get(Self.key(i)) != value(i) { wrong += 1 }
            return wrong
        }
        #expect(try readAll() == 0)
        #expect(secondary.isByRequest)
        #expect(eventually(seconds: 10) { secondary.counters.inserts >= 100 }, "\(secondary.counters)")
        let before = secondary.counters
        let served = memory.node.lookupCounters
        #expect(try readAll() == 0)
        let warm = secondary.counters
        #expect(warm.hits > before.hits + 100, "the second pass did not read from the shared cache: \(warm)")
        #expect(warm.requests > before.requests, "no lookup went by request: \(warm)")
        #expect(memory.node.lookupCounters.hits - served.hits == UInt64(warm.hits - before.hits))
        #expect(db.stats().secondaryCache.requests == warm.requests)
        // A multiGet asks for its blocks together: many blocks per request.
        let keys = stride(from: 0, to: 20_000, by: 10).map { Self.key($0) }
        let values = try db.multiGet(keys)
        #expect(zip(values, stride(from: 0, to: 20_000, by: 10)).allSatisfy { $0.0 == value($0.1) })
        let batched = secondary.counters
        let asked = (batched.hits + batched.misses) - (warm.hits + warm.misses)
        let requests = batched.requests - warm.requests
        #expect(asked >= 100 && requests >= 1 && asked >= 16 * requests, "\(asked) blocks asked in \(requests) requests")
        // A scan reading ahead from the file asks the node for no block past its first few.
        let iterator = try db.makeIterator()
        try iterator.seekToFirst()
        var scanned = 0
        while iterator.isValid {
            scanned += 1
            try iterator.next()
        }
        #expect(scanned == 20_000)
        #expect(secondary.counters.requests - batched.requests >= 1)
        #expect(secondary.counters.requests - batched.requests <= 20, "a scan asked \(secondary.counters.requests - batched.requests) times")
        // The scan offered the node only the blocks it asked for first; once its offers are sent
        // (the count holds still), later inserts are the damaged blocks' alone.
        #expect(secondary.counters.inserts - batched.inserts <= 40, "a scan offered back what it read ahead: \(secondary.counters)")
        #expect(eventually(seconds: 10) {
            let before = secondary.counters.inserts
            sleepNanos(200_000_000)
            return secondary.counters.inserts == before
        })
        let afterScan = secondary.counters
        // A damaged slot (a test hook: a payload byte flipped in the region) is caught by the node's CRC check.
        let slots = Self.cachedSlots(memory, database: path)
        #expect(slots.count > 50)
        for slot in slots.prefix(50) {
            let byte = memory.node.region.mapping.base.load(fromByteOffset: slot + 64 + 10, as: UInt8.self)
            memory.node.region.mapping.base.storeBytes(of: byte ^ 0x5a, toByteOffset: slot + 64 + 10, as: UInt8.self)
        }
        #expect(try readAll() == 0, "a damaged slot was returned")
        #expect(secondary.counters.corrupt > 0, "\(secondary.counters)")
        // The node emptied each damaged slot it found; the blocks went back in whole.
        #expect(eventually(seconds: 10) { secondary.counters.inserts >= afterScan.inserts + 50 }, "\(secondary.counters)")
        let refilled = secondary.counters
        #expect(try readAll() == 0)
        #expect(secondary.counters.corrupt == refilled.corrupt, "a damaged slot was served twice: \(secondary.counters)")
        // The node stopped: every read still answers right, from the files; lookups pause after
        // the first failure instead of trying on every read.
        memory.stop()
        let stopped = secondary.counters
        let started = monotonicNanos()
        #expect(try readAll() == 0)
        let seconds = Double(monotonicNanos() - started) / 1e9
        #expect(secondary.counters.hits == stopped.hits)
        #expect(secondary.counters.requests - stopped.requests <= Int(seconds) + 2, "\(secondary.counters) in \(seconds) s")
    }

    @Test("a file at the region's path that is not the node's region (another identity) is never mapped: the cache goes by request, memtables refuse")
    func regionIdentity() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2, cacheSlots: 64)
        let identity = memory.node.region.identity
        #expect(identity != 0)
        #expect(try MemoryRegion.open(path: memory.regionPath, layout: memory.layout).identity == identity, "the identity changed on reopen")
        // The node keeps its mapping of the old file; a new region of the same geometry takes the
        // path, as a same-named region on another box would be there.
        try FileManager.default.removeItem(atPath: memory.regionPath)
        let other = try MemoryRegion.open(path: memory.regionPath, layout: memory.layout)
        #expect(other.identity != identity)
        let arenas = memory.arenas()
        guard case .byRequest(let info, let reason) = try arenas.reach() else {
            Issue.record("a region of another identity was mapped")
            return
        }
        #expect(info.identity == identity && reason.contains("another identity"), "\(reason)")
        #expect(throws: MoraineError.self) { try arenas.allocate(database: "db", logNumber: 5) }
        do {
            _ = try arenas.allocate(database: "db", logNumber: 5)
        } catch let error as MoraineError {
            #expect(error.kind == .unavailable, "\(error)")
        }
        #expect(other.entries().isEmpty, "the other region was written")
    }

    @Test("a write log in an arena by request: durable appends at the expected offset, retries harmless, gaps and other bytes refused, stale epochs fenced")
    func writeLogByRequest() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 4, carrier: .tcp, mappable: false)
        let client = try memory.endpoint.connect(key: memory.key)
        defer { client.close() }
        func call(_ opcode: UInt8, _ message: some WireMessage) throws(TransportError) -> [UInt8] {
            guard case .bytes(let reply) = try client.call(opcode, message.encoded(), timeoutNanos: 5_000_000_000) else { return [] }
            return reply
        }
        func refusal(_ opcode: UInt8, _ message: some WireMessage) -> TransportError.Code? {
            do throws(TransportError) {
                _ = try call(opcode, message)
                return nil
            } catch {
                return error.code
            }
        }
        let grant = try MemoryArenaGrant.decode(try call(MemoryOpcode.allocate, MemoryAllocate(database: "db", epoch: 1, tag: 7)))
        let arena = MemoryArena(index: grant.index, tag: 7)
        var rng = SeededRandom(seed: 7)
        let first = (0..<1000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        func append(_ offset: Int, _ bytes: [UInt8], epoch: UInt64 = 1) -> MemoryLogAppend {
            MemoryLogAppend(database: "db", epoch: epoch, arena: arena, offset: UInt64(offset), bytes: bytes)
        }
        func length(_ reply: [UInt8]) throws -> UInt64 { try MemoryLogLength.decode(reply).length }
        #expect(try length(call(MemoryOpcode.logAppend, append(0, first))) == 1000)
        #expect(try length(call(MemoryOpcode.logAppend, append(0, first))) == 1000, "a retry changed the log")
        let more = Array(first[500...]) + [UInt8](repeating: 9, count: 100)
        #expect(try length(call(MemoryOpcode.logAppend, append(500, more))) == 1100, "an append overlapping the same bytes")
        #expect(refusal(MemoryOpcode.logAppend, append(2000, [1])) == .invalid, "a gap was accepted")
        #expect(refusal(MemoryOpcode.logAppend, append(0, [UInt8](repeating: 0, count: 10))) == .invalid, "other bytes were accepted")
        #expect(refusal(MemoryOpcode.logAppend, append(1100, [UInt8](repeating: 1, count: 256 << 10))) == .noSpace)
        let otherTag = MemoryLogAppend(database: "db", epoch: 1, arena: MemoryArena(index: grant.index, tag: 8), offset: 0, bytes: [1])
        #expect(refusal(MemoryOpcode.logAppend, otherTag) == .invalid, "another tag was accepted")
        let expected = first + [UInt8](repeating: 9, count: 100)
        #expect(try call(MemoryOpcode.logRead, MemoryLogRead(database: "db", arena: arena, offset: 0, count: 4096)) == expected)
        #expect(try call(MemoryOpcode.logRead, MemoryLogRead(database: "db", arena: arena, offset: 1050, count: 10)) == Array(expected[1050..<1060]))
        // A newer owner adopts the arena: the old one is fenced, the new one appends.
        _ = try call(MemoryOpcode.adopt, MemoryAdopt(database: "db", epoch: 2))
        #expect(refusal(MemoryOpcode.logAppend, append(1100, [5])) == .fenced)
        #expect(try length(call(MemoryOpcode.logAppend, append(1100, [5], epoch: 2))) == 1101)
        // Durable: a restarted node reads the same log.
        client.close()
        try memory.restart()
        let again = try memory.endpoint.connect(key: memory.key)
        defer { again.close() }
        guard case .bytes(let read) = try again.call(MemoryOpcode.logRead, MemoryLogRead(database: "db", arena: arena, offset: 0, count: 4096).encoded()) else {
            Issue.record("no bytes")
            return
        }
        #expect(read == expected + [5])
    }

    @Test("an arena holding a write log kept by request is never re-attached as an empty memtable: the open is refused")
    func writeLogNotReattached() throws {
        let memory = try MemoryTestNode(arenaBytes: 512 << 10, arenaCount: 8)
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        try Database(path: path, options: Self.options(memory.arenas(epoch: 1))).close()
        let grant = try memory.node.allocate(MemoryAllocate(database: path, epoch: 1, tag: 99))
        _ = try memory.node.logAppend(
            MemoryLogAppend(database: path, epoch: 1, arena: MemoryArena(index: grant.index, tag: 99), offset: 0, bytes: [1, 2, 3]))
        #expect {
            _ = try Database(path: path, options: Self.options(memory.arenas(epoch: 2)))
        } throws: { error in
            (error as? MoraineError)?.kind == .corruption && "\(error)".contains("write log")
        }
        // The other way: an arena holding a memtable written in place is never read or appended
        // to as a write log.
        let skiplist = try #require(memory.node.region.entries().first { $0.tag != 99 && $0.database == MemoryDatabaseID.of(path) })
        let inPlace = MemoryArena(index: UInt32(skiplist.index), tag: skiplist.tag)
        #expect(throws: TransportError.self) { try memory.node.logRead(MemoryLogRead(database: path, arena: inPlace, offset: 0, count: 64)) }
        #expect(throws: TransportError.self) {
            try memory.node.logAppend(MemoryLogAppend(database: path, epoch: skiplist.epoch, arena: inPlace, offset: 0, bytes: [1]))
        }
    }

    @Test("region_access in a topology is a memory node's, map or request; the node reports it, with the region's identity")
    func regionAccessConfiguration() throws {
        let topology = try Topology(parsing: "[[role]]\nkind = \"memory\"\nregion_access = \"request\"\n", name: "t.toml")
        try topology.check()
        #expect(topology.roles[0].regionByRequest)
        #expect(try Topology(parsing: "[[role]]\nkind = \"memory\"\nregion_access = \"map\"\n", name: "t.toml").roles[0].regionByRequest == false)
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"storage\"\nregion_access = \"request\"\n", name: "t.toml").check()
        }
        #expect(throws: MoraineError.self) { try Topology(parsing: "[[role]]\nkind = \"memory\"\nregion_access = \"remote\"\n", name: "t.toml") }
        let byRequest = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2, mappable: false)
        #expect(byRequest.node.info.mappable == false && byRequest.node.info.identity == byRequest.node.region.identity)
        let mapped = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2)
        #expect(mapped.node.info.mappable && mapped.node.info.identity != byRequest.node.info.identity)
        guard case .byRequest(_, let reason) = try byRequest.arenas().reach() else {
            Issue.record("a node that serves by request only was mapped")
            return
        }
        #expect(reason.contains("by request only"), "\(reason)")
        guard case .mapped = try mapped.arenas().reach() else {
            Issue.record("a node on this box that lets peers map its region was not mapped")
            return
        }
    }

    @Test("a restarted memory node empties the cache slots a crash left half written; forget and a new database of the name empty its slots")
    func sharedCacheScrub() throws {
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 2, cacheSlots: 64)
        let request = MemoryCacheInsert(
            database: "db", blocks: (0..<8).map { MemoryCacheInsert.Block(file: 7, offset: UInt64($0) * 4096, bytes: [UInt8](repeating: 1, count: 100)) })
        memory.node.cacheInsert(request)
        let slots = Self.cachedSlots(memory, database: "db")
        #expect(slots.count == 8)
        let mapping = memory.node.region.mapping
        // Half written: an odd version, as a crash in the middle of a write leaves it.
        mapping.base.storeBytes(of: mapping.loadWord(at: slots[0]) + 1, toByteOffset: slots[0], as: UInt64.self)
        try memory.restart()
        #expect(Self.cachedSlots(memory, database: "db").count == 7)
        #expect(memory.node.cacheForget("db") == 7)
        #expect(Self.cachedSlots(memory, database: "db").isEmpty)
        // A database created under a name whose blocks the cache holds (an earlier one of that
        // name, removed behind the cache's back) starts with none of them.
        let directory = TempDir("moraine-db")
        defer { directory.remove() }
        let path = directory.file("db")
        memory.node.cacheInsert(MemoryCacheInsert(database: path, blocks: request.blocks))
        #expect(Self.cachedSlots(memory, database: path).count == 8)
        var options = Options()
        options.createIfMissing = true
        options.secondaryBlockCache = MemoryNodeBlockCache(database: path, arenas: memory.arenas())
        try Database(path: path, options: options).close()
        #expect(Self.cachedSlots(memory, database: path).isEmpty)
    }

    @Test("a flush worker on the same box reads a memtable in place in the region; over TCP it gets the entries streamed", arguments: [
        Carrier.sharedMemory, Carrier.tcp,
    ])
    func flushInPlace(carrier: Carrier) throws {
        let memory = try MemoryTestNode(arenaBytes: 1 << 20, arenaCount: 8)
        let node = try StorageTestNode(carrier)
        defer { node.remove() }
        let worker = try TestWorker(for: node)
        let runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing, flushWorkers: { [worker.endpoint] }) { [] }
        var options = Self.options(memory.arenas())
        let files = node.remote
        let endpoint = memory.endpoint
        options.memtableRegion = MemoryNodeArenas(key: memory.key, epoch: { files.leaseEpoch(of: $0) }) {
            () throws(TransportError) -> Endpoint in endpoint
        }
        options.fileSystem = node.remote
        options.jobRunner = runner
        let db = try Database(path: "inplace", options: options)
        defer { try? db.close() }
        for i in 0..<3000 { try db.put(Self.key(i), Array("value-\(i)".utf8)) }
        try db.flush()
        #expect(runner.remoteFlushes >= 1 && runner.flushFallbacks == 0, "\(runner.remoteFlushes) remote, \(runner.flushFallbacks) here")
        if carrier == .sharedMemory {
            #expect(runner.inPlaceFlushes == runner.remoteFlushes, "\(runner.inPlaceFlushes) of \(runner.remoteFlushes) read in place")
        } else {
            #expect(runner.inPlaceFlushes == 0, "a worker reached over TCP was sent an arena")
        }
        #expect(db.stats().levels[0].fileCount >= 1)
        var wrong = 0
        for i in stride(from: 0, to: 3000, by: 7) where try db.get(Self.key(i)) != Array("value-\(i)".utf8) { wrong += 1 }
        #expect(wrong == 0)
    }

    @Test("malformed memory-node requests are refused with an error and the node goes on serving")
    func fuzzMessages() throws {
        let seed = SeededRandom.testSeed()
        var rng = SeededRandom(seed: seed)
        let memory = try MemoryTestNode(arenaBytes: 256 << 10, arenaCount: 4, cacheSlots: 64)
        let client = try memory.endpoint.connect(key: memory.key)
        defer { client.close() }
        let opcodes = [
            MemoryOpcode.regionInfo, MemoryOpcode.adopt, MemoryOpcode.allocate, MemoryOpcode.release, MemoryOpcode.status,
            MemoryOpcode.list, MemoryOpcode.cacheInsert, MemoryOpcode.cacheForget, MemoryOpcode.cacheLookup, MemoryOpcode.logAppend,
            MemoryOpcode.logRead, 0x5F,
        ]
        let ownOpcodes: [Set<UInt8>] = [
            [MemoryOpcode.adopt, MemoryOpcode.list, MemoryOpcode.cacheForget], [MemoryOpcode.allocate], [MemoryOpcode.release],
            [MemoryOpcode.cacheLookup], [MemoryOpcode.logAppend], [MemoryOpcode.logRead],
        ]
        let valid = [
            MemoryAdopt(database: "fuzz", epoch: 3).encoded(), MemoryAllocate(database: "fuzz", epoch: 3, tag: 9).encoded(),
            MemoryRelease(database: "fuzz", epoch: 3, arena: MemoryArena(index: 0, tag: 9)).encoded(),
            MemoryCacheLookup(database: "fuzz", blocks: [.init(file: 3, offset: 0), .init(file: 3, offset: 4096)]).encoded(),
            MemoryLogAppend(database: "fuzz", epoch: 3, arena: MemoryArena(index: 0, tag: 9), offset: 0, bytes: [1, 2, 3, 4]).encoded(),
            MemoryLogRead(database: "fuzz", arena: MemoryArena(index: 0, tag: 9), offset: 0, count: 64).encoded(),
        ]
        var truncatedAccepted = 0
        for _ in 0..<2000 {
            let opcode = opcodes[Int.random(in: 0..<opcodes.count, using: &rng)]
            let chosen = Int.random(in: 0..<valid.count, using: &rng)
            var bytes = valid[chosen]
            var truncated = false
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1:
                // A message cut short, sent under its own opcode, must be refused.
                bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
                truncated = ownOpcodes[chosen].contains(opcode)
            default:
                if !bytes.isEmpty { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            }
            let response = try client.receive(requestID: try client.send(opcode: opcode, payload: .bytes(bytes)), timeoutNanos: 5_000_000_000)
            if truncated, case .success = response.result { truncatedAccepted += 1 }
        }
        #expect(truncatedAccepted == 0, "MORAINE_SEED=\(seed): \(truncatedAccepted) requests cut short were accepted")
        let status = try MemoryStatusReply.decode(try client.call(MemoryOpcode.status, []))
        #expect(status.arenaCount == 4, "MORAINE_SEED=\(seed)")
        // Whatever the fuzz was granted is consistent: the region reopens with the same table.
        let entries = memory.node.region.entries()
        #expect(try MemoryRegion.open(path: memory.regionPath, layout: memory.layout).entries() == entries)
    }
}
