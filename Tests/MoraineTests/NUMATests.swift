// NUMA placement on whatever machine runs the suite (one node here, several elsewhere): the
// topology lists every online CPU exactly once, a thread pinned to a node runs there, a node
// that does not exist is refused with `invalid`, and a region can be bound to a node.
import Glibc
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@Suite("NUMA placement")
struct NUMATests {
    @Test("the topology covers every online CPU once")
    func topologyCoversCPUs() {
        let topology = NUMATopology.current()
        #expect(!topology.nodes.isEmpty)
        let cpus = topology.nodes.flatMap(\.cpus)
        #expect(Set(cpus).count == cpus.count, "a CPU in two nodes: \(topology.description)")
        #expect(cpus.count == Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), "\(topology.description)")
        #expect(topology.description.contains("node \(topology.nodes[0].id): cpus"))
    }

    @Test("a thread pinned to each node runs on that node; a missing node is refused")
    func pinning() throws {
        let topology = NUMATopology.current()
        for node in topology.nodes {
            let result = Mutex<(finished: Bool, node: Int?, failure: String?)>((false, nil, nil))
            startThread(name: "numa-pin-test") {
                do {
                    try NUMATopology.pinCurrentThread(toNode: node.id)
                    let current = NUMATopology.currentNode()
                    result.withLock { $0 = (true, current, nil) }
                } catch {
                    result.withLock { $0 = (true, nil, "\(error)") }
                }
            }
            while !result.withLock({ $0.finished }) { usleep(1000) }
            #expect(result.withLock { $0.failure } == nil)
            #expect(result.withLock { $0.node } == node.id)
        }
        let missing = (topology.nodes.map(\.id).max() ?? 0) + 1
        let error = #expect(throws: MoraineError.self) { try NUMATopology.pinCurrentThread(toNode: missing) }
        #expect(error?.kind == .invalid)
    }

    @Test("a persistent-memory region can be bound to a node")
    func regionOnNode() throws {
        let path = temporaryRegionPath("numa")
        defer { unlink(path) }
        let node = NUMATopology.current().nodes[0].id
        let region = try PmemRegion.open(path: path, layout: PmemLayout(arenaBytes: 8192, arenaCount: 2), numaNode: node)
        #expect(region.numaNode == node)
        #expect(try region.allocateArena(tag: 1) != nil)
    }
}
