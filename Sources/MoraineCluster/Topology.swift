// A one-box cluster's topology: which roles run, how many, where, over which carrier. It is read
// from a small TOML file (the subset below; a full TOML library would be a dependency for four
// keys) and checked before anything starts, so a bad topology is refused with the problem named.
//
//   # comments, blank lines
//   [[role]]
//   kind = "storage"      # the role: compute, storage, memory, flush or compaction
//   count = 1             # how many (default 1)
//   numa_node = 0         # pin to this NUMA node; "none": not pinned; "auto" (default): Placement.swift
//   carrier = "shm"       # shm (Unix socket + shared memory) or tcp (default shm)
//   port = 0              # tcp: the first port (the n-th instance listens on port + n); 0: any
//   data = "data"         # storage: the data directory (relative to the run directory; default data)
//   tiers = "/dev/shm/t:1G:pmem,slow"  # storage: tiers for the tables, fastest first (relative: under the run directory)
//   direct_reads = false  # storage: read files with O_DIRECT, so every read reaches the device (default false)
//   region = "/dev/shm/x" # memory: the region file (default /dev/shm/moraine-<run dir>-memory-N.region)
//   region_size = 1073741824  # memory: bytes of a new region (default 1 GiB, allocated as used)
//   arena_size = 69206016 # memory: bytes of one memtable arena (default 66 MiB)
//   cache_size = 268435456 # memory: bytes of the region for the shared block cache (default 256 MiB)
//   region_access = "map" # memory: peers on this box map the region ("map", default) or, as across
//                         # boxes, reach it by request only ("request")
//   durability = "wal"    # compute: wal (default) or pmem (memtables in the memory node's region)
//   block_cache_size = 8388608  # compute: each database's own block cache in bytes (default 8 MiB)
//   row_cache_size = 0    # compute: each database's row cache in bytes (default 0, off)
//   link_delay_ns = 0     # one-way delay injected on this role's server (CXL/RDMA emulation)
//   metrics = "127.0.0.1:9100"  # serve /metrics here (the n-th instance on port + n; port 0: any)
//   resp = "127.0.0.1:6380"     # compute: serve database `resp_db` over the Redis protocol (port as metrics)
//   resp_db = "default"   # compute: the database the Redis front end serves (default "default")
//
//   [[link]]              # the emulated link between two kinds of role, both directions
//   between = "compute memory"
//   delay_ns = 2000       # one-way delay (default 0)
//   bandwidth = 0         # bytes per second (default 0: no cap)
//
// Value types; no shared state.
import MoraineSystem
import MoraineTransport

/// The roles of a one-box cluster.
public struct Topology: Sendable, Equatable {
    /// One `[[role]]` table.
    /// Where a role asks to run.
    public enum NUMAChoice: Sendable, Equatable {
        /// Placement's rule for the kind (Placement.swift).
        case auto
        /// Not pinned: every CPU, the default memory policy.
        case unpinned
        /// Pinned to this node, CPUs and memory.
        case node(Int)
    }

    public struct RoleSpec: Sendable, Equatable {
        public var kind: String
        public var count = 1
        public var numa = NUMAChoice.auto
        public var carrier = "shm"
        public var port = 0
        public var data: String? = nil
        /// Storage: tiers for the tables, `PATH:SIZE[:pmem],…` (relative paths under the run directory).
        public var tiers: String? = nil
        /// Storage: read files with O_DIRECT (`--direct-reads`).
        public var directReads = false
        public var linkDelayNanos: Int64 = 0
        public var region: String? = nil
        public var regionBytes = 1 << 30
        public var arenaBytes = 66 << 20
        public var cacheBytes = 256 << 20
        /// Memory: peers reach the region by request only, as across boxes (`--region-access request`).
        public var regionByRequest = false
        /// Compute: where its databases' writes become durable (wal, or pmem in the memory node's region).
        public var durability: String? = nil
        /// Compute: each database's block cache in bytes (nil: the node's default).
        public var blockCacheBytes: Int? = nil
        /// Compute: each database's row cache in bytes (nil: off).
        public var rowCacheBytes: Int? = nil
        /// Where the role serves /metrics: host and first port (nil: it does not).
        public var metrics: (host: String, port: Int)? = nil
        /// Compute: where its Redis front end listens, and the database it serves.
        public var resp: (host: String, port: Int)? = nil
        public var respDatabase: String? = nil

        public static func == (a: RoleSpec, b: RoleSpec) -> Bool {
            a.kind == b.kind && a.count == b.count && a.numa == b.numa && a.carrier == b.carrier && a.port == b.port && a.data == b.data
                && a.tiers == b.tiers && a.directReads == b.directReads
                && a.linkDelayNanos == b.linkDelayNanos && a.region == b.region && a.regionBytes == b.regionBytes
                && a.arenaBytes == b.arenaBytes && a.cacheBytes == b.cacheBytes && a.regionByRequest == b.regionByRequest
                && a.durability == b.durability
                && a.blockCacheBytes == b.blockCacheBytes && a.rowCacheBytes == b.rowCacheBytes
                && a.metrics?.host == b.metrics?.host && a.metrics?.port == b.metrics?.port
                && a.resp?.host == b.resp?.host && a.resp?.port == b.resp?.port && a.respDatabase == b.respDatabase
        }

        /// The address instance `index` of this role uses, from a first address.
        public static func address(_ first: (host: String, port: Int), instance index: Int) -> String {
            "\(first.host):\(first.port == 0 ? 0 : first.port + index)"
        }

        public init(kind: String) { self.kind = kind }
    }

    /// One `[[link]]` table: the emulated link between two kinds of role (either may be
    /// `client`, a process that is no role), replacing their servers' `link_delay_ns` for it.
    public struct LinkSpec: Sendable, Equatable {
        public var kinds: [String] = []
        public var delayNanos: Int64 = 0
        public var bandwidthBytesPerSecond: Int64 = 0

        public init(between first: String, _ second: String, delayNanos: Int64, bandwidthBytesPerSecond: Int64 = 0) {
            kinds = [first, second]
            self.delayNanos = delayNanos
            self.bandwidthBytesPerSecond = bandwidthBytesPerSecond
        }

        init() {}

        /// The emulation a server applies to a peer of this pair.
        public var emulation: LinkEmulation {
            LinkEmulation(
                delay: delayNanos > 0 ? .fixed(nanos: delayNanos) : nil,
                bandwidthBytesPerSecond: bandwidthBytesPerSecond > 0 ? bandwidthBytesPerSecond : nil)
        }
    }

    public var roles: [RoleSpec]
    public var links: [LinkSpec] = []

    public init(roles: [RoleSpec], links: [LinkSpec] = []) {
        self.roles = roles
        self.links = links
    }

    /// The links of a kind of role: the other end's kind (`client` for plain clients) and the
    /// link, as `moraine node --peer-link` takes them.
    public func peerLinks(of kind: String) -> [String: LinkEmulation] {
        var result: [String: LinkEmulation] = [:]
        for link in links where link.kinds.contains(kind) {
            let other = link.kinds[0] == kind ? link.kinds[1] : link.kinds[0]
            result[other] = link.emulation
        }
        return result
    }

    /// The roles this release can run.
    public static let knownKinds: Set<String> = ["compute", "storage", "memory", "flush", "compaction"]

    /// What a `[[link]]` (and `moraine node --peer-link`) may name: a role, or `client`.
    public static let linkKinds = knownKinds.union(["client"])

    /// What `moraine up` starts with no topology: one storage node, one memory node, one flush
    /// worker, one compaction worker and one compute node, over shared memory.
    public static let `default` = Topology(roles: {
        var storage = RoleSpec(kind: "storage")
        storage.data = "data"
        return [storage, RoleSpec(kind: "memory"), RoleSpec(kind: "flush"), RoleSpec(kind: "compaction"), RoleSpec(kind: "compute")]
    }())

    /// Parses the TOML subset described at the top of the file.
    /// - Throws: `.invalid` naming the line and what is wrong with it.
    public init(parsing text: String, name: String = "topology") throws(MoraineError) {
        var roles: [RoleSpec] = []
        var links: [LinkSpec] = []
        var inLink = false
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Self.stripComment(String(rawLine)).trimmed
            let at = "\(name) line \(number + 1)"
            if line.isEmpty { continue }
            if line == "[[role]]" {
                roles.append(RoleSpec(kind: ""))
                inLink = false
                continue
            }
            if line == "[[link]]" {
                links.append(LinkSpec())
                inLink = true
                continue
            }
            if line.hasPrefix("[") {
                throw MoraineError(.invalid, "\(at): only [[role]] and [[link]] tables are known, not \(line)")
            }
            guard let equals = line.firstIndex(of: "=") else { throw MoraineError(.invalid, "\(at): expected key = value") }
            let key = String(line[..<equals]).trimmed
            let value = String(line[line.index(after: equals)...]).trimmed
            if inLink {
                try Self.assign(key, value, to: &links[links.count - 1], at: at)
                continue
            }
            guard !roles.isEmpty else { throw MoraineError(.invalid, "\(at): \(key) outside a [[role]] table") }
            try Self.assign(key, value, to: &roles[roles.count - 1], at: at)
        }
        self.roles = roles
        self.links = links
        try check()
    }

    /// Checks what can be checked without the machine: kinds, counts, carriers, ports, links.
    public func check() throws(MoraineError) {
        guard !roles.isEmpty else { throw MoraineError(.invalid, "the topology names no role") }
        var pairs = Set<[String]>()
        for (index, link) in links.enumerated() {
            let at = "link \(index + 1)"
            let kinds = Self.linkKinds
            guard link.kinds.count == 2, link.kinds.allSatisfy({ kinds.contains($0) }) else {
                throw MoraineError(
                    .invalid, "\(at): between must name two of \(kinds.sorted().joined(separator: ", ")), not '\(link.kinds.joined(separator: " "))'")
            }
            guard pairs.insert(link.kinds.sorted()).inserted else {
                throw MoraineError(.invalid, "\(at): a second link between \(link.kinds[0]) and \(link.kinds[1])")
            }
            guard (0...1_000_000_000).contains(link.delayNanos) else {
                throw MoraineError(.invalid, "\(at): delay_ns must be 0…1000000000, not \(link.delayNanos)")
            }
            guard link.bandwidthBytesPerSecond >= 0 else {
                throw MoraineError(.invalid, "\(at): bandwidth must be 0 (no cap) or a byte rate, not \(link.bandwidthBytesPerSecond)")
            }
        }
        for (index, role) in roles.enumerated() {
            let at = "role \(index + 1) (\(role.kind.isEmpty ? "no kind" : role.kind))"
            guard !role.kind.isEmpty else { throw MoraineError(.invalid, "\(at): kind is missing") }
            guard Self.knownKinds.contains(role.kind) else {
                throw MoraineError(
                    .invalid, "\(at): unknown role \(role.kind); this release runs \(Self.knownKinds.sorted().joined(separator: ", "))")
            }
            guard (1...64).contains(role.count) else { throw MoraineError(.invalid, "\(at): count must be 1…64, not \(role.count)") }
            guard role.carrier == "shm" || role.carrier == "tcp" else {
                throw MoraineError(.invalid, "\(at): carrier must be shm or tcp, not \(role.carrier)")
            }
            guard (0...65535).contains(role.port), role.port == 0 || role.port + role.count - 1 <= 65535 else {
                throw MoraineError(.invalid, "\(at): port \(role.port) out of range for \(role.count) instances")
            }
            guard role.linkDelayNanos >= 0, role.linkDelayNanos <= 1_000_000_000 else {
                throw MoraineError(.invalid, "\(at): link_delay_ns must be 0…1000000000, not \(role.linkDelayNanos)")
            }
            if case .node(let node) = role.numa, node < 0 { throw MoraineError(.invalid, "\(at): numa_node must be 0 or more") }
            if let durability = role.durability {
                guard role.kind == "compute" else { throw MoraineError(.invalid, "\(at): durability applies to compute nodes only") }
                guard durability == "wal" || durability == "pmem" else {
                    throw MoraineError(.invalid, "\(at): durability must be wal or pmem, not \(durability)")
                }
            }
            for (name, address) in [("metrics", role.metrics), ("resp", role.resp)] {
                guard let address else { continue }
                guard !address.host.isEmpty, address.port >= 0, address.port + role.count - 1 <= 65535 else {
                    throw MoraineError(.invalid, "\(at): \(name) port \(address.port) out of range for \(role.count) instances")
                }
            }
            if role.directReads && role.kind != "storage" {
                throw MoraineError(.invalid, "\(at): direct_reads applies to storage nodes only")
            }
            if role.regionByRequest && role.kind != "memory" {
                throw MoraineError(.invalid, "\(at): region_access applies to memory nodes only")
            }
            if role.resp != nil || role.respDatabase != nil {
                guard role.kind == "compute" else { throw MoraineError(.invalid, "\(at): resp and resp_db apply to compute nodes only") }
            }
            if let bytes = role.blockCacheBytes {
                guard role.kind == "compute" else { throw MoraineError(.invalid, "\(at): block_cache_size applies to compute nodes only") }
                guard bytes >= 0, bytes <= 1 << 40 else { throw MoraineError(.invalid, "\(at): block_cache_size must be 0…1 TiB, not \(bytes)") }
            }
            if let bytes = role.rowCacheBytes {
                guard role.kind == "compute" else { throw MoraineError(.invalid, "\(at): row_cache_size applies to compute nodes only") }
                guard bytes >= 0, bytes <= 1 << 40 else { throw MoraineError(.invalid, "\(at): row_cache_size must be 0…1 TiB, not \(bytes)") }
            }
            if role.kind == "memory" {
                guard role.arenaBytes >= 128 << 10, role.arenaBytes % 4096 == 0, role.arenaBytes <= 1 << 31 else {
                    throw MoraineError(.invalid, "\(at): arena_size must be 128 KiB…2 GiB in whole 4096-byte pages, not \(role.arenaBytes)")
                }
                guard role.cacheBytes >= 0, role.cacheBytes <= role.regionBytes - role.arenaBytes - 4096 else {
                    throw MoraineError(.invalid, "\(at): cache_size must leave room for an arena in region_size, not \(role.cacheBytes)")
                }
                guard role.regionBytes >= role.arenaBytes + 4096, role.regionBytes <= 1 << 44 else {
                    throw MoraineError(.invalid, "\(at): region_size must hold one arena and the header, not \(role.regionBytes)")
                }
                if role.count > 1, let region = role.region, !region.isEmpty {
                    throw MoraineError(.invalid, "\(at): \(role.count) memory nodes cannot share the region \(region); leave region unset")
                }
            }
        }
    }

    private static func assign(_ key: String, _ value: String, to link: inout LinkSpec, at: String) throws(MoraineError) {
        switch key {
        case "between":
            guard value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") else {
                throw MoraineError(.invalid, "\(at): between must be a quoted string of two kinds, not \(value)")
            }
            link.kinds = value.dropFirst().dropLast().split(separator: " ").map(String.init)
        case "delay_ns", "bandwidth":
            guard let number = Int64(value.replacingUnderscores) else {
                throw MoraineError(.invalid, "\(at): \(key) must be an integer, not \(value)")
            }
            if key == "delay_ns" { link.delayNanos = number } else { link.bandwidthBytesPerSecond = number }
        default:
            throw MoraineError(.invalid, "\(at): unknown key \(key) in a [[link]] table (known: between, delay_ns, bandwidth)")
        }
    }

    private static func assign(_ key: String, _ value: String, to role: inout RoleSpec, at: String) throws(MoraineError) {
        func text() throws(MoraineError) -> String {
            guard value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\""), !value.dropFirst().dropLast().contains("\"")
            else { throw MoraineError(.invalid, "\(at): \(key) must be a quoted string, not \(value)") }
            return String(value.dropFirst().dropLast())
        }
        func integer() throws(MoraineError) -> Int {
            guard let number = Int(value.replacingUnderscores) else {
                throw MoraineError(.invalid, "\(at): \(key) must be an integer, not \(value)")
            }
            return number
        }
        switch key {
        case "kind": role.kind = try text()
        case "count": role.count = try integer()
        case "numa_node":
            if value.hasPrefix("\"") {
                switch try text() {
                case "auto": role.numa = .auto
                case "none": role.numa = .unpinned
                case let other: throw MoraineError(.invalid, "\(at): numa_node must be a node number, \"auto\" or \"none\", not \(other)")
                }
            } else {
                role.numa = .node(try integer())
            }
        case "carrier": role.carrier = try text()
        case "port": role.port = try integer()
        case "data": role.data = try text()
        case "tiers": role.tiers = try text()
        case "direct_reads":
            switch value {
            case "true": role.directReads = true
            case "false": role.directReads = false
            default: throw MoraineError(.invalid, "\(at): direct_reads must be true or false, not \(value)")
            }
        case "link_delay_ns": role.linkDelayNanos = Int64(try integer())
        case "region": role.region = try text()
        case "region_size": role.regionBytes = try integer()
        case "arena_size": role.arenaBytes = try integer()
        case "cache_size": role.cacheBytes = try integer()
        case "region_access":
            switch try text() {
            case "map": role.regionByRequest = false
            case "request": role.regionByRequest = true
            case let other: throw MoraineError(.invalid, "\(at): region_access must be \"map\" or \"request\", not \(other)")
            }
        case "durability": role.durability = try text()
        case "block_cache_size": role.blockCacheBytes = try integer()
        case "row_cache_size": role.rowCacheBytes = try integer()
        case "metrics", "resp":
            let address = try text()
            guard let colon = address.lastIndex(of: ":"), colon != address.startIndex,
                let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port)
            else { throw MoraineError(.invalid, "\(at): \(key) must be \"HOST:PORT\", not \(value)") }
            let parsed = (host: String(address[..<colon]), port: port)
            if key == "metrics" { role.metrics = parsed } else { role.resp = parsed }
        case "resp_db": role.respDatabase = try text()
        default:
            throw MoraineError(
                .invalid,
                "\(at): unknown key \(key) (known: kind, count, numa_node, carrier, port, data, tiers, direct_reads, link_delay_ns, region, region_size, "
                    + "arena_size, cache_size, durability, block_cache_size, row_cache_size, metrics, resp, resp_db)")
        }
    }

    private static func stripComment(_ line: String) -> String {
        var inString = false
        for (offset, character) in line.enumerated() {
            if character == "\"" { inString.toggle() }
            if character == "#" && !inString { return String(line.prefix(offset)) }
        }
        return line
    }
}

extension String {
    fileprivate var trimmed: String {
        var text = Substring(self)
        while let first = text.first, first == " " || first == "\t" || first == "\r" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text.removeLast() }
        return String(text)
    }

    fileprivate var replacingUnderscores: String { String(filter { $0 != "_" }) }
}
