// Chooses compactions as a pure function of a Version and the options. Scores: L0 by file count
// over level0_file_num_compaction_trigger; level n ≥ 1 by bytes over its target
// (max_bytes_for_level_base × multiplier^(n-1)). The highest score ≥ 1 wins. L0 compactions take
// every L0 file (L0 files overlap, so a partial pick could put an older version above a newer
// one); deeper levels take one file, round-robin after the level's compact pointer, plus the
// overlapping files of the next level. Inputs that overlap neither each other nor anything below
// are moved by a manifest edit alone (a trivial move).
//
// With compactions running (`InFlightCompactions`), a level's pick skips files they hold and any
// pick whose output range overlaps one of theirs on the same level, and the next level by score is
// tried when nothing in a level is free: so compactions of disjoint tables run side by side, and
// their edits install in any order without two tables of a level overlapping.
import MoraineFormat

/// One compaction to run.
struct CompactionSpec {
    let inputLevel: Int
    let inputs: [FileMetaData]
    let outputLevel: Int
    let outputLevelInputs: [FileMetaData]
    /// Where the next compaction of `inputLevel` starts.
    let compactPointer: [UInt8]?
    /// Rewrite even a lone input (manual compaction of the deepest level, to drop tombstones
    /// and overwritten versions).
    var forceRewrite = false

    /// Moved by a manifest edit alone: nothing below overlaps, and the inputs do not overlap
    /// each other (one file, or L0 files from sequential inserts, as RocksDB moves them).
    var isTrivialMove: Bool {
        !forceRewrite && outputLevelInputs.isEmpty && (inputs.count == 1 || Self.disjoint(inputs))
    }

    /// Whether `files`' user-key ranges are pairwise disjoint.
    static func disjoint(_ files: [FileMetaData]) -> Bool {
        let sorted = files.sorted { $0.smallestUserKey.lexicographicallyPrecedes($1.smallestUserKey) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where !a.largestUserKey.lexicographicallyPrecedes(b.smallestUserKey) {
            return false
        }
        return true
    }
}

/// The compactions running now: the tables they hold, and the key range each writes on its
/// output level.
struct InFlightCompactions {
    private(set) var files = Set<UInt64>()
    private var outputs: [(level: Int, range: UserKeyRange)] = []
    /// The table being copied to another tier (Engine+Tiers): no compaction takes it meanwhile.
    var moving: UInt64? = nil

    var count: Int { outputs.count }

    /// The user-key range `spec` writes: every input's together.
    static func outputRange(_ spec: CompactionSpec) -> UserKeyRange {
        let all = spec.inputs + spec.outputLevelInputs
        var lower = all[0].smallestUserKey
        var upper = all[0].largestUserKey
        for file in all.dropFirst() {
            if file.smallestUserKey.lexicographicallyPrecedes(lower) { lower = file.smallestUserKey }
            if upper.lexicographicallyPrecedes(file.largestUserKey) { upper = file.largestUserKey }
        }
        return UserKeyRange(lower: lower, upper: upper)
    }

    /// Whether `spec` may run beside these: none of its tables is held, and its output range
    /// overlaps none written on the same level.
    func allows(_ spec: CompactionSpec) -> Bool {
        if let moving, spec.inputs.contains(where: { $0.number == moving }) || spec.outputLevelInputs.contains(where: { $0.number == moving }) {
            return false
        }
        if outputs.isEmpty { return true }
        if spec.inputs.contains(where: { files.contains($0.number) }) || spec.outputLevelInputs.contains(where: { files.contains($0.number) }) {
            return false
        }
        let range = Self.outputRange(spec)
        return !outputs.contains { running in
            running.level == spec.outputLevel && !running.range.upper.lexicographicallyPrecedes(range.lower)
                && !range.upper.lexicographicallyPrecedes(running.range.lower)
        }
    }

    mutating func add(_ spec: CompactionSpec) {
        for file in spec.inputs + spec.outputLevelInputs { files.insert(file.number) }
        outputs.append((spec.outputLevel, Self.outputRange(spec)))
    }

    /// Precondition: `spec` was added and not removed since.
    mutating func remove(_ spec: CompactionSpec) {
        for file in spec.inputs + spec.outputLevelInputs { files.remove(file.number) }
        let range = Self.outputRange(spec)
        let index = outputs.firstIndex { $0.level == spec.outputLevel && $0.range == range }
        precondition(index != nil, "a compaction removed that was not running")
        outputs.remove(at: index!)
    }
}

enum CompactionPicker {
    /// The score of each level (0 ..< last); ≥ 1 means it needs compaction.
    static func scores(version: Version, options: Options) -> [Double] {
        var result: [Double] = []
        for level in 0..<(version.levels.count - 1) {
            if level == 0 {
                result.append(Double(version.levels[0].count) / Double(options.level0FileNumCompactionTrigger))
            } else {
                result.append(Double(version.bytes(level: level)) / options.maxBytes(forLevel: level))
            }
        }
        return result
    }

    /// The compaction to run next beside `running`: the level with the highest score ≥ 1 that has
    /// a pick `running` allows (nil when none).
    static func pick(
        version: Version, options: Options, pointers: [[UInt8]], running: InFlightCompactions = InFlightCompactions()
    ) -> CompactionSpec? {
        let levelScores = scores(version: version, options: options)
        let ranked = levelScores.indices.filter { levelScores[$0] >= 1 }.sorted { levelScores[$0] > levelScores[$1] }
        for level in ranked {
            if let spec = pick(level: level, version: version, pointers: pointers, running: running) { return spec }
        }
        return nil
    }

    /// `level`'s pick: every L0 file, or one file of a deeper level round-robin after its compact
    /// pointer (the first one `running` allows).
    private static func pick(level: Int, version: Version, pointers: [[UInt8]], running: InFlightCompactions) -> CompactionSpec? {
        if level == 0 {
            guard let spec = manual(version: version, level: 0, begin: nil, end: nil), running.allows(spec) else { return nil }
            return spec
        }
        let files = version.levels[level]
        let pointer = pointers[level]
        let start =
            files.firstIndex { file in
                pointer.isEmpty
                    || file.info.largest.withUnsafeBytes { a in
                        pointer.withUnsafeBytes { b in compareInternalKeys(a, b) > 0 }
                    }
            } ?? 0
        for offset in 0..<files.count {
            let chosen = files[(start + offset) % files.count]
            let below = version.overlapping(level: level + 1, lower: chosen.smallestUserKey, upper: chosen.largestUserKey)
            let spec = CompactionSpec(
                inputLevel: level, inputs: [chosen], outputLevel: level + 1, outputLevelInputs: below,
                compactPointer: chosen.info.largest)
            if running.allows(spec) { return spec }
        }
        return nil
    }

    /// The rewrite in place of `level`'s files overlapping [begin, end] (the deepest level).
    static func rewriteInPlace(version: Version, level: Int, begin: [UInt8]?, end: [UInt8]?) -> CompactionSpec? {
        let inputs = version.overlapping(level: level, lower: begin, upper: end)
        guard !inputs.isEmpty else { return nil }
        return CompactionSpec(
            inputLevel: level, inputs: inputs, outputLevel: level, outputLevelInputs: [], compactPointer: nil,
            forceRewrite: true)
    }

    /// The compaction of `level`'s files overlapping [begin, end] into the next level.
    static func manual(version: Version, level: Int, begin: [UInt8]?, end: [UInt8]?) -> CompactionSpec? {
        let inputs = level == 0 ? version.levels[0] : version.overlapping(level: level, lower: begin, upper: end)
        guard !inputs.isEmpty else { return nil }
        var lower = inputs[0].smallestUserKey
        var upper = inputs[0].largestUserKey
        for file in inputs.dropFirst() {
            if file.smallestUserKey.lexicographicallyPrecedes(lower) { lower = file.smallestUserKey }
            if upper.lexicographicallyPrecedes(file.largestUserKey) { upper = file.largestUserKey }
        }
        let below = version.overlapping(level: level + 1, lower: lower, upper: upper)
        return CompactionSpec(
            inputLevel: level, inputs: inputs, outputLevel: level + 1, outputLevelInputs: below, compactPointer: nil)
    }
}
