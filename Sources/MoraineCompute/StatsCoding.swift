// An engine's statistics on the compute node's wire: the counters by name (so a newer node's
// extra counters are skipped by an older client, and a missing one reads 0), the levels, the
// estimated key count and the background error. Storage tiers travel as counters too
// (`tier.N.files`, `tier.N.bytes`, `tier.N.budget`, 0 for unbounded), without their paths.
//
// Value types; no shared state.
import MoraineEngine
import MoraineFormat
import MoraineMessages

enum StatsCoding {
    static func encode(_ stats: EngineStats, estimatedKeys: Int) -> ComputeStats {
        var counters = EngineStats.counters.map { (name: $0.name, value: UInt64(max(0, stats[keyPath: $0.field]))) }
        counters.append((name: "last_sequence", value: stats.lastSequence))
        for tier in stats.tiers {
            counters.append((name: "tier.\(tier.tier).files", value: UInt64(tier.fileCount)))
            counters.append((name: "tier.\(tier.tier).bytes", value: tier.sizeBytes))
            counters.append((name: "tier.\(tier.tier).budget", value: tier.budgetBytes ?? 0))
        }
        let levels = stats.levels.map {
            ComputeStats.Level(
                level: UInt32($0.level), files: UInt64($0.fileCount), bytes: $0.sizeBytes, scoreMillis: UInt64(max(0, ($0.score * 1000).rounded())))
        }
        return ComputeStats(counters: counters, levels: levels, estimatedKeys: UInt64(max(0, estimatedKeys)), backgroundError: stats.backgroundError)
    }

    static func decode(_ message: ComputeStats) -> (stats: EngineStats, estimatedKeys: Int) {
        var stats = EngineStats()
        let fields = Dictionary(EngineStats.counters.map { ($0.name, $0.field) }, uniquingKeysWith: { first, _ in first })
        for (name, value) in message.counters {
            if name == "last_sequence" {
                stats.lastSequence = value
            } else if let (tier, field) = tierCounter(name) {
                while stats.tiers.count <= tier {
                    stats.tiers.append(TierStats(tier: stats.tiers.count, path: "", budgetBytes: nil, fileCount: 0, sizeBytes: 0))
                }
                switch field {
                case "files": stats.tiers[tier].fileCount = Int(truncatingIfNeeded: value)
                case "bytes": stats.tiers[tier].sizeBytes = value
                default: stats.tiers[tier].budgetBytes = value == 0 ? nil : value
                }
            } else if let field = fields[name] {
                stats[keyPath: field] = Int(truncatingIfNeeded: value)
            }
        }
        stats.levels = message.levels.map {
            LevelStats(level: Int($0.level), fileCount: Int(truncatingIfNeeded: $0.files), sizeBytes: $0.bytes, score: Double($0.scoreMillis) / 1000)
        }
        stats.backgroundError = message.backgroundError
        return (stats, Int(truncatingIfNeeded: message.estimatedKeys))
    }

    /// `tier.N.FIELD` as (N, FIELD) for a tier the wire may name (fewer than the most a
    /// database may have, so a hostile count cannot grow the array).
    private static func tierCounter(_ name: String) -> (Int, String)? {
        let parts = name.split(separator: ".")
        guard parts.count == 3, parts[0] == "tier", let tier = Int(parts[1]), tier >= 0, tier < TableFileInfo.tiersMax,
            ["files", "bytes", "budget"].contains(parts[2])
        else { return nil }
        return (tier, String(parts[2]))
    }
}
