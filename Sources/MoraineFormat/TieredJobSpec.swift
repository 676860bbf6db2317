// Where a job's tables live when a database spreads them over storage tiers (a persistent-memory
// directory, an NVMe one, a disk): each input table names its tier, the spec lists each tier's
// directory and the tier the outputs go to. A database with one place for its tables sends no
// tier directories, and every table is in the spec's `directory`.
//
// Value types; no shared state.

/// A job spec whose tables may sit on several tiers.
public protocol TieredJobSpec {
    /// The database's directory on the file system the job is given.
    var directory: String { get }
    /// The directory of each tier, fastest first; empty when every table lives in `directory`.
    var tierDirectories: [String] { get }
    /// The tier the outputs go to.
    var outputTier: Int { get }
}

extension TieredJobSpec {
    /// The directory holding the tables of `tier`.
    /// Precondition: `tier` is one of the spec's tiers (`tierProblems` says so).
    public func tableDirectory(tier: Int) -> String { tierDirectories.isEmpty ? directory : tierDirectories[tier] }

    /// Why the spec's tiers do not fit: too many, one without a directory, an output or input
    /// tier outside them.
    func tierProblems(inputTiers: [(number: UInt64, tier: Int)]) -> [String] {
        var found: [String] = []
        let count = max(1, tierDirectories.count)
        if tierDirectories.count > TableFileInfo.tiersMax { found.append("\(tierDirectories.count) tiers pass \(TableFileInfo.tiersMax)") }
        if tierDirectories.contains(where: \.isEmpty) { found.append("a tier has no directory") }
        if outputTier < 0 || outputTier >= count { found.append("output tier \(outputTier) is outside 0..<\(count)") }
        for input in inputTiers where input.tier < 0 || input.tier >= count {
            found.append("input table \(input.number) is on tier \(input.tier), outside 0..<\(count)")
        }
        return found
    }
}
