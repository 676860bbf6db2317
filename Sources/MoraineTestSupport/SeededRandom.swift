// Deterministic randomness for tests: SplitMix64, seeded from MORAINE_SEED or a fresh value
// that the test prints, so every failure can be replayed.
#if canImport(Glibc)
    import Glibc
#endif
import MoraineSystem

/// The tests' generator (SplitMix64, from MoraineSystem).
public typealias SeededRandom = SplitMix64

extension SplitMix64 {
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
