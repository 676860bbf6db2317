// Keys and values for the workloads, generated the same way for every engine from the seed:
// keys are the key number big-endian in the first 8 bytes, padded with '0' to --key_size (as
// db_bench lays them out); values are slices of a buffer built from random runs repeated so it
// compresses to --compression_ratio. Immutable after init; shared by threads.
import MoraineSystem

/// The benchmarks' generator (SplitMix64), seeded per thread so every engine sees the same
/// key sequence.
public typealias BenchRandom = SplitMix64

/// Key layout and the shared value buffer.
public final class BenchData: Sendable {
    public let keySize: Int
    public let valueSize: Int
    private let values: [UInt8]

    public init(keySize: Int, valueSize: Int, compressionRatio: Double, seed: UInt64) {
        self.keySize = keySize
        self.valueSize = valueSize
        var rng = BenchRandom(seed: seed ^ 0x7a1e)
        var buffer: [UInt8] = []
        let total = max(1 << 20, valueSize * 4)
        buffer.reserveCapacity(total + 100)
        while buffer.count < total {
            // Each 100-byte piece: random printable bytes for `ratio` of it, then repeats of them.
            let piece = 100
            let randomPart = max(1, Int(Double(piece) * compressionRatio))
            let run = (0..<randomPart).map { _ in UInt8(32 + rng.below(95)) }
            var written = 0
            while written < piece {
                let n = min(run.count, piece - written)
                buffer.append(contentsOf: run[0..<n])
                written += n
            }
        }
        values = buffer
    }

    /// Writes key number `n` into `buffer` (keySize bytes).
    @inline(__always)
    public func fillKey(_ n: Int, into buffer: UnsafeMutableRawBufferPointer) {
        var big = UInt64(n).bigEndian
        withUnsafeBytes(of: &big) { raw in
            if keySize >= 8 {
                buffer.baseAddress!.copyMemory(from: raw.baseAddress!, byteCount: 8)
                if keySize > 8 {
                    (buffer.baseAddress! + 8).initializeMemory(as: UInt8.self, repeating: 48, count: keySize - 8)
                }
            } else {
                buffer.baseAddress!.copyMemory(from: raw.baseAddress! + (8 - keySize), byteCount: keySize)
            }
        }
    }

    /// The value for operation `index`, valid as long as this BenchData.
    public func value(_ index: Int) -> UnsafeRawBufferPointer {
        let start = (index &* 97) % (values.count - valueSize)
        return values.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[start..<start + valueSize]) }
    }

    /// Calls `body` with the value for operation `index`.
    @inline(__always)
    public func withValue<T>(_ index: Int, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let start = (index &* 97) % (values.count - valueSize)
        return try values.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<start + valueSize])) }
    }
}

/// db_bench's generator: `Random64`, a 64-bit Mersenne Twister (std::mt19937_64). Each thread
/// of each db_bench workload seeds one with `--seed` plus a count of threads started before it
/// in the run, and its key draws are `next() % --num`, so the same flags draw the very keys
/// RocksDB's own db_bench draws (and find the same number of them).
public struct DbBenchRandom: Sendable {
    private static let stateWords = 312
    private var state: [UInt64]
    private var index: Int

    public init(seed: UInt64) {
        state = [UInt64](repeating: 0, count: Self.stateWords)
        state[0] = seed
        for i in 1..<Self.stateWords {
            state[i] = 6_364_136_223_846_793_005 &* (state[i - 1] ^ (state[i - 1] >> 62)) &+ UInt64(i)
        }
        index = Self.stateWords
    }

    public mutating func next() -> UInt64 {
        if index >= Self.stateWords { twist() }
        var y = state[index]
        index += 1
        y ^= (y >> 29) & 0x5555_5555_5555_5555
        y ^= (y << 17) & 0x71D6_7FFF_EDA6_0000
        y ^= (y << 37) & 0xFFF7_EEE0_0000_0000
        y ^= y >> 43
        return y
    }

    /// `next() % bound`, as db_bench's `Uniform`. Precondition: bound > 0.
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    private mutating func twist() {
        let n = Self.stateWords
        for k in 0..<n {
            let x = (state[k] & 0xFFFF_FFFF_8000_0000) | (state[(k + 1) % n] & 0x7FFF_FFFF)
            var shifted = x >> 1
            if x & 1 != 0 { shifted ^= 0xB502_6F5A_A966_19E9 }
            state[k] = state[(k + 156) % n] ^ shifted
        }
        index = 0
    }
}
