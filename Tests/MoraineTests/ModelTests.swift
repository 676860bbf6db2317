// The randomized model test: the engine and a dictionary oracle receive the same random
// operations (puts, deletes, batches, gets, iterators both ways with bounds, snapshots, flushes,
// compactions, reopens; drawn by ModelGenerator); every read is compared. It runs under several
// configurations whose answers must all equal the oracle's. MORAINE_SEED replays a run exactly
// (the determinism test below holds the generator to that); MORAINE_MODEL_STEPS sets its
// length (default 1500 per configuration).
import Glibc
import Moraine
import MoraineCompute
import MoraineMemory
import MoraineMessages
import MoraineTestSupport
import MoraineTransport
import MoraineWorker
import Testing

struct ModelConfiguration: Sendable, CustomStringConvertible {
    let name: String
    /// Where the files live: nil for the local file system, else a storage node on this carrier.
    var storage: Carrier? = nil
    /// Whether compactions run on a compaction worker (in this process, over the same carrier).
    var worker = false
    /// Whether the memtables live in the region of a memory node (in this process), `pmem`
    /// durability through it: every reopen is a new owner that re-attaches them.
    var memory = false
    /// Whether the database runs on a compute node (in this process) that a thin client reaches
    /// over this carrier: every reopen restarts the node.
    var compute: Carrier? = nil
    /// Whether the tables spread over two storage tiers beside the database directory: a fast
    /// one of `fastTierBytes` read through a mapping, which fills (so tables move down during
    /// the run), and an unbounded one.
    var tiers = false
    static let fastTierBytes: UInt64 = 10 << 10
    let options: @Sendable (inout Options) -> Void
    var description: String { name }

    static let all: [ModelConfiguration] = [
        ModelConfiguration(name: "tiny-memtable") { o in
            o.writeBufferSize = 8 << 10
            o.targetFileSizeBase = 8 << 10
            o.maxBytesForLevelBase = 32 << 10
            o.level0FileNumCompactionTrigger = 2
            o.blockSize = 256
        },
        // The row cache on, small enough to evict, with tiny memtables: flushes invalidate keys it
        // answered between reads of the same keys; snapshot reads pass it by.
        ModelConfiguration(name: "row-cache") { o in
            o.writeBufferSize = 8 << 10
            o.targetFileSizeBase = 8 << 10
            o.maxBytesForLevelBase = 32 << 10
            o.level0FileNumCompactionTrigger = 2
            o.rowCacheSize = 16 << 10
        },
        ModelConfiguration(name: "no-compaction") { o in
            o.writeBufferSize = 16 << 10
            o.disableAutoCompactions = true
            o.compression = .none
            o.bloomBitsPerKey = 0
            o.blockCacheSize = 0
        },
        ModelConfiguration(name: "one-thread-big-blocks") { o in
            o.writeBufferSize = 64 << 10
            o.maxBackgroundJobs = 1
            o.blockSize = 16 << 10
            o.targetFileSizeBase = 32 << 10
            o.maxBytesForLevelBase = 64 << 10
        },
        // Two tiers: L0 (counted as L1's 8 KiB) fits the fast tier's 10 KiB, L1 does not. L0
        // piles up to eight tables of about 4 KiB before its compaction, so its oldest tables
        // move down (whatever the seed's mix of writes), and compactions read inputs from both.
        ModelConfiguration(name: "two-tiers", tiers: true) { o in
            o.writeBufferSize = 4 << 10
            o.targetFileSizeBase = 4 << 10
            o.maxBytesForLevelBase = 8 << 10
            o.level0FileNumCompactionTrigger = 8
            o.compression = .none
        },
        // The same two tiers on a storage node (its `--tiers`), every flush and compaction on a
        // worker that reads and writes the node's tiers.
        ModelConfiguration(name: "storage-node-tiers", storage: .sharedMemory, worker: true, tiers: true) { o in
            o.writeBufferSize = 4 << 10
            o.targetFileSizeBase = 4 << 10
            o.maxBytesForLevelBase = 8 << 10
            o.level0FileNumCompactionTrigger = 8
            o.compression = .none
        },
        ModelConfiguration(name: "pmem-durability") { o in
            // The persistent log in a /dev/shm region instead of the WAL; small arenas, so
            // memtables switch on a full arena as well as on a full memtable.
            o.durability = .pmem
            o.writeBufferSize = 8 << 10
            o.pmemArenaCount = 4
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        // The files on a storage node in this process, over each carrier (reopens take the
        // lease again, with a new epoch).
        ModelConfiguration(name: "storage-node-shm", storage: .sharedMemory) { o in
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        ModelConfiguration(name: "storage-node-tcp", storage: .tcp) { o in
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        // The same, every flush and compaction on a worker (its result checked before install); over
        // shared memory with small levels and four background threads, so compactions of
        // disjoint tables run side by side on the worker's two slots.
        ModelConfiguration(name: "worker-shm", storage: .sharedMemory, worker: true) { o in
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 8 << 10
            o.level0FileNumCompactionTrigger = 2
            o.maxBytesForLevelBase = 32 << 10
            o.maxBackgroundJobs = 4
        },
        ModelConfiguration(name: "worker-tcp", storage: .tcp, worker: true) { o in
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 8 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        // Memtables written in place in a memory node's arenas of 128 KiB (files on a storage node
        // over shared memory); memtables switch at 16 KiB; a row cache, invalidated by flushes of
        // memtables in the region.
        ModelConfiguration(name: "memory-node", storage: .sharedMemory, memory: true) { o in
            o.durability = .pmem
            o.rowCacheSize = 64 << 10
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        // A thin client of a compute node, over each carrier; the node's engine has small memtables
        // and levels, so flushes and compactions run under the client's iterators and snapshots
        // (over shared memory with a row cache: the node's reads answer from it).
        ModelConfiguration(name: "compute-node-shm", compute: .sharedMemory) { o in
            o.rowCacheSize = 64 << 10
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
        ModelConfiguration(name: "compute-node-tcp", compute: .tcp) { o in
            o.writeBufferSize = 16 << 10
            o.targetFileSizeBase = 8 << 10
            o.level0FileNumCompactionTrigger = 2
        },
    ]
}

/// Runs a generator's steps against one database and checks every read against the oracle.
struct ModelRun {
    let seed: UInt64
    let configuration: ModelConfiguration
    let directory: String
    var generator: ModelGenerator
    var database: Database
    /// Live snapshots, oldest first, matching the generator's snapshot states.
    var snapshots: [Snapshot] = []
    var step = 0
    var current: ModelStep? = nil
    /// Tables moved between tiers by the earlier opens (a reopen starts the counters again).
    var tierMovesBefore = 0
    /// The storage node the files live on, for the configurations that use one.
    let node: StorageTestNode?
    /// The compaction worker, and the runner that sends it jobs, for the configurations that use one.
    let worker: TestWorker?
    let runner: RemoteJobRunner?
    /// The memory node, for the configuration that uses one.
    let memory: MemoryTestNode?
    /// The compute node, for the configurations that use one.
    let compute: ComputeTestNode?

    init(seed: UInt64, configuration: ModelConfiguration) throws {
        self.seed = seed
        self.configuration = configuration
        self.generator = ModelGenerator(seed: seed)
        node = try configuration.storage.map {
            try StorageTestNode($0, tierBudgets: configuration.tiers ? [ModelConfiguration.fastTierBytes, nil] : [])
        }
        if configuration.worker, let node {
            let worker = try TestWorker(for: node)
            self.worker = worker
            // The same worker takes the flushes too: every flush and compaction is remote.
            runner = RemoteJobRunner(key: node.key, timing: TestWorker.timing, flushWorkers: { [worker.endpoint] }) {
                [worker.endpoint]
            }
        } else {
            worker = nil
            runner = nil
        }
        memory = configuration.memory ? try MemoryTestNode(arenaBytes: 128 << 10, arenaCount: 16) : nil
        self.directory = node == nil ? makeTemporaryDirectory("moraine-model") : "model"
        compute = try configuration.compute.map { try ComputeTestNode($0, configure: configuration.options) }
        if let compute {
            database = try compute.connect("model")
        } else {
            database = try Database(
                path: directory, options: Self.options(configuration, directory: directory, node: node, runner: runner, memory: memory))
        }
    }

    static func options(
        _ configuration: ModelConfiguration, directory: String, node: StorageTestNode?, runner: RemoteJobRunner? = nil,
        memory: MemoryTestNode? = nil
    ) -> Options {
        var options = Options()
        options.createIfMissing = true
        if configuration.tiers, let node {
            // The node's tiers, as a cluster's compute side takes them.
            options.tiers = (try? ClusterAttachment.tiers(of: node.remote, database: directory)) ?? []
        } else if configuration.tiers {
            options.tiers = [
                StorageTier(path: directory + ".fast", budgetBytes: ModelConfiguration.fastTierBytes, mapped: true),
                StorageTier(path: directory + ".slow", budgetBytes: nil),
            ]
        }
        if let node { options.fileSystem = node.remote }
        if let runner { options.jobRunner = runner }
        if let memory, let node {
            let files = node.remote
            let endpoint = memory.endpoint
            options.memtableRegion = MemoryNodeArenas(key: memory.key, epoch: { files.leaseEpoch(of: $0) }) {
                () throws(TransportError) -> Endpoint in endpoint
            }
        }
        configuration.options(&options)
        return options
    }

    var oracle: Oracle { generator.oracle }

    var context: String {
        "seed \(seed), configuration \(configuration.name), step \(step)\(current.map { " (\($0))" } ?? "")"
    }

    mutating func run(steps: Int) throws {
        defer {
            if configuration.tiers {
                // Tables really moved down, and each tier holds at least what the version names
                // there (an old copy goes once no reader holds it).
                _ = database.waitForBackgroundIdle(timeoutNanos: 30_000_000_000)
                let stats = database.stats()
                let moves = tierMovesBefore + stats.tierMoves
                #expect(moves > 0 && stats.tierMoveFailures == 0, "\(moves) moves, \(stats.tierMoveFailures) failed")
                #expect(stats.tiers.count == 2 && stats.tiers[1].fileCount > 0, "tiers: \(stats.tiers)")
                for tier in stats.tiers where node == nil {
                    let onDisk = (try? PosixFileSystem.shared.children(of: tier.path))?.filter { $0.hasSuffix(".sst") }.count
                    #expect((onDisk ?? -1) >= tier.fileCount, "tier \(tier.tier): \(onDisk ?? -1) tables on disk, \(tier.fileCount) in the version")
                }
            }
            try? database.close()
            if let runner {
                // The compactions really ran on the worker, and none fell back.
                #expect(runner.remoteJobs > 0 && runner.fallbacks == 0, "\(runner.remoteJobs) remote, \(runner.fallbacks) local")
                worker?.stop()
            }
            if let compute {
                // The database really ran on the node, and the client's leases all went back.
                #expect(compute.node.openDatabases["model"] != nil, "the compute node has no database open")
                #expect(compute.eventually { compute.node.leaseCounts.snapshots + compute.node.leaseCounts.iterators == 0 }, "leases left")
            }
            if let memory {
                // The memtables really lived in the region.
                #expect(memory.node.status.holders.first.map { $0.arenas > 0 } == true, "no arena held in the region")
            }
            if let node {
                // The files really lived on the node.
                #expect(node.remote.requestCount > 100, "\(node.remote.requestCount) storage requests")
                #expect(access(node.dataDirectory.file("model/CURRENT"), F_OK) == 0, "no CURRENT on the storage node")
                node.remove()
            } else {
                removeTree(directory)
                removeTree(Options.defaultPmemPath(for: directory))
                removeTree(directory + ".fast")
                removeTree(directory + ".slow")
            }
        }
        for s in 0..<steps {
            step = s
            let next = generator.next()
            current = next
            try perform(next)
        }
        step = steps
        current = nil
        try checkEverything(oracle, snapshot: nil)
    }

    /// Runs one step; the generator has already applied it to the oracle.
    mutating func perform(_ step: ModelStep) throws {
        switch step {
        case .put(let key, let value):
            try database.put(key, value)
        case .delete(let key):
            try database.delete(key)
        case .batch(let items):
            var batch = WriteBatch()
            for (key, value) in items {
                if let value { batch.put(key, value) } else { batch.delete(key) }
            }
            try database.write(batch)
        case .multiGet(let keys):
            let got = try database.multiGet(keys)
            for (key, value) in zip(keys, got) where value != oracle.get(key) {
                Issue.record("multiGet \(hex(key)): got \(value.map { "\($0.count) bytes" } ?? "nil"); \(context)")
                break
            }
        case .get(let key):
            let got = try database.get(key)
            #expect(
                got == oracle.get(key), "get \(hex(key)): got \(got.map { "\($0.count) bytes" } ?? "nil"); \(context)")
        case .walk(let walk):
            try checkIteratorWalk(walk, oracle, snapshot: nil)
        case .takeSnapshot:
            snapshots.append(try database.snapshot())
        case .readSnapshot(let index, let key, let keys, let walk):
            let snapshot = snapshots[index]
            let state = generator.snapshotStates[index]
            let got = try database.get(key, options: ReadOptions(snapshot: snapshot))
            #expect(
                got == state.get(key),
                "get at snapshot \(snapshot.sequence) \(hex(key)): got \(got.map { "\($0.count) bytes" } ?? "nil"); \(context)"
            )
            let batch = try database.multiGet(keys, options: ReadOptions(snapshot: snapshot))
            #expect(batch == keys.map { state.get($0) }, "multiGet at snapshot \(snapshot.sequence); \(context)")
            try checkIteratorWalk(walk, state, snapshot: snapshot)
        case .releaseSnapshot(let index):
            database.releaseSnapshot(snapshots.remove(at: index))
        case .flush:
            try database.flush()
        case .compactAll:
            try database.compactRange()
            try checkEverything(oracle, snapshot: nil)
        case .compactRange(let begin, let end):
            try database.compactRange(begin: begin, end: end)
            try checkEverything(oracle, snapshot: nil)
        case .checkEverything:
            try checkEverything(oracle, snapshot: nil)
        case .reopen:
            snapshots.removeAll()
            if configuration.tiers { tierMovesBefore += database.stats().tierMoves }
            try database.close()
            if let compute {
                try compute.restart()
                database = try compute.connect("model", create: false)
            } else {
                database = try Database(
                    path: directory, options: Self.options(configuration, directory: directory, node: node, runner: runner, memory: memory))
            }
            try checkEverything(oracle, snapshot: nil)
        }
    }

    /// A full scan both ways must equal the oracle.
    func checkEverything(_ state: Oracle, snapshot: Snapshot?) throws {
        let expected = state.sorted()
        let iterator = try database.makeIterator(options: ReadOptions(snapshot: snapshot))
        var forward: [(key: [UInt8], value: [UInt8])] = []
        try iterator.seekToFirst()
        while iterator.isValid {
            forward.append((iterator.key, iterator.value))
            try iterator.next()
        }
        #expect(
            firstDifference(forward, expected) == nil,
            "forward scan: \(firstDifference(forward, expected) ?? ""); \(context)")
        var backward: [(key: [UInt8], value: [UInt8])] = []
        try iterator.seekToLast()
        while iterator.isValid {
            backward.append((iterator.key, iterator.value))
            try iterator.prev()
        }
        let reversed = Array(expected.reversed())
        #expect(
            firstDifference(backward, reversed) == nil,
            "backward scan: \(firstDifference(backward, reversed) ?? ""); \(context)")
    }

    /// Where two pair lists first differ, briefly; nil when equal.
    func firstDifference(_ got: [(key: [UInt8], value: [UInt8])], _ want: [(key: [UInt8], value: [UInt8])]) -> String? {
        for i in 0..<min(got.count, want.count) where got[i].key != want[i].key || got[i].value != want[i].value {
            return
                "at \(i): got key \(hex(got[i].key)) (value \(got[i].value.count) bytes), want key \(hex(want[i].key)) (value \(want[i].value.count) bytes)"
        }
        if got.count != want.count { return "got \(got.count) pairs, want \(want.count)" }
        return nil
    }

    /// Walks an iterator as `walk` says and compares each position with `state`.
    func checkIteratorWalk(_ walk: IteratorWalk, _ state: Oracle, snapshot: Snapshot?) throws {
        let expected = state.sorted(lower: walk.lower, upper: walk.upper)
        let iterator = try database.makeIterator(
            options: ReadOptions(snapshot: snapshot, lowerBound: walk.lower, upperBound: walk.upper))
        switch walk.start {
        case 0: try iterator.seekToFirst()
        case 1: try iterator.seekToLast()
        case 2: try iterator.seek(walk.target)
        default: try iterator.seekForPrev(walk.target)
        }
        var index = walk.startIndex(expected)  // position in `expected`; -1 or count means invalid
        for move in 0...walk.moves.count {
            let valid = index >= 0 && index < expected.count
            #expect(iterator.isValid == valid, "\(walk) move \(move) validity: \(context)")
            guard valid, iterator.isValid else { return }
            let key = iterator.key
            #expect(
                key == expected[index].key,
                "\(walk) move \(move): key \(hex(key)), want \(hex(expected[index].key)); \(context)")
            #expect(iterator.value == expected[index].value, "\(walk) move \(move): wrong value for \(hex(key)); \(context)")
            guard move < walk.moves.count else { return }
            if walk.moves[move] {
                try iterator.next()
                index += 1
            } else {
                try iterator.prev()
                index -= 1
            }
        }
    }
}

extension String {
    func leftPad(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

@Suite("Randomized model test")
struct ModelTests {
    @Test("engine equals the oracle", arguments: ModelConfiguration.all)
    func modelTest(configuration: ModelConfiguration) throws {
        let steps = SeededRandom.environmentInt("MORAINE_MODEL_STEPS", default: 1500)
        let seed = SeededRandom.testSeed("\(configuration.name), steps \(steps)")
        var run = try ModelRun(seed: seed, configuration: configuration)
        try run.run(steps: steps)
    }

    /// Two generators from one seed, alive together, must draw the same steps. Swift seeds each
    /// Dictionary and Set from its storage's address (and each process from a random seed), so
    /// two oracles with equal contents iterate in different orders even within this process:
    /// a generator that picked from such an order would diverge here, not only across runs.
    @Test("the same seed draws the same steps, step for step")
    func sameSeedSameSteps() {
        let steps = SeededRandom.environmentInt("MORAINE_MODEL_STEPS", default: 1500) * 2
        let seed = SeededRandom.testSeed("steps \(steps)")
        var first = ModelGenerator(seed: seed)
        var second = ModelGenerator(seed: seed)
        var traces: ([String], [String]) = ([], [])
        for _ in 0..<steps {
            traces.0.append(first.next().description)
            traces.1.append(second.next().description)
        }
        let divergence = traces.0.indices.first { traces.0[$0] != traces.1[$0] }
        #expect(
            divergence == nil,
            "seed \(seed): step \(divergence ?? 0) was '\(traces.0[divergence ?? 0])', then '\(traces.1[divergence ?? 0])'")
        #expect(first.oracle == second.oracle && first.oracle.keys == second.oracle.keys)
        // Across processes: two runs with one MORAINE_SEED must print the same digest.
        let digest = traces.0.joined(separator: "\n").utf8.reduce(0xcbf2_9ce4_8422_2325 as UInt64) {
            ($0 ^ UInt64($1)) &* 0x100_0000_01b3
        }
        print("model generator: seed \(seed), \(steps) steps, trace digest \(String(digest, radix: 16))")
        // The trace covers every kind of step, so the comparison means something.
        let kinds = Set(traces.0.map { $0.split(separator: " ").first.map(String.init) ?? "" })
        #expect(kinds.count >= 10, "only \(kinds.sorted()) in \(steps) steps")
    }

    /// The premise of the test above: within one process, two dictionaries with the same
    /// contents do iterate in different orders (unless SWIFT_DETERMINISTIC_HASHING is set), so
    /// a pick from `pairs.keys` would have made the traces differ.
    @Test("two equal dictionaries iterate differently in one process")
    func dictionaryOrderDiffersPerInstance() throws {
        try #require(getenv("SWIFT_DETERMINISTIC_HASHING") == nil, "deterministic hashing is on")
        var a = Oracle()
        var b = Oracle()
        for i in 0..<200 {
            a.put(Array("key\(i)".utf8), [UInt8(i % 256)])
            b.put(Array("key\(i)".utf8), [UInt8(i % 256)])
        }
        #expect(a == b && a.keys == b.keys)
        #expect(Array(a.pairs.keys) != Array(b.pairs.keys), "equal dictionaries iterated alike; the trace test proves less")
    }
}
