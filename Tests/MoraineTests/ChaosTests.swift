// The one-box cluster under fire: `moraine up` starts every role as a real process (compute,
// storage, memory, a flush and a compaction worker); a client connected to the compute node runs
// a mixed load — writes (a fifth of them synced), deletes, batches, gets and bounded scans —
// while a killer SIGKILLs a random live role every 1–3 seconds (counted from when every role
// answers again: one failure at a time) and the supervisor restarts it.
// Checked throughout: no read ever returns a value that was not written (a read must equal the
// last acknowledged value of its key, or one whose write failed since); every error the client
// sees is `unavailable` (or, for a scan the compute node's restart cut off, the lease's
// `notFound`). Checked after: every acknowledged write reads back; every role answers; after a
// clean stop, no table file on the storage node lies outside the live version. Prints the kills
// per role, writes checked, errors seen and the longest outage. MORAINE_SEED replays the choices;
// MORAINE_CHAOS_KILLS sets the number of kills (default 50; docs/TESTING.md has the long run);
// MORAINE_CHAOS_LOGS, a directory to keep the roles' logs in.
import Foundation
import Moraine
import MoraineCluster
import MoraineMessages
import MoraineSystem
import MoraineTestSupport
import Testing

@Suite("Cluster under fire")
struct ChaosTests {
    /// What the client knows of one key: its last acknowledged value (nil: absent) and the values
    /// of writes that failed since (they may or may not have landed; nil: a delete).
    struct KeyState {
        var acknowledged: [UInt8]? = nil
        var inDoubt: [[UInt8]?] = []
        /// The step whose write was acknowledged last (for the report of a loss).
        var step = 0

        func allows(_ value: [UInt8]?) -> Bool { value == acknowledged || inDoubt.contains { $0 == value } }
    }

    final class Figures: @unchecked Sendable {
        let lock = ConditionLock()
        var kills: [String: Int] = [:]
        var stop = false
        var killsDone = 0
        /// The client's step, and each kill with the step it came at.
        var step = 0
        var log: [String] = []
    }

    @Test("SIGKILL of a random role every 1–3 s under a mixed load: no acknowledged write lost, no phantom read, only clear errors")
    func chaos() throws {
        let killsWanted = SeededRandom.environmentInt("MORAINE_CHAOS_KILLS", default: 50)
        let seed = SeededRandom.testSeed("\(killsWanted) kills")
        var rng = SeededRandom(seed: seed)
        let run = TempDir("moraine-chaos")
        let region = Supervisor.defaultRegion(run: RunDirectory(run.path), index: 0)
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.path])
            try? PosixFileSystem.shared.remove(region)
            // MORAINE_CHAOS_LOGS keeps every role's log of the run (scripts/chaos-long.sh sets it).
            if let keep = ProcessInfo.processInfo.environment["MORAINE_CHAOS_LOGS"] {
                try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
                try? FileManager.default.copyItem(atPath: run.file("logs"), toPath: keep + "/logs-\(seed)")
            }
            run.remove()
        }
        // The default roles, with a smaller region and a compute node whose memtables switch often.
        let topology = """
            [[role]]
            kind = "storage"
            [[role]]
            kind = "memory"
            region_size = 268435456
            arena_size = 16777216
            cache_size = \(ProcessInfo.processInfo.environment["MORAINE_CHAOS_CACHE"] ?? "67108864")
            [[role]]
            kind = "flush"
            [[role]]
            kind = "compaction"
            [[role]]
            kind = "compute"
            """
        try topology.write(toFile: run.file("topology.toml"), atomically: true, encoding: .utf8)
        let up = try runMoraineCLI(["up", "--run-dir", run.path, "--topology", run.file("topology.toml"), "--detach"])
        try #require(up.status == 0, "up: \(up.err)")
        var settings = ComputeClient.Settings()
        settings.requestTimeoutNanos = 60_000_000_000
        var options = Options()
        options.createIfMissing = true
        let db = try Database(connect: run.path, database: "chaos", options: options, settings: settings)
        defer { try? db.close() }

        let figures = Figures()
        let killer = Thread {
            var killerRNG = SeededRandom(seed: seed ^ 0x9E37_79B9_7F4A_7C15)
            let kinds = ["compute", "storage", "memory", "flush", "compaction"]
            while figures.lock.withLock({ !figures.stop && figures.killsDone < killsWanted }) {
                // One failure at a time: the next kill comes 1–3 s after every role answers again.
                // (Two at once — the compute killed while the storage node it was writing to is
                // still restarting — is the durability table's "both processes" row: it may lose
                // unsynced writes, as a machine crash does.)
                let settled = monotonicNanos() + 60_000_000_000
                while monotonicNanos() < settled, (try? runMoraineCLI(["status", "--run-dir", run.path]).status) != 0 { usleep(50_000) }
                usleep(UInt32.random(in: 1_000_000...3_000_000, using: &killerRNG))
                let kind = kinds[Int.random(in: 0..<kinds.count, using: &killerRNG)]
                // The role as the supervisor last wrote it; if it is still restarting, the next pick.
                guard let role = (try? RunDirectory(run.path).roles())?.first(where: { $0.role == kind }), role.pid > 0,
                    kill(role.pid, 0) == 0
                else { continue }
                kill(role.pid, SIGKILL)
                figures.lock.withLock {
                    figures.kills[kind, default: 0] += 1
                    figures.killsDone += 1
                    figures.log.append("\(kind) at step \(figures.step)")
                }
            }
            figures.lock.withLock { figures.stop = true }
        }
        killer.start()

        var keys: [String: KeyState] = [:]
        let keySpace = 2000
        func name(_ index: Int) -> String { String(format: "key%05d", index) }
        var writesAcknowledged = 0
        var syncedAcknowledged = 0
        var readsChecked = 0
        var scans = 0
        var errors: [String: Int] = [:]
        var outageStart: Int64? = nil
        var longestOutage: Int64 = 0
        var step = 0
        // A bound, not a target: a kill comes every 4–5 s alone, slower when several clusters share
        // the cores (scripts/chaos-long.sh).
        let deadline = monotonicNanos() + Int64(killsWanted) * 10_000_000_000 + 60_000_000_000

        func failed(_ error: any Error, _ what: String) {
            let moraine = error as? MoraineError
            let leaseLost = moraine?.kind == .notFound && moraine?.message.contains("is not held") == true
            #expect(moraine?.kind == .unavailable || leaseLost, "step \(step) \(what): \(error) (MORAINE_SEED=\(seed))")
            errors[leaseLost ? "lease lost" : "\(moraine?.kind ?? .internalError)", default: 0] += 1
            recentErrors.append("step \(step) \(what): \(String("\(error)".prefix(160)))")
            if recentErrors.count > 50 { recentErrors.removeFirst(25) }
            if outageStart == nil { outageStart = monotonicNanos() }
            usleep(20_000)  // as a client would back off, rather than spin while a role restarts
        }
        var recentErrors: [String] = []
        func lastKills() -> String {
            "last kills: " + figures.lock.withLock { figures.log.suffix(5).joined(separator: ", ") }
                + "; last errors: " + recentErrors.suffix(3).joined(separator: " | ")
        }
        func succeeded() {
            if let start = outageStart {
                longestOutage = max(longestOutage, monotonicNanos() - start)
                outageStart = nil
            }
        }

        while figures.lock.withLock({ !figures.stop }) && monotonicNanos() < deadline {
            step += 1
            figures.lock.withLock { figures.step = step }
            let key = name(Int.random(in: 0..<keySpace, using: &rng))
            let choice = Int.random(in: 0..<20, using: &rng)
            switch choice {
            case 0..<8:
                let value = Array("v\(step)".utf8)
                let sync = choice < 2
                do {
                    try db.put(Array(key.utf8), value, options: WriteOptions(sync: sync))
                    keys[key] = KeyState(acknowledged: value, step: step)
                    writesAcknowledged += 1
                    if sync { syncedAcknowledged += 1 }
                    succeeded()
                } catch {
                    keys[key, default: KeyState()].inDoubt.append(value)
                    failed(error, "put \(key)")
                }
            case 8..<10:
                do {
                    try db.delete(Array(key.utf8))
                    keys[key] = KeyState(acknowledged: nil, step: step)
                    writesAcknowledged += 1
                    succeeded()
                } catch {
                    keys[key, default: KeyState()].inDoubt.append(nil)
                    failed(error, "delete \(key)")
                }
            case 10..<12:
                var batch = WriteBatch()
                let members = (0..<Int.random(in: 2...8, using: &rng)).map { _ in name(Int.random(in: 0..<keySpace, using: &rng)) }
                var final: [String: [UInt8]] = [:]
                for member in members {
                    let value = Array("b\(step)-\(member)".utf8)
                    batch.put(Array(member.utf8), value)
                    final[member] = value
                }
                do {
                    try db.write(batch, options: WriteOptions(sync: choice == 10))
                    for (member, value) in final { keys[member] = KeyState(acknowledged: value, step: step) }
                    writesAcknowledged += 1
                    succeeded()
                } catch {
                    for (member, value) in final { keys[member, default: KeyState()].inDoubt.append(value) }
                    failed(error, "batch")
                }
            case 12..<18:
                do {
                    let value = try db.get(Array(key.utf8))
                    let state = keys[key] ?? KeyState()
                    let shown = value.map { String(decoding: $0, as: UTF8.self) } ?? "nil"
                    #expect(
                        state.allows(value),
                        "step \(step): get \(key) = \(shown), not its value acknowledged at step \(state.step); \(lastKills()) (MORAINE_SEED=\(seed))")
                    readsChecked += 1
                    succeeded()
                } catch {
                    failed(error, "get \(key)")
                }
            default:
                let low = Int.random(in: 0..<keySpace, using: &rng)
                let high = min(keySpace, low + Int.random(in: 1...60, using: &rng))
                do {
                    let bounds = ReadOptions(lowerBound: Array(name(low).utf8), upperBound: Array(name(high).utf8))
                    let iterator = try db.makeIterator(options: bounds)
                    var seen: [String: [UInt8]] = [:]
                    try iterator.seekToFirst()
                    while iterator.isValid {
                        seen[String(decoding: iterator.key, as: UTF8.self)] = iterator.value
                        try iterator.next()
                    }
                    for index in low..<high {
                        let state = keys[name(index)] ?? KeyState()
                        let shown = seen[name(index)].map { String(decoding: $0, as: UTF8.self) } ?? "nil"
                        let context = "acknowledged at step \(state.step); \(lastKills()) (MORAINE_SEED=\(seed))"
                        #expect(state.allows(seen[name(index)]), "step \(step): scan saw \(name(index)) = \(shown), not its value \(context)")
                    }
                    readsChecked += high - low
                    scans += 1
                    succeeded()
                } catch {
                    failed(error, "scan")
                }
            }
        }
        figures.lock.withLock { figures.stop = true }
        while !killer.isFinished { usleep(10_000) }
        // Every role comes back, and every acknowledged write reads back.
        #expect(
            eventuallyAnswering(run, seconds: 60),
            "the cluster did not converge: \((try? runMoraineCLI(["status", "--run-dir", run.path]))?.out ?? [])")
        var checked = 0
        var lastError: (any Error)? = nil
        let verifyDeadline = monotonicNanos() + 60_000_000_000
        for (key, state) in keys.sorted(by: { $0.key < $1.key }) {
            while monotonicNanos() < verifyDeadline {
                do {
                    let value = try db.get(Array(key.utf8))
                    let kills = figures.lock.withLock { figures.log.suffix(4).joined(separator: ", ") }
                    #expect(
                        state.allows(value),
                        "after the run (step \(step)): \(key) lost its value acknowledged at step \(state.step); last kills: \(kills) (MORAINE_SEED=\(seed))")
                    checked += 1
                    break
                } catch {
                    lastError = error
                    usleep(100_000)
                }
            }
        }
        #expect(checked == keys.count, "\(keys.count - checked) keys unreadable after the run: \(lastError.map { "\($0)" } ?? "")")
        try db.close()
        let status = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(status.status == 0, "\(status.out)")
        #expect(status.out.contains { $0.hasPrefix("memory-0") && $0.contains(" 0/") }, "an arena leaked: \(status.out)")
        // A clean stop, then the storage node's files against the live version.
        let down = try runMoraineCLI(["down", "--run-dir", run.path])
        #expect(down.status == 0 && !down.out.joined().contains("SIGKILLed"), "\(down.out)")
        let directory = run.file("data/chaos")
        let tables = Set(try PosixFileSystem.shared.children(of: directory).filter { $0.hasSuffix(".sst") })
        var readOnly = Options()
        readOnly.readOnly = true
        let reopened = try Database(path: directory, options: readOnly)
        let live = Set(reopened.engine!.liveFiles().map { DatabaseFile.table($0.file.number).name })
        try reopened.close()
        #expect(tables.subtracting(live).isEmpty, "orphan tables on the storage node: \(tables.subtracting(live).sorted())")
        #expect(live.isSubset(of: tables), "live tables missing: \(live.subtracting(tables).sorted())")

        let kills = figures.lock.withLock { figures.kills }
        let perRole = kills.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        let errorCounts = errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print(
            "chaos (MORAINE_SEED=\(seed)): \(kills.values.reduce(0, +)) kills (\(perRole)); \(step) operations, "
                + "\(writesAcknowledged) writes acknowledged (\(syncedAcknowledged) synced), \(checked) keys checked after, "
                + "\(readsChecked) reads checked, \(scans) scans; errors: \(errorCounts.isEmpty ? "none" : errorCounts); "
                + "longest outage \(longestOutage / 1_000_000) ms")
        #expect(kills.values.reduce(0, +) >= killsWanted, "only \(kills.values.reduce(0, +)) kills before the deadline")
        #expect(writesAcknowledged > killsWanted * 10, "too few writes went through to test anything")
    }

    /// Waits until `moraine status` says every role answers.
    func eventuallyAnswering(_ run: TempDir, seconds: Double) -> Bool {
        let deadline = monotonicNanos() + Int64(seconds * 1e9)
        while monotonicNanos() < deadline {
            if (try? runMoraineCLI(["status", "--run-dir", run.path]).status) == 0 { return true }
            usleep(200_000)
        }
        return false
    }
}
