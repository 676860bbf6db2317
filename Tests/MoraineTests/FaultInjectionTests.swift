// The engine over a failing disk: real files in a temporary directory, wrapped by
// FaultInjectingFileSystem, with small write buffers so flushes and compactions happen. For each
// fault (EIO on WAL writes, failed WAL syncs, ENOSPC and short writes on tables, manifest write
// failures, EIO on table reads in gets, iteration and compaction) the error must reach the
// caller as a MoraineError of the fault's kind naming the file and the injected failure; a
// failed write or flush must stop later writes (the sticky background error) while reads go on;
// nothing may trap; and after the faults are disarmed and the database reopened, every
// acknowledged write must be there. A write whose call threw may or may not be there.
// Every case checks that its fault really fired. Randomized rounds (FaultRound.swift) arm a
// random fault at a random moment of a random workload; the harness is in FaultyDatabase.swift.
// MORAINE_SEED replays; MORAINE_FAULT_ROUNDS sets the number of random rounds (default 20).
import Moraine
import MoraineSystem
import MoraineTestSupport
import Testing

/// A failure of a flush's writes: which files, which fault, what the error names.
struct FlushFaultCase: Sendable, CustomStringConvertible {
    let fault: Fault
    let target: FaultTarget
    let trigger: FaultInjectingFileSystem.Trigger
    let naming: String
    var description: String { "\(fault) on \(target), \(trigger)" }

    static let all: [FlushFaultCase] = [
        FlushFaultCase(fault: .noSpace, target: .table, trigger: .always, naming: ".sst"),
        FlushFaultCase(fault: .writeError, target: .table, trigger: .once, naming: ".sst"),
        FlushFaultCase(fault: .shortWrite, target: .table, trigger: .after(3), naming: ".sst"),
        FlushFaultCase(fault: .syncError(dropUnsynced: true), target: .table, trigger: .once, naming: ".sst"),
        FlushFaultCase(fault: .writeError, target: .manifest, trigger: .once, naming: "MANIFEST-"),
        FlushFaultCase(fault: .shortWrite, target: .manifest, trigger: .once, naming: "MANIFEST-"),
        FlushFaultCase(fault: .syncError(dropUnsynced: false), target: .manifest, trigger: .once, naming: "MANIFEST-"),
        FlushFaultCase(fault: .syncError(dropUnsynced: true), target: .manifest, trigger: .once, naming: "MANIFEST-"),
    ]
}

@Suite("Fault injection")
struct FaultInjectionTests {
    @Test("an EIO on a WAL write fails that write and stops later ones; reads go on; reopen keeps acknowledged writes")
    func walWriteError() throws {
        let db = try FaultyDatabase("wal-eio")
        defer { db.remove() }
        #expect(db.fill(0..<300) == nil)
        db.fileSystem.arm(.writeError, on: .wal)
        expectInjected(db.put("k-failed", "lost?"), .writeError, naming: [".log", "injected EIO"], "failing write")
        let after = db.put("k-after", "refused")
        expectInjected(after, .writeError, naming: ["WAL write failed", "read-only", ".log"], "write after the failure")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        db.checkGets("after a WAL write error")
        let problems = try db.reopenAndVerify("WAL write EIO")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("a failed WAL sync fails the sync write and stops later ones", arguments: [false, true])
    func walSyncError(dropUnsynced: Bool) throws {
        let db = try FaultyDatabase("wal-sync")
        defer { db.remove() }
        // Synced writes only: dropping unsynced bytes then loses nothing that was acknowledged.
        #expect(db.fill(0..<200, sync: true) == nil)
        // A fresh memtable, so the next write's sync is the group commit's, not a switch's.
        try db.database.flush()
        let fault = Fault.syncError(dropUnsynced: dropUnsynced)
        db.fileSystem.arm(fault, on: .wal)
        expectInjected(db.put("k-failed", "lost?", sync: true), fault, naming: ["fdatasync", ".log"], "failing sync write")
        expectInjected(db.put("k-after", "refused", sync: true), fault, naming: ["read-only"], "write after the failure")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        db.checkGets("after a WAL sync error")
        let problems = try db.reopenAndVerify("WAL sync \(fault)")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    /// A memtable switch retires the old WAL unsynced; the next sync write syncs it first. If
    /// that fdatasync fails, Linux may have dropped the old WAL's unsynced tail and a retried one
    /// would report success, so a later sync write could outlive the lost writes. The sync write
    /// must fail and the engine stop taking writes.
    @Test("a failed sync of a retired WAL fails the sync write after it and stops writes; the reopened state is a prefix")
    func retiredWALSyncError() throws {
        let db = try FaultyDatabase("wal-switch") { $0.disableAutoCompactions = true }
        defer { db.remove() }
        #expect(db.fill(0..<40, sync: true) == nil)  // durable
        #expect(db.fill(40..<80) == nil)  // acknowledged, not synced: may be lost with the page cache
        try db.database.pauseBackgroundWork()  // the switched memtable stays unflushed, its WAL retired
        try db.database.flush(wait: false)
        #expect(db.database.stats().immutableMemtables == 1)
        let fault = Fault.syncError(dropUnsynced: true)
        db.fileSystem.arm(fault, on: .wal)
        let after = db.put("k-after", "synced?", sync: true)
        expectInjected(after, fault, naming: ["fdatasync", ".log"], "sync write after the switch")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        expectInjected(db.put("k-later", "refused", sync: true), fault, naming: ["read-only"], "write after the failed sync")
        try db.database.continueBackgroundWork()

        // Close without another flush, so what survives is what the WAL holds.
        db.fileSystem.disarm()
        _ = moraineError { try db.database.close() }
        db.database = try Database(path: db.directory, options: FaultyDatabase.options(db.fileSystem, db.configure))
        let contents = try Oracle(contentsOf: db.database)
        // The writes in order: keys 0..<40 (synced), 40..<80 (not synced), k-after (synced). What
        // survives must be a prefix of that order holding every acknowledged synced write.
        var present = 0
        while present < 80, contents.get(FaultyDatabase.key(present).bytes) != nil { present += 1 }
        let afterPresent = contents.get("k-after".bytes) != nil
        #expect(present >= 40, "synced key \(present) is missing after reopen")
        #expect(after != nil || afterPresent, "the acknowledged sync write k-after is missing after reopen")
        #expect(!afterPresent || present == 80, "k-after survived but keys \(present)..<80, written before it, did not")
        #expect(contents.pairs.count == present + (afterPresent ? 1 : 0), "keys past the prefix survived")
    }

    @Test("a flush whose table or manifest write fails reports it; writes stop, reads go on", arguments: FlushFaultCase.all)
    func flushFailure(_ c: FlushFaultCase) throws {
        let db = try FaultyDatabase("flush") { $0.disableAutoCompactions = true }
        defer { db.remove() }
        #expect(db.fill(0..<300) == nil)
        try db.database.flush()
        #expect(db.fill(300..<320, tag: "w") == nil)  // fits in the memtable: no background flush
        db.fileSystem.arm(c.fault, on: c.target, trigger: c.trigger)
        let error = moraineError { try db.database.flush() }
        expectInjected(error, c.fault, naming: ["flush failed", c.naming], "\(c): flush")
        #expect(db.fileSystem.injectedCount >= 1, "\(c): no fault fired")
        expectInjected(db.put("k-after", "refused"), c.fault, naming: ["flush failed"], "\(c): write after the failure")
        db.fileSystem.disarm()
        db.checkGets("\(c): after the failed flush")
        let problems = try db.reopenAndVerify("\(c)")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
        // The failed table was removed, or the reopen collected it: every table is live.
        let tables = Set(try db.fileSystem.children(of: db.directory).filter { $0.hasSuffix(".sst") })
        let live = Set(db.database.engine!.liveFiles().map { DatabaseFile.table($0.file.number).name })
        #expect(tables == live, "\(c): tables on disk \(tables.sorted()) but live \(live.sorted())")
    }

    @Test("an EIO reading a table fails that get only; the next get and writes work")
    func tableReadErrorInGet() throws {
        let db = try FaultyDatabase("get") {
            $0.blockCacheSize = 0
            $0.disableAutoCompactions = true
        }
        defer { db.remove() }
        #expect(db.fill(0..<400) == nil)
        try db.database.flush()
        db.fileSystem.arm(.readError, on: .table)
        let probe = FaultyDatabase.key(123).bytes
        expectInjected(moraineError { _ = try db.database.get(probe) }, .readError, naming: [".sst", "injected EIO"], "get")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        #expect(try db.database.get(probe) == db.expected.acknowledged.get(probe))
        #expect(db.put("k-after", "fine") == nil, "a read error must not stop writes")
        db.checkGets("after a read error")
        let problems = try db.reopenAndVerify("get EIO")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("an EIO mid-iteration is thrown, leaves the iterator invalid, and a new iterator reads all", arguments: [true, false])
    func tableReadErrorInIteration(forward: Bool) throws {
        let db = try FaultyDatabase("iterate") {
            $0.blockCacheSize = 0
            $0.disableAutoCompactions = true
        }
        defer { db.remove() }
        #expect(db.fill(0..<600) == nil)
        try db.database.flush()
        #expect(db.fill(0..<600, tag: "second") == nil)  // a second table over the same keys
        try db.database.flush()
        _ = try Oracle(contentsOf: db.database)  // opens every table reader, so the fault hits data blocks
        // Past the seek (one block per table), well before the end (over a hundred blocks).
        db.fileSystem.arm(.readError, on: .table, trigger: .after(30))
        let order = db.expected.acknowledged.sorted().map(\.key)
        let expectedOrder = forward ? order : order.reversed()
        let iterator = try db.database.makeIterator()
        var seen: [[UInt8]] = []
        let error = moraineError {
            if forward { try iterator.seekToFirst() } else { try iterator.seekToLast() }
            while iterator.isValid {
                seen.append(iterator.key)
                #expect(db.expected.allows(iterator.key, iterator.value))
                if forward { try iterator.next() } else { try iterator.prev() }
            }
        }
        expectInjected(error, .readError, naming: [".sst", "injected EIO"], "iteration")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        #expect(!seen.isEmpty && seen.count < order.count, "the fault struck after \(seen.count) of \(order.count) keys")
        #expect(seen == Array(expectedOrder.prefix(seen.count)), "keys before the error were out of order")
        #expect(!iterator.isValid, "the iterator stayed valid after its step threw")
        #expect(try Oracle(contentsOf: db.database) == db.expected.acknowledged)
        let problems = try db.reopenAndVerify("iteration EIO")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("an EIO reading a manual compaction's input is thrown; nothing changes, and a retry works")
    func compactionReadErrorManual() throws {
        let db = try FaultyDatabase("compact-manual") { $0.disableAutoCompactions = true }
        defer { db.remove() }
        for round in 0..<3 {
            #expect(db.fill(round * 100..<round * 100 + 300, tag: "r\(round)") == nil)
            try db.database.flush()
        }
        let before = db.database.engine!.liveFiles().map(\.file.number)
        db.fileSystem.arm(.readError, on: .table, trigger: .after(5))
        expectInjected(moraineError { try db.database.compactRange() }, .readError, naming: [".sst"], "compactRange")
        #expect(db.fileSystem.injectedCount == 1, "injected: \(db.fileSystem.injectedFaults)")
        #expect(db.database.engine!.liveFiles().map(\.file.number) == before, "a failed compaction changed the tree")
        db.checkGets("after a failed compaction")
        try db.database.compactRange()
        #expect(try Oracle(contentsOf: db.database) == db.expected.acknowledged)
        let problems = try db.reopenAndVerify("manual compaction EIO")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("an EIO reading a background compaction's input becomes the sticky error of later writes")
    func compactionReadErrorBackground() throws {
        let db = try FaultyDatabase("compact-bg")
        defer { db.remove() }
        // Only compactions read tables here (no gets), so every injected read is a compaction's.
        // Each round overwrites the same keys, so L0 files overlap and compactions must merge.
        db.fileSystem.arm(.readError, on: .table, trigger: .always)
        var failure: MoraineError? = nil
        for round in 0..<200 where failure == nil {
            failure = db.fill(0..<50, tag: "r\(round)")
            if failure == nil { failure = moraineError { try db.database.flush() } }
        }
        expectInjected(failure, .readError, naming: ["compaction failed", ".sst", "injected EIO"], "write after the compaction")
        #expect(db.fileSystem.injectedCount >= 1, "no fault fired")
        expectInjected(db.put("k-after", "refused"), .readError, naming: ["compaction failed"], "next write")
        db.fileSystem.disarm()
        db.checkGets("after a failed background compaction")
        let problems = try db.reopenAndVerify("background compaction EIO")
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("random faults at random moments of random workloads")
    func randomRounds() throws {
        let rounds = SeededRandom.environmentInt("MORAINE_FAULT_ROUNDS", default: 20)
        let seed = SeededRandom.testSeed("rounds \(rounds)")
        var fired: [String: Int] = [:]
        for r in 0..<rounds {
            let roundSeed = seed &+ UInt64(r) &* 0x9e37_79b9
            var round = try FaultRound(seed: roundSeed, index: r)
            defer { round.db.remove() }
            let failures = try round.run()
            for event in round.db.fileSystem.injectedFaults {
                let file = FaultTarget.allFiles.first { $0.matches(event.path) } ?? .any
                fired["\(event.fault) on \(event.operation.rawValue) of \(file)", default: 0] += 1
            }
            #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n")) — replay with MORAINE_SEED=\(seed)")
            if !failures.isEmpty { return }
        }
        let summary = fired.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        print("fault injection: \(rounds) rounds, \(fired.values.reduce(0, +)) faults injected: \(summary)")
    }
}
