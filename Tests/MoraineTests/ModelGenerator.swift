// The model test's operation generator: from a seed alone it draws every step (puts, deletes,
// batches, gets, iterator walks both ways with bounds, snapshots, flushes, compactions,
// reopens) and keeps the oracle those steps build, without a database. ModelRun executes the
// steps against one. The generator picks keys from the oracle's sorted keys and snapshots by
// index, never from a Dictionary's or Set's order, so a seed gives the same steps in every
// process; the determinism test compares two generators' traces to hold it to that.
// Value type; single-threaded.
import MoraineTestSupport

/// One walk of an iterator: bounds, a start, and the moves made while the oracle says valid.
struct IteratorWalk: CustomStringConvertible {
    /// 0: seekToFirst, 1: seekToLast, 2: seek(target), 3: seekForPrev(target).
    let start: Int
    let target: [UInt8]
    let lower: [UInt8]?
    let upper: [UInt8]?
    /// true: next, false: prev.
    let moves: [Bool]

    /// Where the start lands in `expected` (the bounded, sorted pairs); -1 or count: invalid.
    func startIndex(_ expected: [(key: [UInt8], value: [UInt8])]) -> Int {
        switch start {
        case 0: return 0
        case 1: return expected.count - 1
        case 2: return expected.firstIndex { !$0.key.lexicographicallyPrecedes(target) } ?? expected.count
        default: return expected.lastIndex { !target.lexicographicallyPrecedes($0.key) } ?? -1
        }
    }

    var description: String {
        let path = String(moves.map { $0 ? "n" : "p" })
        return "walk start \(start) target \(hex(target)) lower \(lower.map(hex) ?? "-") upper \(upper.map(hex) ?? "-") \(path)"
    }
}

/// One step of the model test, as the generator drew it.
enum ModelStep: CustomStringConvertible {
    case put([UInt8], [UInt8])
    case delete([UInt8])
    case batch([(key: [UInt8], value: [UInt8]?)])
    case multiGet([[UInt8]])
    case get([UInt8])
    case walk(IteratorWalk)
    case takeSnapshot
    /// Reads at the snapshot at `index` of the live ones: a get, a multiGet and a walk.
    case readSnapshot(index: Int, get: [UInt8], multiGet: [[UInt8]], walk: IteratorWalk)
    case releaseSnapshot(index: Int)
    case flush
    case compactAll
    case compactRange([UInt8], [UInt8])
    case checkEverything
    /// Close and open again; snapshots do not survive it.
    case reopen

    var description: String {
        // A value as its length and FNV-1a hash: the trace tells any two values apart, briefly.
        func value(_ v: [UInt8]?) -> String {
            guard let v else { return "delete" }
            let hash = v.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
            return "\(v.count)B#\(String(hash, radix: 16))"
        }
        switch self {
        case .put(let k, let v): return "put \(hex(k)) \(value(v))"
        case .delete(let k): return "delete \(hex(k))"
        case .batch(let items): return "batch " + items.map { "\(hex($0.key))=\(value($0.value))" }.joined(separator: ",")
        case .multiGet(let keys): return "multiGet " + keys.map(hex).joined(separator: ",")
        case .get(let k): return "get \(hex(k))"
        case .walk(let walk): return walk.description
        case .takeSnapshot: return "snapshot"
        case .readSnapshot(let index, let key, let keys, let walk):
            return "at snapshot \(index): get \(hex(key)) multiGet \(keys.map(hex).joined(separator: ",")) \(walk)"
        case .releaseSnapshot(let index): return "release snapshot \(index)"
        case .flush: return "flush"
        case .compactAll: return "compactRange all"
        case .compactRange(let b, let e): return "compactRange \(hex(b)) \(hex(e))"
        case .checkEverything: return "check everything"
        case .reopen: return "reopen"
        }
    }
}

/// Draws model steps from a seed and keeps the oracle they build.
struct ModelGenerator {
    var rng: SeededRandom
    /// The expected state after every step drawn so far.
    private(set) var oracle = Oracle()
    /// The expected state at each live snapshot, oldest first.
    private(set) var snapshotStates: [Oracle] = []

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    mutating func randomKey() -> [UInt8] {
        switch rng.below(10) {
        case 0: return rng.bytes(rng.below(13))  // arbitrary bytes, even empty
        case 1: return Array("k\(rng.below(40))".utf8)  // short, hot keys
        default: return Array("key\(String(rng.below(600)).leftPad(4))".utf8)
        }
    }

    /// A live key of `state` three times in four, else any key.
    mutating func likelyKey(of state: Oracle) -> [UInt8] {
        rng.below(4) == 0 ? randomKey() : (state.randomKey(using: &rng) ?? randomKey())
    }

    mutating func randomValue() -> [UInt8] {
        let length = rng.below(20) == 0 ? 500 + rng.below(4501) : rng.below(121)
        if rng.below(2) == 0 { return Array(repeating: UInt8(97 + rng.below(26)), count: length) }
        return rng.bytes(length)
    }

    /// A walk within random bounds over `state`: its moves stop where the oracle goes invalid.
    mutating func walk(over state: Oracle) -> IteratorWalk {
        var lower: [UInt8]? = rng.below(2) == 0 ? randomKey() : nil
        var upper: [UInt8]? = rng.below(2) == 0 ? randomKey() : nil
        if let l = lower, let u = upper, u.lexicographicallyPrecedes(l) { (lower, upper) = (u, l) }
        let start = rng.below(4)
        let target = randomKey()
        let expected = state.sorted(lower: lower, upper: upper)
        var index = IteratorWalk(start: start, target: target, lower: lower, upper: upper, moves: []).startIndex(expected)
        var moves: [Bool] = []
        for _ in 0..<(1 + rng.below(30)) where index >= 0 && index < expected.count {
            let forward = rng.below(2) == 0
            moves.append(forward)
            index += forward ? 1 : -1
        }
        return IteratorWalk(start: start, target: target, lower: lower, upper: upper, moves: moves)
    }

    /// Draws the next step and applies it to the oracle and the snapshot list.
    mutating func next() -> ModelStep {
        switch rng.below(1000) {
        case 0..<380:
            let key = randomKey()
            let value = randomValue()
            oracle.put(key, value)
            return .put(key, value)
        case 380..<520:
            let key = randomKey()
            oracle.delete(key)
            return .delete(key)
        case 520..<600:
            var items: [(key: [UInt8], value: [UInt8]?)] = []
            for _ in 0..<(1 + rng.below(12)) {
                let key = randomKey()
                let value = rng.below(3) == 0 ? nil : randomValue()
                items.append((key, value))
                if let value { oracle.put(key, value) } else { oracle.delete(key) }
            }
            return .batch(items)
        case 600..<640:
            // Several keys, some absent, some repeated: must equal single gets.
            let state = oracle
            return .multiGet((0..<(1 + rng.below(24))).map { _ in likelyKey(of: state) })
        case 640..<760:
            return .get(likelyKey(of: oracle))
        case 760..<840:
            return .walk(walk(over: oracle))
        case 840..<860:
            snapshotStates.append(oracle)
            return .takeSnapshot
        case 860..<900:
            guard !snapshotStates.isEmpty else { return .checkEverything }
            let index = rng.below(snapshotStates.count)
            let state = snapshotStates[index]
            let key = state.randomKey(using: &rng) ?? randomKey()
            let keys = (0..<8).map { _ in state.randomKey(using: &rng) ?? randomKey() }
            return .readSnapshot(index: index, get: key, multiGet: keys, walk: walk(over: state))
        case 900..<930:
            guard !snapshotStates.isEmpty else { return .flush }
            let index = rng.below(snapshotStates.count)
            snapshotStates.remove(at: index)
            return .releaseSnapshot(index: index)
        case 930..<960:
            return .flush
        case 960..<975:
            return rng.below(2) == 0 ? .compactAll : .compactRange(randomKey(), randomKey())
        case 975..<990:
            return .checkEverything
        default:
            snapshotStates.removeAll()
            return .reopen
        }
    }
}
