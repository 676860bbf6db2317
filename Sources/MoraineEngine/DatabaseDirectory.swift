// What a database directory holds, decided before an open creates or recovers anything. The
// rule that keeps opens from destroying data: a new database is created only where the file
// system confirmed there is none — the directory is absent, or its listing holds no file of ours
// (no table, WAL, manifest, CURRENT or CURRENT temporary) but what an interrupted create leaves.
// A directory with database files and no CURRENT is `corruption`, whatever `createIfMissing`
// says: that is what a lost CURRENT looks like, and creating there would delete every table.
// "Could not look" (a listing or existence check that throws) is never taken for absence.
// Stateless: each call reads the directory anew.
import MoraineFormat
import MoraineSystem

/// What `DatabaseDirectory.inspect` found.
enum DatabaseDirectory: Equatable {
    /// The directory does not exist.
    case absent
    /// The directory exists and holds no database (or only what an interrupted create leaves:
    /// manifests recording nothing and CURRENT temporaries).
    case empty
    /// CURRENT is there: recover.
    case existing

    /// Where lost-and-found files go: recovery and repair move files here instead of deleting
    /// what they cannot prove obsolete.
    static let lostDirectoryName = "lost"

    /// A path in the lost-and-found directory `lost` for a file named `name`, taking the place
    /// of nothing already there (`name`, then `name.1`, `name.2`, …).
    static func lostPath(for name: String, in lost: String, fileSystem: any FileSystem) throws -> String {
        var candidate = joinPath(lost, name)
        var suffix = 1
        while try fileSystem.exists(candidate) {
            candidate = joinPath(lost, "\(name).\(suffix)")
            suffix += 1
        }
        return candidate
    }

    /// Looks at `path`.
    /// - Throws: what the file system throws when it cannot look, and `.corruption` for
    ///   database files without CURRENT.
    static func inspect(_ path: String, fileSystem: any FileSystem) throws -> DatabaseDirectory {
        guard try fileSystem.exists(path) else { return .absent }
        let names = try fileSystem.children(of: path)
        var tables = 0
        var logs = 0
        var manifests: [String] = []
        var hasCurrent = false
        for name in names {
            switch DatabaseFile(name: name) {
            case .current: hasCurrent = true
            case .table: tables += 1
            case .log: logs += 1
            case .manifest: manifests.append(name)
            case .lock, .temporary, .infoLog, .oldInfoLog, .options, .tierIdentity, .tierMarker, nil: break
            }
        }
        if hasCurrent { return .existing }
        if tables == 0 && logs == 0 {
            let recording = try manifests.filter { try !recordsNothing(joinPath(path, $0), fileSystem: fileSystem) }
            if recording.isEmpty { return .empty }
            manifests = recording
        }
        var found: [String] = []
        if tables > 0 { found.append("\(tables) table\(tables == 1 ? "" : "s")") }
        if logs > 0 { found.append("\(logs) WAL\(logs == 1 ? "" : "s")") }
        if !manifests.isEmpty { found.append(manifests.sorted().joined(separator: ", ")) }
        throw MoraineError(
            .corruption,
            "\(path) holds database files (\(found.joined(separator: ", "))) but no CURRENT; "
                + "nothing was created or deleted. Run `moraine repair --db \(path)` to rebuild the manifest from them")
    }

    /// Whether the manifest at `path` records no table and no write: what a create interrupted
    /// before CURRENT was written leaves (possibly torn). A manifest damaged past its first
    /// record, or one naming a table, records something.
    private static func recordsNothing(_ path: String, fileSystem: any FileSystem) throws -> Bool {
        let reader = try LogReader(file: try fileSystem.openRandomAccess(path), name: path, mode: .stop)
        do {
            while let record = try reader.nextRecord() {
                let edit = try VersionEdit.decode(record, origin: path)
                if !edit.newFiles.isEmpty || (edit.lastSequence ?? 0) > 0 { return false }
            }
        } catch let error as MoraineError where error.kind == .corruption {
            return false
        }
        return true
    }
}
