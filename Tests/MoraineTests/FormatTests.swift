// Codec-level tests: CRC32C, LZ4, varints, VersionEdit, WriteBatch, the table footer and the
// bloom filter. Block/table tests live in BlockTableTests.swift, log tests in LogFormatTests.swift.
import Foundation
import Testing

@testable import MoraineFormat
@testable import MoraineSystem

@Suite("CRC32C")
struct CRC32CTests {
    static let check: [UInt8] = Array("123456789".utf8)

    @Test func knownAnswer() {
        #expect(CRC32C.checksum(Self.check) == 0xE306_9283)
        Self.check.withUnsafeBytes { raw in
            #expect(CRC32C.checksum(raw) == 0xE306_9283)
            #expect(CRC32C.softwareChecksum(raw) == 0xE306_9283)
            if CRC32C.hardwareAvailable {
                #expect(CRC32C.hardwareChecksum(raw) == 0xE306_9283)
            } else {
                #expect(CRC32C.hardwareChecksum(raw) == nil)
            }
        }
        #expect(CRC32C.checksum([UInt8]()) == 0)
        // 32 bytes of zeros, from RFC 3720 B.4.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xff, count: 32)) == 0x62A8_AB43)
    }

    @Test func hardwareAndSoftwareAgreeOnRandomBuffers() {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        for round in 0..<600 {
            // Every tenth buffer is long enough for the three-chain paths (768 B and 12 KiB up).
            let length = Int.random(in: 0...(round % 10 == 0 ? 60_000 : 5000), using: &rng)
            let skew = Int.random(in: 0..<8, using: &rng)  // unaligned starts too
            let buffer = rng.bytes(length + skew)
            buffer.withUnsafeBytes { whole in
                let raw = UnsafeRawBufferPointer(rebasing: whole[skew...])
                let software = CRC32C.softwareChecksum(raw)
                #expect(CRC32C.checksum(raw) == software, "seed \(seed) round \(round) length \(length)")
                if let hardware = CRC32C.hardwareChecksum(raw) {
                    #expect(hardware == software, "seed \(seed) round \(round) length \(length)")
                }
            }
        }
    }

    @Test func extendOverSplitsEqualsWhole() {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        for round in 0..<300 {
            let buffer = rng.bytes(Int.random(in: 0...3000, using: &rng))
            let whole = CRC32C.checksum(buffer)
            var cuts = (0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 0...buffer.count, using: &rng)
            }
            cuts.sort()
            var crc: UInt32 = 0
            var start = 0
            buffer.withUnsafeBytes { raw in
                for cut in cuts + [buffer.count] {
                    crc = CRC32C.extend(crc, UnsafeRawBufferPointer(rebasing: raw[start..<cut]))
                    start = cut
                }
            }
            #expect(crc == whole, "seed \(seed) round \(round) cuts \(cuts)")
        }
    }

    @Test func maskRoundTrip() {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let values: [UInt32] =
            [0, 1, 0xffff_ffff, 0xE306_9283, 0xa282_ead8]
            + (0..<1000).map { _ in UInt32.random(in: 0...UInt32.max, using: &rng) }
        for value in values {
            #expect(CRC32C.unmask(CRC32C.mask(value)) == value, "seed \(seed) value \(value)")
            #expect(CRC32C.mask(value) != value, "seed \(seed): mask must change \(value)")
        }
        #expect(CRC32C.mask(CRC32C.mask(0x1234_5678)) != CRC32C.mask(0x1234_5678))
    }
}

@Suite("LZ4")
struct LZ4Tests {
    @Test func roundTripCompressibleAndRandom() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        var inputs: [[UInt8]] = [[7], Array("hello hello hello hello hello".utf8)]
        inputs.append([UInt8](repeating: 0x41, count: 100_000))
        inputs.append((0..<50_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        inputs.append(Array((0..<2000).map { "key\($0)=value\($0 % 13);" }.joined().utf8))
        for _ in 0..<20 { inputs.append(rng.bytes(Int.random(in: 1...20_000, using: &rng))) }
        for (i, input) in inputs.enumerated() {
            let compressed = try #require(LZ4.compress(input), "seed \(seed) input \(i)")
            #expect(compressed.count <= LZ4.compressBound(input.count), "seed \(seed) input \(i)")
            let output = try LZ4.decompress(compressed, size: input.count)
            #expect(output == input, "seed \(seed) input \(i) of \(input.count) bytes")
        }
        let big = try #require(LZ4.compress([UInt8](repeating: 0x41, count: 100_000)))
        #expect(big.count < 1000, "compressible input must shrink")
    }

    @Test func garbageAndTruncatedInputThrowCorruption() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let fixed: [[UInt8]] = [
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], [0x00], [0xf0, 1, 2, 3],
            [0x1f, 0x41, 0xff, 0xff], [UInt8](repeating: 0xff, count: 100),
        ]
        for garbage in fixed {
            let error = moraineError { _ = try LZ4.decompress(garbage, size: 4096) }
            #expect(error?.kind == .corruption, "garbage \(garbage.prefix(8))")
        }
        for round in 0..<300 {
            let garbage = rng.bytes(Int.random(in: 1...200, using: &rng))
            let error = moraineError { _ = try LZ4.decompress(garbage, size: 8192) }
            #expect(error?.kind == .corruption, "seed \(seed) round \(round)")
        }
        // Truncations of a valid block.
        let input = Array((0..<3000).map { "row \($0 * 7919 % 10007) " }.joined().utf8)
        let compressed = try #require(LZ4.compress(input))
        for cut in stride(from: 0, to: compressed.count, by: max(1, compressed.count / 300)) {
            let error = moraineError { _ = try LZ4.decompress(Array(compressed[..<cut]), size: input.count) }
            #expect(error?.kind == .corruption, "cut at \(cut) of \(compressed.count)")
        }
        // Wrong expected size.
        #expect(moraineError { _ = try LZ4.decompress(compressed, size: input.count - 1) }?.kind == .corruption)
        #expect(moraineError { _ = try LZ4.decompress(compressed, size: input.count + 1) }?.kind == .corruption)
    }
}

@Suite("Coding")
struct CodingTests {
    @Test func varintRoundTrip() {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        var values: [UInt64] = [
            0, 1, 127, 128, 255, 300, 16383, 16384, 1 << 21, UInt64(UInt32.max), 1 << 56, UInt64.max - 1, UInt64.max,
        ]
        values += (0..<2000).map { _ in
            UInt64.random(in: 0...UInt64.max, using: &rng) >> UInt64.random(in: 0...63, using: &rng)
        }
        for value in values {
            var bytes: [UInt8] = [0xAA]  // decode from a non-zero offset
            bytes.appendVarint(value)
            let expectedLength = value == 0 ? 1 : (64 - value.leadingZeroBitCount + 6) / 7
            #expect(bytes.count - 1 == expectedLength, "seed \(seed) value \(value)")
            bytes.withUnsafeBytes { raw in
                var offset = 1
                #expect(decodeVarint(raw, &offset) == value, "seed \(seed) value \(value)")
                #expect(offset == bytes.count, "seed \(seed) value \(value)")
                // Every truncation returns nil and leaves the offset alone.
                for cut in 1..<bytes.count {
                    var o = 1
                    #expect(
                        decodeVarint(UnsafeRawBufferPointer(rebasing: raw[0..<cut]), &o) == nil,
                        "seed \(seed) value \(value) cut \(cut)")
                    #expect(o == 1)
                }
            }
        }
        var encoded = [UInt8]()
        encoded.appendVarint(0)
        encoded.appendVarint(127)
        encoded.appendVarint(128)
        encoded.appendVarint(UInt64.max)
        #expect(encoded == [0x00, 0x7f, 0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
        // Eleven continuation bytes are malformed.
        [UInt8](repeating: 0x80, count: 11).withUnsafeBytes { raw in
            var o = 0
            #expect(decodeVarint(raw, &o) == nil)
        }
    }

    @Test func fixedAndByteReader() throws {
        var bytes = [UInt8]()
        bytes.appendFixed32(0xdead_beef)
        bytes.appendFixed64(0x0102_0304_0506_0708)
        bytes.appendLengthPrefixed(Array("abc".utf8))
        #expect(Array(bytes[0..<4]) == [0xef, 0xbe, 0xad, 0xde])
        try bytes.withUnsafeBytes { (raw) throws in
            var reader = ByteReader(raw, what: "test record")
            #expect(try reader.fixed32() == 0xdead_beef)
            #expect(try reader.fixed64() == 0x0102_0304_0506_0708)
            #expect(try reader.lengthPrefixed() == Array("abc".utf8))
            #expect(reader.isAtEnd)
            let error = moraineError { _ = try reader.byte() }
            #expect(error?.kind == .corruption)
            #expect(error?.message.contains("test record") == true)
        }
    }
}

@Suite("VersionEdit")
struct VersionEditTests {
    static func fullEdit() -> VersionEdit {
        var edit = VersionEdit()
        edit.logNumber = 12
        edit.nextFileNumber = 345
        edit.lastSequence = maxSequenceNumber - 3
        edit.compactPointers = [
            (1, makeInternalKey(Array("m".utf8), 9, .value)), (6, makeInternalKey([], 1, .deletion)),
        ]
        edit.deletedFiles = [(0, 7), (3, UInt64.max)]
        edit.newFiles = [
            (
                0,
                TableFileInfo(
                    number: 20, sizeBytes: 4096, smallest: makeInternalKey(Array("a".utf8), 5, .value),
                    largest: makeInternalKey(Array("z".utf8), 6, .deletion), smallestSequence: 5, largestSequence: 6)
            ),
            (
                6,
                TableFileInfo(
                    number: 1 << 40, sizeBytes: 0, smallest: makeInternalKey([], 0, .value),
                    largest: makeInternalKey([0xff, 0x00], maxSequenceNumber, .value), smallestSequence: 0,
                    largestSequence: maxSequenceNumber)
            ),
        ]
        edit.reservations = [100..<104, 1 << 50..<(1 << 50) + 1]
        edit.releasedReservations = [90, 7]
        return edit
    }

    @Test func roundTrip() throws {
        let edit = Self.fullEdit()
        let decoded = try VersionEdit.decode(edit.encode(), origin: "MANIFEST-000001")
        #expect(decoded == edit)
        #expect(decoded.newFiles.count == 2 && decoded.compactPointers.count == 2 && decoded.deletedFiles.count == 2)
        #expect(decoded.reservations == [100..<104, 1 << 50..<(1 << 50) + 1] && decoded.releasedReservations == [90, 7])
        // A reservation of no numbers, or one running past the numbers, is corruption.
        for (first, count) in [(UInt64(5), UInt64(0)), (UInt64.max - 1, UInt64(5))] {
            var bytes: [UInt8] = []
            bytes.appendVarint(8)
            bytes.appendVarint(first)
            bytes.appendVarint(count)
            let error = #expect(throws: MoraineError.self) { try VersionEdit.decode(bytes, origin: "MANIFEST-000009") }
            #expect(error?.kind == .corruption && error?.message.contains("reservation") == true)
        }
        #expect(try VersionEdit.decode([], origin: "m") == VersionEdit())
        var partial = VersionEdit()
        partial.lastSequence = 0
        #expect(try VersionEdit.decode(partial.encode(), origin: "m") == partial)
    }

    @Test func unknownTagTruncationAndBadLevelThrowCorruption() {
        let error = moraineError { _ = try VersionEdit.decode([99, 1], origin: "MANIFEST-000042") }
        #expect(error?.kind == .corruption)
        #expect(error?.message.contains("MANIFEST-000042") == true)
        let encoded = Self.fullEdit().encode()
        #expect(
            moraineError { _ = try VersionEdit.decode(Array(encoded.dropLast()), origin: "m") }?.kind == .corruption)
        // Every prefix either throws .corruption or parses (when it ends on a field boundary).
        for cut in 0..<encoded.count {
            do {
                _ = try VersionEdit.decode(Array(encoded[..<cut]), origin: "m")
            } catch let error as MoraineError {
                #expect(error.kind == .corruption, "cut \(cut)")
            } catch {
                Issue.record("cut \(cut): unexpected \(error)")
            }
        }
        var badLevel = VersionEdit()
        badLevel.deletedFiles = [(VersionEdit.maxLevels, 1)]
        #expect(moraineError { _ = try VersionEdit.decode(badLevel.encode(), origin: "m") }?.kind == .corruption)
    }
}

@Suite("WriteBatch")
struct WriteBatchTests {
    static func collect(_ batch: WriteBatch) throws -> [(ValueType, [UInt8], [UInt8])] {
        var ops: [(ValueType, [UInt8], [UInt8])] = []
        try batch.forEach { type, key, value in ops.append((type, Array(key), Array(value))) }
        return ops
    }

    @Test func putDeleteOrderCountAppend() throws {
        var batch = WriteBatch()
        #expect(batch.isEmpty && batch.count == 0)
        batch.put(Array("b".utf8), Array("1".utf8))
        batch.delete(Array("a".utf8))
        batch.put([], [])
        batch.put(Array("b".utf8), Array("2".utf8))
        #expect(batch.count == 4)
        let ops = try Self.collect(batch)
        #expect(ops.map(\.0) == [.value, .deletion, .value, .value])
        #expect(ops.map(\.1) == [Array("b".utf8), Array("a".utf8), [], Array("b".utf8)])
        #expect(ops.map(\.2) == [Array("1".utf8), [], [], Array("2".utf8)])

        var other = WriteBatch()
        other.delete(Array("c".utf8))
        other.put(Array("d".utf8), [UInt8](repeating: 9, count: 300))
        batch.append(other)
        #expect(batch.count == 6)
        let all = try Self.collect(batch)
        #expect(all.map(\.1).suffix(2) == [Array("c".utf8), Array("d".utf8)])
        #expect(all.last?.2.count == 300)

        batch.sequence = 123_456
        let decoded = try WriteBatch(decoding: batch.rep, origin: "000009.log")
        #expect(decoded.sequence == 123_456 && decoded.count == 6)
        #expect(try Self.collect(decoded).map(\.1) == all.map(\.1))
        batch.clear()
        #expect(batch.isEmpty && batch.sizeBytes == 12)
    }

    @Test func truncatedOrMiscountedRepThrowsCorruption() {
        var batch = WriteBatch()
        for i in 0..<5 { batch.put(Array("key\(i)".utf8), Array("value\(i)".utf8)) }
        batch.delete(Array("gone".utf8))
        let rep = batch.rep
        for cut in 0..<rep.count {
            let error = moraineError { _ = try WriteBatch(decoding: Array(rep[..<cut]), origin: "000007.log") }
            #expect(error?.kind == .corruption, "cut \(cut) of \(rep.count)")
            #expect(error?.message.contains("000007.log") == true, "cut \(cut): \(String(describing: error))")
        }
        var miscounted = rep
        miscounted[8] = 9
        #expect(moraineError { _ = try WriteBatch(decoding: miscounted, origin: "x") }?.kind == .corruption)
        var badType = rep
        badType[12] = 7
        #expect(moraineError { _ = try WriteBatch(decoding: badType, origin: "x") }?.kind == .corruption)
    }
}

@Suite("TableFooter")
struct TableFooterTests {
    @Test func everyBitFlipIsCorruption() throws {
        let footer = TableFooter(
            index: BlockHandle(offset: 123_456, size: 789), filter: BlockHandle(offset: 1000, size: 2000),
            properties: BlockHandle(offset: 3000, size: 77))
        let encoded = footer.encode()
        #expect(encoded.count == tableFooterBytes)
        #expect(try encoded.withUnsafeBytes { try TableFooter.decode($0, file: "000005.sst") } == footer)
        for offset in 0..<encoded.count {
            for bit in 0..<8 {
                var damaged = encoded
                damaged[offset] ^= UInt8(1 << bit)
                let error = moraineError {
                    _ = try damaged.withUnsafeBytes { try TableFooter.decode($0, file: "000005.sst") }
                }
                #expect(error?.kind == .corruption, "flip of bit \(bit) at offset \(offset)")
                #expect(error?.message.contains("000005.sst") == true, "offset \(offset)")
            }
        }
        #expect(
            moraineError {
                _ = try Array(encoded.dropLast()).withUnsafeBytes { try TableFooter.decode($0, file: "f") }
            }?.kind == .corruption)
    }
}

@Suite("BloomFilter")
struct BloomFilterTests {
    static func hashes(_ prefix: String, _ count: Int) -> [UInt64] {
        (0..<count).map { i in Array("\(prefix)\(i)".utf8).withUnsafeBytes { hashBytes($0) } }
    }

    @Test func noFalseNegativesAndFalsePositiveRateNearTheory() {
        let inserted = Self.hashes("user-key-", 100_000)
        let filter = BloomFilter.build(hashes: inserted, bitsPerKey: 10)
        #expect(filter.count >= 100_000 * 10 / 8)
        filter.withUnsafeBytes { raw in
            var missing = 0
            for hash in inserted where !BloomFilter.mayContain(raw, hash: hash) { missing += 1 }
            #expect(missing == 0, "\(missing) inserted keys reported absent")
            let probes = Self.hashes("other-key-", 100_000)
            var falsePositives = 0
            for hash in probes where BloomFilter.mayContain(raw, hash: hash) { falsePositives += 1 }
            let rate = Double(falsePositives) / Double(probes.count)
            let k = 7.0
            let theory = pow(1 - exp(-k / 10), k)
            print("bloom filter: measured false-positive rate \(rate) (theory for a standard filter \(theory))")
            #expect(rate < 2 * theory, "false-positive rate \(rate) is over twice the theoretical \(theory)")
        }
    }

    @Test func keysSpreadOverEveryLine() {
        // Each key picks one 64-byte line from its hash; with ~51 keys per line every line gets
        // bits (a filter whose keys all share one line saturates it and admits everything).
        let filter = BloomFilter.build(hashes: Self.hashes("spread-", 10_000), bitsPerKey: 10)
        let lines = (filter.count - 1) / 64
        let usedLines = (0..<lines).filter { line in filter[(line * 64)..<(line * 64 + 64)].contains { $0 != 0 } }.count
        #expect(usedLines * 10 >= lines * 9, "only \(usedLines) of \(lines) filter lines hold any bit")
    }

    @Test func emptyAndTinyFilters() {
        let empty = BloomFilter.build(hashes: [], bitsPerKey: 10)
        let one = BloomFilter.build(hashes: [42], bitsPerKey: 10)
        one.withUnsafeBytes { #expect(BloomFilter.mayContain($0, hash: 42)) }
        empty.withUnsafeBytes { raw in
            var admitted = 0
            for h in Self.hashes("k", 100) where BloomFilter.mayContain(raw, hash: h) { admitted += 1 }
            #expect(admitted == 0, "an empty filter admitted \(admitted) keys")
        }
        // An unparseable filter admits everything (costs a read, never a wrong answer).
        [UInt8]([1, 2, 3]).withUnsafeBytes { #expect(BloomFilter.mayContain($0, hash: 7)) }
    }
}
