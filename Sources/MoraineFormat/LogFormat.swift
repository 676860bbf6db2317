// The log format shared by the WAL and the manifest: the file is a sequence of 32 KiB blocks;
// a record is split into fragments that never cross a block boundary, each with a 7-byte header
// (masked CRC32C of type and payload, 16-bit length, type). A block tail under 7 bytes is zero
// padding. Layout and the recovery rules are in docs/FORMAT.md.
// Writer and reader are single-threaded.
import MoraineSystem

public let logBlockBytes = 32 * 1024
public let logHeaderBytes = 7

enum LogFragment: UInt8 {
    case full = 1
    case first = 2
    case middle = 3
    case last = 4
}

/// Appends records to a log file.
public final class LogWriter {
    public let file: any WritableFile
    // One writer at a time (the engine's write leader): no runtime exclusivity checks, which
    // were two per record.
    @exclusivity(unchecked) private var blockOffset: Int
    /// The log's length in bytes so far (the end of the last record appended).
    @exclusivity(unchecked) public private(set) var length: UInt64

    /// - Parameter existingBytes: the file's current size when appending to an existing log.
    public init(file: any WritableFile, existingBytes: UInt64 = 0) {
        self.file = file
        self.blockOffset = Int(existingBytes % UInt64(logBlockBytes))
        self.length = existingBytes
    }

    /// The most bytes a record of `payload` bytes takes in a log, with its fragments' headers
    /// and the padding before them.
    public static func framedBytesMax(payload: Int) -> Int {
        payload + (payload / (logBlockBytes - logHeaderBytes) + 2) * (logHeaderBytes + logHeaderBytes - 1)
    }

    /// Appends one record (buffered; call `file.flush()` or `file.sync()` after).
    public func addRecord(_ record: UnsafeRawBufferPointer) throws {
        var left = record.count
        var position = 0
        var begin = true
        repeat {
            let space = logBlockBytes - blockOffset
            if space < logHeaderBytes {
                if space > 0 {
                    let zeros: (UInt64, UInt64) = (0, 0)
                    try withUnsafeBytes(of: zeros) { try file.append(UnsafeRawBufferPointer(rebasing: $0[0..<space])) }
                    length += UInt64(space)
                }
                blockOffset = 0
            }
            let available = logBlockBytes - blockOffset - logHeaderBytes
            let length = min(left, available)
            let end = left == length
            let type: LogFragment = begin && end ? .full : (begin ? .first : (end ? .last : .middle))
            try emit(type, UnsafeRawBufferPointer(rebasing: record[position..<position + length]))
            position += length
            left -= length
            begin = false
        } while left > 0
    }

    public func addRecord(_ record: [UInt8]) throws {
        try record.withUnsafeBytes { try addRecord($0) }
    }

    private func emit(_ type: LogFragment, _ payload: UnsafeRawBufferPointer) throws {
        var typeByte = type.rawValue
        let crc = CRC32C.extend(withUnsafeBytes(of: &typeByte) { CRC32C.checksum(UnsafeRawBufferPointer($0)) }, payload)
        // The 7-byte header, built on the stack: masked CRC, 16-bit length, type.
        var header: (UInt32, UInt16, UInt8) = (CRC32C.mask(crc).littleEndian, UInt16(payload.count).littleEndian, type.rawValue)
        try withUnsafeBytes(of: &header) { raw in
            try file.append(UnsafeRawBufferPointer(rebasing: raw[0..<logHeaderBytes]))
        }
        try file.append(payload)
        blockOffset += logHeaderBytes + payload.count
        length += UInt64(logHeaderBytes + payload.count)
    }
}

/// The first record of every WAL after the first: which log came before it and how long that
/// log was when it was retired. A WAL is retired without a sync (a sync write syncs every
/// retired WAL first), so after power loss the kernel may have kept a newer WAL's pages but
/// not the end of an older one's. Recovery compares the older log's replayed length with
/// this record and stops at the gap, so it never replays writes made after ones it lost
/// (RocksDB's predecessor-WAL check does the same).
///
/// Encoding: 8 zero bytes and 4 bytes 0xFF where a write batch has its sequence (never 0) and
/// count, then the log number, length and last sequence, fixed64 each.
public struct WALPredecessor: Equatable, Sendable {
    public var logNumber: UInt64
    public var length: UInt64
    public var lastSequence: UInt64

    public init(logNumber: UInt64, length: UInt64, lastSequence: UInt64) {
        self.logNumber = logNumber
        self.length = length
        self.lastSequence = lastSequence
    }

    static let marker: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]

    public var encoded: [UInt8] {
        var bytes = Self.marker
        for field in [logNumber, length, lastSequence] {
            withUnsafeBytes(of: field.littleEndian) { bytes.append(contentsOf: $0) }
        }
        return bytes
    }

    /// The predecessor record in `record`, or nil if `record` is something else (a write batch).
    public init?(decoding record: [UInt8]) {
        guard record.count == Self.marker.count + 24, record.starts(with: Self.marker) else { return nil }
        func field(_ index: Int) -> UInt64 {
            var value: UInt64 = 0
            for i in (0..<8).reversed() { value = value << 8 | UInt64(record[Self.marker.count + index * 8 + i]) }
            return value
        }
        self.init(logNumber: field(0), length: field(1), lastSequence: field(2))
    }
}

/// What to do about a damaged record in the middle of a log (one followed by valid records).
public enum LogRecoveryMode: String, Sendable {
    /// Report the damage as an error and stop (the default).
    case stop
    /// Skip the damaged bytes, count them, and go on.
    case skip
}

/// Reads records back. An incomplete tail (nothing valid after it) is dropped, as a crash
/// mid-write leaves one; damage followed by valid records is reported or skipped.
///
/// A final record that is complete but fails its checksum is dropped too unless `strictTail`:
/// the WAL accepts that (power loss can leave a complete-length record of unsynced garbage, and
/// such a write was never acknowledged as durable), while the manifest, synced on every append,
/// treats it as corruption, as RocksDB does — silently dropping a synced edit would lose tables.
public final class LogReader {
    private let bytes: [UInt8]
    private let name: String
    private let mode: LogRecoveryMode
    private let strictTail: Bool
    private var position = 0
    /// Bytes dropped from an incomplete tail.
    public private(set) var droppedTailBytes = 0
    /// Bytes skipped in the middle (skip mode only).
    public private(set) var skippedBytes = 0
    /// Offset just past the last whole record.
    public private(set) var validEndOffset = 0

    public init(file: any RandomAccessFile, name: String, mode: LogRecoveryMode = .stop, strictTail: Bool = false)
        throws
    {
        var data = [UInt8](repeating: 0, count: Int(file.size))
        let got = try data.withUnsafeMutableBytes { try file.read(at: 0, into: $0) }
        if got < data.count { data.removeSubrange(got...) }
        self.bytes = data
        self.name = name
        self.mode = mode
        self.strictTail = strictTail
    }

    public init(bytes: [UInt8], name: String, mode: LogRecoveryMode = .stop, strictTail: Bool = false) {
        self.bytes = bytes
        self.name = name
        self.mode = mode
        self.strictTail = strictTail
    }

    private enum Physical {
        case fragment(LogFragment, Range<Int>, next: Int)
        case padding(next: Int)
        case end
        case bad(String)
        /// The record runs past the end of the file: what an interrupted append leaves.
        case truncated(String)
    }

    /// Parses the physical record at `at`.
    private func physical(at: Int) -> Physical {
        if at >= bytes.count { return .end }
        let blockLeft = logBlockBytes - at % logBlockBytes
        if blockLeft < logHeaderBytes {
            let next = at + blockLeft
            return bytes[at..<min(next, bytes.count)].allSatisfy { $0 == 0 }
                ? .padding(next: next) : .bad("nonzero block padding")
        }
        if bytes.count - at < logHeaderBytes { return .truncated("truncated record header") }
        let length = Int(bytes[at + 4]) | Int(bytes[at + 5]) << 8
        let typeByte = bytes[at + 6]
        if typeByte == 0 && length == 0 {
            // Zeroes (a preallocated or padded tail): skip to the next block.
            return .padding(next: at + blockLeft)
        }
        guard let type = LogFragment(rawValue: typeByte) else { return .bad("unknown record type \(typeByte)") }
        guard length <= blockLeft - logHeaderBytes else { return .bad("record length \(length) crosses a block") }
        let payloadStart = at + logHeaderBytes
        guard payloadStart + length <= bytes.count else { return .truncated("truncated record payload") }
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            let stored = CRC32C.unmask(loadFixed32(raw, at))
            let crc = CRC32C.extend(
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(at + 6)..<(at + 7)])),
                UnsafeRawBufferPointer(rebasing: raw[payloadStart..<payloadStart + length]))
            return crc == stored
        }
        guard ok else { return .bad("checksum mismatch") }
        return .fragment(type, payloadStart..<payloadStart + length, next: payloadStart + length)
    }

    /// The first offset after `after` where a whole, checksum-valid record starts, if any.
    private func nextValidRecord(after: Int) -> Int? {
        var candidate = after + 1
        let blockEnd = (after / logBlockBytes + 1) * logBlockBytes
        while candidate < min(blockEnd, bytes.count) {
            if case .fragment(let type, _, _) = physical(at: candidate), type == .full || type == .first {
                return candidate
            }
            candidate += 1
        }
        candidate = blockEnd
        while candidate < bytes.count {
            var p = candidate
            while true {
                switch physical(at: p) {
                case .fragment(let type, _, let next):
                    if type == .full || type == .first { return p }
                    p = next
                    continue
                case .padding, .end, .bad, .truncated: break
                }
                break
            }
            candidate += logBlockBytes
        }
        return nil
    }

    /// Handles damage at `at`: returns the offset to resume from, or nil at a dropped tail.
    private func damaged(at: Int, _ reason: String, truncated: Bool = true) throws -> Int? {
        guard let resume = nextValidRecord(after: at) else {
            if strictTail && !truncated {
                throw MoraineError.corruption("damaged last record at offset \(at) (\(reason))", file: name)
            }
            droppedTailBytes = bytes.count - at
            position = bytes.count
            return nil
        }
        switch mode {
        case .stop:
            throw MoraineError.corruption(
                "damaged log record at offset \(at) (\(reason)); valid records follow at offset \(resume)",
                file: name)
        case .skip:
            skippedBytes += resume - at
            return resume
        }
    }

    /// The next whole record, or nil at the end of the log.
    /// - Throws: `.corruption` naming the file and offset for damage in the middle (stop mode).
    public func nextRecord() throws -> [UInt8]? {
        var assembled: [UInt8]? = nil
        var recordStart = position
        while true {
            switch physical(at: position) {
            case .end:
                if assembled != nil {
                    droppedTailBytes = bytes.count - recordStart
                }
                return nil
            case .padding(let next):
                position = next
            case .truncated(let reason):
                guard let resume = try damaged(at: position, reason) else { return nil }
                position = resume
                assembled = nil
                recordStart = resume
            case .bad(let reason):
                guard let resume = try damaged(at: position, reason, truncated: false) else { return nil }
                position = resume
                assembled = nil
                recordStart = resume
            case .fragment(let type, let range, let next):
                switch type {
                case .full, .first:
                    if assembled != nil {
                        guard let resume = try damaged(at: recordStart, "record missing its last fragment") else {
                            return nil
                        }
                        position = resume
                        assembled = nil
                        recordStart = resume
                        continue
                    }
                    recordStart = position
                    position = next
                    if type == .full {
                        validEndOffset = position
                        return Array(bytes[range])
                    }
                    assembled = Array(bytes[range])
                case .middle, .last:
                    guard assembled != nil else {
                        guard let resume = try damaged(at: position, "fragment without a first part") else {
                            return nil
                        }
                        position = resume
                        recordStart = resume
                        continue
                    }
                    assembled!.append(contentsOf: bytes[range])
                    position = next
                    if type == .last {
                        validEndOffset = position
                        return assembled
                    }
                }
            }
        }
    }
}
