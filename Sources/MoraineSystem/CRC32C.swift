// CRC32C over byte buffers, through CSystemShims (SSE4.2 when present, tables otherwise).
// Stored checksums are masked (as LevelDB does) so that a CRC of bytes that themselves contain
// CRCs does not degenerate. Stateless and thread-safe.
import CSystemShims

/// CRC32C (Castagnoli) checksums.
public enum CRC32C {
    /// The CRC32C of `bytes`.
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        extend(0, bytes)
    }

    /// Extends a finished CRC32C `crc` of earlier bytes over `bytes`.
    @inlinable
    public static func extend(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return CSystemShims_crc32c_extend(crc, base, bytes.count)
    }

    /// The CRC32C of an array of bytes.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// The table-driven path, regardless of the CPU.
    public static func softwareChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return CSystemShims_crc32c_extend_software(0, base, bytes.count)
    }

    /// The SSE4.2 path, or nil when the CPU does not have it.
    public static func hardwareChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt32? {
        guard hardwareAvailable else { return nil }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return CSystemShims_crc32c_extend_hardware(0, base, bytes.count)
    }

    /// Whether the CPU has the SSE4.2 CRC32 instruction (the default path uses it if so).
    public static var hardwareAvailable: Bool { CSystemShims_crc32c_hardware_available() != 0 }

    /// The stored form of a CRC: rotated and offset so CRCs of CRCs stay strong.
    @inlinable
    public static func mask(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xa282_ead8
    }

    /// Inverse of `mask`.
    @inlinable
    public static func unmask(_ masked: UInt32) -> UInt32 {
        let rotated = masked &- 0xa282_ead8
        return (rotated >> 17) | (rotated << 15)
    }
}
