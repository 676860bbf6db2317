// The storage protocol: what a compute node (or a worker) asks of a storage node, and what it
// answers. docs/STORAGE.md has the byte layout of every message; this file is its code. Requests
// name files by (database, name), both checked by the node (`StorageName`); mutations carry the
// caller's lease epoch, and one from an older epoch is refused as `fenced`. Replies that are
// plain bytes (a read, a read-all) travel as the payload itself.
//
// Value types; no shared state.
import MoraineTransport

/// The storage node's opcodes (0x20–0x3F).
public enum StorageOpcode {
    public static let create: UInt8 = 0x20
    public static let append: UInt8 = 0x21
    public static let sync: UInt8 = 0x22
    public static let close: UInt8 = 0x23
    public static let read: UInt8 = 0x24
    public static let readBatch: UInt8 = 0x25
    public static let readAll: UInt8 = 0x26
    public static let stat: UInt8 = 0x27
    public static let list: UInt8 = 0x28
    public static let remove: UInt8 = 0x29
    public static let rename: UInt8 = 0x2A
    public static let createDirectory: UInt8 = 0x2B
    public static let syncDirectory: UInt8 = 0x2C
    public static let capacity: UInt8 = 0x2D
    public static let leaseAcquire: UInt8 = 0x2E
    public static let leaseRenew: UInt8 = 0x2F
    public static let leaseRelease: UInt8 = 0x30
    /// The node's storage tiers: empty → `StorageTiersReply`. A database's directory on tier K
    /// is named `DATABASE/@tierK` in every other request.
    public static let tiers: UInt8 = 0x31
}

/// A file on a storage node: a database (one or two flat path components) and a flat name.
public struct StorageFile: Sendable, Hashable, CustomStringConvertible {
    public var database: String
    public var name: String

    public init(database: String, name: String) {
        self.database = database
        self.name = name
    }

    public var description: String { name.isEmpty ? database : database + "/" + name }

    func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.string(name)
    }

    init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        name = try reader.string("name")
    }
}

/// Creates a file for appending: exclusive (an existing file is refused) or truncating.
public struct StorageCreate: WireMessage {
    public static let wireName = "storage create request"
    public var file: StorageFile
    public var exclusive: Bool
    public var epoch: UInt64

    public init(file: StorageFile, exclusive: Bool, epoch: UInt64) {
        self.file = file
        self.exclusive = exclusive
        self.epoch = epoch
    }

    public func encode(into writer: inout WireWriter) {
        file.encode(into: &writer)
        writer.bool(exclusive)
        writer.u64(epoch)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        file = try StorageFile(from: &reader)
        exclusive = try reader.bool("exclusive")
        epoch = try reader.u64("epoch")
    }
}

/// Appends bytes at an expected offset, optionally followed by an fdatasync. Sent again after a
/// lost reply, it changes nothing and succeeds; a gap, or different bytes over written ones,
/// is refused.
public struct StorageAppend: WireMessage {
    public static let wireName = "storage append request"
    /// When the node writes the bytes to its kernel.
    public enum Mode: UInt8, Sendable {
        /// Before it replies (pwrite).
        case write = 0
        /// Before it replies, then fdatasync.
        case sync = 1
        /// Once the connection has run the requests it had (a published append: the node
        /// writes a run of them with one pwrite); the reply's `writtenBytes` says how far the
        /// file is written.
        case deferred = 2
    }

    public var file: StorageFile
    public var offset: UInt64
    public var mode: Mode
    public var epoch: UInt64
    public var bytes: [UInt8]

    public var sync: Bool { mode == .sync }

    public init(file: StorageFile, offset: UInt64, sync: Bool, epoch: UInt64, bytes: [UInt8]) {
        self.init(file: file, offset: offset, mode: sync ? .sync : .write, epoch: epoch, bytes: bytes)
    }

    public init(file: StorageFile, offset: UInt64, mode: Mode, epoch: UInt64, bytes: [UInt8]) {
        self.file = file
        self.offset = offset
        self.mode = mode
        self.epoch = epoch
        self.bytes = bytes
    }

    public var encodedByteCountHint: Int { 64 + file.database.utf8.count + file.name.utf8.count + bytes.count }

    public func encode(into writer: inout WireWriter) {
        file.encode(into: &writer)
        writer.u64(offset)
        writer.u8(mode.rawValue)
        writer.u64(epoch)
        writer.data(bytes)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        file = try StorageFile(from: &reader)
        offset = try reader.u64("offset")
        let raw = try reader.u8("mode")
        guard let mode = Mode(rawValue: raw) else {
            throw TransportError(.malformed, "\(Self.wireName): field mode is \(raw), not 0 (write), 1 (sync) or 2 (deferred)")
        }
        self.mode = mode
        epoch = try reader.u64("epoch")
        bytes = try reader.data("bytes")
    }
}

/// An append's reply: the file's size after it, and how much of that the node has written to
/// its kernel (less than the size only after deferred appends).
public struct StorageAppendReply: WireMessage {
    public static let wireName = "storage append reply"
    public var sizeBytes: UInt64
    public var writtenBytes: UInt64

    public init(sizeBytes: UInt64, writtenBytes: UInt64) {
        self.sizeBytes = sizeBytes
        self.writtenBytes = writtenBytes
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(sizeBytes)
        writer.u64(writtenBytes)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        sizeBytes = try reader.u64("size")
        writtenBytes = try reader.u64("written")
        guard writtenBytes <= sizeBytes else {
            throw TransportError(.malformed, "\(Self.wireName): \(writtenBytes) bytes written of \(sizeBytes)")
        }
    }
}

/// A file and the caller's epoch: sync, remove.
public struct StorageFileMutation: WireMessage {
    public static let wireName = "storage file request"
    public var file: StorageFile
    public var epoch: UInt64

    public init(file: StorageFile, epoch: UInt64) {
        self.file = file
        self.epoch = epoch
    }

    public func encode(into writer: inout WireWriter) {
        file.encode(into: &writer)
        writer.u64(epoch)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        file = try StorageFile(from: &reader)
        epoch = try reader.u64("epoch")
    }
}

/// A file alone: close, read-all, stat; a database alone (empty name): list, create and sync
/// a directory.
public struct StorageFileQuery: WireMessage {
    public static let wireName = "storage query"
    public var file: StorageFile

    public init(file: StorageFile) { self.file = file }

    public func encode(into writer: inout WireWriter) { file.encode(into: &writer) }

    public init(from reader: inout WireReader) throws(TransportError) { file = try StorageFile(from: &reader) }
}

/// Reads `length` bytes at `offset` (fewer at the end of the file).
public struct StorageRead: WireMessage {
    public static let wireName = "storage read request"
    public var file: StorageFile
    public var offset: UInt64
    public var length: UInt32

    public init(file: StorageFile, offset: UInt64, length: UInt32) {
        self.file = file
        self.offset = offset
        self.length = length
    }

    public func encode(into writer: inout WireWriter) {
        file.encode(into: &writer)
        writer.u64(offset)
        writer.u32(length)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        file = try StorageFile(from: &reader)
        offset = try reader.u64("offset")
        length = try reader.u32("length")
    }
}

/// Many reads, of many files, in one request; their outcomes in the same order.
public struct StorageReadBatch: WireMessage {
    public static let wireName = "storage read batch"
    /// The most reads one batch may hold.
    public static let readsMax = 4096
    public var reads: [StorageRead]

    public init(reads: [StorageRead]) { self.reads = reads }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(reads.count))
        for read in reads { read.encode(into: &writer) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("count"))
        guard count <= Self.readsMax else {
            throw TransportError(.malformed, "\(Self.wireName) of \(count) reads passes \(Self.readsMax)")
        }
        reads = []
        reads.reserveCapacity(count)
        for _ in 0..<count { reads.append(try StorageRead(from: &reader)) }
    }
}

/// The outcomes of a read batch: each the bytes read, or an error code and message.
public struct StorageReadBatchReply: WireMessage {
    public static let wireName = "storage read batch reply"
    public var results: [Result<[UInt8], TransportError>]

    public init(results: [Result<[UInt8], TransportError>]) { self.results = results }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(results.count))
        for result in results {
            switch result {
            case .success(let bytes):
                writer.u16(0)
                writer.data(bytes)
            case .failure(let error):
                writer.u16(error.code.rawValue)
                writer.string(String(error.message.utf8.prefix(1024)) ?? "")
            }
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("count"))
        guard count <= StorageReadBatch.readsMax else {
            throw TransportError(.malformed, "\(Self.wireName) of \(count) results passes \(StorageReadBatch.readsMax)")
        }
        results = []
        for _ in 0..<count {
            let code = try reader.u16("code")
            if code == 0 {
                results.append(.success(try reader.data("bytes")))
            } else {
                let message = try reader.string("message")
                results.append(.failure(TransportError(TransportError.Code(rawValue: code) ?? .internalError, message)))
            }
        }
    }
}

/// What a stat found.
public struct StorageStatReply: WireMessage {
    public static let wireName = "storage stat reply"
    public enum Kind: UInt8, Sendable { case absent = 0, file = 1, directory = 2 }
    public var kind: Kind
    public var sizeBytes: UInt64

    public init(kind: Kind, sizeBytes: UInt64) {
        self.kind = kind
        self.sizeBytes = sizeBytes
    }

    public func encode(into writer: inout WireWriter) {
        writer.u8(kind.rawValue)
        writer.u64(sizeBytes)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let raw = try reader.u8("kind")
        guard let kind = Kind(rawValue: raw) else { throw TransportError(.malformed, "\(Self.wireName): kind \(raw)") }
        self.kind = kind
        sizeBytes = try reader.u64("size")
    }
}

/// Names, for a list; also the reply to an append (the file's size after it), as one name-less form.
public struct StorageNames: WireMessage {
    public static let wireName = "storage names"
    public var names: [String]

    public init(names: [String]) { self.names = names }

    public func encode(into writer: inout WireWriter) {
        writer.u32(UInt32(names.count))
        for name in names { writer.string(name) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u32("count"))
        names = []
        for _ in 0..<count { names.append(try reader.string("name")) }
    }
}

/// An atomic rename inside one database, with the directory synced after it.
public struct StorageRename: WireMessage {
    public static let wireName = "storage rename request"
    public var database: String
    public var source: String
    public var target: String
    public var epoch: UInt64
    /// The target's directory: `database` itself, or another directory under the same lease
    /// root (a file set aside into `DATABASE/lost`). Sent only when it differs (a trailing field).
    public var targetDatabase: String

    public init(database: String, source: String, target: String, epoch: UInt64, targetDatabase: String? = nil) {
        self.database = database
        self.source = source
        self.target = target
        self.epoch = epoch
        self.targetDatabase = targetDatabase ?? database
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.string(source)
        writer.string(target)
        writer.u64(epoch)
        if targetDatabase != database { writer.string(targetDatabase) }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        source = try reader.string("source")
        target = try reader.string("target")
        epoch = try reader.u64("epoch")
        targetDatabase = reader.remainingCount > 0 ? try reader.string("target database") : database
    }
}

/// A node's bytes used (by the files of its databases) and free (on its device).
public struct StorageCapacityReply: WireMessage {
    public static let wireName = "storage capacity reply"
    public var bytesUsed: UInt64
    public var bytesFree: UInt64
    public var fileCount: UInt64

    public init(bytesUsed: UInt64, bytesFree: UInt64, fileCount: UInt64) {
        self.bytesUsed = bytesUsed
        self.bytesFree = bytesFree
        self.fileCount = fileCount
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(bytesUsed)
        writer.u64(bytesFree)
        writer.u64(fileCount)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        bytesUsed = try reader.u64("bytes used")
        bytesFree = try reader.u64("bytes free")
        fileCount = try reader.u64("file count")
    }
}

/// One storage tier of a node: its budget (0: unbounded), whether it is persistent memory, and
/// the bytes its databases' files hold and its device has free.
public struct StorageTierInfo: Sendable, Equatable {
    public var budgetBytes: UInt64
    public var mapped: Bool
    public var bytesUsed: UInt64
    public var bytesFree: UInt64

    public init(budgetBytes: UInt64, mapped: Bool, bytesUsed: UInt64 = 0, bytesFree: UInt64 = 0) {
        self.budgetBytes = budgetBytes
        self.mapped = mapped
        self.bytesUsed = bytesUsed
        self.bytesFree = bytesFree
    }
}

/// A node's storage tiers, fastest first (empty: it keeps every file in its data directory).
public struct StorageTiersReply: WireMessage {
    public static let wireName = "storage tiers reply"
    /// The most tiers a node may have (a database's most).
    public static let tiersMax = 8
    public var tiers: [StorageTierInfo]

    public init(tiers: [StorageTierInfo]) { self.tiers = tiers }

    public func encode(into writer: inout WireWriter) {
        writer.u8(UInt8(clamping: tiers.count))
        for tier in tiers {
            writer.u64(tier.budgetBytes)
            writer.bool(tier.mapped)
            writer.u64(tier.bytesUsed)
            writer.u64(tier.bytesFree)
        }
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        let count = Int(try reader.u8("tier count"))
        guard count <= Self.tiersMax else { throw TransportError(.malformed, "\(Self.wireName): \(count) tiers pass \(Self.tiersMax)") }
        tiers = []
        for _ in 0..<count {
            tiers.append(
                StorageTierInfo(
                    budgetBytes: try reader.u64("tier budget"), mapped: try reader.bool("tier mapped"), bytesUsed: try reader.u64("tier bytes used"),
                    bytesFree: try reader.u64("tier bytes free")))
        }
    }
}

/// Asks for, renews or gives back a database's lease. `epoch` is 0 for an acquire; `owner`
/// names the asking process for messages ("compute pid 4242 on host").
public struct StorageLease: WireMessage {
    public static let wireName = "storage lease request"
    public var database: String
    public var owner: String
    public var epoch: UInt64
    public var ttlMillis: UInt32

    public init(database: String, owner: String, epoch: UInt64, ttlMillis: UInt32) {
        self.database = database
        self.owner = owner
        self.epoch = epoch
        self.ttlMillis = ttlMillis
    }

    public func encode(into writer: inout WireWriter) {
        writer.string(database)
        writer.string(owner)
        writer.u64(epoch)
        writer.u32(ttlMillis)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        database = try reader.string("database")
        owner = try reader.string("owner")
        epoch = try reader.u64("epoch")
        ttlMillis = try reader.u32("ttl")
    }
}

/// A granted or renewed lease: its epoch and how long it lasts without a renewal.
public struct StorageLeaseReply: WireMessage {
    public static let wireName = "storage lease reply"
    public var epoch: UInt64
    public var ttlMillis: UInt32

    public init(epoch: UInt64, ttlMillis: UInt32) {
        self.epoch = epoch
        self.ttlMillis = ttlMillis
    }

    public func encode(into writer: inout WireWriter) {
        writer.u64(epoch)
        writer.u32(ttlMillis)
    }

    public init(from reader: inout WireReader) throws(TransportError) {
        epoch = try reader.u64("epoch")
        ttlMillis = try reader.u32("ttl")
    }
}
