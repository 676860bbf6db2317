// Repair's step 3: make L0 order answer every read. Gets in L0 look at tables newest first (by
// largest sequence) and stop at the first holding the key, which is right only if any two tables
// whose user-key ranges meet have disjoint sequence ranges. Tables that break it are merged (all
// versions kept, exact duplicates — a WAL replayed beside the table it was flushed to — once),
// in outputs cut only between user keys so no two outputs meet, until no pair breaks it.
import MoraineFormat
import MoraineSystem

extension Repairer {
    func resolveConflicts() throws {
        // Each round merges at least two tables into outputs that meet no other output of the
        // round, so rounds are bounded by the table count.
        for _ in 0..<max(1, tables.count) {
            let groups = conflictGroups()
            if groups.isEmpty { return }
            var merged = Set<UInt64>()
            var outputs: [RepairReport.Table] = []
            for group in groups {
                outputs += try merge(group.map { tables[$0] })
                for index in group { merged.insert(tables[index].info.number) }
                report.tablesMerged += group.count
            }
            for number in merged { toDelete.append(DatabaseFile.table(number).name) }
            tables = tables.filter { !merged.contains($0.info.number) } + outputs
        }
        preconditionFailure("repair: conflicting tables remain after \(tables.count) merge rounds")
    }

    /// Groups (indexes into `tables`, two or more each) of tables linked by meeting key ranges
    /// and overlapping sequence ranges.
    func conflictGroups() -> [[Int]] {
        var parent = Array(tables.indices)
        func root(_ i: Int) -> Int {
            var i = i
            while parent[i] != i { i = parent[i] }
            return i
        }
        let ranges = tables.map { table in
            (
                lower: table.info.smallest.withUnsafeBytes { Array(userKey($0)) },
                upper: table.info.largest.withUnsafeBytes { Array(userKey($0)) },
                info: table.info
            )
        }
        for i in ranges.indices {
            for j in ranges.indices where j > i {
                let (a, b) = (ranges[i], ranges[j])
                let keysMeet = !a.upper.lexicographicallyPrecedes(b.lower) && !b.upper.lexicographicallyPrecedes(a.lower)
                let sequencesMeet =
                    a.info.smallestSequence <= b.info.largestSequence && b.info.smallestSequence <= a.info.largestSequence
                if keysMeet && sequencesMeet { parent[root(j)] = root(i) }
            }
        }
        var groups: [Int: [Int]] = [:]
        for i in tables.indices { groups[root(i), default: []].append(i) }
        return groups.values.filter { $0.count > 1 }.map { $0.sorted() }.sorted { $0[0] < $1[0] }
    }

    /// Merges `inputs` into new tables, cut at `targetFileSizeBase` between user keys.
    func merge(_ inputs: [RepairReport.Table]) throws -> [RepairReport.Table] {
        let children: [any InternalIterator] = try inputs.map { table in
            let name = path(DatabaseFile.table(table.info.number).name)
            return try TableReader(file: try fileSystem.openRandomAccess(name), name: name, cache: nil)
                .makeIterator(fillCache: false)
        }
        let source = MergingIterator(children)
        let origin = "merged from " + inputs.map { DatabaseFile.table($0.info.number).name }.joined(separator: ", ")
        var outputs: [RepairReport.Table] = []
        var writer: TableWriter? = nil
        var entries = 0
        var previous: [UInt8] = []
        do {
            try source.seekToFirst()
            while source.isValid {
                let key = source.key
                let duplicate = !previous.isEmpty && previous.withUnsafeBytes { compareBytes($0, key) == 0 }
                if !duplicate {
                    let newUserKey = previous.isEmpty || previous.withUnsafeBytes { compareBytes(userKey($0), userKey(key)) != 0 }
                    if let open = writer, newUserKey,
                        open.builder!.estimatedFileSizeBytes >= UInt64(options.targetFileSizeBase)
                    {
                        outputs.append(RepairReport.Table(info: try open.finish(), entryCount: entries, origin: origin))
                        writer = nil
                    }
                    if writer == nil {
                        let number = newNumber()
                        let next = TableWriter(
                            path: path(DatabaseFile.table(number).name), number: number, tier: 0, fileSystem: fileSystem,
                            options: options.tableOptions)
                        try next.open()
                        writer = next
                        entries = 0
                    }
                    try writer!.builder!.add(key: key, value: source.value)
                    entries += 1
                    previous = Array(key)
                }
                try source.next()
            }
            if let open = writer {
                outputs.append(RepairReport.Table(info: try open.finish(), entryCount: entries, origin: origin))
            }
        } catch {
            writer?.abandon()
            for output in outputs { try? fileSystem.remove(path(DatabaseFile.table(output.info.number).name)) }
            throw error
        }
        return outputs
    }
}
