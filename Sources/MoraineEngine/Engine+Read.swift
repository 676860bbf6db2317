// The read path: memtables first (newest to oldest), then L0 tables newest first, then one
// table per deeper level found by binary search. Bloom filters skip tables that cannot hold the
// key. Reads take no global lock.
import MoraineFormat
import MoraineMemtable
import MoraineSystem

extension Engine {
    /// The sequence reads see: the snapshot's, or the latest published.
    func readSequence(_ readOptions: ReadOptions) -> SequenceNumber {
        readOptions.snapshot?.sequence ?? lastSequence.load(ordering: .acquiring)
    }

    /// The value of `key`, or nil when absent or deleted.
    /// - Throws: `.corruption` naming the table when a block fails its checks; `.closed`.
    public func get(_ key: [UInt8], options readOptions: ReadOptions = ReadOptions()) throws -> [UInt8]? {
        try key.withUnsafeBytes { try get(key: $0, options: readOptions) }
    }

    public func get(key: UnsafeRawBufferPointer, options readOptions: ReadOptions = ReadOptions()) throws -> [UInt8]? {
        if closed { throw MoraineError(.closed, "database \(path) is closed") }
        // Noted before the superversion is taken (RowCache.swift says why).
        let rowCache = readOptions.snapshot == nil ? self.rowCache : nil
        let epoch = rowCache?.epoch ?? 0
        let sv = currentSuperVersion()
        let seq = readSequence(readOptions)
        switch sv.mem.get(key, sequence: seq) {
        case .found(let value): return value
        case .deleted: return nil
        case .notFound: break
        }
        for imm in sv.imms {
            switch imm.get(key, sequence: seq) {
            case .found(let value): return value
            case .deleted: return nil
            case .notFound: break
            }
        }
        guard let rowCache else { return try getFromVersion(sv.version, key: key, sequence: seq, fillCache: readOptions.fillCache) }
        let hash = rowCache.hash(key)
        // A hit comes only while the epoch is the one noted (checked under the shard's lock).
        switch rowCache.lookup(key, hash: hash, epoch: epoch) {
        case .value(let value): return value
        case .absent: return nil
        case .miss: break
        }
        let value = try getFromVersion(sv.version, key: key, sequence: seq, fillCache: readOptions.fillCache)
        if readOptions.fillCache {
            if let value {
                value.withUnsafeBytes { rowCache.fill(key, hash: hash, value: $0, epoch: epoch) }
            } else {
                rowCache.fill(key, hash: hash, value: nil, epoch: epoch)
            }
        }
        return value
    }

    private func getFromVersion(
        _ version: Version, key: UnsafeRawBufferPointer, sequence seq: SequenceNumber, fillCache: Bool
    ) throws -> [UInt8]? {
        let lookup = makeInternalKey(key, seq, .forSeek)
        let hash = hashBytes(key)
        var result: LookupResult = .notFound
        try lookup.withUnsafeBytes { lookupKey in
            func probe(_ file: FileMetaData) throws -> Bool {
                let table = try tableCache.reader(file)
                return try table.get(lookupKey, hash: hash, fillCache: fillCache) { foundKey, value in
                    switch valueType(foundKey) {
                    case .value: result = .found(Array(value))
                    case .deletion: result = .deleted
                    case nil:
                        throw MoraineError.corruption(
                            "unknown value type for key \(describeKey(key))", file: table.name)
                    }
                }
            }
            try forEachCandidateFile(version, key: key, lookupKey: lookupKey) { try probe($0) }
        }
        switch result {
        case .found(let value): return value
        case .deleted, .notFound: return nil
        }
    }

    /// Calls `body` with every table that may hold `key`, in search order (L0 newest first, then
    /// one table per deeper level), until it returns true.
    func forEachCandidateFile(
        _ version: Version, key: UnsafeRawBufferPointer, lookupKey: UnsafeRawBufferPointer,
        _ body: (FileMetaData) throws -> Bool
    ) rethrows {
        for file in version.levels[0] {
            let inRange =
                file.smallestUserKey.withUnsafeBytes { compareBytes($0, key) <= 0 }
                && file.largestUserKey.withUnsafeBytes { compareBytes($0, key) >= 0 }
            if inRange, try body(file) { return }
        }
        for level in 1..<version.levels.count {
            let files = version.levels[level]
            if files.isEmpty { continue }
            var low = 0
            var high = files.count
            while low < high {
                let mid = (low + high) / 2
                if files[mid].info.largest.withUnsafeBytes({ compareInternalKeys($0, lookupKey) < 0 }) {
                    low = mid + 1
                } else {
                    high = mid
                }
            }
            guard low < files.count else { continue }
            let file = files[low]
            if file.smallestUserKey.withUnsafeBytes({ compareBytes($0, key) > 0 }) { continue }
            if try body(file) { return }
        }
    }

    /// An iterator over the database as of now (or the snapshot in `options`). Call one of the
    /// seek methods before reading.
    public func makeIterator(options readOptions: ReadOptions = ReadOptions()) throws -> DBIterator {
        try checkOpen()
        let sv = currentSuperVersion()
        let seq = readSequence(readOptions)
        var children: [any InternalIterator] = [sv.mem.makeIterator()]
        for imm in sv.imms { children.append(imm.makeIterator()) }
        for file in sv.version.levels[0] {
            if !file.overlaps(lower: readOptions.lowerBound, upper: readOptions.upperBound) { continue }
            children.append(
                try tableCache.reader(file).makeIterator(fillCache: readOptions.fillCache, readahead: .automatic()))
        }
        for level in 1..<sv.version.levels.count where !sv.version.levels[level].isEmpty {
            let files = sv.version.levels[level].filter {
                $0.overlaps(lower: readOptions.lowerBound, upper: readOptions.upperBound)
            }
            if files.isEmpty { continue }
            children.append(LevelIterator(files: files, tables: tableCache, fillCache: readOptions.fillCache))
        }
        let inner: any InternalIterator = children.count == 1 ? children[0] : MergingIterator(children)
        return DBIterator(
            inner: inner, sequence: seq, lowerBound: readOptions.lowerBound, upperBound: readOptions.upperBound,
            keepAlive: sv, onClose: { [weak self] in self?.purgeObsoleteFiles() })
    }

    /// A snapshot of the current state; reads through it ignore later writes.
    public func snapshot() -> Snapshot {
        snapshots.make { lastSequence.load(ordering: .acquiring) }
    }

    /// Releases a snapshot early (dropping the last reference does the same).
    public func releaseSnapshot(_ snapshot: Snapshot) {
        snapshot.release()
    }
}
