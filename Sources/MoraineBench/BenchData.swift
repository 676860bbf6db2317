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

    /// Calls `body` with the value for operation `index`.
    @inline(__always)
    public func withValue<T>(_ index: Int, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let start = (index &* 97) % (values.count - valueSize)
        return try values.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<start + valueSize])) }
    }
}
