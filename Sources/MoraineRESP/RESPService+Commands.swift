// The command table: each command's arity (Redis's convention: n exactly, -n at least n, the name
// counted), its one-line summary (for COMMAND DOCS, which redis-cli reads for its hints) and its
// code.
import Moraine
import MoraineSystem

extension RESPService {
    struct Command: Sendable {
        var arity: Int
        var group: String
        var summary: String
        var run: @Sendable (RESPService, [[UInt8]], RESPSession) throws -> RESPReply
    }

    static let commands: [String: Command] = [
        "ping": Command(arity: -1, group: "connection", summary: "Returns the server's liveliness response.") { _, args, _ in
            guard args.count <= 1 else { throw RESPCommandError("ERR wrong number of arguments for 'ping' command") }
            return args.first.map { .bulk($0) } ?? .simple("PONG")
        },
        "echo": Command(arity: 2, group: "connection", summary: "Returns the given string.") { _, args, _ in .bulk(args[0]) },
        "quit": Command(arity: -1, group: "connection", summary: "Closes the connection.") { _, _, session in
            session.closeAfterReply = true
            return .ok
        },
        "select": Command(arity: 2, group: "connection", summary: "Changes the selected database (only 0 exists).") { _, args, _ in
            guard args[0] == Array("0".utf8) else { throw RESPCommandError("ERR DB index is out of range") }
            return .ok
        },
        "auth": Command(arity: -2, group: "connection", summary: "Authenticates the connection.") { service, args, session in
            try service.auth(args, session)
        },
        "hello": Command(arity: -1, group: "connection", summary: "Handshakes with the server (RESP2 only).") { service, args, session in
            try service.hello(args, session)
        },
        "client": Command(arity: -2, group: "connection", summary: "CLIENT SETNAME, GETNAME, ID, LIST, SETINFO.") { service, args, session in
            try service.client(args, session)
        },
        "command": Command(arity: -1, group: "server", summary: "Returns information about commands (COMMAND, COUNT, DOCS).") { _, args, _ in
            try RESPService.command(args)
        },
        "config": Command(arity: -2, group: "server", summary: "CONFIG GET answers nothing: Moraine's options are not Redis's.") { _, args, _ in
            guard String(decoding: args[0], as: UTF8.self).lowercased() == "get" else {
                throw RESPCommandError("ERR CONFIG \(String(decoding: args[0].prefix(64), as: UTF8.self)) is not supported")
            }
            return .array([])
        },
        "get": Command(arity: 2, group: "string", summary: "Returns the string value of a key.") { service, args, _ in
            .bulk(try service.database.get(args[0]))
        },
        "set": Command(arity: -3, group: "string", summary: "Sets the string value of a key (NX, XX, GET; no TTL).") { service, args, _ in
            try service.set(args)
        },
        "del": Command(arity: -2, group: "generic", summary: "Deletes keys; returns how many existed.") { service, args, _ in
            try service.locking(args) {
                var batch = WriteBatch()
                var existed = 0
                for key in Set(args) where try service.database.get(key) != nil {
                    existed += 1
                    batch.delete(key)
                }
                if !batch.isEmpty { try service.database.write(consume batch) }
                return .integer(existed)
            }
        },
        "exists": Command(arity: -2, group: "generic", summary: "Counts the keys that exist (a key named twice counts twice).") {
            service, args, _ in
            .integer(try service.database.multiGet(args).count { $0 != nil })
        },
        "mget": Command(arity: -2, group: "string", summary: "Returns the values of keys.") { service, args, _ in
            .array(try service.database.multiGet(args).map { .bulk($0) })
        },
        "mset": Command(arity: -3, group: "string", summary: "Sets keys to values, atomically.") { service, args, _ in
            guard args.count % 2 == 0 else { throw RESPCommandError("ERR wrong number of arguments for 'mset' command") }
            let keys = stride(from: 0, to: args.count, by: 2).map { args[$0] }
            return try service.locking(keys, shared: true) {
                var batch = WriteBatch()
                for i in stride(from: 0, to: args.count, by: 2) { batch.put(args[i], args[i + 1]) }
                try service.database.write(consume batch)
                return .ok
            }
        },
        "incr": Command(arity: 2, group: "string", summary: "Adds 1 to a key's integer value.") { service, args, _ in
            try service.increment(args[0], by: 1)
        },
        "decr": Command(arity: 2, group: "string", summary: "Subtracts 1 from a key's integer value.") { service, args, _ in
            try service.increment(args[0], by: -1)
        },
        "incrby": Command(arity: 3, group: "string", summary: "Adds an integer to a key's integer value.") { service, args, _ in
            try service.increment(args[0], by: try RESPService.integer(args[1]))
        },
        "decrby": Command(arity: 3, group: "string", summary: "Subtracts an integer from a key's integer value.") { service, args, _ in
            let amount = try RESPService.integer(args[1])
            guard amount != Int.min else { throw RESPCommandError("ERR decrement would overflow") }
            return try service.increment(args[0], by: -amount)
        },
        "scan": Command(arity: -2, group: "generic", summary: "Iterates over keys (cursor, MATCH, COUNT).") { service, args, _ in
            try service.scan(args)
        },
        "dbsize": Command(arity: 1, group: "server", summary: "An estimate of the number of keys (Moraine counts versions not yet compacted).") {
            service, _, _ in .integer(try service.database.estimatedKeyCount())
        },
        "info": Command(arity: -1, group: "server", summary: "Server, clients, memory, stats, keyspace and moraine sections.") {
            service, args, _ in .bulk(service.info(sections: args.map { String(decoding: $0, as: UTF8.self).lowercased() }))
        },
        "flushdb": Command(arity: -1, group: "server", summary: "Deletes every key, when the server allows it.") { service, _, _ in
            try service.flushAll()
        },
        "flushall": Command(arity: -1, group: "server", summary: "Deletes every key, when the server allows it.") { service, _, _ in
            try service.flushAll()
        },
        "shutdown": Command(arity: -1, group: "server", summary: "Stops the server cleanly (the database is closed).") { service, _, session in
            session.closeAfterReply = true
            service.shutdown()
            return .ok
        },
    ]

    /// A decimal 64-bit integer argument.
    static func integer(_ bytes: [UInt8]) throws -> Int {
        guard !bytes.isEmpty, bytes.count <= 20, let value = Int(String(decoding: bytes, as: UTF8.self)) else {
            throw RESPCommandError("ERR value is not an integer or out of range")
        }
        return value
    }

    func set(_ args: [[UInt8]]) throws -> RESPReply {
        var onlyIfAbsent = false
        var onlyIfPresent = false
        var returnOld = false
        for option in args.dropFirst(2) {
            switch String(decoding: option, as: UTF8.self).uppercased() {
            case "NX": onlyIfAbsent = true
            case "XX": onlyIfPresent = true
            case "GET": returnOld = true
            case "EX", "PX", "EXAT", "PXAT", "KEEPTTL":
                throw RESPCommandError("ERR expiry (EX, PX, EXAT, PXAT, KEEPTTL) is not supported: Moraine keys have no TTL")
            default: throw RESPCommandError("ERR syntax error")
            }
        }
        if onlyIfAbsent && onlyIfPresent { throw RESPCommandError("ERR syntax error") }
        let key = args[0]
        if !onlyIfAbsent && !onlyIfPresent && !returnOld {
            try locking([key], shared: true) { try database.put(key, args[1]) }
            return .ok
        }
        return try locking([key]) {
            let old = try database.get(key)
            let write = onlyIfAbsent ? old == nil : onlyIfPresent ? old != nil : true
            if write { try database.put(key, args[1]) }
            if returnOld { return .bulk(old) }
            return write ? .ok : .null
        }
    }

    func increment(_ key: [UInt8], by amount: Int) throws -> RESPReply {
        try locking([key]) {
            let current = try database.get(key).map { try Self.integer($0) } ?? 0
            let (sum, overflow) = current.addingReportingOverflow(amount)
            if overflow { throw RESPCommandError("ERR increment or decrement would overflow") }
            try database.put(key, Array(String(sum).utf8))
            return .integer(sum)
        }
    }

    func auth(_ args: [[UInt8]], _ session: RESPSession) throws -> RESPReply {
        guard args.count <= 2 else { throw RESPCommandError("ERR syntax error") }
        guard let password = settings.password else {
            throw RESPCommandError(
                "ERR AUTH <password> called without any password configured for the default user. "
                    + "Are you sure your configuration is correct?")
        }
        let user = args.count == 2 ? String(decoding: args[0], as: UTF8.self) : "default"
        guard user == "default", Self.constantTimeEqual(args.last!, Array(password.utf8)) else {
            session.authenticated = false
            throw RESPCommandError("WRONGPASS invalid username-password pair or user is disabled.")
        }
        session.authenticated = true
        return .ok
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for i in 0..<max(a.count, b.count) { difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0) }
        return difference == 0
    }

    func hello(_ args: [[UInt8]], _ session: RESPSession) throws -> RESPReply {
        var index = 0
        if let version = args.first {
            guard String(decoding: version, as: UTF8.self) == "2" else {
                throw RESPCommandError("NOPROTO sorry, this protocol version is not supported")
            }
            index = 1
        }
        while index < args.count {
            switch String(decoding: args[index], as: UTF8.self).uppercased() {
            case "AUTH" where index + 2 < args.count:
                _ = try auth([args[index + 1], args[index + 2]], session)
                index += 3
            case "SETNAME" where index + 1 < args.count:
                session.name = String(decoding: args[index + 1], as: UTF8.self)
                index += 2
            default: throw RESPCommandError("ERR syntax error in HELLO option '\(String(decoding: args[index].prefix(64), as: UTF8.self))'")
            }
        }
        guard session.authenticated else { return .error("NOAUTH HELLO must be called with the client already authenticated") }
        return .array([
            .bulk("server"), .bulk("redis"), .bulk("version"), .bulk(Self.redisVersion), .bulk("proto"), .integer(2),
            .bulk("id"), .integer(Int(session.id)), .bulk("mode"), .bulk("standalone"), .bulk("role"), .bulk("master"),
            .bulk("modules"), .array([]),
        ])
    }

    /// The Redis version clients see: the command set Moraine's follows.
    static let redisVersion = "7.0.0"

    func client(_ args: [[UInt8]], _ session: RESPSession) throws -> RESPReply {
        switch String(decoding: args[0], as: UTF8.self).uppercased() {
        case "SETNAME":
            guard args.count == 2 else { throw RESPCommandError("ERR wrong number of arguments for 'client|setname' command") }
            guard !args[1].contains(where: { $0 <= 32 || $0 >= 127 }) else {
                throw RESPCommandError("ERR Client names cannot contain spaces, newlines or special characters.")
            }
            session.name = String(decoding: args[1], as: UTF8.self)
            return .ok
        case "GETNAME": return session.name.isEmpty ? .null : .bulk(session.name)
        case "ID": return .integer(Int(session.id))
        case "SETINFO": return .ok
        case "LIST":
            let now = monotonicNanos()
            let lines = allSessions.map { s in
                "id=\(s.id) addr=\(s.address) name=\(s.name) age=\((now - s.openedNanos) / 1_000_000_000) "
                    + "idle=\((now - s.lastActiveNanos) / 1_000_000_000) db=0 cmd=\(s.lastCommand)\n"
            }
            return .bulk(lines.joined())
        default:
            throw RESPCommandError("ERR unknown subcommand '\(String(decoding: args[0].prefix(64), as: UTF8.self))'. Try CLIENT HELP.")
        }
    }

    static func command(_ args: [[UInt8]]) throws -> RESPReply {
        let names = commands.keys.sorted()
        guard let sub = args.first.map({ String(decoding: $0, as: UTF8.self).uppercased() }) else {
            return .array(names.map { info($0) })
        }
        switch sub {
        case "COUNT": return .integer(commands.count)
        case "INFO":
            return .array(args.dropFirst().map { String(decoding: $0, as: UTF8.self).lowercased() }.map { commands[$0] == nil ? .array(nil) : info($0) })
        case "DOCS":
            let asked = args.count > 1 ? args.dropFirst().map { String(decoding: $0, as: UTF8.self).lowercased() } : names
            var reply: [RESPReply] = []
            for name in asked {
                guard let command = commands[name] else { continue }
                reply.append(.bulk(name))
                reply.append(
                    .array([
                        .bulk("summary"), .bulk(command.summary), .bulk("since"), .bulk("1.0.0"), .bulk("group"),
                        .bulk(command.group),
                    ]))
            }
            return .array(reply)
        default:
            throw RESPCommandError("ERR unknown subcommand '\(sub.prefix(64))'. Try COMMAND HELP.")
        }
    }

    /// COMMAND's entry for `name`: name, arity, flags, first key, last key, step.
    private static func info(_ name: String) -> RESPReply {
        let command = commands[name]!
        let keyed = ["get", "set", "del", "exists", "mget", "mset", "incr", "decr", "incrby", "decrby"].contains(name)
        let last = ["del", "exists", "mget"].contains(name) ? -1 : name == "mset" ? -1 : 1
        return .array([
            .bulk(name), .integer(command.arity), .array([]), .integer(keyed ? 1 : 0), .integer(keyed ? last : 0),
            .integer(keyed ? (name == "mset" ? 2 : 1) : 0),
        ])
    }

    func flushAll() throws -> RESPReply {
        guard settings.flushEnabled else {
            throw RESPCommandError("ERR FLUSHDB and FLUSHALL are disabled on this server (moraine serve --enable-flushdb allows them)")
        }
        let iterator = try database.makeIterator()
        try iterator.seekToFirst()
        var batch = WriteBatch()
        while iterator.isValid {
            batch.delete(iterator.key)
            if batch.count >= 1000 {
                try database.write(consume batch)
                batch = WriteBatch()
            }
            try iterator.next()
        }
        if !batch.isEmpty { try database.write(consume batch) }
        return .ok
    }
}
