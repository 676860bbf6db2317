// `moraine node --role R …`: runs one role of a cluster in this process. Only parses arguments;
// the role itself is a library (MoraineStorage for the storage node, MoraineWorker for a
// flush or compaction worker, MoraineMemory for the memory node).
import ArgumentParser
import Moraine
import MoraineCluster
import MoraineCompute
import MoraineMemory
import MoraineMessages
import MoraineRESP
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
        abstract: "Run one role of a cluster: --role compute, storage, memory, flush or compaction.",
        discussion: """
            Prints the endpoint it listens on as its first line of standard output, then serves until \
            SIGTERM, SIGINT or SIGHUP (it finishes the requests in flight and exits 0) or SIGKILL.
            """)

    @Option(help: "The role to run: compute, storage, memory, flush or compaction.") var role: String
    @Option(help: "Storage: the directory that holds the databases' files (it must exist). Compute without --cluster: the databases' parent directory.")
    var data: String?
    @Option(
        help: """
            Storage: storage tiers for the databases' tables, fastest first, PATH:SIZE[:pmem],… (each directory must exist; \
            a database's tables on tier K go to PATH/DATABASE; the compute side spreads them by level and budget).
            """)
    var tiers: String?
    @Flag(
        name: .customLong("direct-reads"),
        help: "Storage: read files with O_DIRECT, so every read a compute node's caches miss reaches the device (RocksDB's use_direct_reads).")
    var directReads = false
    @Option(help: "Compute, flush, compaction, memory: the cluster's run directory (its endpoints file names the other roles).")
    var cluster: String?
    @Option(help: "Compute: where the databases' writes become durable: wal (default) or pmem (memtables in the memory node's region).")
    var durability: String?
    @Option(name: .customLong("write_buffer_size"), help: "Compute: memtable size in bytes.") var writeBufferSize: Int?
    @Option(name: .customLong("cache_size"), help: "Compute: block cache bytes per database (default 8 MiB).") var blockCacheSize: Int?
    @Option(name: .customLong("row_cache_size"), help: "Compute: row cache bytes per database (default 0, off).") var rowCacheSize: Int?
    @Option(name: .customLong("session-ttl-ms"), help: "Compute: how long a client's snapshots and iterators outlive its last request.")
    var sessionTTLMillis: UInt32 = 10_000
    @Option(help: "Flush, compaction: jobs run at once at most.") var slots: Int = 1
    @Option(help: "Memory: the region file (on a DAX mount for real persistent memory; else e.g. under /dev/shm).")
    var region: String?
    @Option(name: .customLong("region-size"), help: "Memory: bytes of a new region (an existing one must match).")
    var regionSize: Int?
    @Option(name: .customLong("arena-size"), help: "Memory: bytes of one memtable arena (default 66 MiB; a multiple of 4096).")
    var arenaSize: Int = MemoryRole.defaultArenaBytes
    @Option(name: .customLong("cache-size"), help: "Memory: bytes of the region for the shared block cache (default 0: none).")
    var cacheSize = 0
    @Option(name: .customLong("cache-slot-size"), help: "Memory: bytes of one cache slot (the largest block it holds, plus 64).")
    var cacheSlotSize = SharedCacheLayout.defaultSlotBytes
    @Option(
        name: .customLong("region-access"),
        help: """
            Memory: how peers reach the region: map (default: peers on this box map it and work in place) or request \
            (every peer asks by request, as one on another box would).
            """)
    var regionAccess = "map"
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
    @Option(
        name: .customLong("peer-link"),
        help: """
            KIND:DELAY_NS[:BYTES_PER_SEC], repeatable: the emulated link with peers of that role (compute, storage, memory, \
            flush, compaction, client), in both directions, in place of --link-delay-ns for them.
            """)
    var peerLinks: [String] = []
    @Option(
        help: """
            Compute: serve a database over the Redis protocol at HOST:PORT too (port 0: any); the node prints \
            `resp HOST:PORT` after its endpoint.
            """)
    var resp: String?
    @Option(name: .customLong("resp-db"), help: "Compute with --resp: the database the Redis front end serves (created if missing).")
    var respDatabase = "default"
    @OptionGroup(title: "Compute with --resp") var respOptions: RESPFrontEndOptions
    @OptionGroup var metrics: MetricsOptions

    /// `--peer-link` as links per peer label.
    /// - Throws: a ValidationError naming the entry that does not parse.
    static func parsePeerLinks(_ entries: [String]) throws -> [String: LinkEmulation] {
        var links: [String: LinkEmulation] = [:]
        for entry in entries {
            let parts = entry.split(separator: ":", omittingEmptySubsequences: false)
            let kinds = Topology.linkKinds
            guard (2...3).contains(parts.count), kinds.contains(String(parts[0])), let delay = Int64(parts[1]),
                (0...1_000_000_000).contains(delay)
            else {
                throw ValidationError("--peer-link \(entry): expected KIND:DELAY_NS[:BYTES_PER_SEC] with KIND one of \(kinds.sorted().joined(separator: ", "))")
            }
            var bandwidth: Int64? = nil
            if parts.count == 3 {
                guard let bytes = Int64(parts[2]), bytes > 0 else { throw ValidationError("--peer-link \(entry): bandwidth must be a positive byte rate") }
                bandwidth = bytes
            }
            links[String(parts[0])] = LinkEmulation(delay: delay > 0 ? .fixed(nanos: delay) : nil, bandwidthBytesPerSecond: bandwidth)
        }
        return links
    }

    func validate() throws {
        switch role {
        case "storage":
            guard data != nil else { throw ValidationError("--role storage needs --data DIR") }
            guard listen != nil else { throw ValidationError("--role storage needs --listen shm:PATH|tcp:HOST:PORT") }
            guard clusterKey != nil else { throw ValidationError("--role storage needs --cluster-key FILE") }
            if let tiers {
                let parsed: [StorageTier]
                do { parsed = try StorageTier.parseList(tiers) } catch let error as MoraineError { throw ValidationError("--tiers: \(error.message)") }
                guard parsed.count <= StorageTiersReply.tiersMax, parsed.dropLast().allSatisfy({ ($0.budgetBytes ?? 0) > 0 }) else {
                    throw ValidationError("--tiers: at most \(StorageTiersReply.tiersMax) tiers, each but the last with a size")
                }
            }
        case "compute":
            guard cluster != nil || data != nil else { throw ValidationError("--role compute needs --cluster RUNDIR or --data DIR") }
            guard cluster != nil || (listen != nil && clusterKey != nil) else {
                throw ValidationError("--role compute without --cluster needs --listen and --cluster-key")
            }
            if let durability, Durability(rawValue: durability) == nil { throw ValidationError("--durability must be wal or pmem") }
            if let writeBufferSize, writeBufferSize < 4096 || writeBufferSize > 1 << 30 {
                throw ValidationError("--write_buffer_size must be 4096…1073741824 bytes, not \(writeBufferSize)")
            }
            guard (100...3_600_000).contains(sessionTTLMillis) else {
                throw ValidationError("--session-ttl-ms must be 100…3600000, not \(sessionTTLMillis)")
            }
        case "compaction", "flush":
            guard cluster != nil else { throw ValidationError("--role \(role) needs --cluster RUNDIR") }
            guard (1...1024).contains(slots) else { throw ValidationError("--slots must be 1…1024, not \(slots)") }
        case "memory":
            guard region != nil else { throw ValidationError("--role memory needs --region PATH") }
            guard let regionSize else { throw ValidationError("--role memory needs --region-size BYTES") }
            guard cluster != nil || (listen != nil && clusterKey != nil) else {
                throw ValidationError("--role memory needs --cluster RUNDIR, or --listen and --cluster-key")
            }
            guard arenaSize >= 128 << 10, arenaSize % 4096 == 0, arenaSize <= 1 << 31 else {
                throw ValidationError("--arena-size must be 128 KiB…2 GiB in whole 4096-byte pages, not \(arenaSize)")
            }
            guard cacheSlotSize >= 1024, cacheSlotSize % 64 == 0, cacheSlotSize <= 1 << 20 else {
                throw ValidationError("--cache-slot-size must be 1024…1048576 in multiples of 64, not \(cacheSlotSize)")
            }
            guard cacheSize >= 0, cacheSize <= regionSize - arenaSize - 4096 else {
                throw ValidationError("--cache-size must leave room for an arena in --region-size, not \(cacheSize)")
            }
            guard regionSize >= arenaSize + 4096, regionSize <= 1 << 44 else {
                throw ValidationError("--region-size must hold at least one arena and its header (\(arenaSize + 4096) bytes), not \(regionSize)")
            }
        default:
            throw ValidationError("--role \(role) is not known; this release runs: compute, storage, memory, flush, compaction")
        }
        if let listen {
            do {
                _ = try Endpoint(parsing: listen)
            } catch {
                throw ValidationError("--listen: \(error.message)")
            }
        }
        if directReads && role != "storage" { throw ValidationError("--direct-reads applies to --role storage only") }
        guard regionAccess == "map" || regionAccess == "request" else {
            throw ValidationError("--region-access must be map or request, not \(regionAccess)")
        }
        if regionAccess != "map" && role != "memory" { throw ValidationError("--region-access applies to --role memory only") }
        if let resp {
            guard role == "compute" else { throw ValidationError("--resp applies to --role compute only") }
            _ = try RESPFrontEndOptions.address(resp, flag: "--resp")
        }
        if let numaNode, numaNode < 0 { throw ValidationError("--numa-node must be 0 or more, not \(numaNode)") }
        guard (0...1_000_000_000).contains(linkDelayNanos) else {
            throw ValidationError("--link-delay-ns must be 0…1000000000, not \(linkDelayNanos)")
        }
        _ = try Self.parsePeerLinks(peerLinks)
    }

    func run() throws {
        let link = linkDelayNanos > 0 ? LinkEmulation(delay: .fixed(nanos: linkDelayNanos)) : LinkEmulation.none
        let peerLinks = try Self.parsePeerLinks(peerLinks)
        // Every connection this process makes presents its role, so its peers apply their pair's link.
        TransportIdentity.label = role
        let exported = try metrics.exporter()
        let announce = { (endpoint: Endpoint) in
            print(endpoint.description)
            if let exported { print(exported.announcement) }
            fflush(nil)
        }
        if role == "compute" {
            let run = cluster.map { RunDirectory($0) }
            let endpoint = try listen.map { try Endpoint(parsing: $0) } ?? .sharedMemory(socketPath: (run?.path ?? ".") + "/compute-\(getpid()).sock")
            var configuration = ComputeRoleConfiguration(
                runDirectory: run?.path, dataDirectory: data, endpoint: endpoint, clusterKeyPath: clusterKey ?? run?.keyPath ?? "",
                numaNode: numaNode)
            configuration.link = link
            configuration.peerLinks = peerLinks
            configuration.metrics = exported?.hook
            configuration.sessionTTLMillis = sessionTTLMillis
            var options = Options()
            options.createIfMissing = true
            if let durability { options.durability = Durability(rawValue: durability) ?? .wal }
            if let writeBufferSize { options.writeBufferSize = writeBufferSize }
            if let blockCacheSize { options.blockCacheSize = blockCacheSize }
            if let rowCacheSize { options.rowCacheSize = rowCacheSize }
            configuration.options = options
            guard let resp else { return try ComputeRole.run(configuration, announce: announce) }
            // The Redis front end: one database of the node, beside its transport clients.
            let (host, port) = try RESPFrontEndOptions.address(resp, flag: "--resp")
            var settings = try respOptions.settings()
            // Its files are on the storage node: a block-cache miss is a round trip, so reads
            // that need one go to the pool instead of holding up the event loop.
            settings.memoryOnlyReadsOnEventLoop = true
            settings.queueWritesFromEventLoop = true  // its log appends are round trips
            let name = respDatabase
            var boundPort = 0
            var started: RESPService? = nil
            return try ComputeRole.run(configuration) { node in
                let service = RESPService(resolving: { Database(hosting: try node.hostedDatabase(name)) }, settings: settings) {
                    kill(getpid(), SIGTERM)
                }
                let server = try RESPServer(host: host, port: port, service: service)
                boundPort = server.port
                started = service
                exported?.exporter.add { [service] in service.metricSamples() }
                return { server.close() }
            } announce: { endpoint in
                print(endpoint.description)
                print("resp \(host):\(boundPort)")
                if let exported { print(exported.announcement) }
                fflush(nil)
                // Open the database once the node has announced itself (a recovery may take a
                // while, and the supervisor waits for the announcement); a command before then,
                // or while the cluster does not let it open, asks again.
                if let service = started { startThread(name: "resp-open") { service.resolveNow() } }
            }
        }
        if role == "compaction" || role == "flush" {
            let run = RunDirectory(cluster ?? "")
            let endpoint = try listen.map { try Endpoint(parsing: $0) } ?? .sharedMemory(socketPath: run.path + "/\(role)-\(getpid()).sock")
            var configuration = WorkerRoleConfiguration(
                runDirectory: run.path, endpoint: endpoint, clusterKeyPath: clusterKey ?? run.keyPath, slots: slots,
                numaNode: numaNode)
            configuration.link = link
            configuration.peerLinks = peerLinks
            configuration.metrics = exported?.hook
            configuration.role = role
            return try WorkerRole.run(configuration, announce: announce)
        }
        if role == "memory" {
            let run = RunDirectory(cluster ?? "")
            let endpoint = try listen.map { try Endpoint(parsing: $0) } ?? .sharedMemory(socketPath: run.path + "/memory-\(getpid()).sock")
            var configuration = MemoryRoleConfiguration(
                regionPath: region ?? "", regionBytes: regionSize ?? 0, arenaBytes: arenaSize, endpoint: endpoint,
                clusterKeyPath: clusterKey ?? run.keyPath, numaNode: numaNode)
            configuration.link = link
            configuration.peerLinks = peerLinks
            configuration.metrics = exported?.hook
            configuration.cacheBytes = cacheSize
            configuration.slotBytes = cacheSlotSize
            configuration.byRequestOnly = regionAccess == "request"
            return try MemoryRole.run(configuration, announce: announce)
        }
        var configuration = StorageRoleConfiguration(
            dataDirectory: data ?? "", endpoint: try Endpoint(parsing: listen ?? ""), clusterKeyPath: clusterKey ?? "",
            numaNode: numaNode)
        configuration.link = link
        configuration.peerLinks = peerLinks
        configuration.metrics = exported?.hook
        configuration.directReads = directReads
        configuration.tiers = try tiers.map(StorageTier.parseList)?.map {
            StorageNodeTier(path: $0.path, budgetBytes: $0.budgetBytes, mapped: $0.mapped)
        } ?? []
        try StorageRole.run(configuration, announce: announce)
    }
}
