// Storage tiers: a database may spread its tables over several directories, fastest first (a
// persistent-memory file system, NVMe, a slower disk), each with a byte budget. Where a table goes
// is a pure function of the tiers and the level targets (`TierLayout`), as RocksDB's `db_paths`:
// levels fill the fastest tier with room for their target size, L0 counted as big as L1. When a
// tier holds more than its budget, its coldest tables (deepest level first, then oldest) move one
// tier down (Engine+Tiers). The manifest records each table's tier; the WAL, manifest, LOG and
// OPTIONS stay in the database directory. With no tiers, every table lives in the database
// directory, as before.
//
// Value types; no shared state.
import MoraineFormat
import MoraineSystem

/// One storage tier of a database: a directory for its tables and how many bytes it may hold.
public struct StorageTier: Sendable, Equatable, CustomStringConvertible {
    /// The directory holding this database's tables on the tier (one per database: table
    /// numbers are the database's own).
    public var path: String
    /// The most bytes of tables the tier should hold; nil: unbounded (the last tier only).
    public var budgetBytes: UInt64?
    /// Whether the tier is persistent memory (a DAX file system, or /dev/shm standing in for
    /// one): its tables are read through a mapping, by loads, not by a system call per block.
    public var mapped: Bool

    public init(path: String, budgetBytes: UInt64?, mapped: Bool = false) {
        self.path = path
        self.budgetBytes = budgetBytes
        self.mapped = mapped
    }

    public var description: String {
        path + ":" + (budgetBytes.map { EventLog.bytes($0) } ?? "unbounded") + (mapped ? ":pmem" : "")
    }

    /// Parses `PATH:SIZE[:pmem][,PATH:SIZE[:pmem]…]`: sizes in bytes with an optional K, M, G or
    /// T suffix (powers of 1024); the last tier may leave its size out (or say `unbounded`);
    /// `:pmem` marks a tier read through a mapping.
    /// - Throws: `.invalid` naming the part that does not parse.
    public static func parseList(_ text: String) throws -> [StorageTier] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var tiers: [StorageTier] = []
        for (index, whole) in parts.enumerated() {
            let isLast = index == parts.count - 1
            let mapped = whole.hasSuffix(":pmem")
            let part = mapped ? String(whole.dropLast(5)) : whole
            guard let colon = part.lastIndex(of: ":") else {
                guard isLast, !part.isEmpty else {
                    throw MoraineError(.invalid, "tier \"\(part)\" is not PATH:SIZE (only the last tier may leave out its size)")
                }
                tiers.append(StorageTier(path: part, budgetBytes: nil, mapped: mapped))
                continue
            }
            let path = String(part[..<colon])
            let size = String(part[part.index(after: colon)...])
            guard !path.isEmpty else { throw MoraineError(.invalid, "tier \"\(part)\" has no path") }
            if size == "unbounded" || (size.isEmpty && isLast) {
                tiers.append(StorageTier(path: path, budgetBytes: nil, mapped: mapped))
            } else if let bytes = parseByteSize(size) {
                tiers.append(StorageTier(path: path, budgetBytes: bytes, mapped: mapped))
            } else {
                throw MoraineError(.invalid, "tier \"\(part)\": \"\(size)\" is not a size (bytes, or a number with K, M, G or T)")
            }
        }
        return tiers
    }

    /// `12345`, `64K`, `512M`, `2G`, `1T` (powers of 1024); nil for anything else.
    static func parseByteSize(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(text)
        var scale: UInt64 = 1
        if let last = text.last, let unit = units[Character(last.uppercased())] {
            scale = unit
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let value = UInt64(digits) else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        return overflow ? nil : bytes
    }
}

/// Where a database's tables live: each tier's directory and budget, and the placement rules.
public struct TierLayout: Sendable, Equatable {
    /// Directories, fastest first; one entry (the database directory) without tiers.
    public let directories: [String]
    /// Budgets per tier; nil: unbounded.
    public let budgets: [UInt64?]
    /// Whether each tier's tables are read through a mapping.
    public let mapped: [Bool]
    /// The tier each level's tables are written to.
    public let levelTiers: [Int]
    /// Whether the database has tiers (else every table is in the database directory).
    public let isTiered: Bool

    /// The layout of the database in `databasePath` under `options`.
    public init(databasePath: String, options: Options) {
        if options.tiers.isEmpty {
            directories = [databasePath]
            budgets = [nil]
            mapped = [false]
            isTiered = false
        } else {
            directories = options.tiers.map(\.path)
            budgets = options.tiers.map(\.budgetBytes)
            mapped = options.tiers.map(\.mapped)
            isTiered = true
        }
        let targets = (0..<options.numLevels).map { options.maxBytes(forLevel: max(1, $0)) }
        levelTiers = Self.levelTiers(budgets: budgets, levelTargetBytes: targets)
    }

    public var count: Int { directories.count }

    /// The path of table `number` on `tier`.
    public func tablePath(_ number: UInt64, tier: Int) -> String {
        joinPath(directories[tier], DatabaseFile.table(number).name)
    }

    /// Assigns levels to tiers as RocksDB's `db_paths` does: each level, in order, goes to the
    /// fastest tier (not before the previous level's) whose budget still has room for the
    /// level's target; the last tier takes whatever is left. L0 is counted as big as L1.
    public static func levelTiers(budgets: [UInt64?], levelTargetBytes: [Double]) -> [Int] {
        var tier = 0
        // (Closures, not `.map(Double.init)`: as a function value that picks an initializer
        // reading the integer's bits as a Double.)
        var room = budgets[0].map { Double($0) } ?? .infinity
        var assigned: [Int] = []
        for target in levelTargetBytes {
            while tier < budgets.count - 1 && target > room {
                tier += 1
                room = budgets[tier].map { Double($0) } ?? .infinity
            }
            assigned.append(tier)
            room -= target
        }
        return assigned
    }

    /// The tier an output of `level` is written to: the level's tier, or the first after it
    /// whose budget can hold `incomingBytes` at all (a tier smaller than one output is skipped,
    /// not filled and emptied again).
    public func outputTier(level: Int, incomingBytes: UInt64) -> Int {
        var tier = levelTiers[min(level, levelTiers.count - 1)]
        while tier < count - 1, let budget = budgets[tier], incomingBytes > budget { tier += 1 }
        return tier
    }

    /// Bytes of tables per tier in `version`.
    func usage(of version: Version) -> [UInt64] {
        var bytes = [UInt64](repeating: 0, count: count)
        for file in version.levels.joined() where file.info.tier < count { bytes[file.info.tier] += file.sizeBytes }
        return bytes
    }

    /// The table to move one tier down now, if any: on the fastest tier over its budget, the
    /// coldest table (deepest level first, then the oldest by largest sequence) that `held`
    /// does not name. Pure: a function of the version and the layout.
    func pickMove(in version: Version, held: Set<UInt64>) -> (file: FileMetaData, level: Int, from: Int, to: Int)? {
        guard isTiered else { return nil }
        let used = usage(of: version)
        for tier in 0..<(count - 1) {
            guard let budget = budgets[tier], used[tier] > budget else { continue }
            for level in stride(from: version.levels.count - 1, through: 0, by: -1) {
                let candidates = version.levels[level].filter { $0.info.tier == tier && !held.contains($0.number) }
                if let coldest = candidates.min(by: { a, b in
                    a.info.largestSequence != b.info.largestSequence
                        ? a.info.largestSequence < b.info.largestSequence : a.number < b.number
                }) {
                    return (coldest, level, tier, tier + 1)
                }
            }
        }
        return nil
    }
}
