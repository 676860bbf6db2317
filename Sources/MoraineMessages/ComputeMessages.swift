// The compute node's protocol: what a thin client (`Database(connect:)`, `--connect`) sends to
// the compute node that runs its database. Every request opens with the same header — the
// client's session id and the database's name — so a request is self-contained: a restarted
// compute node opens the database again at the first request that names it, and nothing but the
// session's leases (snapshots and iterators, by id) lives between requests. docs/COMPUTE.md has
// the byte layouts. Every count and length is bounded before anything is allocated for it.
//
// Value types; no shared state.
import MoraineTransport

/// The compute node's opcodes (0x60–0x6F).
public enum ComputeOpcode {
    /// Open (or create) a database: `ComputeOpen` → empty.
    public static let open: UInt8 = 0x60
    /// Apply a write batch: `ComputeWrite` → empty.
    public static let write: UInt8 = 0x61
    /// Read keys: `ComputeRead` → `ComputeValues` (one key: get; several: multiGet).
    public static let read: UInt8 = 0x62
    /// Take a snapshot lease: `ComputeHeader` → `ComputeLease`.
    public static let snapshot: UInt8 = 0x63
    /// Give a snapshot or iterator lease back: `ComputeLeaseRelease` → empty.
    public static let release: UInt8 = 0x64
    /// Open an iterator lease: `ComputeIteratorOpen` → `ComputeLease`.
    public static let iteratorOpen: UInt8 = 0x65
    /// Move an iterator and fetch the entries ahead: `ComputeIteratorMove` → `ComputeEntries`.
    public static let iteratorMove: UInt8 = 0x66
    /// Write the memtables to tables and wait: `ComputeHeader` → empty.
    public static let flush: UInt8 = 0x67
    /// Compact a key range: `ComputeCompactRange` → empty.
    public static let compactRange: UInt8 = 0x68
    /// The database's statistics: `ComputeHeader` → `ComputeStats`.
    public static let stats: UInt8 = 0x69
    /// Keep the session's leases alive: `ComputeHeader` (empty name) → empty.
    public static let renew: UInt8 = 0x6A
    /// End the session, releasing every lease it holds: `ComputeHeader` (empty name) → empty.
    public static let endSession: UInt8 = 0x6B
    /// Pause (true) or continue (false) flushes and compactions: `ComputeBackgroundWork` → empty.
    public static let backgroundWork: UInt8 = 0x6C
    /// The node's databases and sessions, for `moraine status`: empty → `ComputeStatusReply`.
    public static let status: UInt8 = 0x6D
    /// Close the database and remove its files (RocksDB's DestroyDB): `ComputeHeader` → u64 files removed.
    public static let destroy: UInt8 = 0x6E
}

/// What opens every compute request: whose session, which database.
public struct ComputeHeader: WireMessage, Equatable {
    public static let wireName = "compute request"
    public var session: UInt64
    /// The database's name on the compute node (a directory name under its data, or a name on
    /// its cluster's storage node); empty for session-only requests.
    public var database: String

    public init(session: UInt64, database: String) {
        self.session = session
        self.database = database
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(session)
        writer.string(database)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        session = try reader.u64("session")
        database = try reader.string("database")
    }
}

public struct ComputeOpen: WireMessage, Equatable {
    public static let wireName = "compute open"
    public var header: ComputeHeader
    public var createIfMissing: Bool
    public var errorIfExists: Bool

    public init(header: ComputeHeader, createIfMissing: Bool, errorIfExists: Bool = false) {
        self.header = header
        self.createIfMissing = createIfMissing
        self.errorIfExists = errorIfExists
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.bool(createIfMissing)
        writer.bool(errorIfExists)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        createIfMissing = try reader.bool("create if missing")
        errorIfExists = try reader.bool("error if exists")
    }
}

public struct ComputeWrite: WireMessage, Equatable {
    public static let wireName = "compute write"
    public var header: ComputeHeader
    public var sync: Bool
    public var disableWAL: Bool
    /// The write batch's bytes (its `rep`); the node checks them before applying anything.
    public var batch: [UInt8]

    public init(header: ComputeHeader, sync: Bool, disableWAL: Bool, batch: [UInt8]) {
        self.header = header
        self.sync = sync
        self.disableWAL = disableWAL
        self.batch = batch
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.bool(sync)
        writer.bool(disableWAL)
        writer.data(batch)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        sync = try reader.bool("sync")
        disableWAL = try reader.bool("disable WAL")
        batch = try reader.data("batch")
    }
}

public struct ComputeRead: WireMessage, Equatable {
    public static let wireName = "compute read"
    /// The most keys one read carries.
    public static let keysMax = 4096
    public var header: ComputeHeader
    /// A snapshot lease of the session, or 0 for the latest state.
    public var snapshot: UInt64
    public var keys: [[UInt8]]

    public init(header: ComputeHeader, snapshot: UInt64, keys: [[UInt8]]) {
        self.header = header
        self.snapshot = snapshot
        self.keys = keys
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.u64(snapshot)
        writer.u32(UInt32(keys.count))
        for key in keys { writer.data(key) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        snapshot = try reader.u64("snapshot")
        let count = Int(try reader.u32("key count"))
        guard count <= Self.keysMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) keys pass \(Self.keysMax)") }
        keys = []
        keys.reserveCapacity(count)
        for _ in 0..<count { keys.append(try reader.data("key")) }
    }
}

/// The values of a read, in key order (nil where absent).
public struct ComputeValues: WireMessage, Equatable {
    public static let wireName = "compute values"
    public var values: [[UInt8]?]

    public init(values: [[UInt8]?]) { self.values = values }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(values.count))
        for value in values { writer.optionalData(value) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("value count"))
        guard count <= ComputeRead.keysMax else {
            throw TransportError(.malformed, "\(Self.wireName): \(count) values pass \(ComputeRead.keysMax)")
        }
        values = []
        values.reserveCapacity(count)
        for _ in 0..<count { values.append(try reader.optionalData("value")) }
    }
}

/// A lease granted to the session: a snapshot (with its sequence) or an iterator.
public struct ComputeLease: WireMessage, Equatable {
    public static let wireName = "compute lease"
    public var id: UInt64
    /// The snapshot's sequence number (0 for an iterator).
    public var sequence: UInt64
    /// How long the lease lives without a renewal, in milliseconds.
    public var ttlMillis: UInt32

    public init(id: UInt64, sequence: UInt64, ttlMillis: UInt32) {
        self.id = id
        self.sequence = sequence
        self.ttlMillis = ttlMillis
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(id)
        writer.u64(sequence)
        writer.u32(ttlMillis)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        id = try reader.u64("lease id")
        sequence = try reader.u64("sequence")
        ttlMillis = try reader.u32("ttl")
    }
}

public struct ComputeLeaseRelease: WireMessage, Equatable {
    public static let wireName = "compute release"
    public var header: ComputeHeader
    public var id: UInt64

    public init(header: ComputeHeader, id: UInt64) {
        self.header = header
        self.id = id
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.u64(id)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        id = try reader.u64("lease id")
    }
}

public struct ComputeIteratorOpen: WireMessage, Equatable {
    public static let wireName = "compute iterator open"
    public var header: ComputeHeader
    /// A snapshot lease of the session, or 0 for the latest state.
    public var snapshot: UInt64
    public var lowerBound: [UInt8]?
    public var upperBound: [UInt8]?

    public init(header: ComputeHeader, snapshot: UInt64, lowerBound: [UInt8]?, upperBound: [UInt8]?) {
        self.header = header
        self.snapshot = snapshot
        self.lowerBound = lowerBound
        self.upperBound = upperBound
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.u64(snapshot)
        writer.optionalData(lowerBound)
        writer.optionalData(upperBound)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        snapshot = try reader.u64("snapshot")
        lowerBound = try reader.optionalData("lower bound")
        upperBound = try reader.optionalData("upper bound")
    }
}

/// Moves an iterator, then reads up to `count` entries in `direction` from where it lands.
public struct ComputeIteratorMove: WireMessage, Equatable {
    public static let wireName = "compute iterator move"
    /// The most entries one move returns.
    public static let countMax: UInt32 = 4096

    public enum Motion: UInt8, Sendable {
        case seekToFirst = 1
        case seekToLast = 2
        /// To the first key at or after the target.
        case seek = 3
        /// To the last key at or before the target.
        case seekForPrev = 4
        /// To the first key after the target (a resumed forward scan).
        case seekAfter = 5
        /// To the last key before the target (a resumed backward scan).
        case seekBefore = 6
    }

    public var header: ComputeHeader
    public var iterator: UInt64
    public var motion: Motion
    public var target: [UInt8]
    /// Entries to return, the first being where the motion lands; they are read forward after
    /// seekToFirst, seek and seekAfter, backward after the others.
    public var count: UInt32

    public init(header: ComputeHeader, iterator: UInt64, motion: Motion, target: [UInt8] = [], count: UInt32) {
        self.header = header
        self.iterator = iterator
        self.motion = motion
        self.target = target
        self.count = count
    }

    /// Whether the entries come in ascending key order.
    public var forward: Bool { motion == .seekToFirst || motion == .seek || motion == .seekAfter }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.u64(iterator)
        writer.u8(motion.rawValue)
        writer.data(target)
        writer.u32(count)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        iterator = try reader.u64("iterator")
        let raw = try reader.u8("motion")
        guard let motion = Motion(rawValue: raw) else { throw TransportError(.malformed, "\(Self.wireName): motion \(raw) is not known") }
        self.motion = motion
        target = try reader.data("target")
        count = try reader.u32("count")
        guard (1...Self.countMax).contains(count) else {
            throw TransportError(.malformed, "\(Self.wireName): count \(count) is not 1…\(Self.countMax)")
        }
    }
}

/// Entries an iterator read, in the order it read them; `exhausted` when it ran off the end
/// (or a bound) before `count`.
public struct ComputeEntries: WireMessage, Equatable {
    public static let wireName = "compute entries"
    public var keys: [[UInt8]]
    public var values: [[UInt8]]
    public var exhausted: Bool

    public init(keys: [[UInt8]], values: [[UInt8]], exhausted: Bool) {
        self.keys = keys
        self.values = values
        self.exhausted = exhausted
    }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(keys.count))
        for (key, value) in zip(keys, values) {
            writer.data(key)
            writer.data(value)
        }
        writer.bool(exhausted)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("entry count"))
        guard count <= Int(ComputeIteratorMove.countMax) else {
            throw TransportError(.malformed, "\(Self.wireName): \(count) entries pass \(ComputeIteratorMove.countMax)")
        }
        keys = []
        values = []
        for _ in 0..<count {
            keys.append(try reader.data("key"))
            values.append(try reader.data("value"))
        }
        exhausted = try reader.bool("exhausted")
    }
}

public struct ComputeCompactRange: WireMessage, Equatable {
    public static let wireName = "compute compact range"
    public var header: ComputeHeader
    public var begin: [UInt8]?
    public var end: [UInt8]?
    /// 0 skip, 1 if tombstones, 2 force (BottommostCompaction).
    public var bottommost: UInt8

    public init(header: ComputeHeader, begin: [UInt8]?, end: [UInt8]?, bottommost: UInt8) {
        self.header = header
        self.begin = begin
        self.end = end
        self.bottommost = bottommost
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.optionalData(begin)
        writer.optionalData(end)
        writer.u8(bottommost)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        begin = try reader.optionalData("begin")
        end = try reader.optionalData("end")
        bottommost = try reader.u8("bottommost")
        guard bottommost <= 2 else { throw TransportError(.malformed, "\(Self.wireName): bottommost \(bottommost) is not 0…2") }
    }
}

public struct ComputeBackgroundWork: WireMessage, Equatable {
    public static let wireName = "compute background work"
    public var header: ComputeHeader
    public var pause: Bool

    public init(header: ComputeHeader, pause: Bool) {
        self.header = header
        self.pause = pause
    }

    public func encode(into writer: inout WireWriter) {
        header.encode(into: &writer)
        writer.bool(pause)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        header = try ComputeHeader(from: &reader)
        pause = try reader.bool("pause")
    }
}

/// A database's statistics as named numbers (unknown names are skipped by an older reader), the
/// per-level shape, the estimated key count and the background error, if any.
public struct ComputeStats: WireMessage, Equatable {
    public static let wireName = "compute stats"
    public struct Level: Sendable, Equatable {
        public var level: UInt32
        public var files: UInt64
        public var bytes: UInt64
        /// The compaction score, times 1000.
        public var scoreMillis: UInt64

        public init(level: UInt32, files: UInt64, bytes: UInt64, scoreMillis: UInt64) {
            self.level = level
            self.files = files
            self.bytes = bytes
            self.scoreMillis = scoreMillis
        }
    }

    public var counters: [(name: String, value: UInt64)]
    public var levels: [Level]
    public var estimatedKeys: UInt64
    public var backgroundError: String?

    public init(counters: [(name: String, value: UInt64)], levels: [Level], estimatedKeys: UInt64, backgroundError: String?) {
        self.counters = counters
        self.levels = levels
        self.estimatedKeys = estimatedKeys
        self.backgroundError = backgroundError
    }

    public static func == (lhs: ComputeStats, rhs: ComputeStats) -> Bool {
        lhs.counters.map(\.name) == rhs.counters.map(\.name) && lhs.counters.map(\.value) == rhs.counters.map(\.value)
            && lhs.levels == rhs.levels && lhs.estimatedKeys == rhs.estimatedKeys && lhs.backgroundError == rhs.backgroundError
    }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(counters.count))
        for (name, value) in counters {
            writer.string(name)
            writer.u64(value)
        }
        writer.u32(UInt32(levels.count))
        for level in levels {
            writer.u32(level.level)
            writer.u64(level.files)
            writer.u64(level.bytes)
            writer.u64(level.scoreMillis)
        }
        writer.u64(estimatedKeys)
        writer.bool(backgroundError != nil)
        // Cut to what a wire string holds (a cut inside a character decodes as a replacement).
        if let backgroundError { writer.string(String(decoding: Array(backgroundError.utf8.prefix(4000)), as: UTF8.self)) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("counter count"))
        guard count <= 1024 else { throw TransportError(.malformed, "\(Self.wireName): \(count) counters") }
        counters = []
        for _ in 0..<count { counters.append((try reader.string("counter name"), try reader.u64("counter"))) }
        let levelCount = Int(try reader.u32("level count"))
        guard levelCount <= 64 else { throw TransportError(.malformed, "\(Self.wireName): \(levelCount) levels") }
        levels = []
        for _ in 0..<levelCount {
            levels.append(
                Level(level: try reader.u32("level"), files: try reader.u64("files"), bytes: try reader.u64("bytes"), scoreMillis: try reader.u64("score")))
        }
        estimatedKeys = try reader.u64("estimated keys")
        backgroundError = try reader.bool("has background error") ? try reader.string("background error") : nil
    }
}

/// What a compute node holds: its open databases with their shape, and its clients' sessions.
public struct ComputeStatusReply: WireMessage, Equatable {
    public static let wireName = "compute status"

    public struct Database: Sendable, Equatable {
        public var name: String
        public var lastSequence: UInt64
        public var memtableBytes: UInt64
        /// Table files and bytes per level, L0 first.
        public var levelFiles: [UInt32]
        public var levelBytes: [UInt64]
        /// Block lookups per cache tier: the compute node's own block cache, then the shared
        /// cache in the memory node's region (second tier; zero without one).
        public var blockCacheHits: UInt64 = 0
        public var blockCacheMisses: UInt64 = 0
        public var sharedCacheHits: UInt64 = 0
        public var sharedCacheMisses: UInt64 = 0

        public init(name: String, lastSequence: UInt64, memtableBytes: UInt64, levelFiles: [UInt32], levelBytes: [UInt64]) {
            self.name = name
            self.lastSequence = lastSequence
            self.memtableBytes = memtableBytes
            self.levelFiles = levelFiles
            self.levelBytes = levelBytes
        }
    }

    public var databases: [Database]
    public var sessions: UInt32
    public var snapshots: UInt32
    public var iterators: UInt32
    public var expiredLeases: UInt64

    public init(databases: [Database], sessions: UInt32, snapshots: UInt32, iterators: UInt32, expiredLeases: UInt64) {
        self.databases = databases
        self.sessions = sessions
        self.snapshots = snapshots
        self.iterators = iterators
        self.expiredLeases = expiredLeases
    }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(databases.count))
        for database in databases {
            writer.string(database.name)
            writer.u64(database.lastSequence)
            writer.u64(database.memtableBytes)
            writer.u32(UInt32(database.levelFiles.count))
            for (files, bytes) in zip(database.levelFiles, database.levelBytes) {
                writer.u32(files)
                writer.u64(bytes)
            }
            for count in [database.blockCacheHits, database.blockCacheMisses, database.sharedCacheHits, database.sharedCacheMisses] {
                writer.u64(count)
            }
        }
        writer.u32(sessions)
        writer.u32(snapshots)
        writer.u32(iterators)
        writer.u64(expiredLeases)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("database count"))
        guard count <= 65536 else { throw TransportError(.malformed, "\(Self.wireName): \(count) databases") }
        databases = []
        for _ in 0..<count {
            let name = try reader.string("name")
            let sequence = try reader.u64("last sequence")
            let memtable = try reader.u64("memtable bytes")
            let levels = Int(try reader.u32("level count"))
            guard levels <= 64 else { throw TransportError(.malformed, "\(Self.wireName): \(levels) levels") }
            var files: [UInt32] = []
            var bytes: [UInt64] = []
            for _ in 0..<levels {
                files.append(try reader.u32("files"))
                bytes.append(try reader.u64("bytes"))
            }
            var database = Database(name: name, lastSequence: sequence, memtableBytes: memtable, levelFiles: files, levelBytes: bytes)
            database.blockCacheHits = try reader.u64("block cache hits")
            database.blockCacheMisses = try reader.u64("block cache misses")
            database.sharedCacheHits = try reader.u64("shared cache hits")
            database.sharedCacheMisses = try reader.u64("shared cache misses")
            databases.append(database)
        }
        sessions = try reader.u32("sessions")
        snapshots = try reader.u32("snapshots")
        iterators = try reader.u32("iterators")
        expiredLeases = try reader.u64("expired leases")
    }
}
