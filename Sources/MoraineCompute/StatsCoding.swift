// An engine's statistics on the compute node's wire: the counters by name (so a newer node's
// extra counters are skipped by an older client, and a missing one reads 0), the levels, the
// estimated key count and the background error.
//
// Value types; no shared state.
import MoraineEngine
import MoraineMessages

enum StatsCoding {
    static func encode(_ stats: EngineStats, estimatedKeys: Int) -> ComputeStats {
        var counters = EngineStats.counters.map { (name: $0.name, value: UInt64(max(0, stats[keyPath: $0.field]))) }
        counters.append((name: "last_sequence", value: stats.lastSequence))
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
}
