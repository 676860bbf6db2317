// The version set owns the current Version, the manifest log that makes it durable, and the
// counters that must survive restarts (next file number, last sequence, the oldest live WAL).
// An edit is durable once its manifest record is synced; CURRENT names the live manifest and is
// replaced atomically (write a temporary file, sync, rename, sync the directory).
// Thread-safety: `logAndApply` calls are serialized by the engine (one installer at a time);
// `current` is read under the engine's mutex.
import MoraineFormat
import MoraineSystem
import Synchronization

final class VersionSet: @unchecked Sendable {
    let directory: String
    let fileSystem: any FileSystem
    let options: Options
    let sink: ObsoleteFiles
    private let state = ConditionLock()
    private var _current: Version
    /// The current version (safe to read from any thread).
    var current: Version { state.withLock { _current } }
    private let nextFileNumberCounter = Atomic<UInt64>(2)
    /// WAL files numbered below this hold nothing that is not in a table.
    private(set) var logNumber: UInt64 = 0
    /// The last sequence number recorded in the manifest.
    private(set) var recordedLastSequence: SequenceNumber = 0
    /// Per level, where the next size-triggered compaction starts (an internal key).
    var compactPointers: [[UInt8]]
    private var manifest: LogWriter? = nil
    private var manifestNumber: UInt64 = 0
    private(set) var manifestCount = 0
    /// Tables the recovered manifest's edits removed (and did not add back): provably obsolete.
    private(set) var recoveredDeletedTables = Set<UInt64>()
    /// Output-number reservations of jobs in flight (by first number), as the manifest records
    /// them: added by an edit's `reservations`, removed by its `releasedReservations`.
    private(set) var pendingReservations: [UInt64: Range<UInt64>] = [:]
    /// The recovered manifest's path and size, to tell whether a writer appended since.
    private var recoveredManifest: (path: String, sizeBytes: UInt64)? = nil

    init(directory: String, options: Options, sink: ObsoleteFiles) {
        self.directory = directory
        self.fileSystem = options.fileSystem
        self.options = options
        self.sink = sink
        self._current = Version.empty(levelCount: options.numLevels)
        self.compactPointers = Array(repeating: [], count: options.numLevels)
    }

    func newFileNumber() -> UInt64 { nextFileNumberCounter.wrappingAdd(1, ordering: .relaxed).oldValue }
    var nextFileNumber: UInt64 { nextFileNumberCounter.load(ordering: .relaxed) }
    /// Reserves `count` consecutive numbers (a job's outputs). The next manifest edit records a
    /// next-file number past them.
    func reserveFileNumbers(_ count: UInt64) -> Range<UInt64> {
        let first = nextFileNumberCounter.wrappingAdd(count, ordering: .relaxed).oldValue
        return first..<first + count
    }
    /// Makes sure `number` (found in use, e.g. a log newer than the manifest) is never handed out.
    func markFileNumberUsed(_ number: UInt64) {
        if nextFileNumber <= number { nextFileNumberCounter.store(number + 1, ordering: .relaxed) }
    }

    private func path(_ file: DatabaseFile) -> String { joinPath(directory, file.name) }

    /// Reads CURRENT and replays the manifest it names.
    /// - Throws: `.corruption` naming the manifest when a record is damaged or refers to nothing.
    func recover() throws {
        let currentBytes = try fileSystem.readAll(path(.current))
        var name = String(decoding: currentBytes, as: UTF8.self)
        guard name.hasSuffix("\n") else {
            throw MoraineError.corruption("CURRENT does not end in a newline", file: path(.current))
        }
        name.removeLast()
        guard case .manifest(let number) = DatabaseFile(name: name) else {
            throw MoraineError.corruption("CURRENT names '\(name)', not a manifest", file: path(.current))
        }
        let manifestPath = joinPath(directory, name)
        guard try fileSystem.exists(manifestPath) else {
            throw MoraineError(
                .corruption,
                "CURRENT names \(name), which does not exist in \(directory); nothing was changed. "
                    + "Run `moraine repair --db \(directory)` to rebuild the manifest from the tables")
        }
        let manifestFile = try fileSystem.openRandomAccess(manifestPath)
        recoveredManifest = (manifestPath, manifestFile.size)
        let reader = try LogReader(file: manifestFile, name: manifestPath, mode: .stop, strictTail: true)
        var deleted = Set<UInt64>()
        var version = Version.empty(levelCount: options.numLevels)
        var sawNextFile = false
        var sawLog = false
        while let record = try reader.nextRecord() {
            let edit = try VersionEdit.decode(record, origin: manifestPath)
            for (_, number) in edit.deletedFiles { deleted.insert(number) }
            for (_, file) in edit.newFiles { deleted.remove(file.number) }
            version = version.applying(edit, sink: sink).version
            if let n = edit.logNumber { logNumber = n; sawLog = true }
            if let n = edit.nextFileNumber { nextFileNumberCounter.store(n, ordering: .relaxed); sawNextFile = true }
            if let s = edit.lastSequence { recordedLastSequence = s }
            for (level, key) in edit.compactPointers { compactPointers[level] = key }
            for range in edit.reservations { pendingReservations[range.lowerBound] = range }
            for first in edit.releasedReservations { pendingReservations[first] = nil }
        }
        guard sawNextFile, sawLog else {
            throw MoraineError.corruption("manifest lacks the next-file or log number", file: manifestPath)
        }
        if let problem = version.checkInvariants() {
            throw MoraineError.corruption("manifest describes an invalid tree: \(problem)", file: manifestPath)
        }
        if nextFileNumber <= number { nextFileNumberCounter.store(number + 1, ordering: .relaxed) }
        for level in version.levels {
            for file in level where file.number >= nextFileNumber {
                throw MoraineError.corruption(
                    "table \(file.number) is numbered past the next file number", file: manifestPath)
            }
        }
        if reader.droppedTailBytes > 0 {
            SystemLog.info("\(manifestPath): dropped a torn last record of \(reader.droppedTailBytes) bytes (a crash mid-append, or damage)")
        }
        state.withLock { _current = version }
        manifestNumber = number
        recoveredDeletedTables = deleted
    }

    /// Whether the manifest recovered from has grown or gone since (a writer in another process
    /// installed an edit: what a read-only open may race).
    func manifestGrew() -> Bool {
        guard let recoveredManifest else { return false }
        guard let size = try? fileSystem.fileSize(recoveredManifest.path) else { return true }
        return size != recoveredManifest.sizeBytes
    }

    /// A full snapshot of the current state as one edit (the first record of a new manifest).
    private func snapshotEdit(lastSequence: SequenceNumber) -> VersionEdit {
        var edit = VersionEdit()
        edit.logNumber = logNumber
        edit.nextFileNumber = nextFileNumber
        edit.lastSequence = lastSequence
        for (level, files) in _current.levels.enumerated() {
            for file in files { edit.newFiles.append((level, file.info)) }
        }
        for (level, key) in compactPointers.enumerated() where !key.isEmpty {
            edit.compactPointers.append((level, key))
        }
        edit.reservations = pendingReservations.values.sorted { $0.lowerBound < $1.lowerBound }
        return edit
    }

    /// Makes `edit` (applied to an empty tree) the whole state, with `logNumber`, in a new
    /// manifest that CURRENT points at: how repair installs the tables it found. Precondition:
    /// nothing was recovered or installed by this version set.
    func adopt(_ edit: VersionEdit, logNumber: UInt64, lastSequence: SequenceNumber) throws {
        precondition(manifest == nil && manifestNumber == 0, "adopt on a version set in use")
        let version = Version.empty(levelCount: options.numLevels).applying(edit, sink: sink).version
        markFileNumberUsed(logNumber)
        state.withLock {
            _current = version
            self.logNumber = logNumber
        }
        try writeNewManifest(lastSequence: lastSequence)
    }

    /// Starts a new manifest holding the current state and points CURRENT at it.
    func writeNewManifest(lastSequence: SequenceNumber) throws {
        let number = newFileNumber()
        let manifestPath = path(.manifest(number))
        let file = try fileSystem.createNew(manifestPath, hint: .log)
        let writer = LogWriter(file: file)
        do {
            try writer.addRecord(snapshotEdit(lastSequence: lastSequence).encode())
            try file.sync()
            try setCurrent(manifestNumber: number)
        } catch {
            try? file.close()
            try? fileSystem.remove(manifestPath)
            throw error
        }
        let old = manifestNumber
        if let previous = manifest { try? previous.file.close() }
        manifest = writer
        manifestNumber = number
        manifestCount += 1
        if old != 0 && old != number { try? fileSystem.remove(path(.manifest(old))) }
    }

    private func setCurrent(manifestNumber number: UInt64) throws {
        let temporary = path(.temporary(number))
        let file = try fileSystem.createWritable(temporary)
        try file.append(Array((DatabaseFile.manifest(number).name + "\n").utf8))
        try file.sync()
        try file.close()
        try fileSystem.rename(temporary, to: path(.current))
        try fileSystem.syncDirectory(directory)
    }

    /// Makes `edit` durable in the manifest and installs the resulting version.
    /// Precondition: the caller is the only installer. On failure nothing is installed, and the
    /// next edit starts a fresh manifest (the old one may end in a partial record).
    func logAndApply(_ edit: VersionEdit, lastSequence: SequenceNumber) throws -> Version {
        var edit = edit
        edit.nextFileNumber = nextFileNumber
        edit.lastSequence = lastSequence
        if let n = edit.logNumber { precondition(n >= logNumber, "log number moved backward") }
        let previous = (_current, logNumber, compactPointers)
        let previousReservations = pendingReservations
        for range in edit.reservations { pendingReservations[range.lowerBound] = range }
        for first in edit.releasedReservations { pendingReservations[first] = nil }
        let (version, removed) = _current.applying(edit, sink: sink)
        if let problem = version.checkInvariants() {
            preconditionFailure("edit produced an invalid tree: \(problem)")
        }
        let roll = manifest == nil || manifest!.file.size >= UInt64(options.maxManifestFileSize)
        state.withLock {
            _current = version
            if let n = edit.logNumber { logNumber = n }
            for (level, key) in edit.compactPointers { compactPointers[level] = key }
        }
        do {
            if roll {
                // The new manifest starts from the state this edit produces.
                try writeNewManifest(lastSequence: lastSequence)
            } else {
                try manifest!.addRecord(edit.encode())
                try manifest!.file.sync()
            }
        } catch {
            state.withLock { (_current, logNumber, compactPointers) = previous }
            pendingReservations = previousReservations
            if let m = manifest { try? m.file.close() }
            manifest = nil
            throw error
        }
        recordedLastSequence = lastSequence
        for file in removed { file.markObsolete() }
        return version
    }

    func close() {
        if let manifest { try? manifest.file.close() }
        manifest = nil
    }

    /// File numbers of every table the current version references.
    var liveTableNumbers: Set<UInt64> {
        Set(current.levels.flatMap { $0.map(\.number) })
    }

    var currentManifestNumber: UInt64 { manifestNumber }
}
