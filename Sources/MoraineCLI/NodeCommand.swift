// `moraine node --role R …`: runs one role of a cluster in this process. Only parses arguments;
// the role itself is a library (MoraineStorage for the storage node).
import ArgumentParser
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

struct NodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run one role of a cluster: --role storage (more roles come with later releases).",
        discussion: """
            Prints the endpoint it listens on as its first line of standard output, then serves until \
            SIGTERM, SIGINT or SIGHUP (it finishes the requests in flight and exits 0) or SIGKILL.
            """)

    @Option(help: "The role to run: storage.") var role: String
    @Option(help: "Storage: the directory that holds the databases' files (it must exist).") var data: String?
    @Option(help: "Where to listen: shm:PATH (a Unix socket, then shared memory) or tcp:HOST:PORT (port 0: any).")
    var listen: String
    @Option(name: .customLong("cluster-key"), help: "The cluster key file (mode 0600).") var clusterKey: String
    @Option(name: .customLong("numa-node"), help: "Pin the process and its memory to this NUMA node.") var numaNode: Int?
    @Option(name: .customLong("link-delay-ns"), help: "One-way delay to inject on this node's server (link emulation).")
    var linkDelayNanos: Int64 = 0

    func validate() throws {
        guard role == "storage" else { throw ValidationError("--role \(role) is not known; this release runs: storage") }
        guard data != nil else { throw ValidationError("--role storage needs --data DIR") }
        do {
            _ = try Endpoint(parsing: listen)
        } catch {
            throw ValidationError("--listen: \(error.message)")
        }
        if let numaNode, numaNode < 0 { throw ValidationError("--numa-node must be 0 or more, not \(numaNode)") }
        guard (0...1_000_000_000).contains(linkDelayNanos) else {
            throw ValidationError("--link-delay-ns must be 0…1000000000, not \(linkDelayNanos)")
        }
    }

    func run() throws {
        var configuration = StorageRoleConfiguration(
            dataDirectory: data ?? "", endpoint: try Endpoint(parsing: listen), clusterKeyPath: clusterKey, numaNode: numaNode)
        if linkDelayNanos > 0 { configuration.link = LinkEmulation(delay: .fixed(nanos: linkDelayNanos)) }
        try StorageRole.run(configuration) { endpoint in
            print(endpoint.description)
            fflush(nil)
        }
    }
}
