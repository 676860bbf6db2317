// The randomized model test: the engine and a dictionary oracle receive the same random
// operations (puts, deletes, batches, gets, iterators both ways with bounds, snapshots, flushes,
// compactions, reopens); every read is compared. It runs under several configurations whose
// answers must all equal the oracle's. MORAINE_SEED replays a run; MORAINE_MODEL_STEPS sets
// its length (default 1500 per configuration).
import Moraine
import MoraineTestSupport
import Testing

struct ModelConfiguration: Sendable, CustomStringConvertible {
    let name: String
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
        ModelConfiguration(name: "pmem-durability") { o in
            // The persistent log in a /dev/shm region instead of the WAL; small arenas, so
            // memtables switch on a full arena as well as on a full memtable.
            o.durability = .pmem
            o.writeBufferSize = 8 << 10
            o.pmemArenaCount = 4
            o.targetFileSizeBase = 16 << 10
            o.level0FileNumCompactionTrigger = 2
        },
    ]
}

/// Drives one database and its oracle through random steps.
struct ModelRun {
    let seed: UInt64
    let configuration: ModelConfiguration
    let directory: String
    var rng: SeededRandom
    var oracle = Oracle()
    var database: Database
    var snapshots: [(snapshot: Snapshot, state: Oracle)] = []
    var step = 0

    init(seed: UInt64, configuration: ModelConfiguration) throws {
        self.seed = seed
        self.configuration = configuration
        self.rng = SeededRandom(seed: seed)
        self.directory = makeTemporaryDirectory("moraine-model")
        database = try Database(path: directory, options: Self.options(configuration))
    }

    static func options(_ configuration: ModelConfiguration) -> Options {
        var options = Options()
        options.createIfMissing = true
        configuration.options(&options)
        return options
    }

    var context: String { "seed \(seed), configuration \(configuration.name), step \(step)" }

    mutating func randomKey() -> [UInt8] {
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: return rng.bytes(Int.random(in: 0...12, using: &rng))  // arbitrary bytes, even empty
        case 1: return Array("k\(Int.random(in: 0..<40, using: &rng))".utf8)  // short, hot keys
        default: return Array("key\(String(Int.random(in: 0..<600, using: &rng)).leftPad(4))".utf8)
        }
    }

    mutating func randomValue() -> [UInt8] {
        let length =
            Int.random(in: 0..<20, using: &rng) == 0
            ? Int.random(in: 500...5000, using: &rng) : Int.random(in: 0...120, using: &rng)
        if Bool.random(using: &rng) {
            return Array(repeating: UInt8.random(in: 97...122, using: &rng), count: length)
        }
        return rng.bytes(length)
    }

    mutating func run(steps: Int) throws {
        defer {
            try? database.close()
            removeTree(directory)
            removeTree(Options.defaultPmemPath(for: directory))
        }
        for s in 0..<steps {
            step = s
            try perform()
        }
        step = steps
        try checkEverything(oracle, snapshot: nil)
    }

    mutating func perform() throws {
        let roll = Int.random(in: 0..<1000, using: &rng)
        switch roll {
        case 0..<380:
            let key = randomKey()
            let value = randomValue()
            try database.put(key, value)
            oracle.put(key, value)
        case 380..<520:
            let key = randomKey()
            try database.delete(key)
            oracle.delete(key)
        case 520..<600:
            var batch = WriteBatch()
            var next = oracle
            for _ in 0..<Int.random(in: 1...12, using: &rng) {
                let key = randomKey()
                if Int.random(in: 0..<3, using: &rng) == 0 {
                    batch.delete(key)
                    next.delete(key)
                } else {
                    let value = randomValue()
                    batch.put(key, value)
                    next.put(key, value)
                }
            }
            try database.write(batch)
            oracle = next
        case 600..<640:
            // A batched read of several keys (some absent, some repeated) must equal single gets.
            let keys = (0..<Int.random(in: 1...24, using: &rng)).map { _ in
                Int.random(in: 0..<4, using: &rng) == 0
                    ? randomKey() : (oracle.pairs.keys.randomElement(using: &rng) ?? randomKey())
            }
            let got = try database.multiGet(keys)
            for (key, value) in zip(keys, got) where value != oracle.get(key) {
                Issue.record("multiGet \(hex(key)): got \(value.map { "\($0.count) bytes" } ?? "nil"); \(context)")
                break
            }
        case 640..<760:
            let key =
                Int.random(in: 0..<4, using: &rng) == 0
                ? randomKey() : (oracle.pairs.keys.randomElement(using: &rng) ?? randomKey())
            let got = try database.get(key)
            #expect(
                got == oracle.get(key), "get \(hex(key)): got \(got.map { "\($0.count) bytes" } ?? "nil"); \(context)")
        case 760..<840:
            try checkIteratorWalk(oracle, snapshot: nil)
        case 840..<860:
            snapshots.append((database.snapshot(), oracle))
        case 860..<900:
            if let chosen = snapshots.indices.randomElement(using: &rng) {
                let (snapshot, state) = snapshots[chosen]
                let key = state.pairs.keys.randomElement(using: &rng) ?? randomKey()
                let got = try database.get(key, options: ReadOptions(snapshot: snapshot))
                #expect(
                    got == state.get(key),
                    "get at snapshot \(snapshot.sequence) \(hex(key)): got \(got.map { "\($0.count) bytes" } ?? "nil"); \(context)"
                )
                let keys = (0..<8).map { _ in state.pairs.keys.randomElement(using: &rng) ?? randomKey() }
                let batch = try database.multiGet(keys, options: ReadOptions(snapshot: snapshot))
                #expect(batch == keys.map { state.get($0) }, "multiGet at snapshot \(snapshot.sequence); \(context)")
                try checkIteratorWalk(state, snapshot: snapshot)
            }
        case 900..<930:
            if let chosen = snapshots.indices.randomElement(using: &rng) {
                database.releaseSnapshot(snapshots[chosen].snapshot)
                snapshots.remove(at: chosen)
            }
        case 930..<960:
            try database.flush()
        case 960..<975:
            if Bool.random(using: &rng) {
                try database.compactRange()
            } else {
                try database.compactRange(begin: randomKey(), end: randomKey())
            }
            try checkEverything(oracle, snapshot: nil)
        case 975..<990:
            try checkEverything(oracle, snapshot: nil)
        default:
            // Reopen: snapshots do not survive it.
            snapshots.removeAll()
            try database.close()
            database = try Database(path: directory, options: Self.options(configuration))
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

    /// A random walk of seeks, nexts and prevs within random bounds, against the oracle.
    mutating func checkIteratorWalk(_ state: Oracle, snapshot: Snapshot?) throws {
        var lower: [UInt8]? = Bool.random(using: &rng) ? randomKey() : nil
        var upper: [UInt8]? = Bool.random(using: &rng) ? randomKey() : nil
        if let l = lower, let u = upper, u.lexicographicallyPrecedes(l) { (lower, upper) = (u, l) }
        let expected = state.sorted(lower: lower, upper: upper)
        let iterator = try database.makeIterator(
            options: ReadOptions(snapshot: snapshot, lowerBound: lower, upperBound: upper))
        var index: Int  // position in `expected`; -1 or count means invalid
        let start = Int.random(in: 0..<4, using: &rng)
        let target = randomKey()
        switch start {
        case 0:
            try iterator.seekToFirst()
            index = 0
        case 1:
            try iterator.seekToLast()
            index = expected.count - 1
        case 2:
            try iterator.seek(target)
            index = expected.firstIndex { !$0.key.lexicographicallyPrecedes(target) } ?? expected.count
        default:
            try iterator.seekForPrev(target)
            index = expected.lastIndex { !target.lexicographicallyPrecedes($0.key) } ?? -1
        }
        let what =
            "walk start \(start) target \(hex(target)) lower \(lower.map(hex) ?? "-") upper \(upper.map(hex) ?? "-")"
        for move in 0..<Int.random(in: 1...30, using: &rng) {
            let valid = index >= 0 && index < expected.count
            #expect(iterator.isValid == valid, "\(what) move \(move) validity: \(context)")
            guard valid, iterator.isValid else { return }
            let key = iterator.key
            let value = iterator.value
            #expect(
                key == expected[index].key,
                "\(what) move \(move): key \(hex(key)), want \(hex(expected[index].key)); \(context)")
            #expect(value == expected[index].value, "\(what) move \(move): wrong value for \(hex(key)); \(context)")
            if Bool.random(using: &rng) {
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
        let seed = SeededRandom.testSeed()
        let steps = SeededRandom.environmentInt("MORAINE_MODEL_STEPS", default: 1500)
        print("model test \(configuration.name): MORAINE_SEED=\(seed) steps=\(steps)")
        var run = try ModelRun(seed: seed, configuration: configuration)
        try run.run(steps: steps)
    }
}
