// Storage tiers: placement as a pure function of the tiers and level targets (on described
// budgets), the `--tiers` syntax, and a real database over tier directories — tables written to
// the tier of their level, moved down when a tier passes its budget, found again after a reopen
// (also with the tiers listed in another order), a move's leftover copy removed, a missing tier
// refused, a damaged table on either tier reported by name, and every acknowledged write kept
// across SIGKILLs of a process whose tables move all the time.
import Foundation
import Moraine
import MoraineCompute
import MoraineEngine
import MoraineFormat
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import Testing

@Suite("Storage tiers")
struct TierTests {
    static let mib = 1024.0 * 1024

    @Test("levels fill the fastest tier with room for their target, as RocksDB's db_paths")
    func levelPlacement() {
        // RocksDB's defaults: L1 256 MiB, ×10 per level; L0 counted as big as L1.
        let targets = (0..<7).map { 256 * Self.mib * pow(10, Double(max(0, $0 - 1))) }
        let mib: UInt64 = 1 << 20
        // 600 MiB of PMem holds L0 and L1; 4 GiB of NVMe holds L2; the disk the rest.
        #expect(TierLayout.levelTiers(budgets: [600 * mib, 4096 * mib, nil], levelTargetBytes: targets) == [0, 0, 1, 2, 2, 2, 2])
        // A fast tier smaller than L0's target takes nothing.
        #expect(TierLayout.levelTiers(budgets: [100 * mib, nil], levelTargetBytes: targets) == [1, 1, 1, 1, 1, 1, 1])
        // One unbounded tier takes everything; a level never goes to a faster tier than the one
        // before it, even where a later tier is fuller.
        #expect(TierLayout.levelTiers(budgets: [nil], levelTargetBytes: targets) == [0, 0, 0, 0, 0, 0, 0])
        #expect(TierLayout.levelTiers(budgets: [300 * mib, 10 * mib, nil], levelTargetBytes: targets) == [0, 2, 2, 2, 2, 2, 2])
    }

    @Test("an output too big for its level's tier goes to the next tier that can hold it")
    func outputTier() throws {
        var options = Options()
        options.maxBytesForLevelBase = 1 << 20
        options.tiers = [
            StorageTier(path: "/a", budgetBytes: 3 << 20), StorageTier(path: "/b", budgetBytes: 64 << 20),
            StorageTier(path: "/c", budgetBytes: nil),
        ]
        let layout = TierLayout(databasePath: "/db", options: options)
        #expect(layout.levelTiers == [0, 0, 1, 2, 2, 2, 2])
        #expect(layout.outputTier(level: 0, incomingBytes: 1 << 20) == 0)
        #expect(layout.outputTier(level: 0, incomingBytes: 4 << 20) == 1)
        #expect(layout.outputTier(level: 1, incomingBytes: 100 << 20) == 2)
        #expect(layout.outputTier(level: 6, incomingBytes: 1 << 40) == 2)
    }

    @Test("--tiers syntax: PATH:SIZE with K, M, G, T; the last may be unbounded; mistakes named")
    func parsing() throws {
        let tiers = try StorageTier.parseList("/mnt/pmem/db:64M,/nvme/db:2G,/disk/db")
        #expect(tiers == [
            StorageTier(path: "/mnt/pmem/db", budgetBytes: 64 << 20), StorageTier(path: "/nvme/db", budgetBytes: 2 << 30),
            StorageTier(path: "/disk/db", budgetBytes: nil),
        ])
        #expect(try StorageTier.parseList("/a:1k:pmem,/b:unbounded") == [
            StorageTier(path: "/a", budgetBytes: 1024, mapped: true), StorageTier(path: "/b", budgetBytes: nil),
        ])
        #expect(try StorageTier.parseList("/a:2M,/b:pmem") == [
            StorageTier(path: "/a", budgetBytes: 2 << 20), StorageTier(path: "/b", budgetBytes: nil, mapped: true),
        ])
        for (text, named) in [("/a:12X", "12X"), ("/a,/b:1G", "/a"), (":5M", "no path"), ("/a:99999999999999999999T", "not a size")] {
            let error = moraineError { _ = try StorageTier.parseList(text) }
            #expect(error?.kind == .invalid && error?.message.contains(named) == true, "\(text): \(String(describing: error))")
        }
        var options = Options()
        options.tiers = [StorageTier(path: "/a", budgetBytes: nil), StorageTier(path: "/b", budgetBytes: nil)]
        let error = moraineError { _ = try Database(path: "/nonexistent-moraine-tier-test", options: options) }
        #expect(error?.kind == .invalid && error?.message.contains("every tier but the last needs a size") == true, "\(String(describing: error))")
    }

    @Test("a mapped file reads the same bytes as the I/O path: any range, short at the end, an empty file")
    func mappedReads() throws {
        let dir = TempDir("moraine-tiers-mapped")
        defer { dir.remove() }
        let seed = SeededRandom.testSeed("mapped reads")
        var rng = SeededRandom(seed: seed)
        let bytes = rng.bytes(300_000)
        writeFileBytes(dir.file("t"), bytes)
        writeFileBytes(dir.file("empty"), [])
        let files: any FileSystem = PosixFileSystem.shared  // as the engine calls it: through the protocol
        let mapped = try files.openMapped(dir.file("t"))
        let plain = try PosixFileSystem.shared.openRandomAccess(dir.file("t"))
        #expect(mapped.size == UInt64(bytes.count) && "\(type(of: mapped))" == "MappedRandomAccessFile", "\(type(of: mapped))")
        var a = [UInt8](repeating: 0, count: 70_000)
        var b = [UInt8](repeating: 0, count: 70_000)
        for _ in 0..<200 {
            let offset = UInt64.random(in: 0...UInt64(bytes.count + 10), using: &rng)
            let length = Int.random(in: 0...70_000, using: &rng)
            let got = try a.withUnsafeMutableBytes { try mapped.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<length])) }
            let want = try b.withUnsafeMutableBytes { try plain.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<length])) }
            #expect(got == want && a[0..<got] == b[0..<want], "offset \(offset) length \(length) (MORAINE_SEED=\(seed))")
        }
        let empty = try PosixFileSystem.shared.openMapped(dir.file("empty"))
        #expect(try a.withUnsafeMutableBytes { try empty.read(at: 0, into: $0) } == 0)
        let missing = moraineError { _ = try PosixFileSystem.shared.openMapped(dir.file("absent")) }
        #expect(missing?.kind == .notFound && missing?.message.contains("absent") == true, "\(String(describing: missing))")
    }

    @Test("a pmem tier's tables are read through mappings, embedded and by a storage node; other tiers' are not mapped")
    func mappedTier() throws {
        // Budgets no table passes, and no compaction: nothing moves a table while the test looks.
        let t = TieredDatabase()
        defer { t.remove() }
        var options = t.options(fastBytes: 1 << 30)
        options.disableAutoCompactions = true
        let db = try Database(path: t.dir.path, options: options)
        for i in 0..<500 { try db.put(TieredDatabase.key(i), TieredDatabase.value(i, 0)) }
        try db.flush()
        #expect(try Oracle(contentsOf: db).pairs.count == 500)  // a scan opens every table
        let node = try StorageTestNode(.sharedMemory, tierBudgets: [1 << 30, nil])
        defer { node.remove() }
        var remote = options
        remote.fileSystem = node.remote
        remote.tiers = try ClusterAttachment.tiers(of: node.remote, database: "mapped")
        let onNode = try Database(path: "mapped", options: remote)
        for i in 0..<500 { try onNode.put(TieredDatabase.key(i), TieredDatabase.value(i, 0)) }
        try onNode.flush()
        #expect(try Oracle(contentsOf: onNode).pairs.count == 500)
        // Read to the end in a loop: procfs files say size 0, and one read can stop short.
        let maps = String(decoding: FileHandle(forReadingAtPath: "/proc/self/maps")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
        #expect(maps.contains(t.fast + "/"), "no mapping of the embedded pmem tier's tables")
        #expect(maps.contains(node.tiers[0].path + "/mapped/"), "no mapping of the node's pmem tier's tables")
        #expect(!maps.contains(t.slow + "/") && !maps.contains(node.tiers[1].path + "/"), "a tier that is not pmem was mapped")
        try onNode.close()
        try db.close()
    }

    @Test("a job's tiers cross the wire; it reads each input from its tier and writes to the output tier")
    func jobsAcrossTiers() throws {
        let upper = TempDir("moraine-tiers-upper")
        let lower = TempDir("moraine-tiers-lower")
        defer {
            upper.remove()
            lower.remove()
        }
        var inputs = try CompactionJobSpecTests.writeInputs(upper, keyCount: 2000)
        // Table 6 lives on the lower tier.
        try #require(rename(upper.file("000006.sst"), lower.file("000006.sst")) == 0)
        inputs[1].info.tier = 1
        var spec = CompactionJobSpecTests.spec(upper, inputs, outputs: 100..<120, target: 64 << 10)
        spec.tierDirectories = [upper.path, lower.path]
        spec.outputTier = 1
        let decoded = try CompactionJobRequest.decode(CompactionJobRequest(spec: spec).encoded()).spec
        #expect(decoded == spec)
        let result = try CompactionJob(spec: decoded, fileSystem: PosixFileSystem.shared).run()
        #expect(!result.outputs.isEmpty && result.outputs.allSatisfy { $0.tier == 1 }, "\(result.outputs.map(\.tier))")
        #expect(spec.problems(in: result).isEmpty)
        for output in result.outputs {
            #expect(access(lower.file(DatabaseFile.table(output.number).name), F_OK) == 0, "output \(output.number) not on the lower tier")
        }
        let reply = try CompactionJobReply.decode(CompactionJobReply(result: result).encoded()).result
        #expect(reply.outputs == result.outputs)
        // Tiers outside the spec's are refused with the reason.
        var bad = spec
        bad.outputTier = 2
        bad.inputs[0].info.tier = 5
        let problems = bad.problems().joined(separator: "; ")
        #expect(problems.contains("output tier 2 is outside 0..<2") && problems.contains("input table 5 is on tier 5"), "\(problems)")
        // A flush spec's tiers cross the wire too, with or without an arena after them.
        var flush = FlushJobSpec(jobID: 3, directory: upper.path, epoch: 2, outputNumber: 9, tableOptions: TableOptions())
        flush.tierDirectories = [upper.path, lower.path]
        flush.outputTier = 1
        #expect(try FlushJobRequest.decode(FlushJobRequest(spec: flush).encoded()).spec == flush)
        flush.arena = FlushArenaReference(regionPath: "/dev/shm/r", offset: 4096, bytes: 1 << 20, logNumber: 8)
        #expect(try FlushJobRequest.decode(FlushJobRequest(spec: flush).encoded()).spec == flush)
    }

    /// A database over a fast tier of `fastBytes` and an unbounded slow one, beside its directory.
    struct TieredDatabase {
        let dir = TempDir("moraine-tiers")
        var fast: String { dir.path + ".fast" }
        var slow: String { dir.path + ".slow" }

        func options(fastBytes: UInt64 = 20 << 10, swapped: Bool = false) -> Options {
            var options = Options()
            options.createIfMissing = true
            options.writeBufferSize = 8 << 10
            options.targetFileSizeBase = 8 << 10
            options.maxBytesForLevelBase = 16 << 10
            options.level0FileNumCompactionTrigger = 4
            options.blockSize = 512
            options.compression = .none  // the values compress to nothing: tables as big as their memtables
            options.tiers =
                swapped
                ? [StorageTier(path: slow, budgetBytes: 1 << 30), StorageTier(path: fast, budgetBytes: nil)]
                : [StorageTier(path: fast, budgetBytes: fastBytes, mapped: true), StorageTier(path: slow, budgetBytes: nil)]
            return options
        }

        static func key(_ i: Int) -> [UInt8] { Array("key\(padded(i))".utf8) }
        static func value(_ i: Int, _ round: Int) -> [UInt8] { Array("value-\(i)-\(round)-".utf8) + [UInt8](repeating: UInt8(i % 251), count: 60) }

        /// Writes keys 0..<count (value of `round`), flushing as memtables fill, then waits until
        /// background work (moves included) is done.
        func fill(_ db: Database, count: Int, round: Int) throws {
            for i in 0..<count { try db.put(Self.key(i), Self.value(i, round)) }
            try db.flush()
            #expect(db.waitForBackgroundIdle(timeoutNanos: 60_000_000_000), "background work did not settle")
        }

        func check(_ db: Database, count: Int, round: Int) throws {
            for i in stride(from: 0, to: count, by: 7) {
                let got = try db.get(Self.key(i))
                #expect(got == Self.value(i, round), "key \(i): \(got.map { String(decoding: $0, as: UTF8.self) } ?? "nil")")
            }
        }

        func tables(_ directory: String) -> [String] {
            ((try? PosixFileSystem.shared.children(of: directory)) ?? []).filter { $0.hasSuffix(".sst") }.sorted()
        }

        func remove() {
            dir.remove()
            removeTree(fast)
            removeTree(slow)
        }
    }

    /// Closes `db` and checks that each tier directory holds exactly the tables its version named
    /// there: taken once background work (which writes outputs before the version names them)
    /// is done, compared after the close (which deletes old copies a reader held until then).
    static func closeExpectingTiersMatch(_ db: Database, _ t: TieredDatabase, _ label: String) throws {
        #expect(db.waitForBackgroundIdle(timeoutNanos: 60_000_000_000), "\(label): background work did not settle")
        let stats = db.stats()
        try db.close()
        for tier in stats.tiers {
            #expect(t.tables(tier.path).count == tier.fileCount, "\(label): tier \(tier.tier) \(t.tables(tier.path)) vs \(tier.fileCount) files")
        }
        #expect(t.tables(t.dir.path).isEmpty, "\(label): tables in the database directory: \(t.tables(t.dir.path))")
    }

    @Test("tables go to their level's tier, move down past the budget, and are found after reopens")
    func endToEnd() throws {
        let t = TieredDatabase()
        defer { t.remove() }
        var db = try Database(path: t.dir.path, options: t.options())
        for round in 0..<3 {
            try t.fill(db, count: 2000, round: round)
            try t.check(db, count: 2000, round: round)
        }
        let stats = db.stats()
        #expect(stats.tierMoves > 0 && stats.tierMoveFailures == 0, "moves \(stats.tierMoves), failures \(stats.tierMoveFailures)")
        #expect(stats.tiers.count == 2 && stats.tiers[1].fileCount > 0, "\(stats.tiers)")
        #expect(stats.tiers[0].sizeBytes <= 20 << 10, "the fast tier holds \(stats.tiers[0].sizeBytes) bytes, past its budget")
        // Deeper levels live on the slow tier only.
        #expect(stats.shape.contains("tier 1 \(t.slow)"), "\(stats.shape)")
        try db.close()
        db = try Database(path: t.dir.path, options: t.options())
        try t.check(db, count: 2000, round: 2)
        try Self.closeExpectingTiersMatch(db, t, "after reopen")
        // The tiers listed the other way round: every table is found where it is, and the open
        // records that (the next open finds each on its recorded tier).
        db = try Database(path: t.dir.path, options: t.options(swapped: true))
        try t.check(db, count: 2000, round: 2)
        let event = try String(contentsOfFile: t.dir.file("LOG"), encoding: .utf8)
        #expect(event.contains("not on tier") && event.contains("recorded there"), "no relocation in the LOG")
        try t.fill(db, count: 500, round: 3)
        try db.close()
        db = try Database(path: t.dir.path, options: t.options(swapped: true))
        #expect(!(try String(contentsOfFile: t.dir.file("LOG"), encoding: .utf8)).contains("recorded there"), "relocated twice")
        try t.check(db, count: 500, round: 3)
        try db.close()
        // Destroy removes the tables of every tier.
        try Database.destroy(path: t.dir.path, options: t.options(swapped: true))
        #expect(t.tables(t.fast).isEmpty && t.tables(t.slow).isEmpty, "\(t.tables(t.fast)) \(t.tables(t.slow))")
    }

    @Test("a move's leftover copy on the other tier is deleted at open; the manifest's copy stays")
    func leftoverCopy() throws {
        let t = TieredDatabase()
        defer { t.remove() }
        var db = try Database(path: t.dir.path, options: t.options(fastBytes: 1 << 30))
        try t.fill(db, count: 1500, round: 0)
        try db.close()
        let onFast = t.tables(t.fast)
        try #require(!onFast.isEmpty && t.tables(t.slow).isEmpty, "fast \(onFast), slow \(t.tables(t.slow))")
        // A crash mid-move: half a copy on the slow tier, and a whole one of another table.
        let half = readFileBytes(t.fast + "/" + onFast[0])
        writeFileBytes(t.slow + "/" + onFast[0], Array(half.prefix(half.count / 2)))
        writeFileBytes(t.slow + "/" + onFast.last!, readFileBytes(t.fast + "/" + onFast.last!))
        writeFileBytes(t.slow + "/" + onFast[0].replacingOccurrences(of: ".sst", with: ".dbtmp"), Array(half.prefix(100)))
        db = try Database(path: t.dir.path, options: t.options(fastBytes: 1 << 30))
        #expect(t.tables(t.slow).isEmpty, "left over: \(t.tables(t.slow))")
        #expect(!(try PosixFileSystem.shared.children(of: t.slow)).contains { $0.hasSuffix(".dbtmp") }, "a move's temporary stayed")
        #expect(t.tables(t.fast) == onFast)
        try t.check(db, count: 1500, round: 0)
        try db.close()
    }

    @Test("a missing tier, or one that is not a directory, fails the open and changes nothing")
    func missingTier() throws {
        let t = TieredDatabase()
        defer { t.remove() }
        var db = try Database(path: t.dir.path, options: t.options())
        try t.fill(db, count: 2000, round: 0)
        try db.close()
        let before = t.dir.names().sorted()
        let aside = t.slow + ".aside"
        try #require(rename(t.slow, aside) == 0)
        let missing = moraineError { _ = try Database(path: t.dir.path, options: t.options()) }
        #expect(missing?.kind == .notFound && missing?.message.contains("\(t.slow), does not exist") == true, "\(String(describing: missing))")
        writeFileBytes(t.slow, [1, 2, 3])
        let notDirectory = moraineError { _ = try Database(path: t.dir.path, options: t.options()) }
        #expect(notDirectory?.message.contains("tier 1") == true && notDirectory?.message.contains(t.slow) == true, "\(String(describing: notDirectory))")
        #expect(t.dir.names().sorted() == before, "the refused opens changed the database directory")
        try #require(unlink(t.slow) == 0 && rename(aside, t.slow) == 0)
        db = try Database(path: t.dir.path, options: t.options())
        try t.check(db, count: 2000, round: 0)
        try db.close()
        // A new database refuses tier directories holding another database's tables.
        let other = TempDir("moraine-tiers-other")
        defer { other.remove() }
        var options = t.options()
        options.tiers = [StorageTier(path: t.slow, budgetBytes: nil)]
        let taken = moraineError { _ = try Database(path: other.path, options: options) }
        #expect(taken?.kind == .invalid && taken?.message.contains("another database") == true, "\(String(describing: taken))")
    }

    @Test("markers: another database's tier, one directory named twice, a tier with tables but no marker are refused")
    func markers() throws {
        let t = TieredDatabase()
        defer { t.remove() }
        var db = try Database(path: t.dir.path, options: t.options())
        try t.fill(db, count: 2000, round: 0)
        try db.close()
        #expect(t.dir.names().contains("TIERS") && t.tables(t.fast).count + t.tables(t.slow).count > 0)
        func refused(_ options: Options, _ named: String, _ label: String) {
            let error = moraineError { _ = try Database(path: t.dir.path, options: options) }
            #expect(error?.kind == .invalid && error?.message.contains(named) == true, "\(label): \(String(describing: error))")
        }
        // One directory spelled two ways.
        var twice = t.options()
        twice.tiers = [StorageTier(path: t.fast, budgetBytes: 20 << 10), StorageTier(path: t.slow + "/", budgetBytes: 1 << 30),
            StorageTier(path: t.slow, budgetBytes: nil)]
        refused(twice, "are one directory", "a tier named twice")
        // Another database's tier in place of this one's slow tier.
        let other = TieredDatabase()
        defer { other.remove() }
        let second = try Database(path: other.dir.path, options: other.options())
        try other.fill(second, count: 300, round: 0)
        try second.close()
        var swapped = t.options()
        swapped.tiers[1] = StorageTier(path: other.slow, budgetBytes: nil)
        refused(swapped, "belongs to another database", "another database's tier")
        // A tier whose marker is gone but which holds tables.
        let marker = t.slow + "/TIER"
        let saved = readFileBytes(marker)
        try #require(unlink(marker) == 0)
        refused(t.options(), "holds", "tables without a marker")
        writeFileBytes(marker, saved)
        // Destroying the other database leaves this one's tiers alone; repair refuses a tiered
        // database even when asked without its tiers.
        var otherWithOurs = other.options()
        otherWithOurs.tiers = [
            StorageTier(path: other.fast, budgetBytes: 20 << 10), StorageTier(path: other.slow, budgetBytes: 1 << 30),
            StorageTier(path: t.slow, budgetBytes: nil),
        ]
        try Database.destroy(path: other.dir.path, options: otherWithOurs)
        #expect(!t.tables(t.slow).isEmpty, "destroy of another database removed this one's tables")
        let repair = moraineError { _ = try Database.repair(path: t.dir.path, options: Options()) }
        #expect(repair?.kind == .invalid && repair?.message.contains("storage tiers") == true, "\(String(describing: repair))")
        db = try Database(path: t.dir.path, options: t.options())
        try t.check(db, count: 2000, round: 0)
        try db.close()
    }

    @Test("an open refused after it found tables on another tier leaves them where they are")
    func refusedRelocation() throws {
        let t = TieredDatabase()
        defer { t.remove() }
        var db = try Database(path: t.dir.path, options: t.options())
        try t.fill(db, count: 2000, round: 0)
        try db.close()
        // A table no manifest names, holding newer writes than the database: the open must fail.
        let other = TieredDatabase()
        defer { other.remove() }
        let donor = try Database(path: other.dir.path, options: other.options())
        for round in 0..<4 { try other.fill(donor, count: 2000, round: round) }
        try donor.close()
        let stray = t.fast + "/999990.sst"
        writeFileBytes(stray, readFileBytes(other.slow + "/" + other.tables(other.slow).last!))
        let before = t.tables(t.fast) + t.tables(t.slow)
        let error = moraineError { _ = try Database(path: t.dir.path, options: t.options(swapped: true)) }
        #expect(error?.kind == .corruption && error?.message.contains("999990.sst") == true, "\(String(describing: error))")
        #expect(t.tables(t.fast) + t.tables(t.slow) == before, "the refused open changed the tiers")
        try #require(unlink(stray) == 0)
        db = try Database(path: t.dir.path, options: t.options(swapped: true))
        try t.check(db, count: 2000, round: 0)
        try db.close()
    }

    @Test("on a storage node with tiers, a database's tables go to the node's tier directories and move between them")
    func storageNodeTiers() throws {
        let node = try StorageTestNode(.sharedMemory, tierBudgets: [20 << 10, nil])
        defer { node.remove() }
        let report = try node.remote.tiers()
        #expect(report.map(\.budgetBytes) == [20 << 10, 0] && report.map(\.mapped) == [true, false], "\(report)")
        var options = TieredDatabase().options()
        options.fileSystem = node.remote
        options.tiers = try ClusterAttachment.tiers(of: node.remote, database: "tiered")
        #expect(options.tiers.map(\.path) == ["tiered/@tier0", "tiered/@tier1"])
        var db = try Database(path: "tiered", options: options)
        let t = TieredDatabase()
        defer { t.remove() }
        for round in 0..<2 { try t.fill(db, count: 2000, round: round) }
        let stats = db.stats()
        #expect(stats.tierMoves > 0, "no table moved between the node's tiers")
        try db.close()
        let onNode = node.tiers.map { t.tables($0.path + "/tiered") }
        #expect(onNode[1].count > 0 && onNode.reduce(0) { $0 + $1.count } > 0, "tables on the node's tiers: \(onNode)")
        #expect(t.tables(node.dataDirectory.file("tiered")).isEmpty, "tables in the node's data directory")
        #expect(try node.remote.tiers()[1].bytesUsed > 0)
        db = try Database(path: "tiered", options: options)
        try t.check(db, count: 2000, round: 1)
        try db.close()
        // A tier the node lacks is refused by name; opening without the tiers is refused too.
        let missing = moraineError { _ = try node.remote.exists("tiered/@tier2") }
        #expect(missing?.kind == .invalid && missing?.message.contains("no such tier") == true, "\(String(describing: missing))")
        var untiered = options
        untiered.tiers = []
        let refused = moraineError { _ = try Database(path: "tiered", options: untiered) }
        #expect(refused?.kind == .invalid && refused?.message.contains("TIERS") == true, "\(String(describing: refused))")
    }

    @Test("a damaged table on either tier is reported by name; the other tier's keys still read", arguments: [0, 1])
    func corruptionPerTier(tier: Int) throws {
        let t = TieredDatabase()
        defer { t.remove() }
        // Keys 0..<1500 end up compacted onto the slow tier; keys from 5000 stay in one L0 table on the fast tier.
        var db = try Database(path: t.dir.path, options: t.options(fastBytes: 64 << 10))
        try t.fill(db, count: 1500, round: 0)
        try db.compactRange()
        for i in 5000..<5040 { try db.put(TieredDatabase.key(i), TieredDatabase.value(i, 0)) }
        try db.flush()
        // Settled (no move due), so the damaged table stays where it is after the reopen.
        #expect(db.waitForBackgroundIdle(timeoutNanos: 60_000_000_000))
        try db.close()
        let directory = tier == 0 ? t.fast : t.slow
        let tables = t.tables(directory)
        try #require(!tables.isEmpty, "no table on tier \(tier)")
        let damaged = directory + "/" + tables[0]
        flipByte(damaged, at: 100)
        db = try Database(path: t.dir.path, options: t.options(fastBytes: 64 << 10))
        var errors = 0
        for i in Array(0..<1500) + Array(5000..<5040) {
            do {
                let got = try db.get(TieredDatabase.key(i))
                #expect(got == TieredDatabase.value(i, 0), "key \(i)")
            } catch let error as MoraineError {
                errors += 1
                #expect(error.kind == .corruption && error.message.contains(damaged), "key \(i): \(error) (damaged \(damaged))")
            }
        }
        #expect(errors > 0, "no read met the damaged block of \(damaged)")
        try db.close()
    }

    @Test("every acknowledged write survives SIGKILL of a process whose tables move between tiers")
    func killDuringMoves() throws {
        let rounds = SeededRandom.environmentInt("MORAINE_KILL_ROUNDS", default: 12)
        let seed = SeededRandom.testSeed("tiers, rounds \(rounds), binary \(moraineExecutablePath())")
        var rng = SeededRandom(seed: seed)
        let t = TieredDatabase()
        defer { t.remove() }
        let optionsFile = t.dir.path + ".options"
        defer { unlink(optionsFile) }
        try """
        [DBOptions]
          max_background_jobs=2
        [CFOptions "default"]
          write_buffer_size=8192
          target_file_size_base=8192
          max_bytes_for_level_base=16384
          level0_file_num_compaction_trigger=4
          compression=kNoCompression
        """.write(toFile: optionsFile, atomically: true, encoding: .utf8)
        let tiers = "\(t.fast):20K:pmem,\(t.slow)"
        var reopen = t.options()
        reopen.createIfMissing = true
        var acknowledged = Oracle()
        var totalAcks = 0
        var moves = 0
        for round in 0..<rounds {
            let shell = try ShellProcess(arguments: ["shell", "--db", t.dir.path, "--options_file", optionsFile, "--tiers", tiers])
            shell.killLater(afterMicros: UInt32.random(in: 50_000...500_000, using: &rng))
            var inFlight: Oracle? = nil
            for step in 0..<100_000 {
                var next = acknowledged
                let key = "k\(Int.random(in: 0..<3000, using: &rng))"
                let value = "v\(round)-\(step)-" + String(repeating: "t", count: Int.random(in: 20...120, using: &rng))
                next.put(Array(key.utf8), Array(value.utf8))
                inFlight = next
                guard shell.send("put \(key) \(value)"), let reply = shell.readLine() else { break }
                #expect(reply == "OK", "round \(round) step \(step): '\(reply)' (MORAINE_SEED=\(seed))")
                if reply != "OK" { break }
                acknowledged = next
                inFlight = nil
                totalAcks += 1
            }
            shell.kill()
            shell.wait()
            let log = (try? String(contentsOfFile: t.dir.file("LOG"), encoding: .utf8)) ?? ""
            moves += log.components(separatedBy: "tiers: moved").count - 1
            let database = try Database(path: t.dir.path, options: reopen)
            let recovered = try Oracle(contentsOf: database)
            // No table lost or duplicated: each tier holds exactly the version's tables there.
            try Self.closeExpectingTiersMatch(database, t, "round \(round)")
            let matches = recovered == acknowledged || (inFlight.map { recovered == $0 } ?? false)
            #expect(matches, "round \(round): \(recovered.pairs.count) keys recovered, \(acknowledged.pairs.count) acknowledged (MORAINE_SEED=\(seed))")
            if !matches { return }
            acknowledged = recovered
        }
        print("SIGKILL with tiers: \(rounds) rounds, \(totalAcks) acknowledged writes, \(moves) moves seen in the LOGs")
        #expect(moves > 0, "no table moved between tiers: the test tested nothing")
    }
}
