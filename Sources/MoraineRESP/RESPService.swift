// The Redis commands Moraine answers, over one `Database`: strings (GET, SET with NX, XX and GET,
// DEL, EXISTS, MGET, MSET, INCR and friends), SCAN, DBSIZE, INFO, and the connection commands
// clients send (PING, ECHO, AUTH, SELECT 0, CLIENT, COMMAND, HELLO 2, CONFIG GET, QUIT). Keys have
// no TTL: EX, PX and friends are refused with an error saying so. Errors keep Redis's wording
// where clients match on it (NOAUTH, WRONGPASS, "wrong number of arguments", "value is not an
// integer or out of range"); an error from the engine becomes `-ERR` with its message, and the
// connection goes on.
//
// Read-modify-write commands (INCR, SET NX/XX/GET, DEL's count) are atomic: every command that
// writes holds the locks of its keys' stripes (taken in stripe order, so two commands never wait
// on each other in a cycle), so no write slips between a read and the write that depends on it.
//
// Thread-safety: `execute` may run on any thread, for many sessions at once; a session's commands
// run one batch at a time (the server sees to it).
import Moraine
import MoraineSystem
import Synchronization

/// One client connection's state.
public final class RESPSession: @unchecked Sendable {
    public let id: UInt64
    public let address: String
    let openedNanos = monotonicNanos()
    var authenticated: Bool
    var name = ""
    var lastCommand = "NULL"
    var lastActiveNanos = monotonicNanos()
    /// Set by QUIT (and a successful SHUTDOWN): close once the replies are written.
    public internal(set) var closeAfterReply = false

    init(id: UInt64, address: String, authenticated: Bool) {
        self.id = id
        self.address = address
        self.authenticated = authenticated
    }
}

/// Executes Redis commands against a database.
public final class RESPService: Sendable {
    public struct Settings: Sendable {
        /// AUTH's password; nil: no AUTH needed.
        public var password: String? = nil
        /// Whether FLUSHDB and FLUSHALL may delete every key.
        public var flushEnabled = false
        /// The most connections at once.
        public var clientsMax = 10_000

        public init() {}
    }

    let database: Database
    public let settings: Settings
    /// Asked to stop the server (SHUTDOWN).
    let shutdown: @Sendable () -> Void
    private let stripes: [ConditionLock]
    private let sessions = Mutex<[UInt64: RESPSession]>([:])
    private let nextSession = Atomic<UInt64>(1)
    private let cursors = Mutex<CursorTable>(CursorTable())
    private let commandsProcessed = Atomic<Int>(0)
    private let connectionsReceived = Atomic<Int>(0)
    private let startedNanos = monotonicNanos()
    /// The port the server bound (INFO's tcp_port).
    let boundPort = Atomic<Int>(0)

    public init(database: Database, settings: Settings = Settings(), shutdown: @escaping @Sendable () -> Void = {}) {
        self.database = database
        self.settings = settings
        self.shutdown = shutdown
        stripes = (0..<256).map { _ in ConditionLock() }
    }

    // MARK: Sessions

    /// A new session, or nil when `clientsMax` sessions are open.
    public func open(address: String) -> RESPSession? {
        connectionsReceived.add(1, ordering: .relaxed)
        let session = RESPSession(
            id: nextSession.wrappingAdd(1, ordering: .relaxed).oldValue, address: address, authenticated: settings.password == nil)
        let admitted = sessions.withLock { sessions -> Bool in
            guard sessions.count < settings.clientsMax else { return false }
            sessions[session.id] = session
            return true
        }
        return admitted ? session : nil
    }

    public func close(_ session: RESPSession) { _ = sessions.withLock { $0.removeValue(forKey: session.id) } }

    public var connectedClients: Int { sessions.withLock { $0.count } }

    // MARK: Executing

    /// Runs `commands` in order for `session` and returns their replies' bytes. A run of plain
    /// SETs (a pipeline's) is written as one batch, and a run of GETs read with one multiGet:
    /// the same replies, at a fraction of the cost (one group commit, one batched read).
    public func execute(_ commands: [[[UInt8]]], session: RESPSession) -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        while index < commands.count {
            let run = session.authenticated ? Self.run(in: commands, from: index) : nil
            if let run, run.count > 1 {
                for reply in execute(run.kind, Array(commands[index..<index + run.count]), session: session) { reply.encode(into: &out) }
                index += run.count
                continue
            }
            execute(commands[index], session: session).encode(into: &out)
            index += 1
            if session.closeAfterReply { break }
        }
        return out
    }

    enum RunKind { case set, get }

    /// Whether every command of `commands` only reads (GET, MGET, EXISTS, PING, ECHO).
    static func readsOnly(_ commands: [[[UInt8]]]) -> Bool {
        commands.allSatisfy { command in
            guard let name = command.first, name.count <= 6 else { return false }
            let lower = String(decoding: name.map { $0 | 0x20 }, as: UTF8.self)
            return lower == "get" || lower == "mget" || lower == "exists" || lower == "ping" || lower == "echo"
        }
    }

    /// The run of plain SETs or GETs starting at `index`, if any.
    static func run(in commands: [[[UInt8]]], from index: Int) -> (kind: RunKind, count: Int)? {
        func kind(_ command: [[UInt8]]) -> RunKind? {
            guard let name = command.first, name.count == 3 else { return nil }
            let lower = name.map { $0 | 0x20 }
            if command.count == 3 && lower == Array("set".utf8) { return .set }
            if command.count == 2 && lower == Array("get".utf8) { return .get }
            return nil
        }
        guard let first = kind(commands[index]) else { return nil }
        var end = index + 1
        while end < commands.count && kind(commands[end]) == first { end += 1 }
        return (first, end - index)
    }

    /// A run of plain SETs as one write batch, or of GETs as one multiGet.
    private func execute(_ kind: RunKind, _ commands: [[[UInt8]]], session: RESPSession) -> [RESPReply] {
        commandsProcessed.add(commands.count, ordering: .relaxed)
        session.lastCommand = kind == .set ? "set" : "get"
        session.lastActiveNanos = monotonicNanos()
        do {
            switch kind {
            case .set:
                try locking(commands.map { $0[1] }) {
                    var batch = WriteBatch()
                    for command in commands { batch.put(command[1], command[2]) }
                    try database.write(batch)
                }
                return Array(repeating: .ok, count: commands.count)
            case .get:
                return try database.multiGet(commands.map { $0[1] }).map { .bulk($0) }
            }
        } catch {
            // One command's error (an oversized key, say) must not answer for the others: run
            // them one by one, each with its own reply.
            return commands.map { execute($0, session: session) }
        }
    }

    /// Runs one command.
    public func execute(_ arguments: [[UInt8]], session: RESPSession) -> RESPReply {
        guard let first = arguments.first else { return .error("ERR empty command") }
        let name = String(decoding: first, as: UTF8.self).lowercased()
        commandsProcessed.add(1, ordering: .relaxed)
        session.lastCommand = name
        session.lastActiveNanos = monotonicNanos()
        if !session.authenticated && !["auth", "quit", "hello"].contains(name) {
            return .error("NOAUTH Authentication required.")
        }
        guard let command = Self.commands[name] else {
            let shown = arguments.dropFirst().prefix(8).map { "'\(String(decoding: $0.prefix(128), as: UTF8.self))' " }.joined()
            return .error("ERR unknown command '\(String(decoding: first.prefix(128), as: UTF8.self))', with args beginning with: \(shown)")
        }
        guard command.arity >= 0 ? arguments.count == command.arity : arguments.count >= -command.arity else {
            return .error("ERR wrong number of arguments for '\(name)' command")
        }
        do {
            return try command.run(self, Array(arguments.dropFirst()), session)
        } catch let error as MoraineError {
            return .error("ERR \(error.message)")
        } catch let error as RESPCommandError {
            return .error(error.message)
        } catch {
            return .error("ERR \(error)")
        }
    }

    /// Runs `body` holding the locks of every key's stripe.
    func locking<T>(_ keys: [[UInt8]], _ body: () throws -> T) rethrows -> T {
        let indices = Set(keys.map { Self.stripe(of: $0) }).sorted()
        return try lockAll(indices[...], body)
    }

    private func lockAll<T>(_ indices: ArraySlice<Int>, _ body: () throws -> T) rethrows -> T {
        guard let first = indices.first else { return try body() }
        return try stripes[first].withLock { try lockAll(indices.dropFirst(), body) }
    }

    private static func stripe(of key: [UInt8]) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in key { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash & 255)
    }

    // MARK: What INFO and CLIENT LIST read

    var uptimeSeconds: Int { Int((monotonicNanos() - startedNanos) / 1_000_000_000) }
    var totalCommands: Int { commandsProcessed.load(ordering: .relaxed) }
    var totalConnections: Int { connectionsReceived.load(ordering: .relaxed) }
    var allSessions: [RESPSession] { sessions.withLock { $0.values.sorted { $0.id < $1.id } } }

    /// SCAN's cursor `number`'s position (nil: cursor 0, the start), or nil and false for a
    /// cursor this server never handed out (or has forgotten).
    func cursorPosition(_ number: UInt64) -> (position: [UInt8]?, known: Bool) {
        if number == 0 { return (nil, true) }
        guard let position = cursors.withLock({ $0.position(of: number) }) else { return (nil, false) }
        return (position, true)
    }

    func newCursor(after key: [UInt8]) -> UInt64 { cursors.withLock { $0.add(key) } }
}

/// An error reply a command chose (with its Redis prefix, e.g. "ERR …" or "WRONGPASS …").
struct RESPCommandError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// SCAN cursors: a number per position handed out (the last key returned), the oldest forgotten
/// past `capacity`. A position is a key, so a cursor stays valid across flushes and compactions.
struct CursorTable {
    static let capacity = 100_000
    private var positions: [UInt64: [UInt8]] = [:]
    private var order: [UInt64] = []
    private var orderHead = 0
    private var next: UInt64 = 1

    mutating func add(_ key: [UInt8]) -> UInt64 {
        let number = next
        next += 1
        positions[number] = key
        order.append(number)
        if positions.count > Self.capacity {
            positions[order[orderHead]] = nil
            orderHead += 1
            if orderHead > 4096 {
                order.removeFirst(orderHead)
                orderHead = 0
            }
        }
        return number
    }

    func position(of number: UInt64) -> [UInt8]? { positions[number] }
}
