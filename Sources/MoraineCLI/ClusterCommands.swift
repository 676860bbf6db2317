// `moraine up`, `moraine status`, `moraine down`: a one-box cluster from a topology, supervised.
// Thin: the supervisor and the status live in MoraineCluster.
import ArgumentParser
import MoraineCluster
import MoraineMessages
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The run directory a cluster command uses: --run-dir, else $MORAINE_RUN_DIR, else
/// /tmp/moraine-run-UID.
/// A relative directory is made absolute, so the endpoints written there (socket paths) work
/// from any working directory.
func runDirectory(_ given: String?) -> RunDirectory {
    let path = given ?? getenv("MORAINE_RUN_DIR").map { String(cString: $0) } ?? "/tmp/moraine-run-\(getuid())"
    guard !path.hasPrefix("/") else { return RunDirectory(path) }
    var buffer = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buffer, buffer.count) != nil else { return RunDirectory(path) }
    let cwd = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    let relative = path.hasPrefix("./") ? String(path.dropFirst(2)) : path
    return RunDirectory(cwd == "/" ? "/" + relative : cwd + "/" + relative)
}

/// This executable's path (roles are started from the same binary).
func executablePath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard count > 0 else { return CommandLine.arguments[0] }
    return buffer.withUnsafeBufferPointer { String(decoding: UnsafeRawBufferPointer($0).prefix(count), as: UTF8.self) }
}

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a one-box cluster and supervise it (Ctrl-C or SIGTERM stops it).",
        discussion: """
            With no topology: a compute node, a storage node, a memory node, a flush and a compaction worker, \
            over shared memory, each pinned to a NUMA node (numa_node "auto": compute alone on the first node, \
            memory and flush on the second, storage on the third, compaction on the fourth, wrapping onto fewer). \
            The run directory (--run-dir, else $MORAINE_RUN_DIR, else /tmp/moraine-run-UID) \
            gets the cluster key, the endpoints file and the logs; database commands reach the cluster with \
            --connect RUNDIR (through the compute node) or --cluster RUNDIR (the engine in the command's process).
            """)

    @Option(help: "The topology file (TOML: [[role]] and [[link]] tables; docs/CLUSTER.md).") var topology: String?
    @Option(name: .customLong("run-dir"), help: "The run directory.") var runDir: String?
    @Flag(help: "Return once every role answers, leaving the supervisor running in the background.") var detach = false
    @Flag(name: .customLong("supervisor-child"), help: .hidden) var supervisorChild = false

    func run() throws {
        let run = runDirectory(runDir)
        let plan = try reporting { () throws -> Topology in
            guard let topology else { return .default }
            let bytes = try PosixFileSystem.shared.readAll(topology)
            return try Topology(parsing: String(decoding: bytes, as: UTF8.self), name: topology)
        }
        if detach { return try detachSupervisor(run) }
        TerminationSignals.block()
        Supervisor.blockChildSignal()
        let supervisor = try reporting { try Supervisor(topology: plan, run: run, executable: executablePath()) }
        try reporting { try supervisor.start() }
        if !supervisorChild { printSummary(run) }
        supervisor.superviseUntilStopped()
    }

    private func printSummary(_ run: RunDirectory) {
        print("moraine: cluster up in \(run.path)")
        for role in (try? run.roles()) ?? [] { print("  \(role.role)-\(role.index)  pid \(role.pid)  \(role.endpoint)") }
        let tryCommand = (try? run.roles())?.contains { $0.role == "compute" } == true ? "--connect" : "--cluster"
        print("  try: moraine shell \(tryCommand) \(run.path) --db demo      stop: moraine down --run-dir \(run.path)")
        fflush(nil)
    }

    /// Starts the supervisor in a session of its own and waits until it says every role answers.
    private func detachSupervisor(_ run: RunDirectory) throws {
        if let running = ClusterControl.supervisor(run) {
            printError("error: busy: a cluster already runs in \(run.path) (supervisor pid \(running)); stop it with moraine down")
            throw ExitCode(1)
        }
        try reporting {
            try PosixFileSystem.shared.createDirectory(run.path + "/logs")
            try? PosixFileSystem.shared.remove(run.path + "/ready")
        }
        var arguments = ["up", "--run-dir", run.path, "--supervisor-child"]
        if let topology { arguments += ["--topology", topology] }
        let log = run.path + "/logs/supervisor.log"
        let child = try reporting { try ClusterLaunch.spawnDetached(executablePath(), arguments, log: log) }
        let deadline = monotonicSeconds() + 60
        while monotonicSeconds() < deadline {
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                printError("error: the cluster did not start: \(ClusterLaunch.tail(of: log))")
                throw ExitCode(1)
            }
            if let text = try? PosixFileSystem.shared.readAll(run.path + "/ready"),
                Int32(String(decoding: text, as: UTF8.self).filter { $0.isNumber }) == child
            {
                printSummary(run)
                return
            }
            usleep(50_000)
        }
        kill(child, SIGTERM)
        printError("error: the cluster did not answer within 60 s: \(ClusterLaunch.tail(of: log))")
        throw ExitCode(1)
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each role of a cluster: pid, state, restarts, uptime, NUMA node, carrier, bytes stored and free.")
    @Option(name: .customLong("run-dir"), help: "The run directory.") var runDir: String?

    func run() throws {
        let run = runDirectory(runDir)
        let roles = try reporting { try ClusterControl.status(run) }
        print(ClusterControl.table(roles, supervisor: ClusterControl.supervisor(run)))
        for line in ClusterControl.links(run) { print(line) }
        if roles.contains(where: { !$0.answering }) { throw ExitCode(1) }
    }
}

struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a cluster: SIGTERM to its supervisor and roles, SIGKILL after a grace period; no role is left running.")
    @Option(name: .customLong("run-dir"), help: "The run directory.") var runDir: String?

    func run() throws {
        let run = runDirectory(runDir)
        guard ClusterControl.supervisor(run) != nil || (try? ClusterControl.status(run)) != nil else {
            printError("moraine: no cluster runs in \(run.path)")
            return
        }
        let killed = ClusterControl.down(run)
        print(killed.isEmpty ? "moraine: cluster in \(run.path) stopped" : "moraine: cluster stopped; SIGKILLed \(killed)")
    }
}
