// The in-memory model the engine is checked against: a dictionary of the live pairs, beside the
// same keys in sorted order, with sorted views for iteration and copies for snapshots. Tests
// pick keys from the sorted list (randomKey), never from the dictionary's order, which changes
// from process to process, so a printed seed replays the same run.
// Plain value semantics; single-threaded.
import Moraine

/// The expected state of a database.
public struct Oracle: Equatable, Sendable {
    /// The live pairs. Look up by key; do not iterate it where order matters (use `sorted()`).
    public private(set) var pairs: [[UInt8]: [UInt8]] = [:]
    /// The keys of `pairs`, in byte order.
    public private(set) var keys: [[UInt8]] = []

    public init() {}

    public mutating func put(_ key: [UInt8], _ value: [UInt8]) {
        if pairs.updateValue(value, forKey: key) == nil { keys.insert(key, at: insertionIndex(key)) }
    }

    public mutating func delete(_ key: [UInt8]) {
        if pairs.removeValue(forKey: key) != nil { keys.remove(at: insertionIndex(key)) }
    }

    public func get(_ key: [UInt8]) -> [UInt8]? { pairs[key] }

    /// A key drawn uniformly from the live keys in byte order, or nil when there are none.
    public func randomKey(using rng: inout SeededRandom) -> [UInt8]? {
        keys.isEmpty ? nil : keys[rng.below(keys.count)]
    }

    /// The first index whose key is not below `key` (binary search of `keys`).
    func insertionIndex(_ key: [UInt8]) -> Int {
        var lower = 0
        var upper = keys.count
        while lower < upper {
            let middle = (lower + upper) / 2
            if keys[middle].lexicographicallyPrecedes(key) { lower = middle + 1 } else { upper = middle }
        }
        return lower
    }

    /// Pairs in key order within [lower, upper).
    public func sorted(lower: [UInt8]? = nil, upper: [UInt8]? = nil) -> [(key: [UInt8], value: [UInt8])] {
        let first = lower.map(insertionIndex) ?? 0
        let end = upper.map(insertionIndex) ?? keys.count
        guard first < end else { return [] }
        return keys[first..<end].map { (key: $0, value: pairs[$0]!) }
    }

    public static func == (a: Oracle, b: Oracle) -> Bool { a.pairs == b.pairs }
}

/// Renders bytes for failure messages.
public func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

extension Oracle {
    /// Everything a database holds now (a full forward scan), as an oracle to compare.
    public init(contentsOf database: Database) throws {
        self.init()
        let iterator = try database.makeIterator()
        try iterator.seekToFirst()
        while iterator.isValid {
            put(iterator.key, iterator.value)
            try iterator.next()
        }
    }
}
