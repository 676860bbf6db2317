// One randomized fault-injection round: a random fault (EIO, ENOSPC, short write, failed sync
// with or without dropped bytes) on a random kind of file with a random trigger, armed at a
// random step of random puts, deletes, batches, gets, scans, flushes, compactions and reopens.
// Every error must be the injected fault's; after a write fails, every later write must fail
// until a reopen; in-process reads and the state after a disarmed reopen must match the
// expectation. If the fault has not fired by the end, the round drives every kind of file I/O
// until it does. Single-threaded (the engine's background threads run underneath).
import Moraine
import MoraineSystem
import MoraineTestSupport
import Testing

/// One randomized round: a random fault, armed at a random step of random operations.
struct FaultRound {
    let seed: UInt64
    let index: Int
    var rng: SeededRandom
    let db: FaultyDatabase
    let fault: Fault
    let target: FaultTarget
    let trigger: FaultInjectingFileSystem.Trigger
    let syncEvery: Int
    var failures: [String] = []
    /// The first write or flush that failed: every later write must fail too, until a reopen.
    var stoppedBy: MoraineError? = nil
    /// Set when a reopen with the fault armed failed; the round then ends.
    var openFailed = false

    init(seed: UInt64, index: Int) throws {
        self.seed = seed
        self.index = index
        var rng = SeededRandom(seed: seed)
        let faults: [Fault] = [
            .readError, .writeError, .noSpace, .shortWrite, .syncError(dropUnsynced: false), .syncError(dropUnsynced: true),
        ]
        let fault = faults[rng.below(faults.count)]
        // Only tables are read while the database is open; WALs and manifests are read at open.
        let targets: [FaultTarget] = fault == .readError ? [.table, .any] : [.wal, .table, .manifest, .current, .any]
        let target = targets[rng.below(targets.count)]
        let triggers: [FaultInjectingFileSystem.Trigger] = [
            .once, .times(1 + rng.below(3)), .after(rng.below(20)), .after(rng.below(5), times: nil),
            .random(probability: 0.1 + Double(rng.below(40)) / 100, seed: rng.next()),
        ]
        let trigger = triggers[rng.below(triggers.count)]
        let cacheBytes = rng.below(2) == 0 ? 0 : 64 << 10
        let autoCompactions = rng.below(4) != 0
        self.fault = fault
        self.target = target
        self.trigger = trigger
        // Dropping unsynced bytes loses what was acknowledged without a sync: sync every write then.
        syncEvery = fault == .syncError(dropUnsynced: true) ? 1 : 5
        db = try FaultyDatabase("round") {
            $0.blockCacheSize = cacheBytes
            $0.disableAutoCompactions = !autoCompactions
        }
        self.rng = rng
    }

    var context: String { "round \(index) (seed \(seed)), \(fault) on \(target), \(trigger)" }

    /// Checks an error from any call: the armed fault's kind, and injected.
    mutating func check(_ error: MoraineError, during what: String) {
        if db.fileSystem.injectedCount == 0 {
            failures.append("\(context): \(what) failed with no fault injected: \(error)")
        } else if error.kind != fault.errorKind || !error.message.contains("injected") {
            failures.append("\(context): \(what) failed with \(error), not an injected \(fault)")
        }
    }

    mutating func randomKey() -> [UInt8] { Array("k\(padded(rng.below(300), 4))".utf8) }

    mutating func randomValue() -> [UInt8] {
        rng.below(15) == 0 ? rng.bytes(300 + rng.below(1500)) : rng.bytes(rng.below(100))
    }

    mutating func writeStep() {
        var changes: [([UInt8], [UInt8]?)] = []
        switch rng.below(10) {
        case 0..<6: changes = [(randomKey(), randomValue())]
        case 6..<8: changes = [(randomKey(), nil)]
        default:
            for _ in 0..<(1 + rng.below(6)) { changes.append((randomKey(), rng.below(3) == 0 ? nil : randomValue())) }
        }
        let error = db.write(changes, sync: rng.below(syncEvery) == 0)
        recordWrite(error, "write")
    }

    mutating func recordWrite(_ error: MoraineError?, _ what: String) {
        if let error {
            check(error, during: what)
            if stoppedBy == nil { stoppedBy = error }
        } else if let stoppedBy {
            failures.append("\(context): a \(what) succeeded after an earlier one failed with \(stoppedBy)")
        }
    }

    mutating func readStep() {
        if rng.below(4) == 0 {
            do {
                let contents = try Oracle(contentsOf: db.database)
                for problem in db.expected.mismatches(contents).prefix(3) { failures.append("\(context): scan: \(problem)") }
            } catch let error as MoraineError {
                check(error, during: "scan")
            } catch {
                failures.append("\(context): scan threw \(error)")
            }
            return
        }
        let key = randomKey()
        do {
            let value = try db.database.get(key)
            if !db.expected.allows(key, value) {
                failures.append("\(context): get \(hex(key)) read \(value.map(hex) ?? "nothing")")
            }
        } catch let error as MoraineError {
            check(error, during: "get")
        } catch {
            failures.append("\(context): get threw \(error)")
        }
    }

    /// Closes and reopens with the fault still armed: recovery replays the WAL into tables and
    /// writes a new manifest and CURRENT, all of which may fail.
    mutating func reopenArmed() {
        if let error = moraineError({ try db.database.close() }) { check(error, during: "close") }
        do {
            db.database = try Database(path: db.directory, options: FaultyDatabase.options(db.fileSystem, db.configure))
            stoppedBy = nil
        } catch let error as MoraineError {
            check(error, during: "open")
            openFailed = true
        } catch {
            failures.append("\(context): open threw \(error)")
        }
    }

    mutating func step() {
        switch rng.below(100) {
        case 0: reopenArmed()
        case 1..<75: writeStep()
        case 75..<90: readStep()
        case 90..<96: recordWrite(moraineError { try db.database.flush() }, "flush")
        default:
            // A manual compaction's own read or write failure does not stop writes (nothing was
            // installed), so only its error is checked.
            if let error = moraineError({ try db.database.compactRange() }) { check(error, during: "compactRange") }
        }
    }

    /// Runs the round; returns what went wrong.
    mutating func run() throws -> [String] {
        let stepCount = 60 + rng.below(200)
        let armAt = rng.below(stepCount)
        for i in 0..<stepCount {
            if i == armAt { db.fileSystem.arm(fault, on: target, trigger: trigger) }
            step()
            if !failures.isEmpty { return failures }
            if openFailed { break }
        }
        // Until the fault fires, drive every kind of file I/O: WAL writes and syncs, memtable
        // switches, table writes, manifest edits, table reads, and now and then an open (which
        // replays the WAL into a table and writes a new manifest and CURRENT).
        var drive = 0
        while db.fileSystem.injectedCount == 0 && drive < 400 && !openFailed {
            drive += 1
            if drive % 3 == 0 {
                reopenArmed()
                continue
            }
            for _ in 0..<20 { writeStep() }
            recordWrite(moraineError { try db.database.flush() }, "flush")
            if let error = moraineError({ try db.database.compactRange() }) { check(error, during: "compactRange") }
            readStep()
            if !failures.isEmpty { return failures }
        }
        if db.fileSystem.injectedCount == 0 { return ["\(context): the fault never fired"] }
        return failures + (try db.reopenAndVerify(context))
    }
}
