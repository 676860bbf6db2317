// Shared helpers for the unit tests: the seed (MORAINE_SEED or a random seed that every failure
// message prints; the generator is MoraineTestSupport's), unique temporary directories, an
// in-memory WritableFile, and small file-damaging utilities.
import Foundation
import MoraineSystem
@_exported import MoraineTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The seed for a randomized test: MORAINE_SEED when set, otherwise a fresh one; printed.
func testSeed(_ label: String? = nil, test: String = #function, file: String = #fileID) -> UInt64 {
    SeededRandom.testSeed(label, test: test, file: file)
}

/// A unique, existing temporary directory; removed by `remove()`.
struct TempDir {
    let path: String
    init(_ label: String = "moraine-test") {
        let base = FileManager.default.temporaryDirectory.path
        path = base + "/" + label + "-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    /// A directory made elsewhere, removed by `remove()` as any other.
    init(existing path: String) { self.path = path }
    func file(_ name: String) -> String { path + "/" + name }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
    /// Names in the directory, sorted.
    func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }
}

/// A WritableFile collecting bytes in memory.
final class MemoryWritableFile: WritableFile {
    var bytes: [UInt8] = []
    func append(_ data: UnsafeRawBufferPointer) throws { bytes.append(contentsOf: data) }
    func flush() throws {}
    func sync() throws {}
    func close() throws {}
    var size: UInt64 { UInt64(bytes.count) }
}

/// Runs `body`, returning the MoraineError it threw (nil when it did not throw). Any other error
/// is recorded as an issue.
func moraineError(_ body: () throws -> Void) -> MoraineError? {
    do {
        try body()
        return nil
    } catch let error as MoraineError {
        return error
    } catch {
        Issue.record("expected a MoraineError, got \(type(of: error)): \(error)")
        return nil
    }
}

func readFileBytes(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}

func writeFileBytes(_ path: String, _ bytes: [UInt8]) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// XORs the byte at `offset` of the file with `mask`.
func flipByte(_ path: String, at offset: Int, mask: UInt8 = 0x5a) {
    var bytes = readFileBytes(path)
    precondition(offset >= 0 && offset < bytes.count, "flip offset \(offset) outside \(path)")
    bytes[offset] ^= mask
    writeFileBytes(path, bytes)
}

/// Cuts the file to `size` bytes.
func truncateFile(_ path: String, to size: Int) {
    let rc = truncate(path, off_t(size))
    precondition(rc == 0, "truncate \(path) failed")
}

func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int) ?? -1
}

extension String {
    var bytes: [UInt8] { Array(utf8) }
}

/// A zero-padded decimal, for keys that sort numerically.
func padded(_ n: Int, _ width: Int = 6) -> String {
    let digits = String(n)
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
