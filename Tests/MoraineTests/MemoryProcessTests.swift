// The memory node and the compute node as real processes, killed for real: `moraine shell
// --cluster RUN --durability pmem` writes its memtables into the region of a `moraine node --role
// memory` child and is SIGKILLed with full and partly full memtables there (the next open
// re-attaches them, replaying nothing, and has every acknowledged write), on both persistence
// paths (msync, and cache-line flushes forced with PMEM_IS_PMEM_FORCE=1); and the memory node is
// SIGKILLed under a write load (writes into granted arenas go on, a write that needs a new arena
// fails with `unavailable` until the node is back, nothing acknowledged is lost); and two compute
// processes with two databases share one region and one shared cache, both killed, each reopening
// with exactly its own writes; and the memory node is SIGSTOPped and SIGKILLed under a read load
// through its shared cache, mapped in place and reached by request over TCP as across boxes
// (every read still answers right). Values come from a printed seed (MORAINE_SEED replays it).
import Foundation
import Moraine
@testable import MoraineEngine
import MoraineCompute
import MoraineMemory
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import Testing

/// A `moraine node --role memory` child of a storage node's run directory, which it adds itself
/// to; restarted on the same socket and region.
final class MemoryNodeProcess: @unchecked Sendable {
    let node: StorageNodeProcess
    let regionBytes: Int
    let arenaBytes: Int
    private(set) var process: Process?
    private(set) var endpoint: Endpoint?
    var regionPath: String { node.run.file("region") }

    let cacheBytes: Int
    /// Served over TCP by request only (`--region-access request`), as across boxes.
    let byRequest: Bool

    init(for node: StorageNodeProcess, regionBytes: Int = 16 << 20, arenaBytes: Int = 1 << 20, cacheBytes: Int = 0, byRequest: Bool = false) throws {
        self.node = node
        self.regionBytes = regionBytes
        self.arenaBytes = arenaBytes
        self.cacheBytes = cacheBytes
        self.byRequest = byRequest
        try start()
    }

    func start() throws {
        let listen = byRequest ? ["--listen", "tcp:127.0.0.1:0", "--region-access", "request"] : ["--listen", "shm:" + node.run.file("memory.sock")]
        (process, endpoint) = try launchRole(
            "memory", run: node.run.path,
            ["--cluster", node.run.path] + listen + [
                "--region", regionPath, "--region-size", "\(regionBytes)", "--arena-size", "\(arenaBytes)", "--cache-size", "\(cacheBytes)",
            ])
    }

    /// SIGSTOP (true) or SIGCONT (false).
    func pause(_ stopped: Bool) {
        guard let process else { return }
        Foundation.kill(process.processIdentifier, stopped ? SIGSTOP : SIGCONT)
    }

    func kill() {
        guard let process else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// The node's status, or nil when it does not answer within a second.
    func status() -> MemoryStatusReply? {
        guard let endpoint, let key = try? ClusterKey.load(path: RunDirectory(node.run.path).keyPath),
            let client = try? endpoint.connect(key: key)
        else { return nil }
        defer { client.close() }
        guard case .bytes(let bytes)? = try? client.call(MemoryOpcode.status, [], timeoutNanos: 1_000_000_000) else { return nil }
        return try? MemoryStatusReply.decode(bytes)
    }

    deinit {
        pause(false)
        kill()
    }
}

@Suite("Memory node processes", .serialized)
struct MemoryProcessTests {
    /// Options of the next owner: the storage node's files, the memory node's arenas, `pmem`.
    static func reopenOptions(_ node: StorageNodeProcess) throws -> Options {
        var options = Options()
        options.createIfMissing = false
        let fileSystem = try node.fileSystem()
        options.fileSystem = fileSystem
        options.durability = .pmem
        options.writeBufferSize = 256 << 10
        let run = RunDirectory(node.run.path)
        options.memtableRegion = MemoryNodeArenas(key: try ClusterKey.load(path: run.keyPath), epoch: { fileSystem.leaseEpoch(of: $0) }) {
            () throws(TransportError) -> Endpoint in try run.endpoint(of: "memory")
        }
        return options
    }

    /// Opens as the next owner, waiting (up to 20 s) for the killed one's lease to lapse.
    static func reopen(_ node: StorageNodeProcess, _ name: String) throws -> Database? {
        let options = try reopenOptions(node)
        let deadline = monotonicNanos() + 20_000_000_000
        while monotonicNanos() < deadline {
            do {
                return try Database(path: name, options: options)
            } catch let error as MoraineError where error.kind == .busy {
                sleepNanos(200_000_000)
            }
        }
        return nil
    }

    /// Sends batches of `perBatch` puts until `batches` are acknowledged; records what each
    /// acknowledged key must read. False when the shell stopped answering OK.
    static func write(
        _ shell: ShellProcess, batches: Int, perBatch: Int, from first: Int, random: inout SplitMix64,
        into acknowledged: inout [String: String]
    ) -> Bool {
        for b in 0..<batches {
            guard shell.send("batch \(perBatch)") else { return false }
            var pending: [String: String] = [:]
            for i in 0..<perBatch {
                let key = "k\(first + b * perBatch + i)"
                let value = String(format: "%016llx", random.next()) + String(repeating: "m", count: 80)
                guard shell.send("put \(key) \(value)") else { return false }
                pending[key] = value
            }
            guard shell.readLine() == "OK" else { return false }
            acknowledged.merge(pending) { $1 }
        }
        return true
    }

    /// Restarts the killed memory node, waits (up to 20 s) for the shell's writes to resume,
    /// writes `batches` more, then SIGKILLs the shell. False (an issue recorded) when writes did
    /// not come back.
    static func restartAndWrite(
        _ memory: MemoryNodeProcess, _ shell: ShellProcess, batches: Int, random: inout SplitMix64, into acknowledged: inout [String: String]
    ) throws -> Bool {
        try memory.start()
        guard eventually(seconds: 20, {
            guard shell.send("put back 1") else { return false }
            return shell.readLine() == "OK"
        }) else {
            Issue.record("writes did not resume after the memory node restarted")
            return false
        }
        acknowledged["back"] = "1"
        guard write(shell, batches: batches, perBatch: 100, from: 100_000, random: &random, into: &acknowledged) else {
            Issue.record("the shell stopped acknowledging writes after the restart")
            return false
        }
        shell.kill()
        shell.wait()
        return true
    }

    @Test("SIGKILL of the compute node with its memtables in the region: the next open re-attaches them and has every acknowledged write",
          arguments: ["msync", "forced-flush"])
    func killCompute(persistence: String) throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let memory = try MemoryNodeProcess(for: node)
        let environment = persistence == "forced-flush" ? ["PMEM_IS_PMEM_FORCE": "1"] : [:]
        let shell = try ShellProcess(
            arguments: ["shell", "--cluster", node.run.path, "--db", "inregion", "--durability", "pmem", "--write_buffer_size", "262144"],
            environment: environment)
        defer { shell.kill() }
        var random = SplitMix64(seed: SeededRandom.testSeed(persistence))
        var acknowledged: [String: String] = [:]
        // About 1.5 MiB of writes: several full memtables and a partly full one, in the region
        // (the flushes that got through meanwhile gave some arenas back).
        guard Self.write(shell, batches: 120, perBatch: 100, from: 0, random: &random, into: &acknowledged) else {
            Issue.record("the shell stopped acknowledging writes")
            return
        }
        let held = memory.status()?.holders.first?.arenas ?? 0
        #expect(held >= 1, "no arena held in the region: the memtables are not there")
        shell.kill()
        shell.wait()
        guard let db = try Self.reopen(node, "inregion") else {
            Issue.record("the killed compute node's lease never lapsed")
            return
        }
        defer { try? db.close() }
        #expect(db.engine!.stats().reattachedMemtables >= 1, "the open re-attached no memtable")
        #expect((try node.fileSystem().children(of: "inregion")).allSatisfy { !$0.hasSuffix(".log") }, "a WAL was written")
        var wrong = 0
        for (key, value) in acknowledged where try db.get(Array(key.utf8)) != Array(value.utf8) { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(acknowledged.count) acknowledged writes read back wrong")
        // The re-attached memtables flush in the background, and their arenas go back.
        try db.flush()
        #expect(eventually(seconds: 20) { memory.status()?.holders.first?.arenas == 1 }, "flushed arenas were not given back")
    }

    @Test("across boxes: write logs in the memory node's arenas; its SIGKILL stops writes until it is back; the successor replays them")
    func killAcrossBoxes() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let memory = try MemoryNodeProcess(for: node, byRequest: true)
        let shell = try ShellProcess(
            arguments: ["shell", "--cluster", node.run.path, "--db", "acrossboxes", "--durability", "pmem", "--write_buffer_size", "262144"])
        defer { shell.kill() }
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var acknowledged: [String: String] = [:]
        guard Self.write(shell, batches: 60, perBatch: 100, from: 0, random: &random, into: &acknowledged) else {
            Issue.record("the shell stopped acknowledging writes")
            return
        }
        #expect(memory.status()?.holders.first?.arenas ?? 0 >= 1, "no arena held: the logs are not at the memory node")
        #expect(try node.fileSystem().children(of: "acrossboxes").allSatisfy { !$0.hasSuffix(".log") }, "a WAL went to the storage node")
        // Every write group is a request to the node: none is acknowledged while it is down.
        memory.kill()
        #expect(shell.send("put whiledown 1"))
        let answer = shell.readLine() ?? ""
        #expect(answer.contains("unavailable"), "a write with the memory node down answered \(answer)")
        guard try Self.restartAndWrite(memory, shell, batches: 60, random: &random, into: &acknowledged) else { return }
        // The successor, as `--cluster` opens it: the region does not map here either.
        var base = Options()
        base.createIfMissing = false
        base.durability = .pmem
        base.writeBufferSize = 256 << 10
        let options = try ClusterAttachment.options(base, database: "acrossboxes", runDirectory: node.run.path, owner: "successor")
        #expect(options.fileSystem is MemoryLogFileSystem && options.durability == .wal)
        var reopened: Database? = nil
        let deadline = monotonicNanos() + 30_000_000_000
        while reopened == nil && monotonicNanos() < deadline {
            do {
                reopened = try Database(path: "acrossboxes", options: options)
            } catch let error as MoraineError where error.kind == .busy {
                sleepNanos(200_000_000)
            }
        }
        guard let db = reopened else {
            Issue.record("the killed compute node's lease never lapsed")
            return
        }
        defer { try? db.close() }
        #expect(db.engine!.stats().reattachedMemtables == 0)
        var wrong = 0
        for (key, value) in acknowledged where try db.get(Array(key.utf8)) != Array(value.utf8) { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(acknowledged.count) acknowledged writes read back wrong")
        try db.flush()
        #expect(eventually(seconds: 20) { memory.status()?.holders.first?.arenas == 1 }, "the replayed logs' arenas were not given back")
    }

    @Test("two compute processes, two databases, one region and one shared cache: both SIGKILLed, each reopens with its own writes only")
    func twoComputeNodes() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let memory = try MemoryNodeProcess(for: node, regionBytes: 24 << 20, cacheBytes: 4 << 20)
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var acknowledged: [String: [String: String]] = [:]
        var shells: [String: ShellProcess] = [:]
        defer { for shell in shells.values { shell.kill() } }
        for name in ["left", "right"] {
            shells[name] = try ShellProcess(
                arguments: ["shell", "--cluster", node.run.path, "--db", name, "--durability", "pmem", "--write_buffer_size", "262144",
                            "--cache_size", "65536"])
        }
        // Interleaved writes, each database its own keys and values; then reads, which go through
        // both processes' small caches to the shared one.
        for round in 0..<6 {
            for name in ["left", "right"] {
                var written: [String: String] = acknowledged[name] ?? [:]
                guard Self.write(shells[name]!, batches: 10, perBatch: 100, from: round * 1000, random: &random, into: &written) else {
                    Issue.record("\(name) stopped acknowledging writes")
                    return
                }
                acknowledged[name] = written
            }
        }
        for name in ["left", "right"] {
            #expect(shells[name]!.send("flush"))
            #expect(shells[name]!.readLine() == "OK")
            for (key, value) in acknowledged[name]!.prefix(300) {
                #expect(shells[name]!.send("get \(key)"))
                #expect(shells[name]!.readLine() == value)
            }
        }
        #expect(memory.status()?.holders.count == 2, "the two databases do not both hold arenas in the one region")
        for name in ["left", "right"] {
            shells[name]!.kill()
            shells[name]!.wait()
        }
        for name in ["left", "right"] {
            guard let db = try Self.reopen(node, name) else {
                Issue.record("the killed compute node's lease never lapsed")
                return
            }
            defer { try? db.close() }
            var wrong = 0
            for (key, value) in acknowledged[name]! where try db.get(Array(key.utf8)) != Array(value.utf8) { wrong += 1 }
            #expect(wrong == 0, "\(name): \(wrong) of \(acknowledged[name]!.count) acknowledged writes read back wrong")
            // The other database's keys are its own: "left" and "right" wrote the same key names.
            #expect(try db.get(Array("k0".utf8)) == Array(acknowledged[name]!["k0"]!.utf8))
        }
    }

    @Test(
        "SIGSTOP and SIGKILL of the memory node under a read load, its region mapped or reached by request: every read answers right",
        arguments: ["map", "request"])
    func killMemoryNodeUnderReads(access: String) throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let memory = try MemoryNodeProcess(for: node, regionBytes: 24 << 20, cacheBytes: 8 << 20, byRequest: access == "request")
        let shell = try ShellProcess(arguments: ["shell", "--cluster", node.run.path, "--db", "reads", "--cache_size", "65536"])
        defer { shell.kill() }
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var written: [String: String] = [:]
        guard Self.write(shell, batches: 30, perBatch: 100, from: 0, random: &random, into: &written) else {
            Issue.record("the shell stopped acknowledging writes")
            return
        }
        #expect(shell.send("flush"))
        #expect(shell.readLine() == "OK")
        let keys = written.keys.sorted()
        /// Reads every key (each must answer right); returns the slowest read in seconds.
        func readAll(_ pass: String) -> Double {
            var wrong = 0
            var slowest: Int64 = 0
            for key in keys {
                let started = monotonicNanos()
                guard shell.send("get \(key)"), shell.readLine() == written[key] else {
                    wrong += 1
                    continue
                }
                slowest = max(slowest, monotonicNanos() - started)
            }
            #expect(wrong == 0, "\(pass): \(wrong) of \(keys.count) reads answered wrong")
            return Double(slowest) / 1e9
        }
        func stat(_ name: String) -> Int? {
            guard shell.send("stats"), let line = shell.readLine() else { return nil }
            return line.split(separator: ",").first { $0.hasPrefix("\"\(name)\":") }.flatMap { Int($0.split(separator: ":")[1]) }
        }
        _ = readAll("cold")
        let coldRequests = try #require(stat("secondary_cache_requests"))
        let coldHits = try #require(stat("secondary_cache_hits"))
        _ = readAll("warm")
        let hits = try #require(stat("secondary_cache_hits")) - coldHits
        #expect(hits > 100, "the warm pass did not read from the shared cache: \(hits) hits")
        let requests = try #require(stat("secondary_cache_requests")) - coldRequests
        if access == "request" {
            #expect(requests >= hits, "\(hits) hits in \(requests) lookup requests")
        } else {
            #expect(requests == 0, "a peer on the box looked blocks up by request")
        }
        // Stopped, not dead: a lookup in place needs no answer; one by request (its connect
        // too) gives up after 20 ms and lookups pause, so no read waits long. Passes for at
        // least 3 s, so several pauses end while the node is still stopped.
        memory.pause(true)
        let started = monotonicNanos()
        var slowest = 0.0
        for pass in 0..<20 where pass < 2 || monotonicNanos() - started < 3_000_000_000 {
            slowest = max(slowest, readAll("memory node stopped"))
        }
        #expect(slowest < 0.5, "a read with the memory node stopped took \(slowest) s")
        memory.pause(false)
        memory.kill()
        _ = readAll("memory node killed")
        try memory.start()
        // The restarted node's slots (the region outlived it) serve again; by request, through
        // the restarted node (in place they never needed it).
        let beforeRestart = try #require(stat("secondary_cache_hits"))
        let requestsBeforeRestart = try #require(stat("secondary_cache_requests"))
        var passes = 0
        while passes < 5 {
            passes += 1
            _ = readAll("memory node restarted")
            if try #require(stat("secondary_cache_hits")) > beforeRestart + 100 { break }
            sleepNanos(1_100_000_000)  // past a pause that began at the kill
        }
        #expect(try #require(stat("secondary_cache_hits")) > beforeRestart + 100, "no shared-cache hit after the node's restart")
        if access == "request" { #expect(try #require(stat("secondary_cache_requests")) > requestsBeforeRestart + 100) }
    }

    @Test("SIGKILL of the memory node under writes: granted arenas take writes, a new arena waits for the restarted node, nothing is lost")
    func killMemoryNode() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let memory = try MemoryNodeProcess(for: node)
        let shell = try ShellProcess(
            arguments: ["shell", "--cluster", node.run.path, "--db", "survives", "--durability", "pmem", "--write_buffer_size", "262144"])
        defer { shell.kill() }
        var random = SplitMix64(seed: SeededRandom.testSeed())
        var acknowledged: [String: String] = [:]
        guard Self.write(shell, batches: 20, perBatch: 100, from: 0, random: &random, into: &acknowledged) else {
            Issue.record("the shell stopped acknowledging writes")
            return
        }
        memory.kill()
        // Small writes fit the arena the compute node holds: no request to the dead node.
        var afterKill = 0
        for i in 0..<50 {
            guard shell.send("put after\(i) x\(i)") else { break }
            guard shell.readLine() == "OK" else { break }
            acknowledged["after\(i)"] = "x\(i)"
            afterKill += 1
        }
        #expect(afterKill == 50, "writes into the granted arena stopped with the memory node")
        // Filling the arena needs a new one: refused while the node is gone, never acknowledged.
        var refused = false
        for b in 0..<60 where !refused {
            guard shell.send("batch 100") else { break }
            var pending: [String: String] = [:]
            for i in 0..<100 {
                let key = "fill\(b * 100 + i)"
                pending[key] = String(repeating: "f", count: 80)
                _ = shell.send("put \(key) \(pending[key]!)")
            }
            let answer = shell.readLine() ?? ""
            if answer == "OK" {
                acknowledged.merge(pending) { $1 }
            } else {
                #expect(answer.contains("unavailable"), "a write that needed an arena answered \(answer)")
                refused = true
            }
        }
        #expect(refused, "no write needed a new arena while the memory node was down: the test proves nothing")
        guard try Self.restartAndWrite(memory, shell, batches: 20, random: &random, into: &acknowledged) else { return }
        guard let db = try Self.reopen(node, "survives") else {
            Issue.record("the killed compute node's lease never lapsed")
            return
        }
        defer { try? db.close() }
        var wrong = 0
        for (key, value) in acknowledged where try db.get(Array(key.utf8)) != Array(value.utf8) { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(acknowledged.count) acknowledged writes read back wrong")
    }
}
