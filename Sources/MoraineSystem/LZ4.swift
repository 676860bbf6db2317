// LZ4 block compression through CSystemShims. Stateless and thread-safe. Decompression is
// bounds-checked: malformed input is an error, never an overrun.
import CSystemShims

/// LZ4 block-format compression.
public enum LZ4 {
    /// Worst-case compressed size for `count` input bytes.
    public static func compressBound(_ count: Int) -> Int {
        Int(CSystemShims_lz4_compress_bound(Int32(clamping: count)))
    }

    /// Compresses `source` into `destination`; returns the compressed size, or nil when it
    /// does not fit.
    public static func compress(
        _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
    ) -> Int? {
        guard source.count < Int(Int32.max), let sourceBase = source.baseAddress,
            let destinationBase = destination.baseAddress
        else { return nil }
        let written = CSystemShims_lz4_compress(
            sourceBase, Int32(source.count), destinationBase, Int32(clamping: destination.count))
        return written > 0 ? Int(written) : nil
    }

    /// Decompresses `source` into exactly `destination.count` bytes.
    /// - Throws: `MoraineError.corruption` when the input is malformed or of another size.
    public static func decompress(
        _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
    ) throws {
        guard let sourceBase = source.baseAddress, let destinationBase = destination.baseAddress
        else { throw MoraineError(.corruption, "empty LZ4 input") }
        let written = CSystemShims_lz4_decompress(
            sourceBase, Int32(clamping: source.count), destinationBase,
            Int32(clamping: destination.count))
        guard written == destination.count else {
            throw MoraineError(
                .corruption,
                "LZ4 block decompressed to \(written) bytes, expected \(destination.count)")
        }
    }

    /// Compresses an array (convenience for tests and tools).
    public static func compress(_ source: [UInt8]) -> [UInt8]? {
        var output = [UInt8](repeating: 0, count: compressBound(source.count))
        let size = source.withUnsafeBytes { src in
            output.withUnsafeMutableBytes { dst in compress(src, into: dst) }
        }
        guard let size else { return nil }
        output.removeSubrange(size...)
        return output
    }

    /// Decompresses an array whose decompressed size is known.
    public static func decompress(_ source: [UInt8], size: Int) throws -> [UInt8] {
        var output = [UInt8](repeating: 0, count: size)
        try source.withUnsafeBytes { (src) in
            try output.withUnsafeMutableBytes { (dst) in
                try decompress(src, into: dst)
            }
        }
        return output
    }
}
