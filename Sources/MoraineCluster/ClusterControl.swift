// `moraine status` and `moraine down`: read a run directory's files (Supervisor.swift lists them)
// and ask the roles themselves. Status shows each role with its pid, endpoint, carrier, NUMA
// node, up or down, restarts, uptime, and a storage node's bytes stored and free (asked over the
// transport, so "up" means "answers", not only "has a pid"). Down asks the supervisor to stop the
// cluster (SIGTERM), waits for it, and kills whatever is left, so no role outlives it.
//
// Value types and free functions; no shared state.
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

/// One role as `moraine status` shows it.
public struct RoleStatus: Sendable {
    public var kind: String
    public var index: Int
    public var pid: Int32
    public var restarts: Int
    public var startedUnix: Int
    public var numaNode: Int?
    public var endpoint: Endpoint
    public var answering = false
    public var capacity: StorageCapacityReply? = nil
    /// A storage node's tiers, with what each holds (empty: none).
    public var tiers: [StorageTierInfo] = []
    /// A worker's jobs: running, slots, finished.
    public var jobs: WorkerStatusReply? = nil
    /// A memory node's arenas: held per database, free.
    public var arenas: MemoryStatusReply? = nil
    /// A memory node's region: where, its geometry, how peers reach it.
    public var region: MemoryRegionInfo? = nil
    /// A compute node's databases and sessions.
    public var compute: ComputeStatusReply? = nil
    /// Where the process runs, as the kernel reports it (nil when it is down).
    public var placement: ProcessPlacement? = nil
    public var problem: String? = nil
    /// What else it serves: `metrics` (its /metrics address), `resp` (a Redis front end).
    public var services: [(kind: String, address: String)] = []
}

public enum ClusterControl {
    /// The supervisor's pid, when one runs for `run`.
    public static func supervisor(_ run: RunDirectory) -> Int32? {
        guard let bytes = try? PosixFileSystem.shared.readAll(run.path + "/supervisor.pid"),
            let pid = Int32(String(decoding: bytes, as: UTF8.self).filter { $0.isNumber }), ChildProcess.isAlive(pid)
        else { return nil }
        return pid
    }

    /// The roles the supervisor's state file lists, each asked whether it answers.
    /// - Throws: `.notFound` when no cluster runs in `run`.
    public static func status(_ run: RunDirectory) throws(MoraineError) -> [RoleStatus] {
        guard let bytes = try? PosixFileSystem.shared.readAll(run.path + "/state") else {
            throw MoraineError(.notFound, "no cluster runs in \(run.path) (no state file; start one with moraine up)")
        }
        let key = try? ClusterKey.load(path: run.keyPath)
        var services: [String: [(kind: String, address: String)]] = [:]
        for line in String(decoding: (try? PosixFileSystem.shared.readAll(run.path + "/services")) ?? [], as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 4 else { continue }
            services["\(fields[0])-\(fields[1])", default: []].append((String(fields[2]), String(fields[3])))
        }
        var roles: [RoleStatus] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 6)
            guard fields.count == 7, let index = Int(fields[1]), let pid = Int32(fields[2]), let restarts = Int(fields[3]),
                let started = Int(fields[4]), let numa = Int(fields[5]), let endpoint = try? Endpoint(parsing: String(fields[6]))
            else {
                throw MoraineError(.corruption, "\(run.path)/state holds a line that does not parse: \(line)")
            }
            var role = RoleStatus(
                kind: String(fields[0]), index: index, pid: pid, restarts: restarts, startedUnix: started,
                numaNode: numa < 0 ? nil : numa, endpoint: endpoint)
            role.services = services["\(role.kind)-\(index)"] ?? []
            if pid > 0 && ChildProcess.isAlive(pid), let key {
                role.placement = ProcessPlacement.read(pid: pid)
                do {
                    switch try RoleProbe.ask(role.kind, at: endpoint, key: key, timeoutNanos: 1_000_000_000) {
                    case .storage(let capacity, let tiers):
                        role.capacity = capacity
                        role.tiers = tiers
                    case .worker(let status): role.jobs = status
                    case .memory(let status, let region):
                        role.arenas = status
                        role.region = region
                    case .compute(let status): role.compute = status
                    }
                    role.answering = true
                } catch {
                    role.problem = error.message
                }
            } else {
                role.problem = pid > 0 ? "pid \(pid) is gone" : "down, restarting"
            }
            roles.append(role)
        }
        return roles
    }

    /// The status as a table, one line per role.
    public static func table(_ roles: [RoleStatus], supervisor: Int32?) -> String {
        let now = time(nil)
        let machine = NUMATopology.current()
        var lines = ["supervisor: " + (supervisor.map { "pid \($0)" } ?? "not running")]
        lines.append("ROLE          PID      STATE  RESTARTS  UPTIME    NUMA  CARRIER  STORED      FREE        JOBS          ENDPOINT")
        for role in roles {
            let uptime = role.answering ? "\(max(0, now - role.startedUnix)) s" : "-"
            let stored = role.capacity.map { bytes($0.bytesUsed) } ?? "-"
            let free = role.capacity.map { bytes($0.bytesFree) } ?? "-"
            // A worker's jobs: running/slots, then how many it finished.
            let jobs =
                role.jobs.map { "\($0.running)/\($0.slots) \($0.finished)" }
                ?? role.arenas.map { "\($0.arenaCount - $0.freeArenas)/\($0.arenaCount) arenas" }
                ?? role.compute.map { "\($0.databases.count) db \($0.sessions) sess" } ?? "-"
            lines.append(
                [
                    pad("\(role.kind)-\(role.index)", 13), pad(role.pid > 0 ? String(role.pid) : "-", 8),
                    pad(role.answering ? "up" : "down", 6), pad(String(role.restarts), 9), pad(uptime, 9),
                    pad(role.numaNode.map(String.init) ?? "-", 5), pad(role.endpoint.carrier, 8), pad(stored, 11), pad(free, 11),
                    pad(jobs, 13), role.endpoint.description + (role.problem.map { "  (\($0))" } ?? ""),
                ].joined(separator: " "))
            if !role.services.isEmpty {
                lines.append(
                    "  serves: "
                        + role.services.map { $0.kind == "metrics" ? "metrics http://\($0.address)/metrics" : "\($0.kind) \($0.address)" }
                        .joined(separator: ", "))
            }
            if !role.tiers.isEmpty {
                lines.append(
                    "  tiers: "
                        + role.tiers.enumerated().map { index, tier in
                            "\(index) \(bytes(tier.bytesUsed))" + (tier.budgetBytes > 0 ? " of \(bytes(tier.budgetBytes))" : "")
                                + (tier.mapped ? " (pmem)" : "") + ", \(bytes(tier.bytesFree)) free"
                        }.joined(separator: "; "))
            }
            // A memory node's region, and whether peers map it or reach it by request only.
            if let region = role.region {
                lines.append(
                    "  region: \(region.path), \(region.arenaCount) arenas of \(bytes(region.arenaBytes)), shared cache "
                        + "\(region.cacheSlots) slots of \(bytes(UInt64(region.slotBytes))); "
                        + (region.mappable ? "peers on this box map it" : "peers reach it by request only")
                        + (region.isPersistentMemory ? "; persistent memory" : ""))
            }
            // Where it runs, read back from the kernel, and whether that is where it was placed.
            if let placement = role.placement {
                lines.append("  placement: \(placement.summary)\(placementCheck(role, placement, machine))")
            }
            // Then each job it runs, and how far it has got.
            for job in role.jobs?.jobs ?? [] {
                lines.append("  job \(job.jobID) of \(job.directory): \(bytes(job.bytesDone)) done")
            }
            // A compute node's databases with their LSM shape, and its clients' leases.
            if let compute = role.compute {
                for database in compute.databases {
                    let levels = database.levelFiles.enumerated().filter { $0.element > 0 || $0.offset == 0 }.map {
                        "L\($0.offset) \($0.element) (\(bytes(database.levelBytes[$0.offset])))"
                    }
                    lines.append(
                        "  database \(database.name): sequence \(database.lastSequence), memtable \(bytes(database.memtableBytes)), "
                            + levels.joined(separator: ", "))
                    lines.append(
                        "    cache hits: block \(rate(database.blockCacheHits, database.blockCacheMisses)), "
                            + "shared (memory node) \(rate(database.sharedCacheHits, database.sharedCacheMisses))")
                }
                if compute.sessions > 0 || compute.expiredLeases > 0 {
                    lines.append(
                        "  sessions \(compute.sessions): \(compute.snapshots) snapshots, \(compute.iterators) iterators held; "
                            + "\(compute.expiredLeases) leases lapsed")
                }
            }
        }
        return lines.joined(separator: "\n")
    }

    /// The emulated links of the cluster in `run`, one line each: a role's delay with every
    /// peer (its `link_delay_ns`), then each pair of the topology's [[link]] tables. Empty
    /// when no link is emulated.
    public static func links(_ run: RunDirectory) -> [String] {
        var lines: [String] = []
        for role in (try? run.roles()) ?? [] where role.linkDelayNanos > 0 {
            lines.append("link: \(role.role)-\(role.index) with every peer: \(delay(role.linkDelayNanos)) each way")
        }
        let text = (try? PosixFileSystem.shared.readAll(run.path + "/links")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 4, let nanos = Int64(fields[2]), let bandwidth = Int64(fields[3]) else { continue }
            let cap = bandwidth > 0 ? ", \(bytes(UInt64(bandwidth)))/s" : ""
            lines.append("link: \(fields[0]) <-> \(fields[1]): \(delay(nanos)) each way\(cap)")
        }
        return lines
    }

    static func delay(_ nanos: Int64) -> String {
        nanos >= 1000 ? "\(nanos / 1000).\(nanos % 1000 / 100) µs" : "\(nanos) ns"
    }

    /// Stops the cluster of `run`: SIGTERM to its supervisor, then, after the grace period and a
    /// margin, SIGKILL to the supervisor and to every role the state file lists.
    /// Returns the pids that had to be killed.
    public static func down(_ run: RunDirectory) -> [Int32] {
        let listed = (try? status(run))?.map(\.pid).filter { $0 > 0 } ?? []
        var killed: [Int32] = []
        if let supervisor = supervisor(run) {
            kill(supervisor, SIGTERM)
            let deadline = monotonicNanos() + Supervisor.graceNanos + 3_000_000_000
            while ChildProcess.isAlive(supervisor) && monotonicNanos() < deadline { sleepNanos(50_000_000) }
            if ChildProcess.isAlive(supervisor) {
                kill(supervisor, SIGKILL)
                killed.append(supervisor)
            }
        }
        for pid in listed where ChildProcess.isAlive(pid) {
            kill(pid, SIGKILL)
            killed.append(pid)
        }
        for name in ["endpoints", "state", "links", "services", "ready", "supervisor.pid"] { try? PosixFileSystem.shared.remove(run.path + "/" + name) }
        return killed
    }

    /// Empty when the kernel's report matches the planned node; otherwise what differs.
    static func placementCheck(_ role: RoleStatus, _ placement: ProcessPlacement, _ machine: NUMATopology) -> String {
        guard let planned = role.numaNode, let node = machine.nodes.first(where: { $0.id == planned }) else { return "" }
        var problems: [String] = []
        if Set(placement.cpus) != Set(node.cpus) || !placement.threadsAgree { problems.append("CPUs are not node \(planned)'s") }
        if machine.isNUMAAvailable, let policy = placement.memoryPolicy, policy != "bind:\(planned)" {
            problems.append("memory is not bound to node \(planned)")
        }
        return problems.isEmpty ? " (as placed on node \(planned))" : " (MISPLACED: \(problems.joined(separator: "; ")))"
    }

    /// "95.2% of 1234 lookups", or "no lookups".
    static func rate(_ hits: UInt64, _ misses: UInt64) -> String {
        let total = hits + misses
        guard total > 0 else { return "no lookups" }
        let tenths = hits * 1000 / total
        return "\(tenths / 10).\(tenths % 10)% of \(total)"
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    static func bytes(_ count: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : "\(Int(value * 10) / 10).\(Int(value * 10) % 10) \(units[unit])"
    }
}
