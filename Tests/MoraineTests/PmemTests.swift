// Persistent-memory regions and the persistent log: the region header and arena table survive
// reopening, damage is reported as corruption, and (the main test) crash images built from the
// persistence trace — every fenced store kept, any subset of the rest — always recover to
// every acknowledged record and no torn one. The same checker must catch a log that leaves out
// a flush, which a kill-the-process test never could. MORAINE_SEED replays;
// MORAINE_PMEM_TRACE_ROUNDS sets the number of traced scenarios (default 2).
import Foundation
import Glibc
import MoraineFormat
import MoraineSystem
import MoraineTestSupport
import Testing

func temporaryRegionPath(_ name: String) -> String {
    "/dev/shm/moraine-test-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max)).pmem"  // lint: unseeded (a unique name only)
}

@Suite("Persistent memory")
struct PmemTests {
    static let layout = PmemLayout(arenaBytes: 8192, arenaCount: 3)

    @Test("arenas allocate, free and survive reopening; the durability is reported")
    func arenasSurviveReopen() throws {
        let path = temporaryRegionPath("arenas")
        defer { unlink(path) }
        var region: PmemRegion? = try PmemRegion.open(path: path, layout: Self.layout)
        #expect(region!.isPersistentMemory == false || getenv("PMEM_IS_PMEM_FORCE") != nil)
        #expect(region!.durabilityDescription.contains("msync") || region!.isPersistentMemory)
        let a = try #require(try region!.allocateArena(tag: 7))
        let b = try #require(try region!.allocateArena(tag: 9))
        let c = try #require(try region!.allocateArena(tag: 11))
        #expect(try region!.allocateArena(tag: 12) == nil)
        try region!.freeArena(b)
        let log = PmemLogWriter(region: region!, arena: a)
        for i in 0..<20 { try [UInt8](repeating: UInt8(i), count: i * 10).withUnsafeBytes { try log.append($0) } }
        region = nil
        let reopened = try PmemRegion.open(path: path, layout: PmemLayout(arenaBytes: 4096, arenaCount: 9))
        #expect(reopened.layout == Self.layout, "an existing region keeps its own geometry")
        #expect(reopened.allocatedArenas().map(\.tag) == [7, 11])
        #expect(reopened.allocatedArenas().map(\.index) == [a.index, c.index])
        var reader = try PmemLogReader(region: reopened, arena: reopened.allocatedArenas()[0])
        var count = 0
        while let record = try reader.nextRecord() {
            #expect(Array(record) == [UInt8](repeating: UInt8(count), count: count * 10))
            count += 1
        }
        #expect(count == 20)
    }

    @Test("damage is reported: a foreign file, a broken arena table, a damaged record")
    func damageIsReported() throws {
        let path = temporaryRegionPath("damage")
        defer { unlink(path) }
        do {
            let region = try PmemRegion.open(path: path, layout: Self.layout)
            let arena = try #require(try region.allocateArena(tag: 5))
            let log = PmemLogWriter(region: region, arena: arena)
            for _ in 0..<5 { try [UInt8](repeating: 0xAB, count: 100).withUnsafeBytes { try log.append($0) } }
            // Flip one payload byte of the third record.
            let third = arena.payloadOffset + 2 * PmemLogWriter.recordBytes(payloadBytes: 100) + 8 + 50
            region.base.storeBytes(of: 0xCD, toByteOffset: third, as: UInt8.self)
            var reader = try PmemLogReader(region: region, arena: arena)
            _ = try reader.nextRecord()
            _ = try reader.nextRecord()
            let error = #expect(throws: MoraineError.self) { _ = try reader.nextRecord() }
            #expect(error?.kind == .corruption)
            #expect(error?.message.contains("arena 0") == true && error?.message.contains(path) == true)
            // Break the ordering rule: the table names tag 5, the arena header another tag.
            region.storeWord(99, at: arena.offset + 8)
        }
        let error = #expect(throws: MoraineError.self) { _ = try PmemRegion.open(path: path, layout: Self.layout) }
        #expect(error?.kind == .corruption)
        let foreign = temporaryRegionPath("foreign")
        defer { unlink(foreign) }
        let fd = open(foreign, O_CREAT | O_WRONLY, 0o600)
        _ = write(fd, "not a region", 12)
        close(fd)
        let refused = #expect(throws: MoraineError.self) { _ = try PmemRegion.open(path: foreign, layout: Self.layout) }
        #expect(refused?.kind == .invalid)
    }

    @Test("a region appears whole: an abandoned creation is cleaned up, a short or foreign file is refused, never formatted")
    func creationIsAtomic() throws {
        let path = temporaryRegionPath("create")
        // The temporary file of a creation whose process died (a reaped child's pid).
        let child = try Process.run(URL(fileURLWithPath: "/bin/true"), arguments: [])
        child.waitUntilExit()
        let abandoned = "\(path).creating-\(child.processIdentifier)"
        let fd = open(abandoned, O_CREAT | O_WRONLY, 0o600)
        #expect(ftruncate(fd, 12288) == 0)
        close(fd)
        defer { unlink(path) }
        do {
            let region = try PmemRegion.open(path: path, layout: Self.layout)
            #expect(region.sizeBytes == Self.layout.regionBytes)
            #expect(region.freeArenaCount == 3)
        }
        #expect(access(abandoned, F_OK) != 0, "the abandoned creation's file is removed")
        // A short file of zeros from elsewhere: refused, left alone.
        let short = temporaryRegionPath("short")
        defer { unlink(short) }
        let shortFD = open(short, O_CREAT | O_WRONLY, 0o600)
        #expect(ftruncate(shortFD, 4096) == 0)
        close(shortFD)
        let refusedShort = #expect(throws: MoraineError.self) { _ = try PmemRegion.open(path: short, layout: Self.layout) }
        #expect(refusedShort?.kind == .invalid && refusedShort?.message.contains("no region header") == true)
        // A full-size file whose first word is not zero and not the magic: never formatted.
        let foreign = temporaryRegionPath("foreign-full")
        defer { unlink(foreign) }
        let foreignFD = open(foreign, O_CREAT | O_WRONLY, 0o600)
        let bytes = [UInt8](repeating: 0x41, count: Self.layout.regionBytes)
        #expect(bytes.withUnsafeBytes { write(foreignFD, $0.baseAddress, $0.count) } == bytes.count)
        close(foreignFD)
        let refusedForeign = #expect(throws: MoraineError.self) { _ = try PmemRegion.open(path: foreign, layout: Self.layout) }
        #expect(refusedForeign?.message.contains("not a persistent-memory region") == true)
        var first: UInt8 = 0
        let check = open(foreign, O_RDONLY)
        _ = read(check, &first, 1)
        close(check)
        #expect(first == 0x41, "the foreign file is untouched")
    }

    /// What a traced scenario did, with trace positions.
    struct Scenario {
        var records: [UInt64: [[UInt8]]] = [:]  // tag -> payloads in order
        var acked: [UInt64: [Int]] = [:]  // tag -> trace position after each append returned
        var allocatedAt: [UInt64: Int] = [:]  // tag -> position after allocation returned
        var freeStartedAt: [UInt64: Int] = [:]  // tag -> position before its free began
    }

    /// Appends random records, switching arenas when full and freeing the oldest (as a flush would).
    static func runScenario(region: PmemRegion, tracer: PersistenceTracer, rng: inout SeededRandom, skipFlush: Bool) throws
        -> Scenario
    {
        var scenario = Scenario()
        var live: [(PmemArena, PmemLogWriter)] = []
        var nextTag: UInt64 = 1
        func switchArena() throws {
            if live.count == 2 {
                let (oldest, _) = live.removeFirst()
                scenario.freeStartedAt[oldest.tag] = tracer.count
                try region.freeArena(oldest)
            }
            let arena = try #require(try region.allocateArena(tag: nextTag))
            scenario.allocatedAt[nextTag] = tracer.count
            live.append((arena, PmemLogWriter(region: region, arena: arena, unsafeSkipRecordFlushForTesting: skipFlush)))
            nextTag += 1
        }
        try switchArena()
        for _ in 0..<60 {
            let payload = (0..<Int.random(in: 1...700, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if !live.last!.1.hasRoom(payloadBytes: payload.count) { try switchArena() }
            let (arena, writer) = live.last!
            try payload.withUnsafeBytes { try writer.append($0) }
            scenario.records[arena.tag, default: []].append(payload)
            scenario.acked[arena.tag, default: []].append(tracer.count)
        }
        return scenario
    }

    /// Checks one crash image; returns a description of what is wrong, or nil.
    static func check(image: [UInt8], crashAt: Int, scenario: Scenario) -> String? {
        let path = temporaryRegionPath("image")
        defer { unlink(path) }
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        _ = image.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let region: PmemRegion
        do {
            region = try PmemRegion.open(path: path, layout: layout)
        } catch {
            return crashAt == 0 ? nil : "region does not open: \(error)"
        }
        var present: [UInt64: [[UInt8]]] = [:]
        for arena in region.allocatedArenas() {
            do {
                var reader = try PmemLogReader(region: region, arena: arena)
                var records: [[UInt8]] = []
                while let record = try reader.nextRecord() { records.append(Array(record)) }
                present[arena.tag] = records
            } catch {
                return "arena \(arena.tag): \(error)"
            }
        }
        for (tag, payloads) in scenario.records.sorted(by: { $0.key < $1.key }) {  // the first failure, every run
            let ackedCount = scenario.acked[tag, default: []].filter { $0 <= crashAt }.count
            guard let recovered = present[tag] else {
                let freed = (scenario.freeStartedAt[tag] ?? Int.max) <= crashAt
                if ackedCount > 0 && !freed { return "arena \(tag) with \(ackedCount) acknowledged records is gone" }
                continue
            }
            if recovered.count > payloads.count || Array(payloads.prefix(recovered.count)) != recovered {
                return "arena \(tag): recovered records are not a prefix of what was written"
            }
            if recovered.count < ackedCount && (scenario.freeStartedAt[tag] ?? Int.max) > crashAt {
                return "arena \(tag): \(recovered.count) records recovered, \(ackedCount) acknowledged"
            }
        }
        return nil
    }

    static func traceRound(seed: UInt64, skipFlush: Bool) throws -> (failures: Int, images: Int, firstFailure: String?) {
        var rng = SeededRandom(seed: seed)
        let path = temporaryRegionPath("trace")
        defer { unlink(path) }
        let tracer = PersistenceTracer()
        let region = try PmemRegion.open(path: path, layout: layout, tracer: tracer)
        let scenario = try runScenario(region: region, tracer: tracer, rng: &rng, skipFlush: skipFlush)
        let images = PersistenceCrashImages(initial: [UInt8](repeating: 0, count: layout.regionBytes), events: tracer.events)
        var failures = 0
        var checked = 0
        var first: String? = nil
        for crashAt in images.interestingCrashPoints {
            for _ in 0..<3 {
                let image = images.image(crashAt: crashAt, using: &rng)
                checked += 1
                if let problem = check(image: image, crashAt: crashAt, scenario: scenario) {
                    failures += 1
                    if first == nil { first = "crash at event \(crashAt) of \(tracer.count): \(problem)" }
                }
            }
        }
        return (failures, checked, first)
    }

    @Test("every crash image from the persistence trace recovers every acknowledged record, none torn")
    func traceCrashImages() throws {
        let rounds = SeededRandom.environmentInt("MORAINE_PMEM_TRACE_ROUNDS", default: 2)
        let seed = SeededRandom.testSeed("rounds \(rounds)")
        var images = 0
        for round in 0..<rounds {
            let result = try Self.traceRound(seed: seed &+ UInt64(round), skipFlush: false)
            images += result.images
            #expect(result.failures == 0, "MORAINE_SEED=\(seed) round \(round): \(result.firstFailure ?? "")")
        }
        #expect(images > 100, "too few crash images to test anything")
    }

    @Test("the same checker catches a log that leaves out the record flush")
    func missingFlushIsCaught() throws {
        let seed = SeededRandom.testSeed()
        var caught = false
        for round in 0..<4 where !caught {
            caught = try Self.traceRound(seed: seed &+ UInt64(round), skipFlush: true).failures > 0
        }
        #expect(caught, "MORAINE_SEED=\(seed): crash images of a log without record flushes all recovered")
    }
}
