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
// A blind write (SET, MSET) holds its stripes shared: blind writes to one key are ordered by
// their write batches' sequences and need not wait for each other (with every SET taking its
// stripes alone, 50 pipelining clients spent most of their time waking each other), while a
// read-modify-write holds them exclusively and so never sees one land between its read and write.
//
// Thread-safety: `execute` may run on any thread, for many sessions at once; a session's commands
// run one batch at a time (the server sees to it).
import CoreMetrics
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
        /// Run a batch of plain writes (SET, MSET, INCR and friends, DEL, with reads among them)
        /// on its connection's event loop instead of the thread pool, unless the database says a
        /// write may wait (`Database.writesMayWait`: a memtable switch, a slowdown or stop). Worth
        /// it where a write is a local log append without fsync (`moraine serve`): the hop to
        /// the pool and back cost more than the write. Off: every write goes to the pool.
        public var writesOnEventLoop = false
        /// Run a batch of reads on its event loop only when memory answers it (the memtables and
        /// the block cache: `Database.multiGetFromMemory`, RocksDB's block-cache read tier); a
        /// batch that needs a file read goes to the thread pool. For a database whose files are
        /// remote (a compute node's, `serve --cluster`), where such a read is a round trip that
        /// would hold up every other connection of the loop. Off: reads always run on the loop.
        public var memoryOnlyReadsOnEventLoop = false
        /// Queue a batch of plain writes (SET, MSET) from its event loop to the engine's write
        /// helper thread, which applies it with whatever else is queued and completes the reply:
        /// the loop never waits for a log append. For a database whose log is remote (a compute
        /// node's, `serve --cluster`: every append a round trip). Other writes go to the pool.
        public var queueWritesFromEventLoop = false

        public init() {}
    }

    /// The database, once `resolve` found it (a compute node's database may not open at once:
    /// a role of its cluster can still be restarting).
    private let resolved = AtomicLazyReference<Database>()
    private let resolve: @Sendable () throws -> Database
    public let settings: Settings
    /// Asked to stop the server (SHUTDOWN).
    let shutdown: @Sendable () -> Void
    private let stripes: [SharedExclusiveLock]
    /// Commands run, per command, through swift-metrics (no-ops until a process bootstraps it).
    private let commandCounters: [String: CoreMetrics.Counter]
    private let sessions = Mutex<[UInt64: RESPSession]>([:])
    private let nextSession = Atomic<UInt64>(1)
    private let cursors = Mutex<CursorTable>(CursorTable())
    private let commandsProcessed = Atomic<Int>(0)
    private let connectionsReceived = Atomic<Int>(0)
    private let startedNanos = monotonicNanos()
    /// The port the server bound (INFO's tcp_port).
    let boundPort = Atomic<Int>(0)

    public init(database: Database, settings: Settings = Settings(), shutdown: @escaping @Sendable () -> Void = {}) {
        resolve = { database }
        self.settings = settings
        self.shutdown = shutdown
        stripes = (0..<Self.stripeCount).map { _ in SharedExclusiveLock() }
        commandCounters = Self.makeCommandCounters()
        _ = resolved.storeIfNil(database)
    }

    /// Serves the database `resolve` returns, asked again at each command until it answers: a
    /// command before then gets `-ERR` with what `resolve` threw (the compute node's front end,
    /// whose database opens once its cluster's roles answer).
    public init(resolving resolve: @escaping @Sendable () throws -> Database, settings: Settings = Settings(), shutdown: @escaping @Sendable () -> Void = {}) {
        self.resolve = resolve
        self.settings = settings
        self.shutdown = shutdown
        stripes = (0..<Self.stripeCount).map { _ in SharedExclusiveLock() }
        commandCounters = Self.makeCommandCounters()
    }

    /// Asks for the database now (a front end opens it at start when its cluster lets it);
    /// whether it answered. Commands ask again until it does.
    @discardableResult
    public func resolveNow() -> Bool { (try? database) != nil }

    /// The database served.
    /// - Throws: what `resolve` throws until it returns one.
    var database: Database {
        get throws {
            if let database = resolved.load() { return database }  // one atomic load once resolved
            return resolved.storeIfNil(try resolve())
        }
    }

    private static func makeCommandCounters() -> [String: CoreMetrics.Counter] {
        Dictionary(uniqueKeysWithValues: commands.keys.map { ($0, CoreMetrics.Counter(label: "moraine_resp_commands_total", dimensions: [("command", $0)])) })
    }

    /// The front end's own metrics (the database's come from its stats).
    public func metricSamples() -> [MetricSample] {
        [
            .gauge("moraine_resp_connected_clients", "Redis-protocol connections open", connectedClients),
            .counter("moraine_resp_connections_total", "Redis-protocol connections accepted", totalConnections),
            .counter("moraine_resp_commands_processed_total", "Redis commands run, every command", totalCommands),
        ]
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

    /// Runs `commands` in order for `session` and returns their replies' bytes. A pipeline's run
    /// of writes (SET, MSET, INCR and friends, DEL) is applied as one write batch, holding every
    /// key's stripe, its reads seeing the run's own earlier writes; a run of GETs is read with one
    /// multiGet. The replies are the same as one command at a time, at the cost of one group commit
    /// and one batched read.
    public func execute(_ commands: [[[UInt8]]], session: RESPSession) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + 128 * commands.count)  // most replies fit: no regrowth on the way
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

    enum RunKind { case writes, get }

    /// The commands a pipeline's runs are made of, told from their names' bytes (no string made
    /// per command: at 16 commands a batch, the names' strings were a tenth of a SET's time).
    enum Verb: CaseIterable {
        case get, set, mset, incr, decr, incrby, decrby, del, mget, exists, ping, echo

        /// The command's name in lower case (the metrics' label).
        var name: String {
            switch self {
            case .get: "get"
            case .set: "set"
            case .mset: "mset"
            case .incr: "incr"
            case .decr: "decr"
            case .incrby: "incrby"
            case .decrby: "decrby"
            case .del: "del"
            case .mget: "mget"
            case .exists: "exists"
            case .ping: "ping"
            case .echo: "echo"
            }
        }

        private static let byName: [(bytes: [UInt8], verb: Verb)] = allCases.map { (Array($0.name.utf8), $0) }

        /// The verb named by `name` (in any case), or nil for any other command.
        init?(_ name: [UInt8]) {
            guard name.count >= 3 && name.count <= 6 else { return nil }
            for (bytes, verb) in Self.byName where bytes.count == name.count {
                var equal = true
                for i in 0..<bytes.count where name[i] | 0x20 != bytes[i] {
                    equal = false
                    break
                }
                if equal {
                    self = verb
                    return
                }
            }
            return nil
        }

        /// Whether the command only reads.
        var reads: Bool { self == .get || self == .mget || self == .exists || self == .ping || self == .echo }

        /// What `command` (named by this verb) is to a run: a write the run can batch, a GET, or
        /// neither (a count of arguments the run does not handle; the command alone answers it).
        func runKind(_ command: [[UInt8]]) -> RunKind? {
            switch self {
            case .get: command.count == 2 ? .get : nil
            case .set: command.count == 3 ? .writes : nil
            case .mset: command.count >= 3 && command.count % 2 == 1 ? .writes : nil
            case .incr, .decr: command.count == 2 ? .writes : nil
            case .incrby, .decrby: command.count == 3 ? .writes : nil
            case .del: command.count >= 2 ? .writes : nil
            case .mget, .exists, .ping, .echo: nil
            }
        }

        /// Whether the command writes without reading (a plain SET, MSET).
        var blind: Bool { self == .set || self == .mset }
    }

    /// Runs a batch of reads (`readsOnly`) from memory: its replies' bytes, or nil when a key would
    /// need a file read, or a command is not a well-formed GET, MGET, EXISTS, PING or ECHO of an
    /// authenticated session (the batch then runs as usual, on the pool). One
    /// `multiGetFromMemory` serves every key of the batch, so all its reads see one moment.
    func executeFromMemory(_ commands: [[[UInt8]]], session: RESPSession) -> [UInt8]? {
        guard session.authenticated, let database = try? self.database else { return nil }
        var verbs: [Verb] = []
        verbs.reserveCapacity(commands.count)
        var keys: [[UInt8]] = []
        keys.reserveCapacity(commands.count)
        for command in commands {
            guard let verb = Verb(command[0]) else { return nil }
            switch verb {
            case .get where command.count == 2: keys.append(command[1])
            case .mget where command.count >= 2, .exists where command.count >= 2: keys.append(contentsOf: command.dropFirst())
            case .ping where command.count <= 2, .echo where command.count == 2: break
            default: return nil
            }
            verbs.append(verb)
        }
        // An error (a damaged block) is left for the usual path to report.
        guard let values = keys.isEmpty ? [] : try? database.multiGetFromMemory(keys) else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(64 + 128 * commands.count)
        var next = 0
        for (command, verb) in zip(commands, verbs) {
            switch verb {
            case .get:
                RESPReply.bulk(values[next]).encode(into: &out)
                next += 1
            case .mget:
                RESPReply.array(values[next..<next + command.count - 1].map { .bulk($0) }).encode(into: &out)
                next += command.count - 1
            case .exists:
                RESPReply.integer(values[next..<next + command.count - 1].count { $0 != nil }).encode(into: &out)
                next += command.count - 1
            default:
                execute(command, session: session).encode(into: &out)  // PING, ECHO (counted there)
            }
        }
        counted(verbs.filter { $0 != .ping && $0 != .echo })
        session.lastCommand = verbs.last?.name ?? session.lastCommand
        session.lastActiveNanos = monotonicNanos()
        return out
    }

    /// A batch of writes whose replies are known (its reads done under its stripes, which it
    /// still holds), waiting to be applied as one write batch.
    struct PreparedWrites {
        let batch: WriteBatch
        let replies: [RESPReply]
        let verbs: [Verb]
        let stripes: [Int]
        /// Whether the stripes are held shared (plain writes only) or exclusively.
        let shared: Bool
    }

    /// Prepares `commands` — when every one is a write a run can batch (SET key value, MSET,
    /// INCR and friends, DEL) of an authenticated session — as one write batch: takes the keys'
    /// stripes (shared for plain writes, else exclusively), reads what the commands read, and
    /// computes their replies. Nil when the batch is not one of writes only (nothing taken).
    /// `apply` must follow, and releases the stripes.
    func prepareWrites(_ commands: [[[UInt8]]], session: RESPSession) -> PreparedWrites? {
        guard session.authenticated, let database = try? self.database else { return nil }
        var verbs: [Verb] = []
        verbs.reserveCapacity(commands.count)
        for command in commands {
            guard let verb = Verb(command[0]), verb.runKind(command) == .writes else { return nil }
            verbs.append(verb)
        }
        let (keys, blind) = Self.keys(of: commands, verbs)
        let stripes = Self.stripes(of: keys)
        for index in stripes { if blind { self.stripes[index].lockShared() } else { self.stripes[index].lockExclusive() } }
        var run = WriteRun(database: database, reads: !blind)
        var replies: [RESPReply] = []
        replies.reserveCapacity(commands.count)
        for (command, verb) in zip(commands, verbs) { replies.append(run.apply(command, verb)) }
        session.lastCommand = verbs.last?.name ?? session.lastCommand
        session.lastActiveNanos = monotonicNanos()
        return PreparedWrites(batch: run.batch, replies: replies, verbs: verbs, stripes: stripes, shared: blind)
    }

    /// How a batch of writes runs from its event loop: nil when it does not (the pool runs it),
    /// true when the loop prepares it and may lead its group commit (`writesOnEventLoop`), false
    /// when the loop prepares it and queues it to the engine's write helper
    /// (`queueWritesFromEventLoop`: plain writes only).
    func writesFromEventLoop(_ commands: [[[UInt8]]]) -> Bool? {
        if settings.writesOnEventLoop { return runsOnEventLoop(commands) ? true : nil }
        guard settings.queueWritesFromEventLoop, !commands.isEmpty else { return nil }
        let plain = commands.allSatisfy { command in
            guard let verb = Verb(command[0]) else { return false }
            return verb.blind && verb.runKind(command) == .writes
        }
        return plain ? false : nil
    }

    /// Applies prepared writes without waiting for another thread's group commit
    /// (`Database.write(_:options:lead:completion:)`; `lead` false: the engine's write helper
    /// applies them), then releases their stripes: `completion` gets
    /// the replies' bytes, or nil when the write failed — nothing of it was written, and the batch
    /// should run the usual way, each command answering for itself (an oversized key, say).
    /// `completion` may run on another thread (the one that led the group commit).
    func apply(_ writes: PreparedWrites, lead: Bool = true, completion: @escaping @Sendable ([UInt8]?) -> Void) {
        let finish: @Sendable (MoraineError?) -> Void = { [self] error in
            for index in writes.stripes { if writes.shared { stripes[index].unlockShared() } else { stripes[index].unlockExclusive() } }
            guard error == nil else { return completion(nil) }
            counted(writes.verbs)
            var out: [UInt8] = []
            out.reserveCapacity(16 * writes.replies.count)
            for reply in writes.replies { reply.encode(into: &out) }
            completion(out)
        }
        guard !writes.batch.isEmpty else { return finish(nil) }  // nothing to write (DEL of absent keys, a failed INCR)
        guard let database = try? self.database else { return finish(MoraineError(.unavailable, "database not open")) }
        database.write(writes.batch, lead: lead, completion: finish)
    }

    /// Whether `commands` may run on an event loop: reads only, or (with `writesOnEventLoop`,
    /// while the database expects no wait) plain writes and reads.
    func runsOnEventLoop(_ commands: [[[UInt8]]]) -> Bool {
        if Self.readsOnly(commands) { return true }
        guard settings.writesOnEventLoop, let database = try? self.database, !database.writesMayWait else { return false }
        return commands.allSatisfy { command in
            guard let verb = command.first.flatMap(Verb.init) else { return false }
            return verb.reads || verb.runKind(command) != nil
        }
    }

    /// Whether every command of `commands` only reads (GET, MGET, EXISTS, PING, ECHO).
    static func readsOnly(_ commands: [[[UInt8]]]) -> Bool {
        commands.allSatisfy { command in command.first.flatMap(Verb.init)?.reads ?? false }
    }

    /// What a command is to a run: a write the run can batch, a GET, or neither.
    static func runKind(_ command: [[UInt8]]) -> RunKind? {
        command.first.flatMap(Verb.init)?.runKind(command)
    }

    /// The run of batchable writes, or of GETs, starting at `index`, if any.
    static func run(in commands: [[[UInt8]]], from index: Int) -> (kind: RunKind, count: Int)? {
        guard let first = runKind(commands[index]) else { return nil }
        var end = index + 1
        while end < commands.count && runKind(commands[end]) == first { end += 1 }
        return (first, end - index)
    }

    /// A run of writes as one write batch, or of GETs as one multiGet.
    private func execute(_ kind: RunKind, _ commands: [[[UInt8]]], session: RESPSession) -> [RESPReply] {
        let verbs = commands.map { Verb($0[0])! }  // a run holds only commands with a verb
        session.lastCommand = verbs.last!.name
        session.lastActiveNanos = monotonicNanos()
        do {
            switch kind {
            case .writes:
                let (keys, blind) = Self.keys(of: commands, verbs)
                let database = try self.database
                let replies = try locking(keys, shared: blind) {
                    var run = WriteRun(database: database, reads: !blind)
                    var replies: [RESPReply] = []
                    replies.reserveCapacity(commands.count)
                    for (command, verb) in zip(commands, verbs) { replies.append(run.apply(command, verb)) }
                    if !run.batch.isEmpty { try database.write(run.batch) }
                    return replies
                }
                counted(verbs)
                return replies
            case .get:
                let replies = try database.multiGet(commands.map { $0[1] }).map { RESPReply.bulk($0) }
                counted(verbs)
                return replies
            }
        } catch {
            // One command's error (an oversized key, say) must not answer for the others: run
            // them one by one (nothing of the batch was written), each with its own reply.
            return commands.map { execute($0, session: session) }
        }
    }

    /// The keys a run of writes touches, and whether every command of it is a plain write.
    static func keys(of commands: [[[UInt8]]], _ verbs: [Verb]) -> (keys: [[UInt8]], blind: Bool) {
        var keys: [[UInt8]] = []
        keys.reserveCapacity(commands.count)
        var blind = true
        for (command, verb) in zip(commands, verbs) {
            switch verb {
            case .mset: for i in stride(from: 1, to: command.count, by: 2) { keys.append(command[i]) }
            case .del: keys.append(contentsOf: command.dropFirst())
            default: keys.append(command[1])
            }
            blind = blind && verb.blind
        }
        return (keys, blind)
    }

    /// Counts a run that succeeded (one that failed runs again command by command, counted then).
    private func counted(_ verbs: [Verb]) {
        commandsProcessed.add(verbs.count, ordering: .relaxed)
        var index = 0
        while index < verbs.count {  // one increment per stretch of one verb
            var end = index + 1
            while end < verbs.count && verbs[end] == verbs[index] { end += 1 }
            commandCounters[verbs[index].name]?.increment(by: end - index)
            index = end
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
        commandCounters[name]?.increment()
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

    /// Key stripes (a power of two).
    static let stripeCount = 1024

    /// Runs `body` holding the locks of every key's stripe: shared for blind writes (`shared`),
    /// else exclusively.
    func locking<T>(_ keys: [[UInt8]], shared: Bool = false, _ body: () throws -> T) rethrows -> T {
        var indices = keys.map { Self.stripe(of: $0) }
        indices.sort()
        var previous = -1
        for index in indices where index != previous {
            if shared { stripes[index].lockShared() } else { stripes[index].lockExclusive() }
            previous = index
        }
        defer {
            previous = -1
            for index in indices where index != previous {
                if shared { stripes[index].unlockShared() } else { stripes[index].unlockExclusive() }
                previous = index
            }
        }
        return try body()
    }

    /// The distinct stripes of `keys`, in order.
    private static func stripes(of keys: [[UInt8]]) -> [Int] {
        var indices = keys.map { stripe(of: $0) }
        indices.sort()
        var previous = -1
        return indices.filter { index in
            defer { previous = index }
            return index != previous
        }
    }

    private static func stripe(of key: [UInt8]) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in key { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash & UInt32(stripeCount - 1))
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

/// A run of writes being gathered into one batch: each command's reply, computed against the
/// database as the run's earlier commands left it (`overlay`: a key's value, or nil once deleted).
/// Precondition: the caller holds every touched key's stripe.
struct WriteRun {
    let database: Database
    /// Whether any command of the run reads (without: no overlay is kept).
    let reads: Bool
    var batch = WriteBatch()
    var overlay: [[UInt8]: [UInt8]?] = [:]

    init(database: Database, reads: Bool = true) {
        self.database = database
        self.reads = reads
    }

    mutating func current(_ key: [UInt8]) throws -> [UInt8]? {
        if let value = overlay[key] { return value }
        return try database.get(key)
    }

    mutating func put(_ key: [UInt8], _ value: [UInt8]) {
        batch.put(key, value)
        if reads { overlay[key] = .some(value) }
    }

    /// One command's reply; a command that fails (a value that is not an integer) writes
    /// nothing and answers its error, as it would alone.
    mutating func apply(_ command: [[UInt8]], _ verb: RESPService.Verb) -> RESPReply {
        do {
            switch verb {
            case .set:
                put(command[1], command[2])
                return .ok
            case .mset:
                for i in stride(from: 1, to: command.count, by: 2) { put(command[i], command[i + 1]) }
                return .ok
            case .del:
                var existed = 0
                for key in Set(command.dropFirst()) where try current(key) != nil {
                    existed += 1
                    batch.delete(key)
                    overlay[key] = .some(nil)
                }
                return .integer(existed)
            case .incr, .decr, .incrby, .decrby:
                var amount = verb == .incr || verb == .incrby ? 1 : -1
                if command.count == 3 {
                    let given = try RESPService.integer(command[2])
                    if verb == .decrby && given == Int.min { throw RESPCommandError("ERR decrement would overflow") }
                    amount = verb == .incrby ? given : -given
                }
                let value = try current(command[1]).map { try RESPService.integer($0) } ?? 0
                let (sum, overflow) = value.addingReportingOverflow(amount)
                if overflow { throw RESPCommandError("ERR increment or decrement would overflow") }
                put(command[1], Array(String(sum).utf8))
                return .integer(sum)
            case .get, .mget, .exists, .ping, .echo:  // never in a run of writes
                return .error("ERR \(verb.name) in a run of writes")
            }
        } catch let error as RESPCommandError {
            return .error(error.message)
        } catch {
            return .error("ERR \(error)")
        }
    }
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
