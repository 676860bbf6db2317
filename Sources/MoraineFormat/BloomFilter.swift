// A cache-local bloom filter over user keys: each key sets k bits inside one 64-byte line, so a
// probe touches one cache line. ~10 bits per key gives about a 1% false-positive rate.
// Layout: the bit lines, then one byte holding k. A filter that fails to parse answers
// "may contain" for every key (it can only cost a read, never a wrong answer).

/// A 64-bit hash of a byte string (multiply-xorshift over 8-byte words, then a murmur finalizer).
/// `seed` starts the state: the default is the filters' (part of the table format); a cache of
/// client-chosen keys passes a secret one, so colliding keys cannot be worked out offline.
@inlinable
public func hashBytes(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0x9e37_79b9_7f4a_7c15) -> UInt64 {
    var h: UInt64 = seed ^ (UInt64(bytes.count) &* 0xff51_afd7_ed55_8ccd)
    var i = 0
    let n = bytes.count
    while i + 8 <= n {
        let word = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        h = (h ^ (word &* 0x87c3_7b91_1142_53d5)) &* 0x4cf5_ad43_2745_937f
        h = (h << 31) | (h >> 33)
        i += 8
    }
    if i < n {
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            tail |= UInt64(bytes[i]) << shift
            shift += 8
            i += 1
        }
        h = (h ^ (tail &* 0x87c3_7b91_1142_53d5)) &* 0x4cf5_ad43_2745_937f
    }
    h ^= h >> 33
    h = h &* 0xff51_afd7_ed55_8ccd
    h ^= h >> 33
    h = h &* 0xc4ce_b9fe_1a85_ec53
    h ^= h >> 33
    return h
}

/// Builds and queries the filter.
public enum BloomFilter {
    static let lineBits: UInt32 = 512

    /// Builds a filter for the given key hashes.
    public static func build(hashes: [UInt64], bitsPerKey: Int) -> [UInt8] {
        let k = max(1, min(30, Int((Double(bitsPerKey) * 0.69).rounded())))
        let totalBits = max(hashes.count * bitsPerKey, 64)
        let lines = (totalBits + Int(lineBits) - 1) / Int(lineBits)
        var filter = [UInt8](repeating: 0, count: lines * 64 + 1)
        filter[lines * 64] = UInt8(k)
        filter.withUnsafeMutableBytes { raw in
            for hash in hashes {
                let line = Int((UInt64(UInt32(truncatingIfNeeded: hash)) * UInt64(lines)) >> 32)  // Swift: >> binds tighter than *
                var h = UInt32(truncatingIfNeeded: hash >> 32)
                let delta = (h >> 17) | (h << 15)
                for _ in 0..<k {
                    let bit = Int(h % lineBits)
                    raw[line * 64 + bit / 8] |= UInt8(1 << (bit % 8))
                    h = h &+ delta
                }
            }
        }
        return filter
    }

    /// Whether a key with this hash may be in the set the filter was built from.
    @inlinable
    public static func mayContain(_ filter: UnsafeRawBufferPointer, hash: UInt64) -> Bool {
        let lines = (filter.count - 1) / 64
        guard lines > 0 else { return true }
        let k = Int(filter[lines * 64])
        guard k >= 1, k <= 30 else { return true }
        let line = Int((UInt64(UInt32(truncatingIfNeeded: hash)) * UInt64(lines)) >> 32)  // Swift: >> binds tighter than *
        var h = UInt32(truncatingIfNeeded: hash >> 32)
        let delta = (h >> 17) | (h << 15)
        for _ in 0..<k {
            let bit = Int(h % 512)
            if filter[line * 64 + bit / 8] & UInt8(1 << (bit % 8)) == 0 { return false }
            h = h &+ delta
        }
        return true
    }
}
