// A compaction job merges input tables into new tables of the output level. Its inputs say
// everything it needs: the input files, the oldest sequence a live snapshot may still read, and
// the key ranges of deeper levels (to know where a tombstone can be dropped). It reads inputs
// and writes outputs only through the FileSystem seam.
//
// Rules, per user key, walking versions newest first:
// - a version hidden by a newer version of the same key that every snapshot can see is dropped;
// - a tombstone every snapshot can see is dropped when no deeper level may hold the key;
// - outputs are cut at `targetFileSizeBytes`, only between user keys, so the tables of a level
//   never share a user key; they take the numbers of the spec's reserved range in order, and
//   once one number is left the last output is not cut again (bigger than the target, never
//   numbered outside the range).
import MoraineFormat
import MoraineSystem

/// A compaction run over the file seam: the work a `CompactionJobSpec` describes.
public struct CompactionJob {
    public let spec: CompactionJobSpec
    public let fileSystem: any FileSystem
    /// Where the job reports progress and hears a cancel or its deadline (checked every few
    /// thousand entries and before it returns).
    public let control: JobControl?

    public init(spec: CompactionJobSpec, fileSystem: any FileSystem, control: JobControl? = nil) {
        self.spec = spec
        self.fileSystem = fileSystem
        self.control = control
    }

    /// Entries merged between two progress reports and cancel checks.
    static let checkIntervalEntries = 4096

    /// Whether no deeper level may hold `user`.
    func isBaseLevel(for user: UnsafeRawBufferPointer) -> Bool {
        for ranges in spec.deeperLevelRanges {
            var low = 0
            var high = ranges.count
            while low < high {
                let mid = (low + high) / 2
                if ranges[mid].upper.withUnsafeBytes({ compareBytes($0, user) < 0 }) {
                    low = mid + 1
                } else {
                    high = mid
                }
            }
            if low < ranges.count && ranges[low].lower.withUnsafeBytes({ compareBytes($0, user) <= 0 }) {
                return false
            }
        }
        return true
    }

    /// Runs the merge, writing and syncing every output.
    /// - Throws: `.invalid` naming each problem of a spec that cannot run; the file system's
    ///   errors; `unavailable` once cancelled or past the deadline (in each case the outputs
    ///   written so far are removed).
    public func run() throws -> CompactionJobResult {
        let problems = spec.problems()
        guard problems.isEmpty else {
            throw MoraineError(.invalid, "compaction job \(spec.jobID) refused: " + problems.joined(separator: "; "))
        }
        let started = monotonicNanos()
        let cpuStarted = threadCPUNanos()
        var result = CompactionJobResult(jobID: spec.jobID)
        var children: [any InternalIterator] = []
        var nextNumber = spec.outputFileNumbers.lowerBound
        for input in spec.inputs {
            let path = spec.tablePath(input.info.number, tier: input.info.tier)
            let tier = input.info.tier
            let direct = tier < spec.directReadTiers.count && spec.directReadTiers[tier]
            let file = direct ? try fileSystem.openDirect(path) : try fileSystem.openRandomAccess(path)
            let reader = try TableReader(file: file, name: path, cache: nil)
            result.bytesRead += reader.fileSizeBytes
            children.append(reader.makeIterator(fillCache: false, readahead: .fixed()))
        }
        let merged = MergingIterator(children)
        var writer: TableWriter? = nil
        var currentUser = KeyBuffer()
        var hasCurrentUser = false
        var lastSequenceForKey = maxSequenceNumber
        var bytesMerged: UInt64 = 0
        var untilCheck = Self.checkIntervalEntries
        do {
            try control?.check(jobID: spec.jobID)
            try merged.seekToFirst()
            while merged.isValid {
                let ikey = merged.key
                if let control {
                    bytesMerged &+= UInt64(ikey.count + merged.value.count)
                    untilCheck -= 1
                    if untilCheck == 0 {
                        untilCheck = Self.checkIntervalEntries
                        control.record(bytesDone: bytesMerged)
                        try control.check(jobID: spec.jobID)
                    }
                }
                let user = userKey(ikey)
                let newUserKey = !hasCurrentUser || compareBytes(currentUser.bytes, user) != 0
                if newUserKey {
                    // Cut the output only between user keys, and only while the reserved range
                    // has a number left for the next one (else the last output takes the rest).
                    if let w = writer, w.builder!.estimatedFileSizeBytes >= spec.targetFileSizeBytes,
                        nextNumber < spec.outputFileNumbers.upperBound
                    {
                        result.outputs.append(try w.finish())
                        result.bytesWritten += result.outputs.last!.sizeBytes
                        writer = nil
                    }
                    currentUser.set(user)
                    hasCurrentUser = true
                    lastSequenceForKey = maxSequenceNumber
                }
                let seq = sequence(ikey)
                var drop = false
                if lastSequenceForKey <= spec.smallestSnapshot {
                    drop = true  // a newer version of this key is visible to every snapshot
                } else if valueType(ikey) == .deletion && seq <= spec.smallestSnapshot && isBaseLevel(for: user) {
                    drop = true  // nothing older survives below, and no snapshot needs the tombstone
                }
                lastSequenceForKey = seq
                if drop {
                    result.entriesDropped += 1
                } else {
                    if writer == nil {
                        let number = nextNumber
                        nextNumber += 1
                        let w = TableWriter(
                            path: spec.tablePath(number, tier: spec.outputTier), number: number, tier: spec.outputTier,
                            fileSystem: fileSystem, options: spec.tableOptions)
                        try w.open()
                        writer = w
                    }
                    try writer!.builder!.add(key: ikey, value: merged.value)
                }
                try merged.next()
            }
            if let w = writer {
                if w.builder!.entryCount > 0 {
                    result.outputs.append(try w.finish())
                    result.bytesWritten += result.outputs.last!.sizeBytes
                } else {
                    w.abandon()
                }
                writer = nil
            }
            // A job stopped or late by now must not hand back a result its sender gave up on.
            try control?.check(jobID: spec.jobID)
            control?.record(bytesDone: bytesMerged)
        } catch {
            writer?.abandon()
            for output in result.outputs {
                try? fileSystem.remove(spec.tablePath(output.number, tier: spec.outputTier))
            }
            throw error
        }
        result.wallNanos = monotonicNanos() - started
        result.cpuNanos = threadCPUNanos() - cpuStarted
        return result
    }
}
