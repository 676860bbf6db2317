// YCSB core workloads A–F against any BenchEngine. Keys are "user" followed by the FNV-1a hash
// of the record number (YCSB's hashed insert order); request keys follow YCSB's scrambled
// zipfian distribution (constant 0.99), or "latest" for D; scans (E) are 1–100 records long.
// `ycsb_load` inserts --records records into a fresh database; `ycsba`…`ycsbf` run
// --operations operations against what is loaded. Immutable generators are per thread.
#if canImport(Glibc)
    import Glibc
#endif
import Histogram

/// YCSB's zipfian generator over [0, items) (Gray et al., "Quickly generating billion-record
/// synthetic databases").
struct ZipfianGenerator {
    let items: Int
    let theta: Double
    let zetaN: Double
    let alpha: Double
    let eta: Double
    let halfPowTheta: Double

    init(items: Int, theta: Double = 0.99) {
        self.items = max(items, 1)
        self.theta = theta
        var zeta = 0.0
        for i in 1...self.items { zeta += 1 / pow(Double(i), theta) }
        zetaN = zeta
        let zeta2 = 1 + pow(0.5, theta)
        alpha = 1 / (1 - theta)
        eta = (1 - pow(2 / Double(self.items), 1 - theta)) / (1 - zeta2 / zeta)
        halfPowTheta = pow(0.5, theta)
    }

    func next(_ rng: inout BenchRandom) -> Int {
        let u = Double(rng.next() >> 11) / Double(1 << 53)
        let uz = u * zetaN
        if uz < 1 { return 0 }
        if uz < 1 + halfPowTheta { return 1 }
        return min(items - 1, Int(Double(items) * pow(eta * u - eta + 1, alpha)))
    }
}

/// FNV-1a over the 8 bytes of `n`, as YCSB hashes record numbers.
func fnvHash64(_ n: Int) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    var value = UInt64(n)
    for _ in 0..<8 {
        hash ^= value & 0xff
        hash = hash &* 0x0000_0100_0000_01b3
        value >>= 8
    }
    return hash
}

/// The operation mix of one core workload.
struct YCSBWorkload {
    let name: String
    var read = 0.0
    var update = 0.0
    var insert = 0.0
    var scan = 0.0
    var readModifyWrite = 0.0
    var latest = false

    static func named(_ name: String) -> YCSBWorkload? {
        switch name {
        case "ycsba": YCSBWorkload(name: name, read: 0.5, update: 0.5)
        case "ycsbb": YCSBWorkload(name: name, read: 0.95, update: 0.05)
        case "ycsbc": YCSBWorkload(name: name, read: 1.0)
        case "ycsbd": YCSBWorkload(name: name, read: 0.95, insert: 0.05, latest: true)
        case "ycsbe": YCSBWorkload(name: name, insert: 0.05, scan: 0.95)
        case "ycsbf": YCSBWorkload(name: name, read: 0.5, readModifyWrite: 0.5)
        default: nil
        }
    }
}

enum YCSBOperation: Int, CaseIterable {
    case read, update, insert, scan, readModifyWrite
    var label: String { ["READ", "UPDATE", "INSERT", "SCAN", "READ-MODIFY-WRITE"][rawValue] }
}

/// Per-operation-type tallies of one thread.
struct YCSBTally: Sendable {
    var histograms = [Histogram<UInt64>](
        repeating: Histogram<UInt64>(highestTrackableValue: 600_000_000_000, numberOfSignificantValueDigits: .three),
        count: YCSBOperation.allCases.count)
    var counts = [Int](repeating: 0, count: YCSBOperation.allCases.count)
    var found = 0
}
