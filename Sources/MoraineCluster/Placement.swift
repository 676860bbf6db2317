// Placement: which NUMA node each role of a topology runs on, as a pure function of the topology
// and the machine's NUMA description, so that it can be tested on machines this one is not (one
// node, two sockets, four nodes) and `moraine status` can compare it with what the kernel reports.
//
// A role's `numa_node` is a node number (pinned there, refused when the machine lacks it),
// "none" (not pinned), or "auto" (the default), which spreads the roles the way a disaggregated
// cluster is laid out: the compute node alone on the first node, the memory node (and the flush
// workers, which read memtables from its region in place) on the second, the storage node on the
// third, and the compaction workers on the fourth — or, on a machine with fewer nodes, beside the
// storage node. Every node index wraps onto what the machine has, so on two sockets compute has
// the first to itself and every other role shares the second, and on one node everything runs
// on node 0. Several instances of one kind share their kind's node. Nodes are taken in order of
// their ids, counting only nodes with CPUs (a CPU-less memory node cannot run a process).
//
// Pure functions over value types.
import MoraineSystem

public enum Placement {
    /// Where one instance of a role runs.
    public struct Assignment: Sendable, Equatable {
        public let kind: String
        public let index: Int
        /// The node it is pinned to (its CPUs and its memory), or nil when it is not pinned.
        public let node: Int?
        /// The CPUs it may run on: its node's, or every CPU of the machine when not pinned.
        public let cpus: [Int]

        public var name: String { "\(kind)-\(index)" }
    }

    /// Plans every instance of `topology` on `machine`, in the topology's order.
    /// - Throws: `.invalid` naming the role that asks for a node the machine lacks.
    public static func plan(_ topology: Topology, machine: NUMATopology) throws(MoraineError) -> [Assignment] {
        let nodes = machine.nodes.sorted { $0.id < $1.id }
        guard !nodes.isEmpty else { throw MoraineError(.invalid, "the machine description has no NUMA node with CPUs") }
        let allCPUs = Array(Set(nodes.flatMap(\.cpus))).sorted()
        var assignments: [Assignment] = []
        for (number, spec) in topology.roles.enumerated() {
            let node: NUMANode?
            switch spec.numa {
            case .unpinned:
                node = nil
            case .node(let id):
                guard let found = nodes.first(where: { $0.id == id }) else {
                    throw MoraineError(
                        .invalid,
                        "role \(number + 1) (\(spec.kind)) asks for NUMA node \(id), which this machine lacks (\(machine.description))")
                }
                node = found
            case .auto:
                node = nodes[automaticIndex(kind: spec.kind, nodeCount: nodes.count)]
            }
            for index in 0..<spec.count {
                assignments.append(Assignment(kind: spec.kind, index: index, node: node?.id, cpus: node?.cpus ?? allCPUs))
            }
        }
        return assignments
    }

    /// The index (into the nodes with CPUs, in id order) of a kind's node under "auto".
    static func automaticIndex(kind: String, nodeCount: Int) -> Int {
        func wrap(_ slot: Int) -> Int { slot < nodeCount ? slot : (nodeCount == 1 ? 0 : 1 + (slot - 1) % (nodeCount - 1)) }
        switch kind {
        case "compute": return 0
        case "memory", "flush": return wrap(1)
        case "storage": return wrap(2)
        case "compaction": return nodeCount >= 4 ? 3 : wrap(2)
        default: return 0
        }
    }

    /// One line per assignment, for logs: "memory-0: node 1, cpus 8-15".
    public static func describe(_ assignments: [Assignment]) -> String {
        assignments.map { assignment in
            let cpus = "cpus " + NUMATopology.ranges(assignment.cpus)
            return "\(assignment.name): " + (assignment.node.map { "node \($0), \(cpus)" } ?? "not pinned, \(cpus)")
        }.joined(separator: "\n")
    }
}
