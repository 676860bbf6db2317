// The flush workers' messages: a flush job starts with its spec (`FlushJobRequest`), its entries
// follow in numbered chunks (`FlushEntries`: the memtable's entries in key order, as raw
// length-prefixed keys and values, parsed in place on the worker), and `finish` answers the
// table written (`FlushJobReply`). docs/WORKERS.md has the byte layouts. Every length is checked
// against what is left before it is read; a chunk's count must match its entries exactly.
//
// Value types; no shared state.
import MoraineFormat
import MoraineTransport

extension WorkerOpcode {
    /// Start a flush: `FlushJobRequest` → `CompactionJobAccepted` (the worker's slots).
    public static let flushStart: UInt8 = 0x44
    /// The next chunk of a flush's entries: `FlushEntries` → empty.
    public static let flushAppend: UInt8 = 0x45
    /// Finish a flush: `CompactionJobName` → `FlushJobReply` (the table synced).
    public static let flushFinish: UInt8 = 0x46
    /// A whole flush of a memtable the worker reads in place in a memory node's region (same box):
    /// `FlushJobRequest` with its arena → `FlushJobReply`; `notFound` when the worker cannot read
    /// the arena whole (the sender then streams the entries).
    public static let flushArena: UInt8 = 0x47
}

/// A flush job for a worker: its spec.
public struct FlushJobRequest: WireMessage {
    public static let wireName = "flush job request"
    public var spec: FlushJobSpec

    public init(spec: FlushJobSpec) { self.spec = spec }

    public func encode(into writer: inout WireWriter) {
        writer.u64(spec.jobID)
        writer.string(spec.directory)
        writer.u64(spec.epoch)
        writer.u64(spec.outputNumber)
        writer.u32(UInt32(clamping: spec.tableOptions.blockSizeBytes))
        writer.u32(UInt32(clamping: spec.tableOptions.restartInterval))
        writer.u32(UInt32(clamping: spec.tableOptions.bloomBitsPerKey))
        writer.u8(spec.tableOptions.compression == .lz4 ? 1 : 0)
        writer.u64(UInt64(bitPattern: spec.deadlineUnixNanos))
        TierCoding.encode(spec.tierDirectories, outputTier: spec.outputTier, into: &writer)
        if let arena = spec.arena {
            writer.string(arena.regionPath)
            writer.u64(arena.offset)
            writer.u64(arena.bytes)
            writer.u64(arena.logNumber)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let jobID = try reader.u64("job id")
        let directory = try reader.string("directory")
        let epoch = try reader.u64("epoch")
        let number = try reader.u64("output number")
        let options = TableOptions(
            blockSizeBytes: Int(try reader.u32("block size")), restartInterval: Int(try reader.u32("restart interval")),
            bloomBitsPerKey: Int(try reader.u32("bloom bits per key")),
            compression: try reader.u8("compression") == 1 ? .lz4 : .none)
        spec = FlushJobSpec(jobID: jobID, directory: directory, epoch: epoch, outputNumber: number, tableOptions: options)
        spec.deadlineUnixNanos = Int64(bitPattern: try reader.u64("deadline"))
        (spec.tierDirectories, spec.outputTier) = try TierCoding.decode(from: &reader, wireName: Self.wireName)
        if reader.remainingCount > 0 {
            spec.arena = FlushArenaReference(
                regionPath: try reader.string("region path"), offset: try reader.u64("arena offset"), bytes: try reader.u64("arena bytes"),
                logNumber: try reader.u64("arena log number"))
        }
    }
}

/// A finished flush: the table written, if any, and what it cost.
public struct FlushJobReply: WireMessage {
    public static let wireName = "flush job reply"
    public var result: FlushJobResult

    public init(result: FlushJobResult) { self.result = result }

    public func encode(into writer: inout WireWriter) {
        writer.u64(result.jobID)
        writer.bool(result.output != nil)
        result.output?.encode(into: &writer)
        writer.u64(result.entries)
        writer.u64(UInt64(max(0, result.wallNanos)))
        writer.u64(UInt64(max(0, result.cpuNanos)))
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        result = FlushJobResult(jobID: try reader.u64("job id"))
        if try reader.bool("has output") { result.output = try TableFileInfo(from: &reader) }
        result.entries = try reader.u64("entries")
        result.wallNanos = Int64(clamping: try reader.u64("wall time"))
        result.cpuNanos = Int64(clamping: try reader.u64("cpu time"))
    }
}

/// One chunk of a flush's entries, built and parsed in place: job id u64, directory string,
/// chunk index u32, entry count u32, then per entry a key and a value (u32 length and bytes each).
public enum FlushEntries {
    public static let wireName = "flush entries"

    /// A chunk being built: the header, then entries appended; `count` is patched in at the end.
    public struct Builder {
        public private(set) var bytes: [UInt8]
        public private(set) var count: UInt32 = 0
        private let countOffset: Int

        public init(name: CompactionJobName, chunk: UInt32, capacity: Int) {
            var writer = WireWriter(capacity: capacity + 64)
            writer.u64(name.jobID)
            writer.string(name.directory)
            writer.u32(chunk)
            countOffset = writer.bytes.count
            writer.u32(0)
            bytes = writer.bytes
        }

        public mutating func append(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
            withUnsafeBytes(of: UInt32(key.count).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: key)
            withUnsafeBytes(of: UInt32(value.count).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: value)
            count += 1
        }

        /// The chunk's bytes, its count filled in.
        public mutating func finished() -> [UInt8] {
            withUnsafeBytes(of: count.littleEndian) { raw in
                for i in 0..<4 { bytes[countOffset + i] = raw[i] }
            }
            return bytes
        }
    }

    /// A chunk's header, and where its entries start.
    /// - Throws: `malformed` for a short header.
    public static func header(_ bytes: [UInt8]) throws(TransportError) -> (name: CompactionJobName, chunk: UInt32, count: UInt32, entriesOffset: Int) {
        var reader = WireReader(bytes, what: wireName)
        let jobID = try reader.u64("job id")
        let directory = try reader.string("directory")
        let chunk = try reader.u32("chunk")
        let count = try reader.u32("entry count")
        return (CompactionJobName(jobID: jobID, directory: directory), chunk, count, bytes.count - reader.remainingCount)
    }

    /// Calls `body` with each entry's key and value, in order, from `offset` (as `header` said).
    /// - Throws: `malformed` naming what is wrong (a length past the end, a count that does not
    ///   match the entries), and whatever `body` throws.
    public static func forEachEntry(
        in bytes: [UInt8], from offset: Int, count: UInt32, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = offset
            func length(_ field: String) throws(TransportError) -> Int {
                guard raw.count - offset >= 4 else {
                    throw TransportError(.malformed, "\(wireName): entry \(field) length needs 4 bytes, \(raw.count - offset) are left")
                }
                let value = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
                offset += 4
                guard value <= raw.count - offset else {
                    throw TransportError(.malformed, "\(wireName): entry \(field) of \(value) bytes, \(raw.count - offset) are left")
                }
                return value
            }
            var seen: UInt32 = 0
            while offset < raw.count {
                guard seen < count else { throw TransportError(.malformed, "\(wireName): more entries than the count \(count)") }
                let keyCount = try length("key")
                let key = UnsafeRawBufferPointer(rebasing: raw[offset..<offset + keyCount])
                offset += keyCount
                let valueCount = try length("value")
                let value = UnsafeRawBufferPointer(rebasing: raw[offset..<offset + valueCount])
                offset += valueCount
                try body(key, value)
                seen += 1
            }
            guard seen == count else { throw TransportError(.malformed, "\(wireName): \(seen) entries, the count says \(count)") }
        }
    }
}
