// Deterministic randomness for tests: SplitMix64, seeded from MORAINE_SEED or a fresh value
// that testSeed prints, so every run can be replayed. A replay is exact only if the test draws
// from seeded, ordered sequences: never from a Dictionary's or Set's order, which changes from
// process to process (and from instance to instance), so pick from sorted keys (Oracle.randomKey).
#if canImport(Glibc)
    import Glibc
#endif
import MoraineSystem

/// The tests' generator (SplitMix64, from MoraineSystem).
public typealias SeededRandom = SplitMix64

extension SplitMix64 {
    /// The seed for a test: MORAINE_SEED when set, otherwise derived from the clock. Prints it
    /// with the test's name (and `label`, for a parameterized case), so that any run, failed or
    /// not, can be replayed with MORAINE_SEED.
    public static func testSeed(_ label: String? = nil, test: String = #function, file: String = #fileID) -> UInt64 {
        let seed: UInt64
        if let text = getenv("MORAINE_SEED").map({ String(cString: $0) }), let given = UInt64(text) {
            seed = given
        } else {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            seed = UInt64(ts.tv_sec) &* 1_000_000_007 &+ UInt64(ts.tv_nsec)
        }
        let name = file.split(separator: "/").last.map(String.init) ?? file
        print("MORAINE_SEED=\(seed) for \(name) \(test)\(label.map { " (\($0))" } ?? "")")
        return seed
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
