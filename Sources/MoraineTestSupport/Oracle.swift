// The in-memory model the engine is checked against: a dictionary of the live pairs, with
// sorted views for iteration and copies for snapshots. Plain value semantics; single-threaded.
import Moraine

/// The expected state of a database.
public struct Oracle: Equatable, Sendable {
    public private(set) var pairs: [[UInt8]: [UInt8]] = [:]

    public init() {}

    public mutating func put(_ key: [UInt8], _ value: [UInt8]) { pairs[key] = value }
    public mutating func delete(_ key: [UInt8]) { pairs[key] = nil }
    public func get(_ key: [UInt8]) -> [UInt8]? { pairs[key] }

    /// Pairs in key order within [lower, upper).
    public func sorted(lower: [UInt8]? = nil, upper: [UInt8]? = nil) -> [(key: [UInt8], value: [UInt8])] {
        pairs.filter { pair in
            if let lower, pair.key.lexicographicallyPrecedes(lower) { return false }
            if let upper, !pair.key.lexicographicallyPrecedes(upper) { return false }
            return true
        }
        .map { (key: $0.key, value: $0.value) }
        .sorted { $0.key.lexicographicallyPrecedes($1.key) }
    }
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
