// `moraine up`: starts a one-box cluster's roles as child processes (`moraine node --role …`),
// waits until each answers, writes the run directory's files, and supervises: a role that dies is
// restarted on the same endpoint with backoff (100 ms, doubling to 5 s; back to 100 ms after a
// minute up), and the event is logged. SIGTERM, SIGINT or SIGHUP stop the cluster: SIGTERM to
// every role, SIGKILL after the grace period, then the run directory's endpoints and state are
// removed (the key, the data and the logs stay; so does a memory node's region that still holds
// a memtable arena).
//
// Run directory files written here (besides RunDirectory's `cluster.key` and `endpoints`):
//   supervisor.pid   the supervisor's pid, while it runs
//   state            one line per role: ROLE INDEX PID RESTARTS STARTED_UNIX NUMA ENDPOINT
//                    (NUMA -1: not pinned; PID 0: down, restarting)
//   links            one line per [[link]] of the topology: KIND KIND DELAY_NS BANDWIDTH
//   ready            written once every role answered (what `--detach` waits for)
//   services         one line per address a role serves besides its endpoint: ROLE INDEX metrics|resp
//                    HOST:PORT (as the role printed it: the bound port when 0 was asked for)
//   logs/ROLE-N.log  each role's standard error; logs/supervisor.log for a detached supervisor
//
// Thread-safety: one thread (the process's main thread) does all of it; signals are blocked and
// taken with sigtimedwait, so nothing runs in a signal handler.
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// Starts and supervises the roles of a topology.
public final class Supervisor {
    struct Instance {
        let kind: String
        let index: Int
        let numaNode: Int?
        let data: String?
        /// A storage node's tiers as `--tiers` takes them (paths resolved), and their directories.
        var tiers: (argument: String, directories: [String])? = nil
        /// A storage node that reads with O_DIRECT.
        var directReads = false
        /// A memory node's region: its file, bytes, arena bytes, and whether it is the default
        /// file (removed when the cluster stops with no arena held).
        var region: (path: String, bytes: Int, arenaBytes: Int, cacheBytes: Int, isDefault: Bool)? = nil
        /// A memory node that peers reach by request only.
        var regionByRequest = false
        /// A compute node's durability mode, when the topology names one.
        var durability: String? = nil
        /// A compute node's block cache per database, when the topology names one.
        var blockCacheBytes: Int? = nil
        /// A compute node's row cache per database, when the topology names one.
        var rowCacheBytes: Int? = nil
        /// Where it serves /metrics, and a compute node's Redis front end (and its database),
        /// as asked; then as the role announced them.
        var metrics: String? = nil
        var resp: String? = nil
        var respDatabase: String? = nil
        var services: [(kind: String, address: String)] = []
        var endpoint: Endpoint
        let linkDelayNanos: Int64
        /// The links of the topology's [[link]] tables that end at this kind, by the other kind.
        var peerLinks: [String: LinkEmulation] = [:]
        var pid: Int32 = 0
        var restarts = 0
        var startedUnix = 0
        var startedNanos: Int64 = 0
        var restartAtNanos: Int64 = 0
        var backoffNanos: Int64 = Supervisor.backoffMinNanos

        var name: String { "\(kind)-\(index)" }
    }

    static let backoffMinNanos: Int64 = 100_000_000
    static let backoffMaxNanos: Int64 = 5_000_000_000
    /// Up this long, a role's backoff starts from the minimum again.
    /// The order `stop` stops roles in, one group at a time.
    static let stopOrder: [Set<String>] = [["compute"], ["flush", "compaction"], ["memory"], ["storage"]]
    static let steadyNanos: Int64 = 60_000_000_000
    /// How long a role may take to print its endpoint and answer.
    static let startTimeoutNanos: Int64 = 20_000_000_000
    /// How long `stop` waits after SIGTERM before SIGKILL.
    public static let graceNanos: Int64 = 5_000_000_000

    public let run: RunDirectory
    let executable: String
    /// The topology's [[link]] tables, written to the run directory's `links` for status.
    let links: [Topology.LinkSpec]
    var instances: [Instance]
    private var key: ClusterKey?
    /// Where each role runs, as planned from the topology and this machine.
    private let plan: [Placement.Assignment]

    /// Plans the cluster and checks it against this machine before anything starts.
    /// - Throws: `.invalid` naming what is wrong: a NUMA node the machine lacks, a port in use,
    ///   a data directory that cannot be written, a cluster already running in `run`.
    public init(topology: Topology, run: RunDirectory, executable: String) throws(MoraineError) {
        try topology.check()
        self.run = run
        self.executable = executable
        links = topology.links
        instances = []
        let plan = try Placement.plan(topology, machine: NUMATopology.current())
        self.plan = plan
        var placement = plan[...]
        for spec in topology.roles {
            for index in 0..<spec.count {
                let assignment = placement.removeFirst()
                let endpoint: Endpoint =
                    spec.carrier == "tcp"
                    ? .tcp(host: "127.0.0.1", port: spec.port == 0 ? 0 : spec.port + index)
                    : .sharedMemory(socketPath: run.path + "/\(spec.kind)-\(index).sock")
                // A storage node without `data` keeps its files in the run directory's data/.
                let data = (spec.data ?? (spec.kind == "storage" ? "data" : nil)).map { path in
                    let base = path.hasPrefix("/") ? path : run.path + "/" + path
                    return spec.count == 1 ? base : base + "/\(index)"
                }
                var instance = Instance(
                    kind: spec.kind, index: index, numaNode: assignment.node, data: data, endpoint: endpoint,
                    linkDelayNanos: spec.linkDelayNanos)
                if spec.kind == "storage", let tiers = spec.tiers {
                    instance.tiers = Self.resolveTiers(tiers, run: run.path, index: spec.count == 1 ? nil : index)
                }
                instance.directReads = spec.kind == "storage" && spec.directReads
                instance.regionByRequest = spec.kind == "memory" && spec.regionByRequest
                instance.durability = spec.durability
                instance.blockCacheBytes = spec.blockCacheBytes
                instance.rowCacheBytes = spec.rowCacheBytes
                instance.metrics = spec.metrics.map { Topology.RoleSpec.address($0, instance: index) }
                instance.resp = spec.resp.map { Topology.RoleSpec.address($0, instance: index) }
                instance.respDatabase = spec.respDatabase
                instance.peerLinks = topology.peerLinks(of: spec.kind)
                if spec.kind == "memory" {
                    let path = spec.region.map { $0.hasPrefix("/") ? $0 : run.path + "/" + $0 } ?? Self.defaultRegion(run: run, index: index)
                    instance.region = (path, spec.regionBytes, spec.arenaBytes, spec.cacheBytes, spec.region == nil)
                }
                instances.append(instance)
            }
        }
    }

    /// A memory node's default region: in /dev/shm (memory, so an msync costs nothing), named
    /// after the run directory; in the run directory where /dev/shm is missing.
    public static func defaultRegion(run: RunDirectory, index: Int) -> String {
        let name = String(run.path.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
        guard access("/dev/shm", W_OK | X_OK) == 0 else { return run.path + "/memory-\(index).region" }
        return "/dev/shm/moraine-\(name)-memory-\(index).region"
    }

    // MARK: Start

    /// Checks the machine, creates the run directory's files and starts every role; returns
    /// once each answers.
    /// - Throws: the first problem, after stopping what was started.
    public func start() throws(MoraineError) {
        try prepare()
        for line in Placement.describe(plan).split(separator: "\n") { log("placement: \(line)") }
        do throws(MoraineError) {
            for index in instances.indices { try launch(index, waitNanos: Self.startTimeoutNanos) }
        } catch {
            stop()
            throw error
        }
        try writeState()
        try writeFile(run.path + "/ready", "\(getpid())\n")
    }

    /// A storage node's `tiers` with each relative path under the run directory (and, with
    /// several nodes, each node's own subdirectory): the `--tiers` argument and the directories.
    static func resolveTiers(_ text: String, run: String, index: Int?) -> (argument: String, directories: [String]) {
        var parts: [String] = []
        var directories: [String] = []
        for part in text.split(separator: ",") {
            let colon = part.firstIndex(of: ":") ?? part.endIndex
            var path = String(part[..<colon])
            if !path.hasPrefix("/") { path = run + "/" + path }
            if let index { path += "/\(index)" }
            directories.append(path)
            parts.append(path + part[colon...])
        }
        return (parts.joined(separator: ","), directories)
    }

    private func prepare() throws(MoraineError) {
        let files = PosixFileSystem.shared
        do {
            try files.createDirectory(run.path)
            try files.createDirectory(run.path + "/logs")
        } catch {
            throw MoraineError(.invalid, "cannot create the run directory \(run.path): \(error)")
        }
        if let text = try? String(decoding: files.readAll(run.path + "/supervisor.pid"), as: UTF8.self),
            let pid = Int32(text.filter { $0.isNumber }), pid != getpid(), ChildProcess.isAlive(pid)
        {
            throw MoraineError(.busy, "a cluster already runs in \(run.path) (supervisor pid \(pid)); stop it with moraine down")
        }
        for instance in instances {
            if let data = instance.data {
                do {
                    try files.createDirectory(data)
                } catch {
                    throw MoraineError(.invalid, "\(instance.name): cannot create its data directory \(data): \(error)")
                }
                guard access(data, W_OK | X_OK) == 0 else {
                    throw MoraineError(.invalid, "\(instance.name): its data directory \(data) is not writable")
                }
            }
            for directory in instance.tiers?.directories ?? [] {
                do {
                    try files.createDirectory(directory)
                } catch {
                    throw MoraineError(.invalid, "\(instance.name): cannot create its tier directory \(directory): \(error)")
                }
            }
            if case .tcp(_, let port) = instance.endpoint, port != 0, !Self.portIsFree(port) {
                throw MoraineError(.invalid, "\(instance.name): port \(port) on 127.0.0.1 is in use")
            }
        }
        if (try? files.exists(run.keyPath)) != true {
            do throws(TransportError) {
                try ClusterKey.generate(path: run.keyPath)
            } catch {
                throw MoraineError(.invalid, "cannot create the cluster key \(run.keyPath): \(error.message)")
            }
        }
        do throws(TransportError) {
            key = try ClusterKey.load(path: run.keyPath)
        } catch {
            throw error.moraineError
        }
        try writeFile(run.path + "/supervisor.pid", "\(getpid())\n")
        try? files.remove(run.path + "/ready")
    }

    /// Starts instance `index` and waits until it prints its endpoint and answers.
    private func launch(_ index: Int, waitNanos: Int64) throws(MoraineError) {
        var instance = instances[index]
        var arguments = ["node", "--role", instance.kind, "--listen", instance.endpoint.description, "--cluster-key", run.keyPath]
        if let data = instance.data { arguments += ["--data", data] }
        if let tiers = instance.tiers { arguments += ["--tiers", tiers.argument] }
        if instance.directReads { arguments.append("--direct-reads") }
        if instance.kind == "compaction" || instance.kind == "flush" || instance.kind == "compute" { arguments += ["--cluster", run.path] }
        if let region = instance.region {
            arguments += [
                "--region", region.path, "--region-size", String(region.bytes), "--arena-size", String(region.arenaBytes), "--cache-size",
                String(region.cacheBytes),
            ]
        }
        if instance.regionByRequest { arguments += ["--region-access", "request"] }
        if let durability = instance.durability { arguments += ["--durability", durability] }
        if let bytes = instance.blockCacheBytes { arguments += ["--cache_size", String(bytes)] }
        if let bytes = instance.rowCacheBytes { arguments += ["--row_cache_size", String(bytes)] }
        if let resp = instance.resp { arguments += ["--resp", resp] + (instance.respDatabase.map { ["--resp-db", $0] } ?? []) }
        if let metrics = instance.metrics { arguments += ["--metrics", metrics] }
        if let node = instance.numaNode { arguments += ["--numa-node", String(node)] }
        if instance.linkDelayNanos > 0 { arguments += ["--link-delay-ns", String(instance.linkDelayNanos)] }
        for (peer, link) in instance.peerLinks.sorted(by: { $0.key < $1.key }) {
            arguments += ["--peer-link", "\(peer):\(link.meanDelayNanos)" + (link.bandwidthBytesPerSecond.map { ":\($0)" } ?? "")]
        }
        let log = run.path + "/logs/\(instance.name).log"
        let child = try ChildProcess.spawn(executable, arguments, captureOutput: true, errorLog: log)
        defer { close(child.output) }
        instance.pid = child.pid
        instances[index] = instance
        guard let line = ChildProcess.readLine(child.output, timeoutNanos: waitNanos),
            let endpoint = try? Endpoint(parsing: line)
        else {
            kill(child.pid, SIGKILL)
            var status: Int32 = 0
            waitpid(child.pid, &status, 0)
            instances[index].pid = 0
            throw MoraineError(.unavailable, "\(instance.name) did not start: \(Self.tail(of: log))")
        }
        instance.endpoint = endpoint  // a TCP port 0 is now the port it got
        // Then a line per other address it serves, in the order `node` prints them.
        instance.services = []
        for kind in ["resp", "metrics"] where (kind == "resp" ? instance.resp : instance.metrics) != nil {
            guard let line = ChildProcess.readLine(child.output, timeoutNanos: waitNanos), line.hasPrefix(kind + " ") else {
                kill(child.pid, SIGKILL)
                var status: Int32 = 0
                waitpid(child.pid, &status, 0)
                instances[index].pid = 0
                throw MoraineError(.unavailable, "\(instance.name) did not say where it serves \(kind): \(Self.tail(of: log))")
            }
            instance.services.append((kind, String(line.dropFirst(kind.count + 1))))
        }
        try waitUntilAnswering(instance, deadline: monotonicNanos() + waitNanos)
        instance.startedUnix = time(nil)
        instance.startedNanos = monotonicNanos()
        instances[index] = instance
    }

    private func waitUntilAnswering(_ instance: Instance, deadline: Int64) throws(MoraineError) {
        guard let key else { return }
        do {
            _ = try RoleProbe.ask(instance.kind, at: instance.endpoint, key: key, timeoutNanos: max(1_000_000, deadline - monotonicNanos()))
        } catch {
            throw MoraineError(.unavailable, "\(instance.name) on \(instance.endpoint) does not answer: \(error.message)")
        }
    }

    // MARK: Supervise

    /// Supervises until a stopping signal, then stops the cluster. Call from the main thread
    /// with `TerminationSignals.block()` and `blockChildSignal()` done before any thread started.
    public func superviseUntilStopped() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&set, signal) }
        while true {
            var timeout = timespec(tv_sec: 0, tv_nsec: 200_000_000)
            let signal = sigtimedwait(&set, nil, &timeout)
            if signal == SIGTERM || signal == SIGINT || signal == SIGHUP {
                log("\(TerminationSignals.name(signal)): stopping the cluster")
                stop()
                return
            }
            reapAndRestart()
        }
    }

    /// Blocks SIGCHLD too, so the supervisor takes it with sigtimedwait.
    public static func blockChildSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGCHLD)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private func reapAndRestart() {
        var changed = false
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { break }
            guard let index = instances.firstIndex(where: { $0.pid == pid }) else { continue }
            var instance = instances[index]
            let upNanos = monotonicNanos() - instance.startedNanos
            if upNanos > Self.steadyNanos { instance.backoffNanos = Self.backoffMinNanos }
            instance.pid = 0
            instance.restartAtNanos = monotonicNanos() + instance.backoffNanos
            let backoff = instance.backoffNanos / 1_000_000
            warn("\(instance.name) (pid \(pid)) \(Self.describe(status)) after \(upNanos / 1_000_000) ms; restarting in \(backoff) ms")
            instance.backoffNanos = min(instance.backoffNanos * 2, Self.backoffMaxNanos)
            instances[index] = instance
            changed = true
        }
        let now = monotonicNanos()
        for index in instances.indices where instances[index].pid == 0 && instances[index].restartAtNanos <= now {
            do throws(MoraineError) {
                instances[index].restarts += 1
                try launch(index, waitNanos: Self.startTimeoutNanos)
                log("\(instances[index].name) restarted as pid \(instances[index].pid) on \(instances[index].endpoint)")
            } catch {
                warn("\(instances[index].name) failed to restart: \(error.message)")
                instances[index].restartAtNanos = monotonicNanos() + instances[index].backoffNanos
                instances[index].backoffNanos = min(instances[index].backoffNanos * 2, Self.backoffMaxNanos)
            }
            changed = true
        }
        if changed { try? writeState() }
    }

    // MARK: Stop

    /// Stops every role: SIGTERM, then SIGKILL after the grace period; removes the run
    /// directory's endpoints, state, ready and supervisor.pid.
    public func stop() {
        // A default region that holds no arena (no database's memtable) goes with the cluster;
        // one that does holds acknowledged writes, and stays for the next `moraine up`.
        var emptyRegions: [String] = []
        for instance in instances where instance.pid > 0 && instance.region?.isDefault == true {
            if let key, case .memory(let status, _)? = try? RoleProbe.ask("memory", at: instance.endpoint, key: key, timeoutNanos: 1_000_000_000) {
                if status.holders.isEmpty {
                    emptyRegions.append(instance.region!.path)
                } else {
                    log("\(instance.name): region \(instance.region!.path) keeps \(status.arenaCount - status.freeArenas) unflushed memtable arenas")
                }
            }
        }
        defer { for path in emptyRegions { try? PosixFileSystem.shared.remove(path) } }
        // Clients before their servers: the compute node first (it finishes the flushes and
        // compactions it has on the workers and closes its databases while they and the storage
        // node still answer), then the workers, the memory node, the storage node. Stopped all at
        // once, a compaction finishing on a worker after the storage node left was lost, and its
        // outputs stayed on the storage node as tables no version names (the chaos long run).
        let deadline = monotonicNanos() + Self.graceNanos
        var left = Set<Int32>()
        let named = Self.stopOrder.reduce(into: Set<String>()) { $0.formUnion($1) }
        for tier in Self.stopOrder + [Set(instances.map(\.kind)).subtracting(named)] {
            let running = instances.filter { $0.pid > 0 && tier.contains($0.kind) }.map(\.pid)
            for pid in running { kill(pid, SIGTERM) }
            left.formUnion(running)
            while !left.isEmpty && monotonicNanos() < deadline {
                for pid in left {
                    var status: Int32 = 0
                    if waitpid(pid, &status, WNOHANG) == pid { left.remove(pid) }
                }
                if !left.isEmpty { sleepNanos(20_000_000) }
            }
        }
        for pid in left {
            warn("pid \(pid) did not stop within \(Self.graceNanos / 1_000_000_000) s of SIGTERM: SIGKILL")
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        for index in instances.indices { instances[index].pid = 0 }
        for name in ["endpoints", "state", "links", "services", "ready", "supervisor.pid"] { try? PosixFileSystem.shared.remove(run.path + "/" + name) }
    }

    // MARK: Files

    private func writeState() throws(MoraineError) {
        // Every role, a restarting one too (pid 0): a role missing from the file would read as a
        // cluster without it (an open would go on without its memory node, say), not as one down.
        let roles = instances.map {
            RunDirectory.Role(role: $0.kind, index: $0.index, pid: $0.pid, endpoint: $0.endpoint, linkDelayNanos: $0.linkDelayNanos)
        }
        do throws(TransportError) {
            try run.write(roles)
        } catch {
            throw error.moraineError
        }
        let lines = instances.map {
            "\($0.kind) \($0.index) \($0.pid) \($0.restarts) \($0.startedUnix) \($0.numaNode ?? -1) \($0.endpoint)\n"
        }
        try writeFile(run.path + "/state", lines.joined())
        // A role down (pid 0) serves nothing; its addresses come back with it.
        let services = instances.filter { $0.pid > 0 }.flatMap { instance in
            instance.services.map { "\(instance.kind) \(instance.index) \($0.kind) \($0.address)\n" }
        }
        try writeFile(run.path + "/services", services.joined())
        try writeFile(run.path + "/links", links.map { "\($0.kinds[0]) \($0.kinds[1]) \($0.delayNanos) \($0.bandwidthBytesPerSecond)\n" }.joined())
    }

    private func writeFile(_ path: String, _ text: String) throws(MoraineError) {
        do {
            let file = try PosixFileSystem.shared.createWritable(path + ".tmp")
            try file.append(Array(text.utf8))
            try file.close()
            try PosixFileSystem.shared.rename(path + ".tmp", to: path)
        } catch {
            throw MoraineError(.io, "cannot write \(path): \(error)")
        }
    }

    func log(_ message: String) { SystemLog.info("up: \(message)") }
    func warn(_ message: String) { SystemLog.warning("up: \(message)") }

    static func describe(_ status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "was killed by signal \(signal)"
    }

    /// The last lines of a log, for a start that failed.
    static func tail(of path: String) -> String {
        guard let bytes = try? PosixFileSystem.shared.readAll(path) else { return "no log at \(path)" }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").suffix(3)
        return lines.isEmpty ? "it printed nothing (log \(path))" : lines.joined(separator: " / ")
    }

    static func portIsFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return bound == 0
    }
}
