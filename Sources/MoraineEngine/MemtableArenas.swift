// Memtables kept outside this process: in arenas of a memory node's region, granted one memtable
// at a time. With a provider set (`Options.memtableArenas`) and `pmem` durability, the region is
// the log: each memtable is a skiplist written in place in its arena and persisted per write
// group (MemTable+Region.swift), no WAL is written, and an open re-attaches the arenas the last
// owner left instead of replaying anything. An arena goes back only once the manifest edit that
// flushed its memtable is durable.
//
// Implemented by the memory node's client (MoraineMemory); the engine only sees this protocol.
import MoraineMemtable

/// An arena granted to one memtable.
public struct MemtableArenaGrant: Sendable {
    public let arena: MemTableRegionArena
    /// Its index in the region, for giving it back.
    public let index: Int
    /// The memtable's log number (the arena's tag).
    public let logNumber: UInt64

    public init(arena: MemTableRegionArena, index: Int, logNumber: UInt64) {
        self.arena = arena
        self.index = index
        self.logNumber = logNumber
    }
}

/// Grants and takes back the arenas of one database's memtables. Thread-safe.
public protocol MemtableArenaProvider: AnyObject, Sendable {
    /// Takes over the arenas earlier owners of `database` left (they are fenced from then on),
    /// after this owner's lease is held. Called once per open.
    /// - Throws: `fenced` when a newer owner exists, `unavailable` when the node cannot be reached.
    func adopt(database: String) throws -> [MemtableArenaGrant]
    /// The arenas `database` holds, for a reader that owns nothing (a read-only open): no epoch
    /// changes, nothing is fenced.
    func list(database: String) throws -> [MemtableArenaGrant]
    /// A fresh arena for the memtable of `logNumber`.
    /// - Throws: `busy` when every arena holds an unflushed memtable (wait for a flush),
    ///   `unavailable` when the node cannot be reached, `fenced` for a superseded owner.
    func allocate(database: String, logNumber: UInt64) throws -> MemtableArenaGrant
    /// Gives an arena back (its memtable is flushed and the manifest says so).
    func release(database: String, _ grant: MemtableArenaGrant) throws
    /// Bytes of one arena, its header included.
    var arenaBytes: Int { get }
    /// Where the arenas are, for log lines.
    var description: String { get }
}
