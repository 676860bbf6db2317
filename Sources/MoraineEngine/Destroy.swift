// Destroying a database (RocksDB's DestroyDB): its files go, through the options' file system,
// so a database on a storage node is destroyed the same way as a local one. Only files the
// engine names are removed (tables, WALs, manifests, CURRENT and its temporaries, and what
// recovery set aside in `lost/`), and the tables on each of its storage tiers; anything else in
// the directory is left as it was. The database's lock is held meanwhile, so an open database is
// never destroyed under its owner.
import MoraineFormat
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

extension Engine {
    /// Removes the database in `path`; returns the number of files (and memory-node arenas)
    /// removed. A missing directory is nothing to do. With `.pmem` durability, the region file
    /// goes too; with `Options.memtableRegion`, the database's arenas are given back.
    /// - Throws: `.busy` when the database is open (its lock or lease is held), and what the
    ///   file system throws (a storage node that does not answer is `unavailable`, never
    ///   taken for an empty directory).
    @discardableResult
    public static func destroy(path: String, options: Options = Options()) throws -> Int {
        let fs = options.fileSystem
        guard try fs.exists(path) else { return try releaseRegionArenas(path: path, options: options) }
        let lock = try fs.lock(joinPath(path, DatabaseFile.lock.name))
        defer { lock.unlock() }
        var removed = 0
        // The tiers' tables are this database's where their TIER marker names its id: read it
        // before the database directory's files go.
        let identityPath = joinPath(path, DatabaseFile.tierIdentity.name)
        let identity = try fs.exists(identityPath) ? try TierMarker.decodeIdentity(fs.readAll(identityPath), path: identityPath) : nil
        let lost = joinPath(path, DatabaseDirectory.lostDirectoryName)
        if try fs.exists(lost) {
            for name in try fs.children(of: lost) {
                try fs.remove(joinPath(lost, name))
                removed += 1
            }
        }
        // CURRENT first: from then on the directory no longer opens as a database, so a
        // destroy cut short leaves files a create may clean up, never a half database.
        let names = try fs.children(of: path).sorted { a, b in
            (DatabaseFile(name: a) == .current ? 0 : 1, a) < (DatabaseFile(name: b) == .current ? 0 : 1, b)
        }
        for name in names {
            guard let kind = DatabaseFile(name: name), kind != .lock else { continue }
            try fs.remove(joinPath(path, name))
            removed += 1
        }
        try fs.syncDirectory(path)
        // Then the tables on each storage tier (and what recovery set aside there, and its
        // marker), where the marker says the tier is this database's.
        for tier in options.tiers where trimmedPath(tier.path) != trimmedPath(path) {
            let markerPath = joinPath(tier.path, DatabaseFile.tierMarker.name)
            guard let identity, try fs.exists(markerPath),
                try TierMarker.decode(fs.readAll(markerPath), path: markerPath).database == identity
            else { continue }
            let tierLost = joinPath(tier.path, DatabaseDirectory.lostDirectoryName)
            if try fs.exists(tierLost) {
                for name in try fs.children(of: tierLost) {
                    try fs.remove(joinPath(tierLost, name))
                    removed += 1
                }
            }
            for name in try fs.children(of: tier.path) {
                switch DatabaseFile(name: name) {
                case .table?, .temporary?, .tierMarker?: break
                default: continue
                }
                try fs.remove(joinPath(tier.path, name))
                removed += 1
            }
            try fs.syncDirectory(tier.path)
        }
        if options.memtableRegion != nil {
            removed += try releaseRegionArenas(path: path, options: options)
        } else if options.durability == .pmem {
            let region = options.pmemPath ?? Options.defaultPmemPath(for: path)
            if unlink(region) == 0 { removed += 1 }
        }
        return removed
    }

    /// Gives back the memory node's arenas of the database (taken over first, so an owner that
    /// is somehow still writing is fenced); returns how many.
    private static func releaseRegionArenas(path: String, options: Options) throws -> Int {
        guard let provider = options.memtableRegion else { return 0 }
        let grants = try provider.adopt(database: path)
        for grant in grants { try provider.release(database: path, grant) }
        return grants.count
    }
}
