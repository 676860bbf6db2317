// Placement as a pure function of a topology and a described machine (one node, two sockets,
// four nodes, a machine with a CPU-less memory node and gaps in its node ids), the topology's
// numa_node spellings, and the kernel's own report of where a process runs (/proc), checked on a
// real child pinned by `moraine node --numa-node`.
import Foundation
import Glibc
import MoraineCluster
import MoraineSystem
import MoraineMessages
import MoraineTestSupport
import MoraineTransport
import Testing

@Suite("Placement")
struct PlacementTests {
    /// A machine of `nodes` nodes with `cpusPerNode` CPUs each, numbered in order.
    static func machine(nodes: Int, cpusPerNode: Int, ids: [Int]? = nil) -> NUMATopology {
        let ids = ids ?? Array(0..<nodes)
        return NUMATopology(
            nodes: ids.enumerated().map { offset, id in
                NUMANode(id: id, cpus: Array(offset * cpusPerNode..<(offset + 1) * cpusPerNode))
            })
    }

    static func nodes(_ assignments: [Placement.Assignment]) -> [String: Int?] {
        Dictionary(uniqueKeysWithValues: assignments.map { ($0.name, $0.node) })
    }

    @Test("the default topology on one node, two sockets and four nodes")
    func defaultTopology() throws {
        let one = try Placement.plan(.default, machine: Self.machine(nodes: 1, cpusPerNode: 2))
        #expect(one.allSatisfy { $0.node == 0 && $0.cpus == [0, 1] }, "\(Placement.describe(one))")

        let two = Self.nodes(try Placement.plan(.default, machine: Self.machine(nodes: 2, cpusPerNode: 8)))
        #expect(two == ["compute-0": 0, "memory-0": 1, "flush-0": 1, "storage-0": 1, "compaction-0": 1], "\(two)")

        let four = try Placement.plan(.default, machine: Self.machine(nodes: 4, cpusPerNode: 4))
        #expect(Self.nodes(four) == ["compute-0": 0, "memory-0": 1, "flush-0": 1, "storage-0": 2, "compaction-0": 3], "\(four)")
        #expect(four.first { $0.kind == "storage" }?.cpus == [8, 9, 10, 11])

        let three = Self.nodes(try Placement.plan(.default, machine: Self.machine(nodes: 3, cpusPerNode: 2)))
        #expect(three == ["compute-0": 0, "memory-0": 1, "flush-0": 1, "storage-0": 2, "compaction-0": 2], "\(three)")
    }

    @Test("explicit nodes, none, several instances, and node ids with gaps")
    func explicitChoices() throws {
        var topology = Topology(roles: [Topology.RoleSpec(kind: "storage"), Topology.RoleSpec(kind: "compaction")])
        topology.roles[0].numa = .node(6)
        topology.roles[1].count = 3
        topology.roles[1].numa = .unpinned
        let gaps = Self.machine(nodes: 2, cpusPerNode: 4, ids: [2, 6])
        let plan = try Placement.plan(topology, machine: gaps)
        #expect(plan.map(\.name) == ["storage-0", "compaction-0", "compaction-1", "compaction-2"])
        #expect(plan[0].node == 6 && plan[0].cpus == [4, 5, 6, 7])
        #expect(plan.dropFirst().allSatisfy { $0.node == nil && $0.cpus == Array(0..<8) }, "\(Placement.describe(plan))")
        // Auto takes nodes in id order, whatever the ids are.
        let auto = Self.nodes(try Placement.plan(.default, machine: gaps))
        #expect(auto["compute-0"] == 2 && auto["memory-0"] == 6, "\(auto)")
    }

    @Test("a node the machine lacks is refused, naming the role and the machine")
    func missingNode() throws {
        var topology = Topology(roles: [Topology.RoleSpec(kind: "compute"), Topology.RoleSpec(kind: "memory")])
        topology.roles[1].numa = .node(2)
        #expect(throws: MoraineError.self) { try Placement.plan(topology, machine: Self.machine(nodes: 2, cpusPerNode: 2)) }
        do {
            _ = try Placement.plan(topology, machine: Self.machine(nodes: 2, cpusPerNode: 2))
        } catch {
            #expect(error.kind == .invalid && error.message.contains("role 2 (memory) asks for NUMA node 2"), "\(error.message)")
            #expect(error.message.contains("node 1: cpus 2-3"), "\(error.message)")
        }
        #expect(throws: MoraineError.self) { try Placement.plan(.default, machine: NUMATopology(nodes: [])) }
    }

    @Test("numa_node takes a number, \"auto\" or \"none\"; anything else is refused")
    func topologySpellings() throws {
        let parsed = try Topology(
            parsing: "[[role]]\nkind = \"storage\"\nnuma_node = 1\n[[role]]\nkind = \"memory\"\nnuma_node = \"none\"\n"
                + "[[role]]\nkind = \"compute\"\nnuma_node = \"auto\"\n[[role]]\nkind = \"flush\"\n")
        #expect(parsed.roles.map(\.numa) == [.node(1), .unpinned, .auto, .auto])
        for bad in ["\"far\"", "-1", "one"] {
            #expect(throws: MoraineError.self, "numa_node = \(bad)") {
                try Topology(parsing: "[[role]]\nkind = \"storage\"\nnuma_node = \(bad)\n")
            }
        }
    }

    @Test("numa_maps and CPU lists parse as the kernel writes them")
    func kernelFormats() {
        #expect(ProcessPlacement.parseCPUList("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11])
        #expect(ProcessPlacement.parseCPUList("3-1") == nil && ProcessPlacement.parseCPUList("x") == nil)
        let maps = """
            55d0 default file=/usr/bin/moraine mapped=2 N0=2 kernelpagesize_kB=4
            55e0 bind:1 heap anon=30 dirty=30 N1=30 kernelpagesize_kB=4
            7f00 bind:1 anon=10 dirty=10 N0=4 N1=6 kernelpagesize_kB=4
            7ffc bind:1 stack anon=3 dirty=3 N1=3 kernelpagesize_kB=4
            """
        let parsed = ProcessPlacement.parseNumaMaps(maps)
        #expect(parsed.policy == "bind:1" && parsed.pagesPerNode == [0: 6, 1: 39])
        let summary = ProcessPlacement(cpus: [8, 9, 10, 11], memoryPolicy: "bind:1", pagesPerNode: [0: 1, 1: 3]).summary
        #expect(summary == "cpus 8-11, bind:1, resident 25% node 0, 75% node 1", "\(summary)")
    }

    @Test("a role started with --numa-node runs where the kernel says it does")
    func pinnedChildReadBack() throws {
        let machine = NUMATopology.current()
        let node = machine.nodes.last!
        let run = TempDir("moraine-placement")
        defer { run.remove() }
        try ClusterKey.generate(path: RunDirectory(run.path).keyPath)
        try FileManager.default.createDirectory(atPath: run.file("data"), withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: run.file("storage.log"), contents: nil)
        let child = Process()
        launchDyingWithTests(
            child, moraineExecutablePath(),
            [
                "node", "--role", "storage", "--data", run.file("data"), "--listen", "shm:" + run.file("s.sock"), "--cluster-key",
                RunDirectory(run.path).keyPath, "--numa-node", String(node.id),
            ])
        child.standardError = FileHandle(forWritingAtPath: run.file("storage.log"))
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        defer {
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        // The endpoint line comes once the node serves (its threads started, after pinning).
        var byte: UInt8 = 0
        var line: [UInt8] = []
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
        try #require(!line.isEmpty, "the storage node did not start: \((try? String(contentsOfFile: run.file("storage.log"), encoding: .utf8)) ?? "")")
        let placement = try #require(ProcessPlacement.read(pid: child.processIdentifier))
        #expect(Set(placement.cpus) == Set(node.cpus), "\(placement.summary) against \(machine.description)")
        #expect(placement.threadsAgree, "a thread started before the process pinned itself: \(placement.summary)")
        if machine.isNUMAAvailable {
            #expect(placement.memoryPolicy == "bind:\(node.id)", "\(placement.summary)")
            #expect(placement.pagesPerNode.keys.allSatisfy { $0 == node.id }, "\(placement.summary)")
        }
        // This process was never pinned: the default policy.
        let own = try #require(ProcessPlacement.read(pid: getpid()))
        #expect(own.memoryPolicy == nil || own.memoryPolicy == "default", "\(own.summary)")
    }
}
