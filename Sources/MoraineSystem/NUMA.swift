// NUMA placement: the machine's nodes (their CPUs and memory), pinning the calling thread (or,
// called from the main thread at start, the process) to a node, and binding memory to a node.
// On a machine with one node, or a kernel without NUMA support, the topology is one node with
// every CPU, pinning to node 0 succeeds, and binding memory is a no-op; nothing else changes.
// numa_run_on_node pins the calling OS thread: call it on a thread you own, never in a Task.
import CSystemShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One NUMA node.
public struct NUMANode: Sendable, Equatable {
    public let id: Int
    public let cpus: [Int]
    /// Total and free memory in bytes (nil when the kernel does not say).
    public let memoryBytes: Int?
    public let freeMemoryBytes: Int?

    public init(id: Int, cpus: [Int], memoryBytes: Int? = nil, freeMemoryBytes: Int? = nil) {
        self.id = id
        self.cpus = cpus
        self.memoryBytes = memoryBytes
        self.freeMemoryBytes = freeMemoryBytes
    }
}

/// The machine's NUMA topology.
public struct NUMATopology: Sendable {
    public let nodes: [NUMANode]
    /// False when the kernel has no NUMA support (the topology is then one synthetic node).
    public let isNUMAAvailable: Bool

    /// A described machine (placement is planned, and tested, against descriptions).
    public init(nodes: [NUMANode], isNUMAAvailable: Bool = true) {
        self.nodes = nodes
        self.isNUMAAvailable = isNUMAAvailable
    }

    /// Reads the topology from libnuma.
    public static func current() -> NUMATopology {
        let cpuCount = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        guard CSystemShims_numa_available() == 1 else {
            return NUMATopology(
                nodes: [NUMANode(id: 0, cpus: Array(0..<max(cpuCount, 1)), memoryBytes: nil, freeMemoryBytes: nil)],
                isNUMAAvailable: false)
        }
        var nodes: [NUMANode] = []
        for id in 0...Int(CSystemShims_numa_max_node()) {
            var cpus = [Int32](repeating: 0, count: 4096)
            let count = Int(CSystemShims_numa_node_cpus(Int32(id), &cpus, Int32(cpus.count)))
            if count <= 0 { continue }  // a memory-only or absent node
            var free: Int64 = 0
            let total = CSystemShims_numa_node_size(Int32(id), &free)
            nodes.append(
                NUMANode(
                    id: id, cpus: cpus.prefix(min(count, cpus.count)).map(Int.init),
                    memoryBytes: total >= 0 ? Int(total) : nil, freeMemoryBytes: total >= 0 ? Int(free) : nil))
        }
        return NUMATopology(nodes: nodes, isNUMAAvailable: true)
    }

    /// One line per node, for start-up reports.
    public var description: String {
        let header = isNUMAAvailable ? "NUMA: \(nodes.count) node(s)" : "NUMA: not available; one node"
        let lines = nodes.map { node in
            let memory = node.memoryBytes.map { " \($0 >> 20) MiB (\((node.freeMemoryBytes ?? 0) >> 20) MiB free)" } ?? ""
            return "node \(node.id): cpus \(Self.ranges(node.cpus))\(memory)"
        }
        return ([header] + lines).joined(separator: "; ")
    }

    /// CPU numbers as the kernel's list format writes them (0-3,8).
    public static func ranges(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        while index < cpus.count {
            var end = index
            while end + 1 < cpus.count && cpus[end + 1] == cpus[end] + 1 { end += 1 }
            parts.append(end == index ? "\(cpus[index])" : "\(cpus[index])-\(cpus[end])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }

    /// Restricts the calling thread (and threads it starts later) to `node`'s CPUs.
    /// - Throws: `.invalid` for a node that does not exist, `.io` with the errno otherwise.
    public static func pinCurrentThread(toNode node: Int) throws {
        let topology = current()
        guard topology.nodes.contains(where: { $0.id == node }) else {
            throw MoraineError(.invalid, "NUMA node \(node) does not exist (\(topology.description))")
        }
        if !topology.isNUMAAvailable { return }  // one synthetic node: already everywhere
        let code = CSystemShims_numa_run_on_node(Int32(node))
        if code != 0 { throw posixError("numa_run_on_node", "node \(node)", code) }
    }

    /// Pins the calling thread to `node`'s CPUs and binds its memory to `node` (both inherited
    /// by threads it starts later): what a role process does first, before it starts a thread.
    /// - Throws: `.invalid` for a node that does not exist, `.io` with the errno otherwise.
    public static func pinProcess(toNode node: Int) throws {
        try pinCurrentThread(toNode: node)
        guard CSystemShims_numa_available() == 1 else { return }
        let code = CSystemShims_numa_bind_process_memory(Int32(node))
        if code != 0 { throw posixError("set_mempolicy", "node \(node)", code) }
    }

    /// Binds the pages of a mapping to `node`; returns 0 or an errno (0 without NUMA support).
    public static func bindMemory(_ address: UnsafeMutableRawPointer, length: Int, node: Int) -> Int32 {
        guard CSystemShims_numa_available() == 1 else { return node == 0 ? 0 : EINVAL }
        return CSystemShims_numa_bind_memory(address, length, Int32(node))
    }

    /// The node of the CPU the calling thread runs on now.
    public static func currentNode() -> Int {
        let cpu = CSystemShims_current_cpu()
        guard cpu >= 0, CSystemShims_numa_available() == 1 else { return 0 }
        return max(Int(CSystemShims_numa_node_of_cpu(cpu)), 0)
    }
}
