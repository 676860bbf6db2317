// The harness of the fault-injection tests: a database over FaultInjectingFileSystem (real files
// in a temporary directory) that records each write as acknowledged or failed, the expectation
// those writes build (a failed write may or may not have taken effect), the reopen check, and
// the check that an error is the injected fault's. Single-threaded, like the tests that use it.
import Moraine
import MoraineSystem
import MoraineTestSupport
import Testing

typealias Fault = FaultInjectingFileSystem.Fault
typealias FaultTarget = FaultInjectingFileSystem.Target

extension FaultInjectingFileSystem.Target {
    /// The targets that name one kind of file.
    static let allFiles: [FaultTarget] = [.wal, .table, .manifest, .current]
}

/// What a database may hold after faults: the acknowledged state, plus for each key the values
/// of writes that threw (each may or may not have taken effect).
struct FaultExpectation {
    var acknowledged = Oracle()
    var uncertain: [[UInt8]: [[UInt8]?]] = [:]

    mutating func acknowledge(_ key: [UInt8], _ value: [UInt8]?) {
        if let value { acknowledged.put(key, value) } else { acknowledged.delete(key) }
        uncertain[key] = nil
    }

    mutating func failed(_ key: [UInt8], _ value: [UInt8]?) {
        uncertain[key, default: []].append(value)
    }

    func allows(_ key: [UInt8], _ value: [UInt8]?) -> Bool {
        value == acknowledged.get(key) || uncertain[key]?.contains(value) == true
    }

    /// Keys whose value in `contents` is not allowed, described.
    func mismatches(_ contents: Oracle) -> [String] {
        let keys = Set(contents.keys).union(acknowledged.keys).union(uncertain.keys)
        return keys.sorted { $0.lexicographicallyPrecedes($1) }.compactMap { key in
            let got = contents.get(key)
            if allows(key, got) { return nil }
            let expected = acknowledged.get(key).map(hex) ?? "absent"
            return "key \(hex(key)) holds \(got.map(hex) ?? "nothing"), expected \(expected)"
                + (uncertain[key] == nil ? "" : " or one of \(uncertain[key]!.count) failed writes")
        }
    }
}

/// A database over a fault-injecting file system, with the expectation its writes build.
final class FaultyDatabase {
    let directory: String
    let fileSystem = FaultInjectingFileSystem(wrapping: PosixFileSystem())
    let configure: (inout Options) -> Void
    var database: Database
    var expected = FaultExpectation()

    init(_ label: String, configure: @escaping (inout Options) -> Void = { _ in }) throws {
        directory = makeTemporaryDirectory("moraine-fault-\(label)")
        self.configure = configure
        database = try Database(path: directory, options: Self.options(fileSystem, configure))
    }

    static func options(_ fileSystem: any FileSystem, _ configure: (inout Options) -> Void) -> Options {
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = fileSystem
        options.writeBufferSize = 8 << 10
        options.targetFileSizeBase = 8 << 10
        options.maxBytesForLevelBase = 32 << 10
        options.level0FileNumCompactionTrigger = 2
        options.blockSize = 512
        options.maxManifestFileSize = 4 << 10  // manifests roll, so CURRENT is rewritten too
        configure(&options)
        return options
    }

    /// Runs a write of `changes` (nil value: delete); records it as acknowledged or failed.
    @discardableResult
    func write(_ changes: [([UInt8], [UInt8]?)], sync: Bool = false) -> MoraineError? {
        let error = moraineError {
            let options = WriteOptions(sync: sync)
            if changes.count == 1, let value = changes[0].1 {
                try database.put(changes[0].0, value, options: options)
            } else if changes.count == 1 {
                try database.delete(changes[0].0, options: options)
            } else {
                var batch = WriteBatch()
                for (key, value) in changes {
                    if let value { batch.put(key, value) } else { batch.delete(key) }
                }
                try database.write(batch, options: options)
            }
        }
        for (key, value) in changes {
            if error == nil { expected.acknowledge(key, value) } else { expected.failed(key, value) }
        }
        return error
    }

    @discardableResult
    func put(_ key: String, _ value: String, sync: Bool = false) -> MoraineError? {
        write([(key.bytes, value.bytes)], sync: sync)
    }

    /// Writes keys `range` with values tagged `tag`; returns the first error.
    @discardableResult
    func fill(_ range: Range<Int>, tag: String = "v", sync: Bool = false) -> MoraineError? {
        for i in range {
            if let error = put(Self.key(i), "\(tag)\(i)-" + String(repeating: "x", count: 40), sync: sync) {
                return error
            }
        }
        return nil
    }

    static func key(_ i: Int) -> String { "key" + padded(i) }

    /// Checks every acknowledged key through `get` (reads of unaffected data keep working).
    func checkGets(_ label: String) {
        for (key, value) in expected.acknowledged.sorted() {
            let got = Result { try database.get(key) }
            switch got {
            case .success(let read):
                #expect(expected.allows(key, read), "\(label): get \(hex(key)) read \(read.map(hex) ?? "nothing"), not \(hex(value))")
            case .failure(let error):
                Issue.record("\(label): get \(hex(key)) failed: \(error)")
                return
            }
        }
    }

    /// Disarms, closes (an error is allowed but must be a MoraineError), reopens over the same
    /// directory, and returns what the reopened database holds that the expectation forbids.
    func reopenAndVerify(_ label: String) throws -> [String] {
        fileSystem.disarm()
        _ = moraineError { try database.close() }
        database = try Database(path: directory, options: Self.options(fileSystem, configure))
        let problems = expected.mismatches(try Oracle(contentsOf: database))
        // About 200 gets spread over the key range (in key order, so every run reads the same).
        let keys = expected.acknowledged.keys
        for index in stride(from: 0, to: keys.count, by: max(1, keys.count / 200)) where problems.isEmpty {
            let key = keys[index]
            let got = try database.get(key)
            if !expected.allows(key, got) { return ["\(label): get \(hex(key)) after reopen read \(got.map(hex) ?? "nothing")"] }
        }
        return problems.map { "\(label): \($0)" }
    }

    func remove() {
        try? database.close()
        removeTree(directory)
    }
}

/// Checks that `error` is the fault's: its kind, "injected" in the message, and `naming` too.
func expectInjected(
    _ error: MoraineError?, _ fault: Fault, naming: [String], _ label: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard let error else {
        Issue.record("\(label): expected a failure from \(fault), the call succeeded", sourceLocation: sourceLocation)
        return
    }
    #expect(error.kind == fault.errorKind, "\(label): \(error)", sourceLocation: sourceLocation)
    #expect(error.message.contains("injected"), "\(label): \(error)", sourceLocation: sourceLocation)
    for word in naming {
        #expect(error.message.contains(word), "\(label): '\(error)' does not name \(word)", sourceLocation: sourceLocation)
    }
}
