// `moraine node --role R …`: runs one role of a cluster in this process. Only parses arguments;
// the role itself is a library (MoraineStorage for the storage node, MoraineWorker for a
// flush or compaction worker).
import ArgumentParser
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport
import MoraineWorker

#if canImport(Glibc)
    import Glibc
#endif

struct NodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run one role of a cluster: --role storage, flush or compaction (more roles come with later releases).",
        discussion: """
            Prints the endpoint it listens on as its first line of standard output, then serves until \
            SIGTERM, SIGINT or SIGHUP (it finishes the requests in flight and exits 0) or SIGKILL.
            """)

    @Option(help: "The role to run: storage, flush or compaction.") var role: String
    @Option(help: "Storage: the directory that holds the databases' files (it must exist).") var data: String?
    @Option(help: "Flush, compaction: the cluster's run directory (its endpoints file names the storage node).")
    var cluster: String?
    @Option(help: "Flush, compaction: jobs run at once at most.") var slots: Int = 1
    @Option(
        help: """
            Where to listen: shm:PATH (a Unix socket, then shared memory) or tcp:HOST:PORT (port 0: any). \
            A worker without it listens on shm:RUNDIR/ROLE-PID.sock.
            """)
    var listen: String?
    @Option(name: .customLong("cluster-key"), help: "The cluster key file (mode 0600); a worker's default: RUNDIR/cluster.key.")
    var clusterKey: String?
    @Option(name: .customLong("numa-node"), help: "Pin the process and its memory to this NUMA node.") var numaNode: Int?
    @Option(name: .customLong("link-delay-ns"), help: "One-way delay to inject on this node's server (link emulation).")
    var linkDelayNanos: Int64 = 0

    func validate() throws {
        switch role {
        case "storage":
            guard data != nil else { throw ValidationError("--role storage needs --data DIR") }
            guard listen != nil else { throw ValidationError("--role storage needs --listen shm:PATH|tcp:HOST:PORT") }
            guard clusterKey != nil else { throw ValidationError("--role storage needs --cluster-key FILE") }
        case "compaction", "flush":
            guard cluster != nil else { throw ValidationError("--role \(role) needs --cluster RUNDIR") }
            guard (1...1024).contains(slots) else { throw ValidationError("--slots must be 1…1024, not \(slots)") }
        default:
            throw ValidationError("--role \(role) is not known; this release runs: storage, flush, compaction")
        }
        if let listen {
            do {
                _ = try Endpoint(parsing: listen)
            } catch {
                throw ValidationError("--listen: \(error.message)")
            }
        }
        if let numaNode, numaNode < 0 { throw ValidationError("--numa-node must be 0 or more, not \(numaNode)") }
        guard (0...1_000_000_000).contains(linkDelayNanos) else {
            throw ValidationError("--link-delay-ns must be 0…1000000000, not \(linkDelayNanos)")
        }
    }

    func run() throws {
        let link = linkDelayNanos > 0 ? LinkEmulation(delay: .fixed(nanos: linkDelayNanos)) : LinkEmulation.none
        let announce = { (endpoint: Endpoint) in
            print(endpoint.description)
            fflush(nil)
        }
        if role == "compaction" || role == "flush" {
            let run = RunDirectory(cluster ?? "")
            let endpoint = try listen.map { try Endpoint(parsing: $0) } ?? .sharedMemory(socketPath: run.path + "/\(role)-\(getpid()).sock")
            var configuration = WorkerRoleConfiguration(
                runDirectory: run.path, endpoint: endpoint, clusterKeyPath: clusterKey ?? run.keyPath, slots: slots,
                numaNode: numaNode)
            configuration.link = link
            configuration.role = role
            return try WorkerRole.run(configuration, announce: announce)
        }
        var configuration = StorageRoleConfiguration(
            dataDirectory: data ?? "", endpoint: try Endpoint(parsing: listen ?? ""), clusterKeyPath: clusterKey ?? "",
            numaNode: numaNode)
        configuration.link = link
        try StorageRole.run(configuration, announce: announce)
    }
}
