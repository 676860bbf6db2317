// The log format (WAL and manifest): LogWriter/LogReader round trips across block boundaries,
// torn tails that must be dropped quietly, and damage in the middle that must be reported
// (.stop) or skipped (.skip).
import Foundation
import Testing

@testable import MoraineFormat
@testable import MoraineSystem

/// Writes `records` through a LogWriter into memory; returns the bytes and each record's start.
func encodeLog(_ records: [[UInt8]]) throws -> (bytes: [UInt8], starts: [Int]) {
    let file = MemoryWritableFile()
    let writer = LogWriter(file: file)
    var starts: [Int] = []
    for record in records {
        starts.append(file.bytes.count)
        try writer.addRecord(record)
    }
    return (file.bytes, starts)
}

/// Reads every record until nil (rethrowing the reader's error).
func decodeLog(_ reader: LogReader) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    while let record = try reader.nextRecord() { out.append(record) }
    return out
}

@Suite("LogFormat")
struct LogFormatTests {
    @Test func roundTripAcrossBlockBoundaries() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let file = MemoryWritableFile()
        var writer = LogWriter(file: file)
        var records: [[UInt8]] = []
        func blockLeft() -> Int { logBlockBytes - file.bytes.count % logBlockBytes }
        func add(_ size: Int) throws {
            let record = rng.bytes(size)
            records.append(record)
            try writer.addRecord(record)
        }
        try add(0)
        try add(1)
        try add(100)
        try add(blockLeft() - logHeaderBytes)  // exactly fills the block
        #expect(file.bytes.count % logBlockBytes == 0, "seed \(seed)")
        try add(logBlockBytes - logHeaderBytes)  // a whole block
        try add(100_000)  // first, middles, last
        try add(blockLeft() - logHeaderBytes - 3)  // leaves a 3-byte tail: padding
        try add(50)
        try add(blockLeft() - 2 * logHeaderBytes)  // leaves exactly a header's worth
        try add(0)  // an empty record in the last 7 bytes of a block
        try add(blockLeft() - 2 * logHeaderBytes)
        try add(300)  // starts with an empty first fragment
        // A second writer appending to the existing log.
        writer = LogWriter(file: file, existingBytes: UInt64(file.bytes.count))
        try add(blockLeft() - logHeaderBytes - 1)
        try add(70_000)
        for _ in 0..<30 { try add(Int.random(in: 0...5000, using: &rng)) }

        let reader = LogReader(bytes: file.bytes, name: "000001.log")
        let read = try decodeLog(reader)
        #expect(read.count == records.count, "seed \(seed)")
        for i in 0..<min(read.count, records.count) {
            #expect(read[i] == records[i], "seed \(seed): record \(i) of \(records[i].count) bytes")
        }
        #expect(reader.droppedTailBytes == 0 && reader.skippedBytes == 0, "seed \(seed)")
        #expect(reader.validEndOffset == file.bytes.count, "seed \(seed)")
        #expect(try reader.nextRecord() == nil, "seed \(seed)")
    }

    @Test func roundTripThroughFiles() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let path = dir.file("000002.log")
        let fs = PosixFileSystem()
        let file = try fs.createWritable(path)
        let writer = LogWriter(file: file)
        let records = (0..<200).map { i in [UInt8](repeating: UInt8(i & 0xff), count: i * 97) }
        for record in records { try writer.addRecord(record) }
        try file.sync()
        try file.close()
        let reader = try LogReader(file: try fs.openRandomAccess(path), name: path)
        #expect(try decodeLog(reader) == records)
    }

    @Test(arguments: [100, 100_000])
    func truncatedTailIsDroppedQuietly(lastSize: Int) throws {
        let seed = testSeed("last record \(lastSize) bytes")
        var rng = SeededRandom(seed: seed)
        var records = (0..<40).map { _ in rng.bytes(Int.random(in: 1...200, using: &rng)) }
        records.append(rng.bytes(lastSize))
        let (bytes, starts) = try encodeLog(records)
        let start = starts.last!
        #expect(
            logBlockBytes - start % logBlockBytes >= logHeaderBytes,
            "seed \(seed): the last record must not start in padding")
        var cuts = Set<Int>()
        for c in (start + 1)...min(start + 120, bytes.count - 1) { cuts.insert(c) }
        for c in max(start + 1, bytes.count - 40)..<bytes.count { cuts.insert(c) }
        var boundary = (start / logBlockBytes + 1) * logBlockBytes
        while boundary < bytes.count {
            for c in (boundary - 9)...(boundary + 9) where c > start && c < bytes.count { cuts.insert(c) }
            boundary += logBlockBytes
        }
        for _ in 0..<300 { cuts.insert(Int.random(in: (start + 1)..<bytes.count, using: &rng)) }

        for cut in cuts.sorted() {
            let reader = LogReader(bytes: Array(bytes[..<cut]), name: "000003.log", mode: .stop)
            do {
                let read = try decodeLog(reader)
                #expect(read == Array(records.dropLast()), "seed \(seed) cut \(cut): got \(read.count) records")
                #expect(reader.droppedTailBytes > 0, "seed \(seed) cut \(cut): nothing reported dropped")
                #expect(reader.skippedBytes == 0, "seed \(seed) cut \(cut)")
                #expect(try reader.nextRecord() == nil, "seed \(seed) cut \(cut): a record after the end")
            } catch {
                Issue.record("seed \(seed) cut \(cut) of \(bytes.count): a torn tail threw \(error)")
            }
        }
    }

    /// Offsets inside record `index` worth damaging: the CRC, the length, the type and payload.
    static func damageOffsets(start: Int, size: Int) -> [Int] {
        var offsets = [start, start + 3, start + 4, start + 6]
        if size > 0 {
            offsets += [start + logHeaderBytes, start + logHeaderBytes + size / 2, start + logHeaderBytes + size - 1]
        }
        return offsets
    }

    @Test func damageInTheMiddleStopsOrSkips() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        var records = (0..<30).map { _ in rng.bytes(Int.random(in: 1...300, using: &rng)) }
        records.insert(rng.bytes(80_000), at: 10)  // a damaged record may also span blocks
        let (bytes, starts) = try encodeLog(records)
        let name = "000042.log"
        for damaged in [2, 10] {
            var offsets = Self.damageOffsets(start: starts[damaged], size: min(records[damaged].count, 1000))
            if damaged == 10 {
                // Inside the second and the last fragment of the spanning record.
                let secondBlock = (starts[10] / logBlockBytes + 1) * logBlockBytes
                offsets += [secondBlock + 2, secondBlock + 500, starts[11] - 10]
            }
            for offset in offsets {
                for mask: UInt8 in [0x01, 0x80, 0x5a] {
                    var copy = bytes
                    copy[offset] ^= mask
                    let label = "seed \(seed) record \(damaged) offset \(offset) mask \(mask)"

                    let stop = LogReader(bytes: copy, name: name, mode: .stop)
                    var before: [[UInt8]] = []
                    let error = moraineError {
                        while let record = try stop.nextRecord() { before.append(record) }
                    }
                    #expect(error?.kind == .corruption, "\(label): stop mode did not report the damage")
                    #expect(error?.message.contains(name) == true, "\(label): \(String(describing: error))")
                    #expect(
                        before == Array(records[..<damaged]),
                        "\(label): stop mode returned \(before.count) records first")

                    let skip = LogReader(bytes: copy, name: name, mode: .skip)
                    do {
                        let read = try decodeLog(skip)
                        var expected = records
                        expected.remove(at: damaged)
                        #expect(read == expected, "\(label): skip mode returned \(read.count) records")
                        #expect(skip.skippedBytes > 0, "\(label)")
                        #expect(skip.droppedTailBytes == 0, "\(label)")
                    } catch {
                        Issue.record("\(label): skip mode threw \(error)")
                    }
                }
            }
        }
    }

    @Test func damagedLastRecordIsATail() throws {
        // Damage in the last record has nothing valid after it: both modes drop it quietly.
        let records: [[UInt8]] = [Array("one".utf8), Array("two".utf8), [UInt8](repeating: 3, count: 500)]
        let (bytes, starts) = try encodeLog(records)
        var copy = bytes
        copy[starts[2] + 100] ^= 0xff
        for mode in [LogRecoveryMode.stop, .skip] {
            let reader = LogReader(bytes: copy, name: "000005.log", mode: mode)
            #expect(try decodeLog(reader) == Array(records.prefix(2)))
            #expect(reader.droppedTailBytes > 0)
        }
    }

    @Test func zeroFilledTailIsPadding() throws {
        let records: [[UInt8]] = [Array("alpha".utf8), Array("beta".utf8)]
        var (bytes, _) = try encodeLog(records)
        bytes += [UInt8](repeating: 0, count: 1000)  // a preallocated tail
        let reader = LogReader(bytes: bytes, name: "000006.log")
        #expect(try decodeLog(reader) == records)
    }
}
