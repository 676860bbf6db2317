// The workers' protocol: a compute node sends a compaction job (its spec, a value) to a worker
// and gets the job's result, or an error; and anyone may ask a worker how busy it is. docs/
// WORKERS.md has the byte layouts; this file is their code. Keys travel as byte strings (u32
// length), since a key may be longer than a wire string; every count is bounded before anything
// is allocated for it.
//
// Value types; no shared state.
import MoraineFormat
import MoraineSystem
import MoraineTransport

/// The workers' opcodes (0x40–0x4F).
public enum WorkerOpcode {
    /// Start a compaction: `CompactionJobRequest` → `CompactionJobAccepted` once the job runs
    /// (on the worker's own thread; its outcome is fetched with `poll`).
    public static let compact: UInt8 = 0x40
    /// How busy the worker is, and how far each job has got: empty → `WorkerStatusReply`.
    public static let status: UInt8 = 0x41
    /// Stop a job and remove its outputs: `CompactionJobName` → empty.
    public static let cancel: UInt8 = 0x42
    /// How a job is doing, and its outcome once it has one: `CompactionJobName` →
    /// `CompactionPollReply`. An outcome is handed out once.
    public static let poll: UInt8 = 0x43
}

extension TableFileInfo {
    func encode(into writer: inout WireWriter) {
        writer.u64(number)
        writer.u64(sizeBytes)
        writer.data(smallest)
        writer.data(largest)
        writer.u64(smallestSequence)
        writer.u64(largestSequence)
        writer.u8(UInt8(clamping: tier))
    }

    init(from reader: inout WireReader) throws(TransportError) {
        self.init(
            number: try reader.u64("table number"), sizeBytes: try reader.u64("table size"),
            smallest: try reader.data("smallest key"), largest: try reader.data("largest key"),
            smallestSequence: try reader.u64("smallest sequence"), largestSequence: try reader.u64("largest sequence"),
            tier: Int(try reader.u8("table tier")))
    }
}

/// A job's storage tiers on the wire: u8 count, each tier's directory (string), u8 output tier.
/// Tier numbers are checked against the spec by its `problems()`, not here.
enum TierCoding {
    static func encode(_ directories: [String], outputTier: Int, into writer: inout WireWriter) {
        writer.u8(UInt8(clamping: directories.count))
        for directory in directories { writer.string(directory) }
        writer.u8(UInt8(clamping: outputTier))
    }

    static func decode(from reader: inout WireReader, wireName: String) throws(TransportError) -> (directories: [String], outputTier: Int) {
        let count = Int(try reader.u8("tier count"))
        guard count <= TableFileInfo.tiersMax else {
            throw TransportError(.malformed, "\(wireName): \(count) tiers pass \(TableFileInfo.tiersMax)")
        }
        var directories: [String] = []
        for _ in 0..<count { directories.append(try reader.string("tier directory")) }
        return (directories, Int(try reader.u8("output tier")))
    }
}

/// A compaction job for a worker: its spec.
public struct CompactionJobRequest: WireMessage {
    public static let wireName = "compaction job request"
    /// The most input tables one job may name.
    public static let inputsMax = 100_000
    /// The most key ranges all deeper levels together may hold.
    public static let rangesMax = 1_000_000
    public var spec: CompactionJobSpec

    public init(spec: CompactionJobSpec) { self.spec = spec }

    public func encode(into writer: inout WireWriter) {
        writer.u64(spec.jobID)
        writer.string(spec.directory)
        writer.u64(spec.epoch)
        writer.u32(UInt32(spec.inputs.count))
        for input in spec.inputs {
            writer.u8(UInt8(clamping: input.level))
            input.info.encode(into: &writer)
        }
        writer.u8(UInt8(clamping: spec.outputLevel))
        writer.u8(UInt8(clamping: spec.levelCount))
        writer.u64(spec.smallestSnapshot)
        writer.u8(UInt8(clamping: spec.deeperLevelRanges.count))
        for ranges in spec.deeperLevelRanges {
            writer.u32(UInt32(ranges.count))
            for range in ranges {
                writer.data(range.lower)
                writer.data(range.upper)
            }
        }
        writer.u64(spec.targetFileSizeBytes)
        writer.u32(UInt32(clamping: spec.tableOptions.blockSizeBytes))
        writer.u32(UInt32(clamping: spec.tableOptions.restartInterval))
        writer.u32(UInt32(clamping: spec.tableOptions.bloomBitsPerKey))
        writer.u8(spec.tableOptions.compression == .lz4 ? 1 : 0)
        writer.u64(spec.outputFileNumbers.lowerBound)
        writer.u64(spec.outputFileNumbers.upperBound)
        writer.u64(UInt64(bitPattern: spec.deadlineUnixNanos))
        TierCoding.encode(spec.tierDirectories, outputTier: spec.outputTier, into: &writer)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let jobID = try reader.u64("job id")
        let directory = try reader.string("directory")
        let epoch = try reader.u64("epoch")
        let inputCount = Int(try reader.u32("input count"))
        guard inputCount <= Self.inputsMax else {
            throw TransportError(.malformed, "\(Self.wireName): \(inputCount) inputs pass \(Self.inputsMax)")
        }
        var inputs: [JobInputTable] = []
        for _ in 0..<inputCount {
            let level = Int(try reader.u8("input level"))
            inputs.append(JobInputTable(level: level, info: try TableFileInfo(from: &reader)))
        }
        let outputLevel = Int(try reader.u8("output level"))
        let levelCount = Int(try reader.u8("level count"))
        let snapshot = try reader.u64("smallest snapshot")
        let deeperCount = Int(try reader.u8("deeper level count"))
        var deeper: [[UserKeyRange]] = []
        var rangeCount = 0
        for _ in 0..<deeperCount {
            let count = Int(try reader.u32("range count"))
            rangeCount += count
            guard rangeCount <= Self.rangesMax else {
                throw TransportError(.malformed, "\(Self.wireName): more than \(Self.rangesMax) deeper key ranges")
            }
            var ranges: [UserKeyRange] = []
            for _ in 0..<count {
                ranges.append(UserKeyRange(lower: try reader.data("range lower"), upper: try reader.data("range upper")))
            }
            deeper.append(ranges)
        }
        let target = try reader.u64("target file size")
        let options = TableOptions(
            blockSizeBytes: Int(try reader.u32("block size")), restartInterval: Int(try reader.u32("restart interval")),
            bloomBitsPerKey: Int(try reader.u32("bloom bits per key")),
            compression: try reader.u8("compression") == 1 ? .lz4 : .none)
        let lower = try reader.u64("output numbers lower")
        let upper = try reader.u64("output numbers upper")
        guard lower <= upper else {
            throw TransportError(.malformed, "\(Self.wireName): output numbers \(lower)..<\(upper) run backward")
        }
        spec = CompactionJobSpec(
            jobID: jobID, directory: directory, epoch: epoch, inputs: inputs, outputLevel: outputLevel, levelCount: levelCount,
            smallestSnapshot: snapshot, deeperLevelRanges: deeper, targetFileSizeBytes: target, tableOptions: options,
            outputFileNumbers: lower..<upper)
        spec.deadlineUnixNanos = Int64(bitPattern: try reader.u64("deadline"))
        (spec.tierDirectories, spec.outputTier) = try TierCoding.decode(from: &reader, wireName: Self.wireName)
    }
}

/// How a job is doing: running (with its progress), done (with its result) or failed (with the
/// error, as the error's kind and message).
public struct CompactionPollReply: WireMessage {
    public static let wireName = "compaction poll reply"

    public enum State: Sendable, Equatable {
        case running(bytesDone: UInt64)
        case done(CompactionJobResult)
        case failed(MoraineError.Kind, String)
    }

    public var state: State

    public init(_ state: State) { self.state = state }

    public func encode(into writer: inout WireWriter) {
        switch state {
        case .running(let bytesDone):
            writer.u8(0)
            writer.u64(bytesDone)
        case .done(let result):
            writer.u8(1)
            CompactionJobReply(result: result).encode(into: &writer)
        case .failed(let kind, let message):
            writer.u8(2)
            writer.u8(kind.rawValue)
            // Cut to fit a wire string (a cut mid-character decodes to one replacement character).
            writer.string(String(decoding: message.utf8.prefix(WireReader.stringBytesMax - 3), as: UTF8.self))
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        switch try reader.u8("poll state") {
        case 0: state = .running(bytesDone: try reader.u64("bytes done"))
        case 1: state = .done(try CompactionJobReply(from: &reader).result)
        case 2:
            let code = try reader.u8("error kind")
            guard let kind = MoraineError.Kind(rawValue: code) else {
                throw TransportError(.malformed, "\(Self.wireName): unknown error kind \(code)")
            }
            state = .failed(kind, try reader.string("error message"))
        case let other: throw TransportError(.malformed, "\(Self.wireName): unknown poll state \(other)")
        }
    }
}

/// A finished compaction job: its result.
public struct CompactionJobReply: WireMessage {
    public static let wireName = "compaction job reply"
    public static let outputsMax = 1 << 20
    public var result: CompactionJobResult

    public init(result: CompactionJobResult) { self.result = result }

    public func encode(into writer: inout WireWriter) {
        writer.u64(result.jobID)
        writer.u32(UInt32(result.outputs.count))
        for output in result.outputs { output.encode(into: &writer) }
        writer.u64(result.bytesRead)
        writer.u64(result.bytesWritten)
        writer.u64(result.entriesDropped)
        writer.u64(UInt64(max(0, result.wallNanos)))
        writer.u64(UInt64(max(0, result.cpuNanos)))
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        result = CompactionJobResult(jobID: try reader.u64("job id"))
        let count = Int(try reader.u32("output count"))
        guard count <= Self.outputsMax else {
            throw TransportError(.malformed, "\(Self.wireName): \(count) outputs pass \(Self.outputsMax)")
        }
        for _ in 0..<count { result.outputs.append(try TableFileInfo(from: &reader)) }
        result.bytesRead = try reader.u64("bytes read")
        result.bytesWritten = try reader.u64("bytes written")
        result.entriesDropped = try reader.u64("entries dropped")
        result.wallNanos = Int64(clamping: try reader.u64("wall time"))
        result.cpuNanos = Int64(clamping: try reader.u64("cpu time"))
    }
}

/// A job started: and how many jobs the worker runs at once (what its senders may count on).
public struct CompactionJobAccepted: WireMessage {
    public static let wireName = "compaction job accepted"
    public var slots: UInt32

    public init(slots: UInt32) { self.slots = slots }

    public func encode(into writer: inout WireWriter) { writer.u32(slots) }

    public init(from reader: inout WireReader) throws(TransportError) { slots = try reader.u32("slots") }
}

/// Which job: a job id is unique per database directory (and owner), not per worker.
public struct CompactionJobName: WireMessage, Hashable {
    public static let wireName = "compaction job name"
    public var jobID: UInt64
    public var directory: String

    public init(jobID: UInt64, directory: String) {
        self.jobID = jobID
        self.directory = directory
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(jobID)
        writer.string(directory)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        jobID = try reader.u64("job id")
        directory = try reader.string("directory")
    }
}

/// One job a worker is running, and how far it has got.
public struct WorkerJobStatus: Sendable, Equatable {
    public var jobID: UInt64
    public var directory: String
    /// Bytes of input merged so far.
    public var bytesDone: UInt64

    public init(jobID: UInt64, directory: String, bytesDone: UInt64) {
        self.jobID = jobID
        self.directory = directory
        self.bytesDone = bytesDone
    }
}

/// How busy a worker is.
public struct WorkerStatusReply: WireMessage {
    public static let wireName = "worker status reply"
    /// The most jobs one reply lists (a worker runs at most this many at once).
    public static let jobsMax = 4096
    /// Jobs it runs at once at most.
    public var slots: UInt32
    /// Jobs running now.
    public var running: UInt32
    /// Jobs finished (succeeded or failed) since it started.
    public var finished: UInt64
    /// The jobs running now, with their progress.
    public var jobs: [WorkerJobStatus]

    public init(slots: UInt32, running: UInt32, finished: UInt64, jobs: [WorkerJobStatus] = []) {
        self.slots = slots
        self.running = running
        self.finished = finished
        self.jobs = jobs
    }

    public func encode(into writer: inout WireWriter) {
        writer.u32(slots)
        writer.u32(running)
        writer.u64(finished)
        writer.u32(UInt32(min(jobs.count, Self.jobsMax)))
        for job in jobs.prefix(Self.jobsMax) {
            writer.u64(job.jobID)
            writer.string(job.directory)
            writer.u64(job.bytesDone)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        slots = try reader.u32("slots")
        running = try reader.u32("running")
        finished = try reader.u64("finished")
        let count = Int(try reader.u32("job count"))
        guard count <= Self.jobsMax else {
            throw TransportError(.malformed, "\(Self.wireName): \(count) jobs pass \(Self.jobsMax)")
        }
        jobs = []
        for _ in 0..<count {
            jobs.append(
                WorkerJobStatus(
                    jobID: try reader.u64("job id"), directory: try reader.string("directory"),
                    bytesDone: try reader.u64("bytes done")))
        }
    }
}
