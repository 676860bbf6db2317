// The engine's side of storage tiers (StorageTiers.swift has the placement rules).
//
// At open every tier's directory is listed: a tier that is missing or cannot be listed fails the
// open (never taken for an empty tier), and every table the manifest names is looked for on its
// recorded tier first, then on the others (tiers reordered between opens, or given as other
// directories): found elsewhere, the open records where it is. A table found only in the database
// directory, when that directory is not one of the tiers, fails the open with what to do.
//
// A tier past its budget sends its coldest tables one tier down, one at a time, on a background
// thread. A move copies the table (exclusive create, large sequential writes, a sync), syncs the
// target directory, then installs an edit that deletes the table and adds it back on the new
// tier; the old copy goes once no version naming it is held (ObsoleteFiles). A crash before the
// edit leaves a copy the next open deletes (the manifest names the old tier); a crash after it,
// an old copy deleted the same way. While a table moves, no compaction takes it
// (InFlightCompactions.moving), and a failed move (a full or unreachable tier) is logged and
// tried again after `tierMoveRetryNanos`, never a background error: the table is where it was.
import MoraineFormat
import MoraineSystem

extension Engine {
    /// How long after a failed move the next one may start.
    static let tierMoveRetryNanos: Int64 = 10_000_000_000
    /// Bytes copied per read and write of a move.
    static let tierMoveChunkBytes = 1 << 20

    /// Makes the tier directories of a database being created: each is created if missing, and
    /// one already holding tables (another database's, whose numbers would collide) is refused.
    /// - Throws: `.invalid` naming such a tier; the file system's errors.
    func prepareNewTiers() throws {
        guard tiers.isTiered else { return }
        for (tier, directory) in tiers.directories.enumerated() where trimmedPath(directory) != trimmedPath(path) {
            guard try fileSystem.exists(directory) else {
                try fileSystem.createDirectory(directory)
                continue
            }
            let tables = try fileSystem.children(of: directory).filter { name in
                if case .table = DatabaseFile(name: name) { true } else { false }
            }
            if !tables.isEmpty {
                throw MoraineError(
                    .invalid,
                    "tier \(tier) directory \(directory) holds \(tables.count) table(s) of another database; a new database "
                        + "needs its own directory on each tier")
            }
        }
    }

    /// The directories that may hold tables, with their names at open: the database directory
    /// (unless it is a tier itself), then each tier.
    /// - Throws: `.notFound` for a tier directory that does not exist; the file system's error,
    ///   naming the tier, for one that cannot be listed.
    func listTableDirectories(databaseNames: [String]) throws -> [TableListing] {
        func same(_ a: String, _ b: String) -> Bool { trimmedPath(a) == trimmedPath(b) }
        var listings: [TableListing] = []
        if !tiers.isTiered || !tiers.directories.contains(where: { same($0, path) }) {
            listings.append(TableListing(directory: path, tier: tiers.isTiered ? nil : 0, isDatabaseDirectory: true, names: databaseNames))
        }
        guard tiers.isTiered else { return listings }
        for (tier, directory) in tiers.directories.enumerated() {
            if same(directory, path) {
                listings.append(TableListing(directory: path, tier: tier, isDatabaseDirectory: true, names: databaseNames))
                continue
            }
            let names: [String]
            do {
                guard try fileSystem.exists(directory) else {
                    throw MoraineError(
                        .notFound,
                        "tier \(tier) of database \(path), \(directory), does not exist: mount or restore it "
                            + "(a missing tier is never taken for an empty one)")
                }
                names = try fileSystem.children(of: directory)
            } catch let error as MoraineError where error.kind != .notFound {
                throw MoraineError(error.kind, "tier \(tier) of database \(path), \(directory), cannot be listed: \(error.message)")
            }
            listings.append(TableListing(directory: directory, tier: tier, isDatabaseDirectory: false, names: names))
        }
        return listings
    }

    /// Finds every table the recovered manifest names: the tables found on another tier than
    /// the manifest says, with the tier they are on (the open records them there).
    /// - Throws: `.corruption` for a table on no tier; `.invalid` for one only in the database
    ///   directory when that is not a tier, or one found elsewhere by a read-only open.
    func locateTables(_ listings: [TableListing]) throws -> [(level: Int, file: TableFileInfo)] {
        var onTier = [Set<UInt64>](repeating: [], count: tiers.count)
        var inDatabaseDirectory = Set<UInt64>()
        for listing in listings {
            for name in listing.names {
                guard case .table(let n) = DatabaseFile(name: name) else { continue }
                if let tier = listing.tier { onTier[tier].insert(n) } else { inDatabaseDirectory.insert(n) }
            }
        }
        var relocations: [(level: Int, file: TableFileInfo)] = []
        for (level, files) in versions.current.levels.enumerated() {
            for file in files {
                let recorded = file.info.tier
                if recorded < tiers.count && onTier[recorded].contains(file.number) { continue }
                let name = DatabaseFile.table(file.number).name
                if let tier = onTier.indices.first(where: { onTier[$0].contains(file.number) }) {
                    let found = "table \(name) is on tier \(tier) (\(tiers.directories[tier])), not on tier \(recorded) as the manifest says"
                    if options.readOnly {
                        throw MoraineError(.invalid, "\(found): open the database writable once to record where it is")
                    }
                    event("recovery: \(found); recorded there")
                    var moved = file.info
                    moved.tier = tier
                    relocations.append((level, moved))
                } else if inDatabaseDirectory.contains(file.number) {
                    throw MoraineError(
                        .invalid,
                        "table \(joinPath(path, name)) is in the database directory, which is not one of the database's tiers "
                            + "(\(tiers.directories.joined(separator: ", "))): name it as a tier (the last, say) to open the database")
                } else if !tiers.isTiered {
                    throw MoraineError(.corruption, "table \(path(.table(file.number))) named by the manifest is missing")
                } else {
                    throw MoraineError(
                        .corruption,
                        "table \(name) named by the manifest (on tier \(recorded)) is missing from every tier: "
                            + tiers.directories.joined(separator: ", "))
                }
            }
        }
        return relocations
    }

    /// Starts the move of the coldest table of a tier past its budget, if one is due. Returns
    /// whether one ran. Precondition: `mutex` held (released while the table is copied).
    func runTierMoveIfDue() -> Bool {
        guard tiers.isTiered, !options.readOnly, backgroundError == nil, !manualCompaction, runningCompactions.moving == nil,
            monotonicNanos() >= tierMoveNotBeforeNanos,
            let move = tiers.pickMove(in: versions.current, held: runningCompactions.files)
        else { return false }
        runningCompactions.moving = move.file.number
        mutex.unlock()
        let started = monotonicNanos()
        var failure: MoraineError? = nil
        do {
            try moveTable(move.file, level: move.level, to: move.to)
            event(
                "tiers: moved #\(move.file.number) (L\(move.level), \(EventLog.bytes(move.file.sizeBytes))) from tier \(move.from) "
                    + "to tier \(move.to) in \((monotonicNanos() - started) / 1_000_000) ms")
        } catch {
            failure = asMoraineError(error)
        }
        mutex.lock()
        runningCompactions.moving = nil
        if let failure {
            tierMoveNotBeforeNanos = monotonicNanos() + Self.tierMoveRetryNanos
            counters.update { $0.tierMoveFailures += 1 }
            let line = "tiers: moving #\(move.file.number) from tier \(move.from) to tier \(move.to) failed (tried again later): \(failure)"
            SystemLog.warning("\(path): \(line)")
            event(line)
        } else {
            installSuperVersion()
        }
        return true
    }

    /// Copies `file` (on `level`) to `tier` and installs the edit saying it is there. Called
    /// without `mutex`; the caller holds the table against compactions.
    /// - Throws: the file system's errors (the partial copy removed), or the manifest's.
    func moveTable(_ file: FileMetaData, level: Int, to tier: Int) throws {
        let source = tablePath(file.info)
        let target = tiers.tablePath(file.number, tier: tier)
        // A copy an earlier attempt left there is not the table (the manifest names the source).
        if try fileSystem.exists(target) { try fileSystem.remove(target) }
        let input = try fileSystem.openRandomAccess(source)
        let output = try fileSystem.createNew(target, hint: .bulk)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.tierMoveChunkBytes, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            var offset: UInt64 = 0
            while offset < file.sizeBytes {
                let want = Int(min(UInt64(buffer.count), file.sizeBytes - offset))
                let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
                try input.readExactly(at: offset, into: chunk, name: source)
                try output.append(UnsafeRawBufferPointer(chunk))
                offset += UInt64(want)
            }
            try output.sync()
            try output.close()
            let copied = try fileSystem.fileSize(target)
            guard copied == file.sizeBytes else {
                throw MoraineError(.io, "copy of \(source) to \(target) holds \(copied) bytes, not \(file.sizeBytes)")
            }
        } catch {
            try? output.close()
            try? fileSystem.remove(target)
            throw error
        }
        var moved = file.info
        moved.tier = tier
        var edit = VersionEdit()
        edit.deletedFiles = [(level, file.number)]
        edit.newFiles = [(level, moved)]
        // If the install fails, the copy stays: the manifest may already name it. The next open
        // keeps whichever copy the manifest names and deletes the other.
        try install(edit)
        counters.update {
            $0.tierMoves += 1
            $0.tierMoveBytes += Int(file.sizeBytes)
        }
    }
}

/// `path` without trailing slashes (so `/a/b/` and `/a/b` compare equal).
func trimmedPath(_ path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
    return String(trimmed)
}
