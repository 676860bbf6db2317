// Chooses compactions as a pure function of a Version and the options. Scores: L0 by file count
// over level0_file_num_compaction_trigger; level n ≥ 1 by bytes over its target
// (max_bytes_for_level_base × multiplier^(n-1)). The highest score ≥ 1 wins. L0 compactions take
// every L0 file (L0 files overlap, so a partial pick could put an older version above a newer
// one); deeper levels take one file, round-robin after the level's compact pointer, plus the
// overlapping files of the next level. Inputs that overlap neither each other nor anything below
// are moved by a manifest edit alone (a trivial move).
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

    static func pick(version: Version, options: Options, pointers: [[UInt8]]) -> CompactionSpec? {
        let levelScores = scores(version: version, options: options)
        guard let best = levelScores.indices.max(by: { levelScores[$0] < levelScores[$1] }),
            levelScores[best] >= 1
        else { return nil }
        if best == 0 { return manual(version: version, level: 0, begin: nil, end: nil) }
        let files = version.levels[best]
        let pointer = pointers[best]
        let chosen =
            files.first { file in
                pointer.isEmpty
                    || file.info.largest.withUnsafeBytes { a in
                        pointer.withUnsafeBytes { b in compareInternalKeys(a, b) > 0 }
                    }
            } ?? files[0]
        let below = version.overlapping(level: best + 1, lower: chosen.smallestUserKey, upper: chosen.largestUserKey)
        return CompactionSpec(
            inputLevel: best, inputs: [chosen], outputLevel: best + 1, outputLevelInputs: below,
            compactPointer: chosen.info.largest)
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
