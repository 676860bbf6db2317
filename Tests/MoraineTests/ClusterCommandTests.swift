// `moraine up`, `status` and `down` as a user runs them: the real binary, a real supervisor and
// real role processes. A detached cluster answers `--cluster` commands, restarts a role killed
// with SIGKILL, and leaves no process behind after `down`; a foreground `up` stops cleanly on
// SIGTERM; topologies the machine cannot run are refused at start with the problem named.
import Foundation
@testable import MoraineCluster
import MoraineMessages
import MoraineSystem
import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Cluster commands")
struct ClusterCommandTests {
    static func pids(_ run: TempDir) -> [Int32] {
        ((try? RunDirectory(run.path).roles()) ?? []).map(\.pid)
    }

    static func alive(_ pid: Int32) -> Bool { pid > 0 && kill(pid, 0) == 0 }

    @Test("up --detach, then --cluster commands, a SIGKILLed role restarted, then down leaves nothing running")
    func detachedCluster() throws {
        let run = TempDir("moraine-up")
        let region = Supervisor.defaultRegion(run: RunDirectory(run.path), index: 0)
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.path])
            run.remove()
            try? PosixFileSystem.shared.remove(region)
        }
        let up = try runMoraineCLI(["up", "--run-dir", run.path, "--detach"])
        #expect(up.status == 0, "up: \(up.err)")
        #expect(up.out.contains { $0.contains("storage-0") })
        let status = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(status.status == 0, "status: \(status.out) \(status.err)")
        #expect(status.out.contains { $0.hasPrefix("storage-0") && $0.contains(" up ") && $0.contains("shm") })
        #expect(status.out.contains { $0.hasPrefix("compaction-0") && $0.contains(" up ") && $0.contains("0/1 0") }, "\(status.out)")
        #expect(status.out.contains { $0.hasPrefix("flush-0") && $0.contains(" up ") && $0.contains("0/1 0") }, "\(status.out)")
        // Every role runs where Placement put it, as the kernel reports it (one line per role;
        // the node is this machine's plan, node 0 on a one-node machine).
        let placements = status.out.filter { $0.hasPrefix("  placement: cpus ") }
        #expect(placements.count == 5 && placements.allSatisfy { $0.contains("(as placed on node ") && !$0.contains("MISPLACED") }, "\(status.out)")
        // The supervisor's log says where it placed each role.
        let supervisorLog = (try? String(contentsOfFile: run.file("logs/supervisor.log"), encoding: .utf8)) ?? ""
        #expect(supervisorLog.contains("placement: compute-0: node ") || supervisorLog.contains("placement: compute-0: not pinned"), "\(supervisorLog)")
        #expect(try runMoraineCLI(["put", "--cluster", run.path, "--db", "demo", "hello", "world"]).status == 0)
        #expect(try runMoraineCLI(["get", "--cluster", run.path, "--db", "demo", "hello"]).out == ["world"])
        #expect(FileManager.default.fileExists(atPath: run.file("data/demo/CURRENT")))
        // With --durability pmem the memtable lives in the memory node's region (no WAL): it is
        // still there after the shell exits, and an open in the default mode re-attaches it.
        let pmem = try runMoraineCLI(
            ["shell", "--cluster", run.path, "--db", "inregion", "--durability", "pmem"], input: "put k1 in-region\nput k2 also\n")
        #expect(pmem.status == 0 && pmem.out == ["OK", "OK"], "\(pmem.out) \(pmem.err)")
        #expect(FileManager.default.fileExists(atPath: region))
        #expect(try PosixFileSystem.shared.children(of: run.file("data/inregion")).allSatisfy { !$0.hasSuffix(".log") })
        let held = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(held.out.contains { $0.hasPrefix("memory-0") && $0.contains(" up ") && $0.contains("1/11 arenas") }, "\(held.out)")
        #expect(held.out.contains { $0.hasPrefix("  region: \(region), 11 arenas of ") && $0.contains("peers on this box map it") }, "\(held.out)")
        #expect(try runMoraineCLI(["get", "--cluster", run.path, "--db", "inregion", "k1"]).out == ["in-region"])
        // bench --cluster and --connect run beside embedded Moraine in one run; all find the same
        // keys, and the cluster's rows count storage requests. A second run starts from destroyed
        // databases (on the storage node, and on the compute node through its destroy request).
        let benchDirectory = TempDir("moraine-up-bench")
        defer { benchDirectory.remove() }
        for _ in 0..<2 {
            let bench = try runMoraineCLI([
                "bench", "--cluster", run.path, "--connect", run.path, "--engine", "cluster,moraine,application,connect", "--num", "3000",
                "--db", benchDirectory.path, "--benchmarks", "fillrandom,readrandom,multireadrandom,seekrandom",
            ])
            #expect(bench.status == 0, "bench: \(bench.err)")
            // "(2590 of 3000 found)" of an engine's line for a workload.
            let found = { (engine: String, workload: String) -> String? in
                guard let line = bench.out.first(where: { $0.hasPrefix(engine + " ") && $0.contains(" \(workload) ") }),
                    let open = line.firstIndex(of: "(")
                else { return nil }
                return String(line[open...].prefix { $0 != ")" })
            }
            #expect(found("cluster", "readrandom") != nil && found("cluster", "readrandom") == found("moraine", "readrandom"))
            #expect(found("cluster", "multireadrandom") == found("moraine", "multireadrandom"))
            // Compute in the application and through the compute node find what embedded finds.
            for engine in ["application", "connect"] {
                for workload in ["readrandom", "multireadrandom", "seekrandom"] {
                    #expect(found(engine, workload) != nil && found(engine, workload) == found("moraine", workload), "\(engine) \(workload)")
                }
            }
            #expect(bench.out.filter { $0.hasPrefix("cluster ") && $0.contains("storage requests/op") }.count == 4, "\(bench.out)")
        }
        let benchName = benchDirectory.path.split(separator: "/").last!
        for engine in ["cluster", "application", "connect"] {
            #expect(FileManager.default.fileExists(atPath: run.file("data/\(benchName)-\(engine)/CURRENT")), "\(engine)'s database is not on the storage node")
        }
        // The dump commands read a database's files on the node, named DATABASE/NAME.
        #expect(try runMoraineCLI(["demo", "--cluster", run.path, "--db", "dumped", "--keys", "2000"]).status == 0)
        let names = try PosixFileSystem.shared.children(of: run.file("data/dumped"))
        let table = try #require(names.first { $0.hasSuffix(".sst") })
        let log = try #require(names.first { $0.hasSuffix(".log") })
        let sst = try runMoraineCLI(["sst", "dump", "--cluster", run.path, "dumped/\(table)", "--limit", "2"])
        #expect(sst.status == 0 && sst.out.contains { $0.hasPrefix("size: ") && $0.contains("entries: ") }, "\(sst.out) \(sst.err)")
        let manifest = try runMoraineCLI(["manifest", "dump", "--cluster", run.path, "dumped"])
        #expect(manifest.status == 0 && manifest.out.contains { $0.contains("+L") && $0.contains("#") }, "\(manifest.out) \(manifest.err)")
        let wal = try runMoraineCLI(["wal", "dump", "--cluster", run.path, "dumped/\(log)"])
        #expect(wal.status == 0 && wal.out.last?.hasSuffix("damaged stretch(es) skipped") == true, "\(wal.out) \(wal.err)")
        let missing = try runMoraineCLI(["sst", "dump", "--cluster", run.path, "dumped/999999.sst"])
        #expect(missing.status == 1 && missing.err.contains("no such file"), "\(missing.err)")
        let supervisor = ClusterControl.supervisor(RunDirectory(run.path))
        #expect(supervisor != nil)
        // Flushes and compactions of a --cluster command run on the workers.
        let script = (0..<3).map { pass in (0..<400).map { "put k\($0) pass\(pass)\n" }.joined() + "flush\n" }.joined() + "compact\nstats\n"
        let shell = try runMoraineCLI(["shell", "--cluster", run.path, "--db", "compacted"], input: script)
        let stats = shell.out.last ?? ""
        #expect(shell.status == 0 && stats.contains("\"compaction_fallbacks\":0"), "\(stats) \(shell.err)")
        #expect(!stats.contains("\"remote_compactions\":0"), "no compaction ran on the worker: \(stats)")
        #expect(stats.contains("\"flush_fallbacks\":0") && !stats.contains("\"remote_flushes\":0"), "no flush ran on the worker: \(stats)")
        let worked = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(worked.out.contains { $0.hasPrefix("compaction-0") && $0.contains("0/1 ") && !$0.contains("0/1 0 ") }, "\(worked.out)")
        #expect(try runMoraineCLI(["get", "--cluster", run.path, "--db", "compacted", "k7"]).out == ["pass2"])
        // Through the compute node: a thin client per command, the database on the storage node.
        #expect(try runMoraineCLI(["put", "--connect", run.path, "--db", "served", "city", "lyon"]).status == 0)
        #expect(try runMoraineCLI(["get", "--connect", run.path, "--db", "served", "city"]).out == ["lyon"])
        let served = try runMoraineCLI(["shell", "--connect", run.path, "--db", "served"], input: "put a 1\nput b 2\nscan - - 10\nflush\nget b\nstats\n")
        #expect(served.status == 0 && served.out.contains("a 1") && served.out.contains("city lyon"), "\(served.out) \(served.err)")
        #expect(FileManager.default.fileExists(atPath: run.file("data/served/CURRENT")), "the compute node's database is not on the storage node")
        let computeStatus = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(computeStatus.out.contains { $0.hasPrefix("compute-0") && $0.contains(" up ") }, "\(computeStatus.out)")
        #expect(computeStatus.out.contains { $0.contains("database served: sequence 3") }, "\(computeStatus.out)")
        // The get after the flush looked the table's blocks up in the caches, and status counts it per tier.
        #expect(
            computeStatus.out.contains { $0.hasPrefix("    cache hits: block ") && !$0.hasPrefix("    cache hits: block no lookups") },
            "\(computeStatus.out)")
        #expect(computeStatus.out.contains { $0.contains(", shared (memory node) ") }, "\(computeStatus.out)")
        // A role killed with SIGKILL comes back on the same endpoint; the data is still there.
        let first = try RunDirectory(run.path).roles()
        #expect(first.map(\.role).sorted() == ["compaction", "compute", "flush", "memory", "storage"])
        // While they restart, the endpoints file lists every one of them (pid 0 for one down): a
        // role missing from it would read as a cluster without that role.
        for role in first { kill(role.pid, SIGKILL) }
        var listings: Set<Int> = []
        var sawDown = false
        #expect(eventually(seconds: 10) {
            let now = (try? RunDirectory(run.path).roles()) ?? []
            listings.insert(now.count)
            sawDown = sawDown || now.contains { $0.pid == 0 }
            usleep(1000)
            return now.count == 5 && zip(now, first).allSatisfy { $0.role == $1.role && $0.pid > 0 && $0.pid != $1.pid }
        })
        #expect(listings == [5] && sawDown, "listed \(listings.sorted()) roles; saw one down: \(sawDown)")
        #expect(eventually(seconds: 10) { (try? runMoraineCLI(["status", "--run-dir", run.path]).status) == 0 })
        let after = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(after.out.contains { $0.hasPrefix("storage-0") && $0.contains(" 1 ") }, "\(after.out)")
        #expect(after.out.contains { $0.hasPrefix("compaction-0") && $0.contains(" up ") && $0.contains(" 1 ") }, "\(after.out)")
        #expect(try runMoraineCLI(["get", "--cluster", run.path, "--db", "demo", "hello"]).out == ["world"])
        #expect(try runMoraineCLI(["get", "--connect", run.path, "--db", "served", "b"]).out == ["2"])
        #expect(String(decoding: try PosixFileSystem.shared.readAll(run.file("logs/supervisor.log")), as: UTF8.self)
            .contains("killed by signal 9"))
        // A second up in the same run directory is refused.
        let again = try runMoraineCLI(["up", "--run-dir", run.path, "--detach"])
        #expect(again.status == 1 && again.err.contains("already runs"), "\(again.err)")
        let roles = Self.pids(run)
        let down = try runMoraineCLI(["down", "--run-dir", run.path])
        #expect(down.status == 0)
        #expect(eventually { !roles.contains(where: Self.alive) && !(supervisor.map(Self.alive) ?? false) })
        #expect(!FileManager.default.fileExists(atPath: run.file("endpoints")))
        #expect(try runMoraineCLI(["status", "--run-dir", run.path]).status == 1)
    }

    @Test("a foreground up stops its roles and exits 0 on SIGTERM")
    func foreground() throws {
        let run = TempDir("moraine-up-fg")
        defer { run.remove() }
        let process = Process()
        launchDyingWithTests(process, moraineExecutablePath(), ["up", "--run-dir", run.path])
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        #expect(eventually(seconds: 20) { FileManager.default.fileExists(atPath: run.file("ready")) })
        let roles = Self.pids(run)
        #expect(roles.count == 5 && roles.allSatisfy(Self.alive))
        let region = Supervisor.defaultRegion(run: RunDirectory(run.path), index: 0)
        #expect(FileManager.default.fileExists(atPath: region))
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(!roles.contains(where: Self.alive), "a role outlived its supervisor")
        // The region held no database's memtable: it goes with the cluster.
        #expect(!FileManager.default.fileExists(atPath: region), "an empty default region was left behind")
        try? PosixFileSystem.shared.remove(region)
    }

    @Test("status shows a worker's jobs: running/slots and finished, then a line per running job with its progress")
    func statusJobLines() throws {
        var worker = RoleStatus(
            kind: "compaction", index: 0, pid: 42, restarts: 0, startedUnix: 0, numaNode: nil,
            endpoint: .sharedMemory(socketPath: "/tmp/w.sock"))
        worker.answering = true
        worker.jobs = WorkerStatusReply(
            slots: 2, running: 1, finished: 7, jobs: [WorkerJobStatus(jobID: 12, directory: "owned", bytesDone: 3 << 20)])
        let lines = ClusterControl.table([worker], supervisor: nil).split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("compaction-0") && $0.contains("1/2 7") }, "\(lines)")
        #expect(lines.contains { $0 == "  job 12 of owned: \(ClusterControl.bytes(3 << 20)) done" }, "\(lines)")
    }

    @Test("topologies this machine cannot run are refused at start, naming the problem")
    func refusedTopologies() throws {
        let run = TempDir("moraine-up-bad")
        defer { run.remove() }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 1) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        let busyPort = Int(UInt16(bigEndian: address.sin_port))
        let cases: [(String, String)] = [
            ("[[role]]\nkind = \"compaction-oracle\"\n", "unknown role compaction-oracle"),
            ("[[role]]\nkind = \"storage\"\nnuma_node = 7\n", "NUMA node 7"),
            ("[[role]]\nkind = \"storage\"\ncarrier = \"tcp\"\nport = \(busyPort)\n", "port \(busyPort) on 127.0.0.1 is in use"),
            ("[[role]]\nkind = \"storage\"\ndata = \"/dev/null/data\"\n", "data directory /dev/null/data"),
            ("[[role]]\nkind = \"storage\"\ncolour = \"blue\"\n", "unknown key colour"),
            ("[[role]]\nkind = \"storage\"\ncarrier = \"pigeon\"\n", "carrier must be shm or tcp"),
            ("[[role]]\nkind = \"storage\"\n[[link]]\nbetween = \"storage moon\"\n", "between must name two of"),
            ("[[role]]\nkind = \"storage\"\n[[link]]\nbetween = \"storage client\"\ndelay_ns = -1\n", "delay_ns must be"),
            ("[[role]]\nkind = \"storage\"\n[[link]]\nbetween = \"storage client\"\ncolour = 1\n", "unknown key colour in a [[link]]"),
            ("[[link]]\nbetween = \"a b\"\n", "the topology names no role"),
            ("[[role]]\nkind = \"storage\"\n[[link]]\nbetween = \"storage client\"\n[[link]]\nbetween = \"client storage\"\n", "a second link"),
        ]
        for (index, (text, expected)) in cases.enumerated() {
            let file = run.file("topology-\(index).toml")
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            let result = try runMoraineCLI(["up", "--run-dir", run.file("run-\(index)"), "--topology", file])
            #expect(result.status == 1, "\(text): exit \(result.status)")
            #expect(result.err.contains(expected), "\(text): \(result.err)")
            #expect(!FileManager.default.fileExists(atPath: run.file("run-\(index)/endpoints")))
        }
    }

    @Test("[[link]] tables: each role gets its pairs' links, status lists them, and the cluster works through them")
    func pairLinks() throws {
        let text = """
            [[role]]
            kind = "storage"
            [[role]]
            kind = "compute"
            link_delay_ns = 1000
            [[link]]
            between = "client compute"
            delay_ns = 5000
            bandwidth = 1_000_000_000
            [[link]]
            between = "compute storage"
            delay_ns = 3000
            """
        let topology = try Topology(parsing: text)
        #expect(topology.peerLinks(of: "compute") == [
            "client": LinkEmulation(delay: .fixed(nanos: 5000), bandwidthBytesPerSecond: 1_000_000_000),
            "storage": LinkEmulation(delay: .fixed(nanos: 3000)),
        ])
        #expect(topology.peerLinks(of: "storage") == ["compute": LinkEmulation(delay: .fixed(nanos: 3000))])
        #expect(topology.peerLinks(of: "memory").isEmpty)
        let run = TempDir("moraine-up-links")
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.file("run")])
            run.remove()
        }
        try text.write(toFile: run.file("topology.toml"), atomically: true, encoding: .utf8)
        let up = try runMoraineCLI(["up", "--run-dir", run.file("run"), "--topology", run.file("topology.toml"), "--detach"])
        #expect(up.status == 0, "\(up.err)")
        let status = try runMoraineCLI(["status", "--run-dir", run.file("run")])
        #expect(status.out.contains("link: compute-0 with every peer: 1.0 µs each way"), "\(status.out)")
        #expect(status.out.contains("link: client <-> compute: 5.0 µs each way, 953.6 MiB/s"), "\(status.out)")
        #expect(status.out.contains("link: compute <-> storage: 3.0 µs each way"), "\(status.out)")
        // The compute node was started with its pairs' links (read back from the kernel).
        let compute = try #require(try RunDirectory(run.file("run")).roles().first { $0.role == "compute" })
        let arguments = (try? String(contentsOfFile: "/proc/\(compute.pid)/cmdline", encoding: .utf8))?.split(separator: "\0").map(String.init) ?? []
        #expect(arguments.contains("client:5000:1000000000") && arguments.contains("storage:3000"), "\(arguments)")
        #expect(try runMoraineCLI(["put", "--connect", run.file("run"), "--db", "linked", "k", "v"]).status == 0)
        #expect(try runMoraineCLI(["get", "--connect", run.file("run"), "--db", "linked", "k"]).out == ["v"])
    }

    @Test("a topology of two storage nodes over TCP starts, and each answers")
    func tcpTopology() throws {
        let run = TempDir("moraine-up-tcp")
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.path])
            run.remove()
        }
        let file = run.file("topology.toml")
        try "# two storage nodes over TCP\n[[role]]\nkind = \"storage\"\ncount = 2\ncarrier = \"tcp\"\ndata = \"nodes\"\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let up = try runMoraineCLI(["up", "--run-dir", run.path, "--topology", file, "--detach"])
        #expect(up.status == 0, "\(up.err)")
        let roles = try RunDirectory(run.path).roles()
        #expect(roles.map(\.index) == [0, 1])
        #expect(roles.allSatisfy { $0.endpoint.carrier == "tcp" })
        let status = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(status.status == 0 && status.out.filter { $0.contains(" up ") }.count == 2, "\(status.out)")
        #expect(FileManager.default.fileExists(atPath: run.file("nodes/0")) && FileManager.default.fileExists(atPath: run.file("nodes/1")))
    }

    @Test("a storage node's tiers from the topology: --cluster and --connect databases keep their tables there, status shows them")
    func storageTiers() throws {
        let run = TempDir("moraine-up-tiers")
        let fast = run.path + ".fast"
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.path])
            run.remove()
            PosixFileSystem.shared.removeTree(fast)
        }
        let file = run.file("topology.toml")
        try """
        [[role]]
        kind = "storage"
        tiers = "\(fast):1M:pmem,slow"
        [[role]]
        kind = "compute"
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let up = try runMoraineCLI(["up", "--run-dir", run.path, "--topology", file, "--detach"])
        #expect(up.status == 0, "\(up.err)")
        let puts = (0..<300).map { "put k\($0) value-\($0)" }.joined(separator: "\n") + "\nflush\nget k7\n"
        let local = try runMoraineCLI(["shell", "--db", "here", "--cluster", run.path], input: puts)
        #expect(local.status == 0 && local.out.last == "value-7", "\(local.out.suffix(2)) \(local.err)")
        let remote = try runMoraineCLI(["shell", "--db", "there", "--connect", run.path], input: puts)
        #expect(remote.status == 0 && remote.out.last == "value-7", "\(remote.out.suffix(2)) \(remote.err)")
        // L0's target (256 MiB) does not fit the 1 MiB fast tier: the tables are on the slow one,
        // each tier with its marker, none in the data directory.
        for database in ["here", "there"] {
            let slow = (try? FileManager.default.contentsOfDirectory(atPath: run.file("slow/" + database))) ?? []
            #expect(slow.contains("TIER") && slow.contains { $0.hasSuffix(".sst") }, "\(database) on the slow tier: \(slow)")
            #expect(FileManager.default.fileExists(atPath: fast + "/" + database + "/TIER"), "\(database): no marker on the fast tier")
            let data = (try? FileManager.default.contentsOfDirectory(atPath: run.file("data/" + database))) ?? []
            #expect(!data.contains { $0.hasSuffix(".sst") } && data.contains("TIERS"), "\(database) in the data directory: \(data)")
        }
        let status = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(status.out.contains { $0.contains("tiers: 0 ") && $0.contains("of 1.0 MiB (pmem)") }, "\(status.out)")
        let refused = try runMoraineCLI(["shell", "--db", "here", "--cluster", run.path, "--tiers", "/tmp/x:1M,/tmp/y"], input: "get k1\n")
        #expect(refused.status != 0 && refused.err.contains("--tiers"), "\(refused.err)")
    }
}
