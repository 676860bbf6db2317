// Compaction as a value: a spec a job cannot run is refused with every reason; outputs take
// numbers only from the spec's reserved range (a range that runs out makes the last output
// bigger, never a number outside it); a result is checked against its spec before install; and
// the engine runs every compaction through its job runner.
import Foundation
import Moraine
@testable import MoraineEngine
import MoraineFormat
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@Suite("Compaction job specs")
struct CompactionJobSpecTests {
    /// Two overlapping tables in `dir` (numbers 5 and 6): keys k00000… with values of 100 bytes,
    /// the second table overwriting every third key at newer sequences.
    static func writeInputs(_ dir: TempDir, keyCount: Int) throws -> [JobInputTable] {
        var inputs: [JobInputTable] = []
        for (number, sequenceBase, stride) in [(UInt64(5), UInt64(1), 1), (UInt64(6), UInt64(1_000_000), 3)] {
            let path = dir.file(DatabaseFile.table(number).name)
            let file = try PosixFileSystem.shared.createNew(path, hint: .bulk)
            let builder = TableBuilder(file: file, options: TableOptions(compression: .none), name: path)
            for i in Swift.stride(from: 0, to: keyCount, by: stride) {
                let key = makeInternalKey(Array(String(format: "k%05d", i).utf8), sequenceBase + UInt64(i), .value)
                try builder.add(key: key, value: [UInt8](repeating: UInt8(truncatingIfNeeded: i &+ Int(number)), count: 100))
            }
            let properties = try builder.finish()
            try file.sync()
            try file.close()
            let info = TableFileInfo(
                number: number, sizeBytes: builder.fileSizeBytes, smallest: properties.smallestKey,
                largest: properties.largestKey, smallestSequence: properties.smallestSequence,
                largestSequence: properties.largestSequence)
            inputs.append(JobInputTable(level: number == 5 ? 0 : 1, info: info))
        }
        return inputs
    }

    static func spec(_ dir: TempDir, _ inputs: [JobInputTable], outputs: Range<UInt64>, target: UInt64) -> CompactionJobSpec {
        CompactionJobSpec(
            jobID: 7, directory: dir.path, epoch: 0, inputs: inputs, outputLevel: 1, levelCount: 7,
            smallestSnapshot: 10_000_000, deeperLevelRanges: [], targetFileSizeBytes: target,
            tableOptions: TableOptions(compression: .none), outputFileNumbers: outputs)
    }

    /// Every (user key, value) the outputs hold, in order.
    static func contents(_ dir: TempDir, _ outputs: [TableFileInfo]) throws -> [(String, UInt8)] {
        var all: [(String, UInt8)] = []
        for output in outputs {
            let path = dir.file(DatabaseFile.table(output.number).name)
            let reader = try TableReader(file: try PosixFileSystem.shared.openRandomAccess(path), name: path, cache: nil)
            let it = reader.makeIterator(fillCache: false)
            try it.seekToFirst()
            while it.isValid {
                all.append((String(decoding: userKey(it.key), as: UTF8.self), it.value.first ?? 0))
                try it.next()
            }
        }
        return all
    }

    @Test("outputs take numbers from the reserved range in order; a range that runs out makes the last output bigger")
    func reservedRange() throws {
        let dir = TempDir("moraine-jobspec")
        defer { dir.remove() }
        let inputs = try Self.writeInputs(dir, keyCount: 3000)
        // The merged data is ~300 KB: a 32 KiB target would cut about ten outputs.
        let wide = Self.spec(dir, inputs, outputs: 100..<140, target: 32 << 10)
        #expect(wide.problems().isEmpty)
        let many = try CompactionJob(spec: wide, fileSystem: PosixFileSystem.shared).run()
        #expect(many.outputs.count >= 8, "\(many.outputs.count) outputs")
        #expect(many.outputs.map(\.number) == Array(100..<(100 + UInt64(many.outputs.count))))
        #expect(wide.problems(in: many).isEmpty, "\(wide.problems(in: many))")
        let expected = try Self.contents(dir, many.outputs)
        #expect(expected.count == 3000, "one version per key: the older ones are shadowed")
        #expect(expected.allSatisfy { key, value in
            let i = Int(key.dropFirst())!
            return value == UInt8(truncatingIfNeeded: i &+ (i % 3 == 0 ? 6 : 5))
        })
        for output in many.outputs { try PosixFileSystem.shared.remove(dir.file(DatabaseFile.table(output.number).name)) }
        // Three numbers for about ten tables' worth: two cut at the target, the last takes the rest.
        let narrow = Self.spec(dir, inputs, outputs: 200..<203, target: 32 << 10)
        let few = try CompactionJob(spec: narrow, fileSystem: PosixFileSystem.shared).run()
        #expect(few.outputs.map(\.number) == [200, 201, 202])
        #expect(few.outputs.last!.sizeBytes > 4 * (32 << 10))
        #expect(narrow.problems(in: few).isEmpty)
        let same = try Self.contents(dir, few.outputs)
        #expect(same.map(\.0) == expected.map(\.0) && same.map(\.1) == expected.map(\.1))
        // The reservation's size: room for twice the full tables, and never none.
        #expect(CompactionJobSpec.outputNumbersToReserve(inputBytes: 0, targetFileSizeBytes: 1 << 20) == 4)
        #expect(CompactionJobSpec.outputNumbersToReserve(inputBytes: 10 << 20, targetFileSizeBytes: 1 << 20) == 24)
    }

    @Test("a spec a job cannot run is refused with every reason, and writes nothing")
    func badSpecs() throws {
        let dir = TempDir("moraine-jobspec")
        defer { dir.remove() }
        let inputs = try Self.writeInputs(dir, keyCount: 100)
        let good = Self.spec(dir, inputs, outputs: 100..<110, target: 1 << 20)
        var cases: [(String, CompactionJobSpec)] = []
        var spec = good
        spec.inputs = []
        cases.append(("no input tables", spec))
        spec = good
        spec.inputs.append(inputs[0])
        cases.append(("named twice", spec))
        spec = good
        spec.outputLevel = 0
        cases.append(("output level 0 is outside", spec))
        spec = good
        spec.outputLevel = 7
        cases.append(("output level 7 is outside", spec))
        spec = good
        spec.inputs[1].level = 2
        cases.append(("on level 2, not at or above output level 1", spec))
        spec = good
        spec.outputFileNumbers = 100..<100
        cases.append(("range is empty", spec))
        spec = good
        spec.outputFileNumbers = 5..<9
        cases.append(("inside the output range", spec))
        spec = good
        spec.targetFileSizeBytes = 0
        cases.append(("target file size is 0", spec))
        spec = good
        spec.tableOptions.blockSizeBytes = 16
        cases.append(("block size 16", spec))
        spec = good
        spec.deeperLevelRanges = [[UserKeyRange(lower: Array("b".utf8), upper: Array("c".utf8)),
                                   UserKeyRange(lower: Array("a".utf8), upper: Array("z".utf8))]]
        cases.append(("overlapping or unsorted", spec))
        spec = good
        spec.deeperLevelRanges = [[UserKeyRange(lower: Array("z".utf8), upper: Array("a".utf8))]]
        cases.append(("lower end passes its upper end", spec))
        spec = good
        spec.deadlineUnixNanos = wallClockNanos() - 2_000_000_000
        cases.append(("its deadline passed 2.", spec))
        let before = dir.names()
        for (reason, spec) in cases {
            let error = #expect(throws: MoraineError.self) { try CompactionJob(spec: spec, fileSystem: PosixFileSystem.shared).run() }
            #expect(error?.kind == .invalid)
            #expect(error?.message.contains(reason) == true, "expected '\(reason)' in: \(error?.message ?? "no error")")
        }
        #expect(dir.names() == before, "a refused job wrote files")
        // Several problems at once: each is named.
        spec = good
        spec.inputs = [inputs[0], inputs[0]]
        spec.targetFileSizeBytes = 0
        #expect(spec.problems().count == 2)
    }

    @Test("a result that does not fit its spec is named as such")
    func resultChecks() throws {
        let dir = TempDir("moraine-jobspec")
        defer { dir.remove() }
        let inputs = try Self.writeInputs(dir, keyCount: 600)
        let spec = Self.spec(dir, inputs, outputs: 100..<110, target: 16 << 10)
        let result = try CompactionJob(spec: spec, fileSystem: PosixFileSystem.shared).run()
        try #require(result.outputs.count >= 2)
        #expect(spec.problems(in: result).isEmpty)
        func problems(_ change: (inout CompactionJobResult) -> Void) -> String {
            var changed = result
            change(&changed)
            return spec.problems(in: changed).joined(separator: "; ")
        }
        #expect(problems { $0.jobID = 8 }.contains("not of job 7"))
        #expect(problems { $0.outputs[0].number = 99 }.contains("outside the reserved range"))
        #expect(problems { $0.outputs[1].number = $0.outputs[0].number }.contains("named twice"))
        #expect(problems { $0.outputs[0].sizeBytes = 0 }.contains("is empty"))
        #expect(problems { $0.outputs.swapAt(0, 1) }.contains("overlaps the output before it"))
        #expect(problems { $0.outputs[0].smallest = makeInternalKey(Array("a".utf8), 1, .value) }.contains("outside the inputs' range"))
        #expect(problems { $0.outputs[0].largest = [] }.contains("no key range"))
    }

    @Test("a cancelled job, or one past its deadline, stops and removes what it wrote; progress is reported while it runs")
    func cancelAndDeadline() throws {
        let dir = TempDir("moraine-jobcontrol")
        defer { dir.remove() }
        let inputs = try Self.writeInputs(dir, keyCount: 20_000)
        let before = dir.names()
        // Cancelled once its fourth output is created: the job stops at its next check.
        let spec = Self.spec(dir, inputs, outputs: 100..<200, target: 16 << 10)
        let control = JobControl()
        let files = CreateWatchingFileSystem { path in
            if path.hasSuffix(DatabaseFile.table(103).name) { control.cancel() }
        }
        let cancelled = #expect(throws: MoraineError.self) { try CompactionJob(spec: spec, fileSystem: files, control: control).run() }
        #expect(cancelled?.kind == .unavailable && cancelled?.message.contains("cancelled") == true, "\(String(describing: cancelled))")
        #expect(files.created.withLock { $0 } >= 4, "the job never reached its fourth output")
        #expect(dir.names() == before, "a cancelled job left files")
        // Past its deadline while running: the same.
        var late = Self.spec(dir, inputs, outputs: 200..<300, target: 16 << 10)
        late.deadlineUnixNanos = wallClockNanos() + 1_000_000_000
        let lateControl = JobControl(deadlineUnixNanos: wallClockNanos() - 1)
        let expired = #expect(throws: MoraineError.self) {
            try CompactionJob(spec: late, fileSystem: PosixFileSystem.shared, control: lateControl).run()
        }
        #expect(expired?.message.contains("deadline") == true, "\(String(describing: expired))")
        #expect(dir.names() == before, "a late job left files")
        // Uncancelled, it reports every input byte it merged by the end.
        let full = JobControl()
        let whole = Self.spec(dir, inputs, outputs: 300..<400, target: 16 << 10)
        let result = try CompactionJob(spec: whole, fileSystem: PosixFileSystem.shared, control: full).run()
        #expect(full.bytesDone > 0 && !result.outputs.isEmpty)
        #expect(result.cpuNanos > 0 && result.cpuNanos <= result.wallNanos + 1_000_000, "cpu \(result.cpuNanos) wall \(result.wallNanos)")
    }

    /// The POSIX file system, calling `onCreate` with the path of every file created new.
    final class CreateWatchingFileSystem: ForwardingFileSystem, @unchecked Sendable {
        let onCreate: @Sendable (String) -> Void
        let created = Mutex<Int>(0)
        let base: any FileSystem = PosixFileSystem.shared
        init(onCreate: @escaping @Sendable (String) -> Void) { self.onCreate = onCreate }
        func createNew(_ path: String, hint: WriteHint) throws -> any WritableFile {
            created.withLock { $0 += 1 }
            onCreate(path)
            return try base.createNew(path, hint: hint)
        }
    }

    /// Runs jobs locally and counts them; can be told to tamper with results.
    final class CountingRunner: JobRunner, @unchecked Sendable {
        let lock = NSLock()
        var specs: [CompactionJobSpec] = []
        var tamper = false
        var tamperSize = false
        func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
            lock.withLock { specs.append(spec) }
            var result = try LocalJobRunner().runCompaction(spec, fileSystem: fileSystem)
            if lock.withLock({ tamper }), !result.outputs.isEmpty { result.outputs[0].number = spec.outputFileNumbers.upperBound }
            if lock.withLock({ tamperSize }), !result.outputs.isEmpty { result.outputs[0].sizeBytes += 1 }
            return result
        }
    }

    @Test("the engine runs compactions through its runner, and never installs a result that does not fit its spec")
    func engineUsesRunner() throws {
        let dir = TempDir("moraine-jobspec-db")
        defer { dir.remove() }
        let runner = CountingRunner()
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        options.jobRunner = runner
        let db = try Database(path: dir.path, options: options)
        // Two passes over the keys: overlapping tables, so the compaction merges (no trivial move).
        for pass in 0..<2 {
            for i in 0..<3000 {
                try db.put(Array(String(format: "k%05d", i).utf8), [UInt8](repeating: UInt8((i + pass) & 0xFF), count: 100))
            }
        }
        try db.compactRange()
        let specs = runner.lock.withLock { runner.specs }
        #expect(!specs.isEmpty, "no compaction went through the runner")
        for spec in specs {
            #expect(spec.problems().isEmpty)
            #expect(!spec.outputFileNumbers.isEmpty)
        }
        // Reserved ranges never overlap one another.
        let ranges = specs.map(\.outputFileNumbers).sorted { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound <= b.lowerBound) }
        for i in stride(from: 0, to: 3000, by: 97) {
            #expect(try db.get(Array(String(format: "k%05d", i).utf8)) == [UInt8](repeating: UInt8((i + 1) & 0xFF), count: 100))
        }
        // A result naming a number outside its range: the compaction fails, nothing is installed.
        runner.lock.withLock { runner.tamper = true }
        for i in 0..<3000 { try db.put(Array(String(format: "k%05d", i).utf8), [1]) }
        let failure = #expect(throws: MoraineError.self) { try db.compactRange() }
        #expect(failure?.message.contains("does not fit its spec") == true, "\(String(describing: failure))")
        // A result whose sizes are not what the files hold: refused the same way.
        runner.lock.withLock {
            runner.tamper = false
            runner.tamperSize = true
        }
        try db.put(Array("k00001".utf8), [1])  // the failed compaction's error is cleared by a write
        let sized = #expect(throws: MoraineError.self) { try db.compactRange() }
        #expect(sized?.message.contains("as stored, the result says") == true, "\(String(describing: sized))")
        try? db.close()
        var reopen = options
        reopen.jobRunner = LocalJobRunner()
        let reopened = try Database(path: dir.path, options: reopen)
        defer { try? reopened.close() }
        for i in stride(from: 0, to: 3000, by: 97) { #expect(try reopened.get(Array(String(format: "k%05d", i).utf8)) == [1]) }
    }

    /// Loads 3000 keys twice (overlapping L0 tables) into a database at `dir` run by `runner`.
    static func loadTwice(_ dir: TempDir, runner: any JobRunner) throws -> (Database, Options) {
        var options = Options()
        options.createIfMissing = true
        options.writeBufferSize = 64 << 10
        options.jobRunner = runner
        options.disableAutoCompactions = true
        options.targetFileSizeBase = 16 << 10
        let db = try Database(path: dir.path, options: options)
        for pass in 0..<2 {
            for i in 0..<3000 {
                try db.put(Array(String(format: "k%05d", i).utf8), [UInt8](repeating: UInt8((i + pass) & 0xFF), count: 100))
            }
            try db.flush()
        }
        return (db, options)
    }

    static func tableNumbers(in path: String) throws -> Set<UInt64> {
        Set(try PosixFileSystem.shared.children(of: path).compactMap { name -> UInt64? in
            if case .table(let n) = DatabaseFile(name: name) { return n } else { return nil }
        })
    }

    /// Runs each job here; the first one's end is "not seen": it writes its outputs, then the
    /// runner says it lost the job (a worker that wrote and vanished).
    final class LosingRunner: JobRunner, @unchecked Sendable {
        let lock = NSLock()
        var specs: [CompactionJobSpec] = []
        var firstOutputs: [UInt64] = []
        func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
            let first = lock.withLock { () -> Bool in
                specs.append(spec)
                return specs.count == 1
            }
            let result = try LocalJobRunner().runCompaction(spec, fileSystem: fileSystem)
            guard first else { return result }
            lock.withLock { firstOutputs = result.outputs.map(\.number) }
            throw JobLost(jobID: spec.jobID, reason: "the test's worker vanished", outputsMayAppearForNanos: 0)
        }
    }

    @Test("a lost job runs again under a new reservation; what it wrote is swept, and its reservation released")
    func lostJob() throws {
        let dir = TempDir("moraine-lostjob")
        defer { dir.remove() }
        let runner = LosingRunner()
        let (db, _) = try Self.loadTwice(dir, runner: runner)
        defer { try? db.close() }
        try db.compactRange()
        let specs = runner.lock.withLock { runner.specs }
        #expect(specs.count >= 2 && specs[0].outputFileNumbers.upperBound <= specs[1].outputFileNumbers.lowerBound)
        #expect(!runner.lock.withLock { runner.firstOutputs }.isEmpty, "the lost job wrote nothing: the test proves nothing")
        #expect(try db.stats().lostJobs == 1)
        for i in stride(from: 0, to: 3000, by: 89) {
            #expect(try db.get(Array(String(format: "k%05d", i).utf8)) == [UInt8](repeating: UInt8((i + 1) & 0xFF), count: 100))
        }
        let live = Set(db.engine!.liveFiles().map(\.file.number))
        #expect(try Self.tableNumbers(in: dir.path) == live, "the lost job's outputs stayed")
        // The next edit releases every reservation: the installed job's and the swept one's.
        try db.put(Array("after".utf8), [1])
        try db.flush()
        #expect(db.engine!.versions.pendingReservations.isEmpty, "still reserved: \(db.engine!.versions.pendingReservations)")
    }

    /// Runs each job here, and copies the database directory as it stands once the job's outputs
    /// are written and before anything installs them: what a crash at that moment leaves. The
    /// copy's last output is cut in half, as a crash mid-write would leave it.
    final class CrashImageRunner: JobRunner, @unchecked Sendable {
        let source: String
        let image: String
        let lock = NSLock()
        var outputs: [UInt64] = []
        /// As a worker's runner: the reservation goes to the manifest first.
        var compactsElsewhere: Bool { true }
        init(source: String, image: String) {
            self.source = source
            self.image = image
        }
        func runCompaction(_ spec: CompactionJobSpec, fileSystem: any FileSystem) throws -> CompactionJobResult {
            let result = try LocalJobRunner().runCompaction(spec, fileSystem: fileSystem)
            try lock.withLock {
                guard outputs.isEmpty, let last = result.outputs.last else { return }
                outputs = result.outputs.map(\.number)
                try FileManager.default.copyItem(atPath: source, toPath: image)
                let torn = joinPath(image, DatabaseFile.table(last.number).name)
                guard Glibc.truncate(torn, off_t(last.sizeBytes / 2)) == 0 else {
                    throw MoraineError(.io, "truncate \(torn): errno \(errno)")
                }
            }
            return result
        }
    }

    @Test("after a crash mid-job the next open deletes the job's outputs by its reservation, a torn one too, and releases it")
    func crashMidJob() throws {
        let dir = TempDir("moraine-crashjob")
        let image = TempDir("moraine-crashjob-image")
        defer {
            dir.remove()
            image.remove()
        }
        try? FileManager.default.removeItem(atPath: image.path)
        let runner = CrashImageRunner(source: dir.path, image: image.path)
        let (db, options) = try Self.loadTwice(dir, runner: runner)
        try db.compactRange()
        try db.close()
        let outputs = runner.lock.withLock { runner.outputs }
        #expect(outputs.count >= 2, "the job wrote \(outputs.count) outputs: the torn one proves little")
        #expect(try Self.tableNumbers(in: image.path).isSuperset(of: outputs))
        var reopen = options
        reopen.jobRunner = LocalJobRunner()
        let crashed = try Database(path: image.path, options: reopen)
        defer { try? crashed.close() }
        #expect(!FileManager.default.fileExists(atPath: image.file(DatabaseDirectory.lostDirectoryName)), "the open set something aside")
        #expect(try Self.tableNumbers(in: image.path) == Set(crashed.engine!.liveFiles().map(\.file.number)))
        #expect(Set(outputs).isDisjoint(with: try Self.tableNumbers(in: image.path)))
        #expect(crashed.engine!.versions.pendingReservations.isEmpty)
        for i in stride(from: 0, to: 3000, by: 89) {
            #expect(try crashed.get(Array(String(format: "k%05d", i).utf8)) == [UInt8](repeating: UInt8((i + 1) & 0xFF), count: 100))
        }
    }
}
