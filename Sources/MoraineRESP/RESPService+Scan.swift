// SCAN and INFO. A SCAN cursor names a position — the last key handed out — kept by the server
// under a number (clients parse cursors as integers), so it stays valid across flushes and
// compactions: the next call seeks past that key in whatever the tree holds then. Keys written
// during a scan may or may not be seen; every key present for the whole scan is returned exactly
// once (keys come in order, so never twice). A cursor the server forgot (it keeps the newest
// 100,000, and none across restarts) is an error, not a silent restart.
import Moraine
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

extension RESPService {
    /// SCAN cursor [MATCH pattern] [COUNT count] [TYPE string].
    func scan(_ args: [[UInt8]]) throws -> RESPReply {
        guard let number = UInt64(String(decoding: args[0], as: UTF8.self)) else {
            throw RESPCommandError("ERR invalid cursor")
        }
        var pattern: [UInt8]? = nil
        var count = 10
        var index = 1
        while index < args.count {
            let option = String(decoding: args[index], as: UTF8.self).uppercased()
            guard index + 1 < args.count else { throw RESPCommandError("ERR syntax error") }
            switch option {
            case "MATCH": pattern = args[index + 1]
            case "COUNT":
                count = try Self.integer(args[index + 1])
                guard count >= 1 else { throw RESPCommandError("ERR syntax error") }
            case "TYPE":
                // Every key is a string.
                if String(decoding: args[index + 1], as: UTF8.self).lowercased() != "string" { return .array([.bulk("0"), .array([])]) }
            default: throw RESPCommandError("ERR syntax error")
            }
            index += 2
        }
        let (position, known) = cursorPosition(number)
        guard known else { throw RESPCommandError("ERR invalid cursor (this server does not know cursor \(number))") }
        let iterator = try database.makeIterator()
        if let position {
            try iterator.seek(position)
            if iterator.isValid && iterator.key == position { try iterator.next() }
        } else {
            try iterator.seekToFirst()
        }
        // COUNT bounds the keys looked at, as in Redis: a MATCH that rejects many returns fewer.
        var keys: [RESPReply] = []
        var looked = 0
        var last: [UInt8]? = nil
        while iterator.isValid && looked < min(count, 1_000_000) {
            let key = iterator.key
            if pattern.map({ Self.glob($0, matches: key) }) ?? true { keys.append(.bulk(key)) }
            last = key
            looked += 1
            try iterator.next()
        }
        let next: UInt64 = iterator.isValid ? newCursor(after: last!) : 0
        return .array([.bulk(String(next)), .array(keys)])
    }

    /// Redis's glob: `*`, `?`, `[abc]`, `[^a-z]`, and `\x` for a literal x.
    static func glob(_ pattern: [UInt8], matches string: [UInt8]) -> Bool {
        glob(pattern[...], string[...], depth: 0)
    }

    private static func glob(_ pattern: ArraySlice<UInt8>, _ string: ArraySlice<UInt8>, depth: Int) -> Bool {
        var p = pattern.startIndex
        var s = string.startIndex
        guard depth < 64 else { return false }  // a pattern of many stars cannot recurse without end
        while p < pattern.endIndex {
            switch pattern[p] {
            case UInt8(ascii: "*"):
                while p + 1 < pattern.endIndex && pattern[p + 1] == UInt8(ascii: "*") { p += 1 }
                if p + 1 == pattern.endIndex { return true }
                var from = s
                while from <= string.endIndex {
                    if glob(pattern[(p + 1)...], string[from...], depth: depth + 1) { return true }
                    from += 1
                }
                return false
            case UInt8(ascii: "?"):
                guard s < string.endIndex else { return false }
                s += 1
            case UInt8(ascii: "["):
                guard s < string.endIndex else { return false }
                var q = p + 1
                let negate = q < pattern.endIndex && pattern[q] == UInt8(ascii: "^")
                if negate { q += 1 }
                var matched = false
                while q < pattern.endIndex && pattern[q] != UInt8(ascii: "]") {
                    if pattern[q] == UInt8(ascii: "\\") && q + 1 < pattern.endIndex {
                        q += 1
                        if pattern[q] == string[s] { matched = true }
                    } else if q + 2 < pattern.endIndex && pattern[q + 1] == UInt8(ascii: "-") && pattern[q + 2] != UInt8(ascii: "]") {
                        let (low, high) = (min(pattern[q], pattern[q + 2]), max(pattern[q], pattern[q + 2]))
                        if string[s] >= low && string[s] <= high { matched = true }
                        q += 2
                    } else if pattern[q] == string[s] {
                        matched = true
                    }
                    q += 1
                }
                if negate { matched.toggle() }
                guard matched else { return false }
                p = min(q, pattern.endIndex - 1)
                s += 1
            case UInt8(ascii: "\\") where p + 1 < pattern.endIndex:
                p += 1
                guard s < string.endIndex, pattern[p] == string[s] else { return false }
                s += 1
            default:
                guard s < string.endIndex, pattern[p] == string[s] else { return false }
                s += 1
            }
            p += 1
        }
        return s == string.endIndex
    }

    /// INFO's text for `sections` (none, "all" or "everything": every section).
    func info(sections: [String]) -> String {
        let all = sections.isEmpty || sections.contains("all") || sections.contains("everything") || sections.contains("default")
        // Before the database answers, its sections show zeros.
        let database = try? self.database
        let stats = database?.stats() ?? EngineStats()
        var text = ""
        func section(_ name: String, _ lines: [(String, String)]) {
            guard all || sections.contains(name) else { return }
            if !text.isEmpty { text += "\r\n" }
            text += "# \(name.prefix(1).uppercased() + name.dropFirst())\r\n"
            for (key, value) in lines { text += "\(key):\(value)\r\n" }
        }
        section(
            "server",
            [
                ("redis_version", Self.redisVersion), ("redis_mode", "standalone"), ("server_name", "moraine"),
                ("process_id", String(getpid())), ("tcp_port", String(boundPort.load(ordering: .relaxed))), ("uptime_in_seconds", String(uptimeSeconds)),
            ])
        section("clients", [("connected_clients", String(connectedClients)), ("maxclients", String(settings.clientsMax))])
        section(
            "memory",
            [
                (
                    "used_memory",
                    String(stats.memtableBytes + stats.blockCacheUsageBytes + stats.rowCacheUsageBytes + stats.pinnedIndexAndFilterBytes)
                ),
                ("used_memory_rss", String(Self.residentBytes())), ("moraine_memtable_bytes", String(stats.memtableBytes)),
                ("moraine_block_cache_bytes", String(stats.blockCacheUsageBytes)), ("moraine_row_cache_bytes", String(stats.rowCacheUsageBytes)),
            ])
        section(
            "stats",
            [
                ("total_connections_received", String(totalConnections)), ("total_commands_processed", String(totalCommands)),
                ("keyspace_hits", String(stats.blockCacheHits)), ("keyspace_misses", String(stats.blockCacheMisses)),
            ])
        section("keyspace", [("db0", "keys=\(database?.estimatedKeyCount() ?? 0),expires=0,avg_ttl=0")])
        var shape: [(String, String)] = stats.levels.map { ("level\($0.level)", "files=\($0.fileCount),bytes=\($0.sizeBytes),score=\($0.score)") }
        shape += [
            ("flushes", String(stats.flushes)), ("compactions", String(stats.compactions)), ("writes", String(stats.writes)),
            ("wal_syncs", String(stats.walSyncs)), ("stall_micros", String(stats.stallMicros)),
            ("remote_compactions", String(stats.remoteCompactions)), ("remote_flushes", String(stats.remoteFlushes)),
        ]
        section("moraine", shape)
        return text
    }

    /// The process's resident set size (VmRSS), 0 when it cannot be read.
    static func residentBytes() -> Int {
        guard let file = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 128)
        guard fgets(&line, 128, file) != nil else { return 0 }
        let fields = String(cString: line).split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
