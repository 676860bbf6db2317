// Compaction as a value: a spec names everything the job needs (its input tables with their
// levels, sizes and key ranges, the output level, the oldest sequence a snapshot may read, the key
// ranges of deeper levels, the table options) and a range of output file numbers reserved for it
// when it was dispatched, in place of a callback into the version set; so the same job can run in
// the engine's process or on a worker that holds nothing but the spec. A result names the tables
// the job wrote and what it cost. Both are checked where they cross a boundary: a spec before a
// job runs (`problems`), a result before the engine installs it (`problems(in:)`), each answering
// with reasons a person can act on.
//
// Value types; no shared state.
import MoraineSystem

/// A table a job reads: its place in the tree and what it holds.
public struct JobInputTable: Sendable, Equatable {
    public var level: Int
    public var info: TableFileInfo

    public init(level: Int, info: TableFileInfo) {
        self.level = level
        self.info = info
    }
}

/// A user-key range, both ends included.
public struct UserKeyRange: Sendable, Equatable {
    public var lower: [UInt8]
    public var upper: [UInt8]

    public init(lower: [UInt8], upper: [UInt8]) {
        self.lower = lower
        self.upper = upper
    }
}

/// Everything a compaction job needs, as a value.
public struct CompactionJobSpec: Sendable, Equatable, TieredJobSpec {
    /// Unique per database and owner epoch.
    public var jobID: UInt64
    /// The database's directory on the file system the job is given.
    public var directory: String
    /// The owner's lease epoch (0 where no lease fences the files, as embedded).
    public var epoch: UInt64
    /// Input tables: the input level's, then the output level's, each level in key order.
    public var inputs: [JobInputTable]
    public var outputLevel: Int
    /// The levels of the tree the spec was made from.
    public var levelCount: Int
    /// Entries newer than this are kept as they are; older ones may be dropped when shadowed.
    public var smallestSnapshot: SequenceNumber
    /// For each level deeper than the output, the user-key ranges of its tables, sorted.
    public var deeperLevelRanges: [[UserKeyRange]]
    public var targetFileSizeBytes: UInt64
    public var tableOptions: TableOptions
    /// The numbers the outputs take, in order; reserved for this job when it was dispatched.
    public var outputFileNumbers: Range<UInt64>
    /// Wall-clock nanoseconds (since 1970) after which the job must not start, nor finish: its
    /// sender has given up on it by then (0: no deadline, as for a job run in its own process).
    public var deadlineUnixNanos: Int64 = 0
    /// The directory of each storage tier, fastest first, where the database spreads its tables
    /// over tiers; empty when every table lives in `directory`.
    public var tierDirectories: [String] = []
    /// The tier the output goes to (an index into `tierDirectories`).
    public var outputTier = 0
    /// Per tier (the database's directory is tier 0 without tiers): whether inputs there are
    /// opened for direct reads (`FileSystem.openDirect`; the engine's `useDirectReads`, except on
    /// a tier read through mappings), so a compaction run in the engine's process reads them as
    /// its gets do. Empty: none. Not sent with a job: a worker reads through its storage node,
    /// which decides how it reads.
    public var directReadTiers: [Bool] = []

    public init(
        jobID: UInt64, directory: String, epoch: UInt64, inputs: [JobInputTable], outputLevel: Int,
        levelCount: Int, smallestSnapshot: SequenceNumber, deeperLevelRanges: [[UserKeyRange]], targetFileSizeBytes: UInt64,
        tableOptions: TableOptions, outputFileNumbers: Range<UInt64>
    ) {
        self.jobID = jobID
        self.directory = directory
        self.epoch = epoch
        self.inputs = inputs
        self.outputLevel = outputLevel
        self.levelCount = levelCount
        self.smallestSnapshot = smallestSnapshot
        self.deeperLevelRanges = deeperLevelRanges
        self.targetFileSizeBytes = targetFileSizeBytes
        self.tableOptions = tableOptions
        self.outputFileNumbers = outputFileNumbers
    }

    /// How many output numbers to reserve for compacting `inputBytes` into tables of
    /// `targetFileSizeBytes`: outputs hold at most what the inputs hold, so twice the count of
    /// full tables plus a few is room to spare; a job that still runs out writes the rest into
    /// its last table rather than fail.
    public static func outputNumbersToReserve(inputBytes: UInt64, targetFileSizeBytes: UInt64) -> UInt64 {
        let full = inputBytes / max(1, targetFileSizeBytes)
        return min(2 * full + 4, 1 << 20)
    }

    /// Why a job could not run this spec at wall-clock time `now`, one reason per problem; empty
    /// when it can.
    public func problems(now: Int64 = wallClockNanos()) -> [String] {
        var found: [String] = []
        if inputs.isEmpty { found.append("no input tables") }
        if deadlineUnixNanos != 0 && deadlineUnixNanos <= now {
            let late = Double(now - deadlineUnixNanos) / 1e9
            found.append("its deadline passed \((late * 1000).rounded() / 1000) s ago")
        }
        if outputLevel < 1 || outputLevel >= levelCount {
            found.append("output level \(outputLevel) is outside 1..<\(levelCount)")
        }
        var seen = Set<UInt64>()
        for input in inputs {
            if !seen.insert(input.info.number).inserted { found.append("input table \(input.info.number) is named twice") }
            if input.level < 0 || input.level > outputLevel {
                found.append("input table \(input.info.number) is on level \(input.level), not at or above output level \(outputLevel)")
            }
            if input.info.smallest.count < 8 || input.info.largest.count < 8 {
                found.append("input table \(input.info.number) has no key range")
            }
            if outputFileNumbers.contains(input.info.number) {
                found.append("input table \(input.info.number) is inside the output range \(outputFileNumbers)")
            }
        }
        found += tierProblems(inputTiers: inputs.map { ($0.info.number, $0.info.tier) })
        if outputFileNumbers.isEmpty { found.append("the output file-number range is empty") }
        if targetFileSizeBytes == 0 { found.append("target file size is 0") }
        if tableOptions.blockSizeBytes < 256 || tableOptions.blockSizeBytes > 64 << 20 {
            found.append("block size \(tableOptions.blockSizeBytes) is outside 256 B…64 MiB")
        }
        if tableOptions.restartInterval < 1 { found.append("restart interval \(tableOptions.restartInterval) is below 1") }
        if tableOptions.bloomBitsPerKey < 0 { found.append("bloom bits per key \(tableOptions.bloomBitsPerKey) is negative") }
        if deeperLevelRanges.count > max(0, levelCount - 1 - outputLevel) {
            found.append("\(deeperLevelRanges.count) deeper levels below output level \(outputLevel) of \(levelCount)")
        }
        for (index, ranges) in deeperLevelRanges.enumerated() {
            for range in ranges where range.upper.lexicographicallyPrecedes(range.lower) {
                found.append("deeper level \(outputLevel + 1 + index) has a range whose lower end passes its upper end")
            }
            for (a, b) in zip(ranges, ranges.dropFirst()) where !a.upper.lexicographicallyPrecedes(b.lower) {
                found.append("deeper level \(outputLevel + 1 + index) has overlapping or unsorted ranges")
                break
            }
        }
        return found
    }

    /// The user-key range of every input together.
    var inputUserKeyRange: UserKeyRange? {
        guard let first = inputs.first else { return nil }
        var lower = first.info.smallest.withUnsafeBytes { Array(userKey($0)) }
        var upper = first.info.largest.withUnsafeBytes { Array(userKey($0)) }
        for input in inputs.dropFirst() {
            let smallest = input.info.smallest.withUnsafeBytes { Array(userKey($0)) }
            let largest = input.info.largest.withUnsafeBytes { Array(userKey($0)) }
            if smallest.lexicographicallyPrecedes(lower) { lower = smallest }
            if upper.lexicographicallyPrecedes(largest) { upper = largest }
        }
        return UserKeyRange(lower: lower, upper: upper)
    }

    /// Why `result` must not be installed for this spec; empty when it may. What a compute node
    /// checks before it believes a worker: outputs inside the reserved range, each named once,
    /// with sane sizes, keys inside the inputs' range, in key order without sharing a user key.
    public func problems(in result: CompactionJobResult) -> [String] {
        var found: [String] = []
        guard result.jobID == jobID else { return ["result of job \(result.jobID), not of job \(jobID)"] }
        var seen = Set<UInt64>()
        let range = inputUserKeyRange
        var previousUpper: [UInt8]? = nil
        for output in result.outputs {
            let name = "output table \(output.number)"
            if !outputFileNumbers.contains(output.number) { found.append("\(name) is outside the reserved range \(outputFileNumbers)") }
            if !seen.insert(output.number).inserted { found.append("\(name) is named twice") }
            if output.tier != outputTier { found.append("\(name) is on tier \(output.tier), not \(outputTier)") }
            if output.sizeBytes == 0 { found.append("\(name) is empty") }
            guard output.smallest.count >= 8, output.largest.count >= 8 else {
                found.append("\(name) has no key range")
                continue
            }
            let lower = output.smallest.withUnsafeBytes { Array(userKey($0)) }
            let upper = output.largest.withUnsafeBytes { Array(userKey($0)) }
            if upper.lexicographicallyPrecedes(lower) { found.append("\(name) ends before it starts") }
            if let range, lower.lexicographicallyPrecedes(range.lower) || range.upper.lexicographicallyPrecedes(upper) {
                found.append("\(name) holds keys outside the inputs' range")
            }
            if let previousUpper, !previousUpper.lexicographicallyPrecedes(lower) {
                found.append("\(name) overlaps the output before it")
            }
            previousUpper = upper
        }
        return found
    }
}

/// What a compaction job wrote and what it cost.
public struct CompactionJobResult: Sendable, Equatable {
    public var jobID: UInt64
    /// The tables written, in key order, each synced.
    public var outputs: [TableFileInfo] = []
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    public var entriesDropped: UInt64 = 0
    /// Time the job took, on the clock of whoever ran it.
    public var wallNanos: Int64 = 0
    /// CPU time the job's thread spent, wherever it ran.
    public var cpuNanos: Int64 = 0

    public init(jobID: UInt64) { self.jobID = jobID }
}
