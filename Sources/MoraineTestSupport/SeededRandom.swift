// Deterministic randomness for tests: SplitMix64, seeded from MORAINE_SEED or a fresh value
// that the test prints, so every failure can be replayed.
#if canImport(Glibc)
    import Glibc
#endif
import MoraineSystem

/// A small, fast, seedable generator (SplitMix64).
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// The seed for a test: MORAINE_SEED when set, otherwise derived from the clock.
    public static func testSeed() -> UInt64 {
        if let text = getenv("MORAINE_SEED").map({ String(cString: $0) }), let seed = UInt64(text) {
            return seed
        }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_007 &+ UInt64(ts.tv_nsec)
    }

    /// An integer environment setting, or `defaultValue`.
    public static func environmentInt(_ name: String, default defaultValue: Int) -> Int {
        if let text = getenv(name).map({ String(cString: $0) }), let value = Int(text) { return value }
        return defaultValue
    }

    /// Random bytes of the given length.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) }
    }
}

/// A fresh empty directory under the system temporary directory.
public func makeTemporaryDirectory(_ prefix: String = "moraine-test") -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(result != nil, "mkdtemp failed")
    return String(cString: template.withUnsafeBufferPointer { $0.baseAddress! })
}

/// Removes a directory tree (test cleanup).
public func removeTree(_ path: String) {
    PosixFileSystem.shared.removeTree(path)
}
