// Flush as a value: what a worker needs to turn a memtable's sorted entries into one L0 table —
// the output's number (reserved when the flush was dispatched), the table options, the owner's
// epoch and a deadline — with the entries themselves streamed after it (the source a worker can
// reach: the compute node's memtable, sent in key order). A result names the table written, if
// any. Checked where they cross a boundary: a spec before a worker starts, a result before the
// engine installs it.
//
// Value types; no shared state.
import MoraineSystem

/// Everything a flush job needs but its entries, as a value.
public struct FlushJobSpec: Sendable, Equatable, TieredJobSpec {
    /// Unique per database and owner epoch (shared with compaction jobs' ids).
    public var jobID: UInt64
    /// The database's directory on the file system the job is given.
    public var directory: String
    /// The owner's lease epoch (0 where no lease fences the files, as embedded).
    public var epoch: UInt64
    /// The number the output table takes, reserved for this job when it was dispatched.
    public var outputNumber: UInt64
    public var tableOptions: TableOptions
    /// Wall-clock nanoseconds after which the job must not start, take entries, nor finish (0:
    /// no deadline).
    public var deadlineUnixNanos: Int64 = 0
    /// Where the memtable lies in a memory node's region, when it does: a worker on the same box
    /// reads it there in place instead of receiving its entries.
    public var arena: FlushArenaReference? = nil
    /// The directory of each storage tier, fastest first, where the database spreads its tables
    /// over tiers; empty when every table lives in `directory`.
    public var tierDirectories: [String] = []
    /// The tier the output goes to (an index into `tierDirectories`).
    public var outputTier = 0

    public init(jobID: UInt64, directory: String, epoch: UInt64, outputNumber: UInt64, tableOptions: TableOptions) {
        self.jobID = jobID
        self.directory = directory
        self.epoch = epoch
        self.outputNumber = outputNumber
        self.tableOptions = tableOptions
    }

    /// Why a worker could not run this spec at wall-clock time `now`; empty when it can.
    public func problems(now: Int64 = wallClockNanos()) -> [String] {
        var found: [String] = []
        if outputNumber == 0 { found.append("output number 0") }
        if directory.isEmpty { found.append("no directory") }
        found += tierProblems(inputTiers: [])
        if deadlineUnixNanos != 0 && deadlineUnixNanos <= now {
            found.append("its deadline passed \(Double((now - deadlineUnixNanos) / 1_000_000) / 1000) s ago")
        }
        if tableOptions.blockSizeBytes < 256 || tableOptions.blockSizeBytes > 64 << 20 {
            found.append("block size \(tableOptions.blockSizeBytes) is outside 256 B…64 MiB")
        }
        if tableOptions.restartInterval < 1 { found.append("restart interval \(tableOptions.restartInterval) is below 1") }
        if tableOptions.bloomBitsPerKey < 0 { found.append("bloom bits per key \(tableOptions.bloomBitsPerKey) is negative") }
        return found
    }

    /// Why `result` must not be installed for this spec; empty when it may.
    public func problems(in result: FlushJobResult) -> [String] {
        guard result.jobID == jobID else { return ["result of job \(result.jobID), not of job \(jobID)"] }
        guard let output = result.output else { return [] }
        var found: [String] = []
        if output.number != outputNumber { found.append("output table \(output.number) is not the reserved \(outputNumber)") }
        if output.tier != outputTier { found.append("output table \(output.number) is on tier \(output.tier), not \(outputTier)") }
        if output.sizeBytes == 0 { found.append("output table \(output.number) is empty") }
        if output.smallest.count < 8 || output.largest.count < 8 { found.append("output table \(output.number) has no key range") }
        if output.smallestSequence > output.largestSequence {
            found.append("output table \(output.number) has sequences \(output.smallestSequence)…\(output.largestSequence)")
        }
        return found
    }
}

/// What a flush job wrote and what it cost.
public struct FlushJobResult: Sendable, Equatable {
    public var jobID: UInt64
    /// The table written and synced; nil when there was nothing to write.
    public var output: TableFileInfo? = nil
    public var entries: UInt64 = 0
    /// Time the job took, on the clock of whoever ran it.
    public var wallNanos: Int64 = 0
    /// CPU time spent building the table, wherever it was built.
    public var cpuNanos: Int64 = 0

    public init(jobID: UInt64) { self.jobID = jobID }
}

/// A memtable's arena in a memory node's region: the region file, the arena's offset and bytes
/// in it, and the memtable's log number (the arena's tag).
public struct FlushArenaReference: Sendable, Equatable {
    public var regionPath: String
    public var offset: UInt64
    public var bytes: UInt64
    public var logNumber: UInt64

    public init(regionPath: String, offset: UInt64, bytes: UInt64, logNumber: UInt64) {
        self.regionPath = regionPath
        self.offset = offset
        self.bytes = bytes
        self.logNumber = logNumber
    }
}
