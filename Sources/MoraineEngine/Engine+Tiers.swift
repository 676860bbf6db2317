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
// an old copy deleted the same way. The copy is written under a temporary name and renamed when
// whole, so a table's name on a tier always holds a whole table. While a table moves, no
// compaction takes it (InFlightCompactions.moving). A copy that fails (a full or unreachable
// tier) is logged and tried again after `tierMoveRetryNanos`: the table is where it was. A
// manifest edit that fails is a background error, as for a compaction: the edit may be on disk.
//
// Each tier directory holds a TIER marker naming the database and the directory (see
// `checkTierMarkers`), so a tier of another database, a directory named twice, or an empty
// mount point is refused at open before anything is deleted.
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
        if !tiers.isTiered && databaseNames.contains(DatabaseFile.tierIdentity.name) {
            throw MoraineError(
                .invalid,
                "database \(path) keeps its tables on storage tiers (it has a TIERS file): open it with its tiers (--tiers, Options.tiers)")
        }
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

    /// Checks (and, for a writable open, makes) the tiers' identity: the database's id in its
    /// TIERS file, and in each tier directory a TIER marker naming that database and an id of
    /// the directory's own. So a tier directory of another database, one named twice under two
    /// spellings (`/t` and `/t/`, a symlink), or an unmounted mount point with a stray table in
    /// it, is refused before anything is deleted. A tier without a marker is new to the database
    /// and must hold no tables (the database directory excepted: its tables are its own).
    /// - Throws: `.invalid` naming the tier and what is wrong; `.corruption` for a damaged marker.
    func checkTierMarkers(_ listings: [TableListing]) throws {
        guard tiers.isTiered else { return }
        let identityPath = path(.tierIdentity)
        var database = try fileSystem.exists(identityPath) ? try TierMarker.decodeIdentity(fileSystem.readAll(identityPath), path: identityPath) : nil
        if database == nil && !options.readOnly {
            let id = TierMarker.newID()
            try writeSynced(identityPath, TierMarker.encodeIdentity(id))
            try fileSystem.syncDirectory(path)
            database = id
        }
        var seen: [String: Int] = [:]
        for listing in listings {
            guard let tier = listing.tier else { continue }
            let markerPath = joinPath(listing.directory, DatabaseFile.tierMarker.name)
            let marker: TierMarker
            if listing.names.contains(DatabaseFile.tierMarker.name) {
                marker = try TierMarker.decode(fileSystem.readAll(markerPath), path: markerPath)
                guard marker.database == database || database == nil else {
                    throw MoraineError(
                        .invalid,
                        "tier \(tier) of database \(path), \(listing.directory), belongs to another database (its TIER marker names "
                            + "database \(marker.database), this one is \(database ?? "?")): one directory per database and tier")
                }
            } else {
                let tables = listing.names.filter { if case .table = DatabaseFile(name: $0) { true } else { false } }
                if !tables.isEmpty && !listing.isDatabaseDirectory {
                    throw MoraineError(
                        .invalid,
                        "tier \(tier) of database \(path), \(listing.directory), holds \(tables.count) table(s) but no TIER marker: "
                            + "it is not a tier of this database (another database's directory, or a mount point without its device?)")
                }
                guard !options.readOnly, let database else { continue }
                marker = TierMarker(database: database, directory: TierMarker.newID())
                do {
                    try writeSynced(markerPath, marker.encoded(), exclusive: true)
                } catch let error as MoraineError where error.kind == .invalid {
                    // Exclusive create found a marker the listing did not: another tier made it
                    // a moment ago, so the two tiers are one directory.
                    throw MoraineError(
                        .invalid, "tier \(tier) of database \(path), \(listing.directory), is another tier's directory: \(error.message)")
                }
                try fileSystem.syncDirectory(listing.directory)
            }
            if let other = seen[marker.directory] {
                throw MoraineError(
                    .invalid,
                    "tiers \(other) and \(tier) of database \(path) are one directory (\(tiers.directories[other]), \(listing.directory))")
            }
            seen[marker.directory] = tier
        }
    }

    /// Writes `bytes` to a new file at `path` and syncs it.
    private func writeSynced(_ path: String, _ bytes: [UInt8], exclusive: Bool = false) throws {
        let file = exclusive ? try fileSystem.createNew(path, hint: .log) : try fileSystem.createWritable(path)
        do {
            try file.append(bytes)
            try file.sync()
            try file.close()
        } catch {
            try? file.close()
            throw error
        }
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
        } catch let error as TierMoveInstallFailed {
            mutex.lock()
            runningCompactions.moving = nil
            recordBackgroundError(error.error, "moving a table between tiers")
            return true
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
        // The copy is written under a temporary name and renamed once whole and synced, so a
        // table name on a tier is always a whole table. A copy an earlier attempt left is not
        // the table (the manifest names the source).
        let temporary = joinPath(tiers.directories[tier], DatabaseFile.temporary(file.number).name)
        for leftover in [temporary, target] where try fileSystem.exists(leftover) { try fileSystem.remove(leftover) }
        let direct = options.useDirectReads && !tiers.mapped[file.info.tier]
        let input = direct ? try fileSystem.openDirect(source) : try fileSystem.openRandomAccess(source)
        let output = try fileSystem.createNew(temporary, hint: .bulk)
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
            let copied = try fileSystem.fileSize(temporary)
            guard copied == file.sizeBytes else {
                throw MoraineError(.io, "copy of \(source) to \(temporary) holds \(copied) bytes, not \(file.sizeBytes)")
            }
            try fileSystem.rename(temporary, to: target)
            try fileSystem.syncDirectory(tiers.directories[tier])
        } catch {
            try? output.close()
            try? fileSystem.remove(temporary)
            try? fileSystem.remove(target)
            throw error
        }
        var moved = file.info
        moved.tier = tier
        var edit = VersionEdit()
        edit.deletedFiles = [(level, file.number)]
        edit.newFiles = [(level, moved)]
        // If the install fails, the copy stays: the manifest may already name it, so it must not
        // be removed (nor written again) by a retry. That is a background error, as for a
        // compaction; the next open keeps whichever copy the manifest names and deletes the other.
        do {
            try install(edit)
        } catch {
            throw TierMoveInstallFailed(error: asMoraineError(error))
        }
        counters.update {
            $0.tierMoves += 1
            $0.tierMoveBytes += Int(file.sizeBytes)
        }
    }
}

/// A move whose copy is whole but whose manifest edit failed: the edit may have reached the
/// manifest, so the engine stops writes (a background error) rather than touch the copy again.
struct TierMoveInstallFailed: Error {
    var error: MoraineError
}

/// `path` without trailing slashes (so `/a/b/` and `/a/b` compare equal).
func trimmedPath(_ path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
    return String(trimmed)
}

/// A tier directory's marker, and the database's identity its markers name. Text, one field per
/// line: `moraine tier` / `database ID` / `directory ID` (TIER) and `moraine tiers` /
/// `database ID` (TIERS); ids are 32 hex digits drawn at random.
struct TierMarker: Equatable {
    var database: String
    var directory: String

    static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    func encoded() -> [UInt8] { Array("moraine tier\ndatabase \(database)\ndirectory \(directory)\n".utf8) }

    static func encodeIdentity(_ database: String) -> [UInt8] { Array("moraine tiers\ndatabase \(database)\n".utf8) }

    /// - Throws: `.corruption` naming `path` for anything but a marker.
    static func decode(_ bytes: [UInt8], path: String) throws -> TierMarker {
        let fields = try lines(bytes, header: "moraine tier", path: path)
        guard let database = fields["database"], let directory = fields["directory"] else {
            throw MoraineError.corruption("a tier marker without its database and directory ids", file: path)
        }
        return TierMarker(database: database, directory: directory)
    }

    /// - Throws: `.corruption` naming `path` for anything but a TIERS file.
    static func decodeIdentity(_ bytes: [UInt8], path: String) throws -> String {
        guard let database = try lines(bytes, header: "moraine tiers", path: path)["database"] else {
            throw MoraineError.corruption("a TIERS file without the database's id", file: path)
        }
        return database
    }

    private static func lines(_ bytes: [UInt8], header: String, path: String) throws -> [String: String] {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        guard lines.first == Substring(header), bytes.count < 4096 else {
            throw MoraineError.corruption("not a \"\(header)\" file", file: path)
        }
        var fields: [String: String] = [:]
        for line in lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[1].count == 32, parts[1].allSatisfy(\.isHexDigit) else {
                throw MoraineError.corruption("malformed line \"\(line.prefix(80))\"", file: path)
            }
            fields[String(parts[0])] = String(parts[1])
        }
        return fields
    }
}
