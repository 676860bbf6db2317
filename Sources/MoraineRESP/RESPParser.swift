// RESP2 requests, as redis-cli, redis-benchmark and client libraries send them: a multibulk
// (`*N\r\n` then N bulk strings `$LEN\r\nBYTES\r\n`) or an inline command (one line of words, as
// typed into telnet). The parser takes whatever bytes have arrived and returns the whole commands
// among them, leaving a partial one for the next call. Every count and length is checked against
// `RESPLimits` before anything is allocated for it, so a client cannot make the server hold more
// than one bounded request; a request that breaks the protocol is an error the connection must
// close on (as Redis does), since the rest of its bytes cannot be framed.
//
// Value type; one per connection.

/// Bounds on what one request may hold.
public struct RESPLimits: Sendable {
    /// Arguments in one command (Redis: 1,048,576).
    public var argumentsMax = 1 << 20
    /// Bytes in one bulk string (Redis's proto-max-bulk-len is 512 MiB; Moraine's values are
    /// held whole in memory, so less).
    public var bulkBytesMax = 64 << 20
    /// Bytes of one inline command line (Redis: 64 KiB).
    public var inlineBytesMax = 64 << 10
    /// Bytes of one whole command, every argument together.
    public var requestBytesMax = 256 << 20

    public init() {}
}

/// Why a request cannot be framed; the connection closes after the error is sent.
public struct RESPProtocolError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { "Protocol error: \(message)" }
}

/// Frames RESP2 requests out of the bytes a connection receives.
public struct RESPParser {
    public let limits: RESPLimits
    /// Bytes the pending command needs at least before another attempt can finish it.
    private var needBytes = 0

    public init(limits: RESPLimits = RESPLimits()) { self.limits = limits }

    /// Parses the whole commands at the start of `bytes`.
    /// - Returns: the commands (each a list of arguments) and how many bytes they took; the
    ///   rest is a partial command to keep for the next call.
    /// - Throws: `RESPProtocolError` for bytes that break the protocol or a limit.
    public mutating func parse(_ bytes: UnsafeRawBufferPointer) throws(RESPProtocolError) -> (commands: [[[UInt8]]], consumed: Int) {
        var commands: [[[UInt8]]] = []
        var offset = 0
        if bytes.count < needBytes { return (commands, 0) }
        needBytes = 0
        while offset < bytes.count {
            let outcome = bytes[offset] == UInt8(ascii: "*") ? try multibulk(bytes, from: offset) : try inline(bytes, from: offset)
            switch outcome {
            case .command(let arguments, let end):
                if !arguments.isEmpty { commands.append(arguments) }
                offset = end
            case .needMore(let total):
                needBytes = total - offset
                return (commands, offset)
            }
        }
        return (commands, offset)
    }

    /// The names clients send most, kept once: a command's name then costs no allocation.
    private static let commonNames: [[UInt8]] = [
        "GET", "SET", "get", "set", "MGET", "MSET", "mget", "mset", "INCR", "incr", "DEL", "del", "EXISTS", "exists", "PING", "ping",
    ].map { Array($0.utf8) }

    /// `bytes` as a command name: a shared copy when it is a common one.
    private static func commandName(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        if bytes.count <= 6 {
            for name in commonNames where name.count == bytes.count && name.withUnsafeBytes({ $0.elementsEqual(bytes) }) { return name }
        }
        return Array(bytes)
    }

    private enum Outcome {
        case command([[UInt8]], end: Int)
        /// Incomplete: the command needs at least this many bytes from the buffer's start.
        case needMore(Int)
    }

    /// The line starting at `offset`, ending before its CRLF; nil when no CRLF has arrived within
    /// `limit` bytes.
    /// - Throws: when `limit` bytes came without a line end.
    private func line(_ bytes: UnsafeRawBufferPointer, from offset: Int, limit: Int, what: String) throws(RESPProtocolError) -> Range<Int>? {
        var index = offset
        let stop = min(bytes.count, offset + limit + 2)
        while index + 1 < stop {
            if bytes[index] == 13 && bytes[index + 1] == 10 { return offset..<index }
            index += 1
        }
        if stop - offset >= limit + 2 { throw RESPProtocolError(message: "too big \(what)") }
        return nil
    }

    /// A decimal integer (with an optional minus) filling `range`.
    private func integer(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, range.count <= 19 else { return nil }
        var index = range.lowerBound
        var negative = false
        if bytes[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
            guard index < range.upperBound else { return nil }
        }
        var value = 0
        while index < range.upperBound {
            let digit = Int(bytes[index]) - 48
            guard digit >= 0 && digit <= 9 else { return nil }
            value = value * 10 + digit
            index += 1
        }
        return negative ? -value : value
    }

    private func multibulk(_ bytes: UnsafeRawBufferPointer, from start: Int) throws(RESPProtocolError) -> Outcome {
        guard let header = try line(bytes, from: start + 1, limit: 32, what: "multibulk count") else { return .needMore(start + 3) }
        guard let count = integer(bytes, header), count <= limits.argumentsMax else {
            throw RESPProtocolError(message: "invalid multibulk length")
        }
        var offset = header.upperBound + 2
        if count <= 0 { return .command([], end: offset) }
        var arguments: [[UInt8]] = []
        arguments.reserveCapacity(min(count, 1024))
        var total = 0
        for _ in 0..<count {
            guard offset < bytes.count else { return .needMore(offset + 1) }
            guard bytes[offset] == UInt8(ascii: "$") else {
                throw RESPProtocolError(message: "expected '$', got '\(Character(Unicode.Scalar(bytes[offset])))'")
            }
            guard let lengthLine = try line(bytes, from: offset + 1, limit: 32, what: "bulk length") else { return .needMore(offset + 3) }
            guard let length = integer(bytes, lengthLine), length >= 0, length <= limits.bulkBytesMax else {
                throw RESPProtocolError(message: "invalid bulk length")
            }
            total += length
            guard total <= limits.requestBytesMax else { throw RESPProtocolError(message: "request larger than \(limits.requestBytesMax) bytes") }
            let body = lengthLine.upperBound + 2
            guard body + length + 2 <= bytes.count else { return .needMore(body + length + 2) }
            guard bytes[body + length] == 13 && bytes[body + length + 1] == 10 else {
                throw RESPProtocolError(message: "bulk string not followed by CRLF")
            }
            let argument = UnsafeRawBufferPointer(rebasing: bytes[body..<body + length])
            arguments.append(arguments.isEmpty ? Self.commandName(argument) : Array(argument))
            offset = body + length + 2
        }
        return .command(arguments, end: offset)
    }

    /// An inline command: words separated by spaces, double quotes grouping (with \" and \\
    /// escapes inside).
    private func inline(_ bytes: UnsafeRawBufferPointer, from start: Int) throws(RESPProtocolError) -> Outcome {
        var end = start
        let stop = min(bytes.count, start + limits.inlineBytesMax + 1)
        while end < stop && bytes[end] != 10 { end += 1 }
        if end == stop {
            if stop - start > limits.inlineBytesMax { throw RESPProtocolError(message: "too big inline request") }
            return .needMore(end + 1)
        }
        var lineEnd = end
        if lineEnd > start && bytes[lineEnd - 1] == 13 { lineEnd -= 1 }
        var arguments: [[UInt8]] = []
        var current: [UInt8] = []
        var inWord = false
        var quoted = false
        var index = start
        while index < lineEnd {
            let byte = bytes[index]
            if quoted {
                if byte == UInt8(ascii: "\\") && index + 1 < lineEnd {
                    index += 1
                    current.append(bytes[index])
                } else if byte == UInt8(ascii: "\"") {
                    quoted = false
                    guard index + 1 == lineEnd || bytes[index + 1] == 32 else {
                        throw RESPProtocolError(message: "unbalanced quotes in request")
                    }
                } else {
                    current.append(byte)
                }
            } else if byte == 32 || byte == 9 {
                if inWord {
                    arguments.append(current)
                    current = []
                    inWord = false
                }
            } else if byte == UInt8(ascii: "\"") && !inWord {
                quoted = true
                inWord = true
            } else {
                current.append(byte)
                inWord = true
            }
            index += 1
        }
        if quoted { throw RESPProtocolError(message: "unbalanced quotes in request") }
        if inWord { arguments.append(current) }
        guard arguments.count <= limits.argumentsMax else { throw RESPProtocolError(message: "invalid multibulk length") }
        return .command(arguments, end: end + 1)
    }
}

/// A reply, encoded in RESP2.
public enum RESPReply: Equatable, Sendable {
    case simple(String)
    case error(String)
    case integer(Int)
    case bulk([UInt8]?)
    case array([RESPReply]?)

    public static let ok = RESPReply.simple("OK")
    public static let null = RESPReply.bulk(nil)

    /// Appends the reply's bytes to `out`.
    public func encode(into out: inout [UInt8]) {
        switch self {
        case .simple(let text):
            out.append(UInt8(ascii: "+"))
            out.append(contentsOf: Self.clean(text).utf8)
        case .error(let text):
            out.append(UInt8(ascii: "-"))
            out.append(contentsOf: Self.clean(text).utf8)
        case .integer(let value):
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: String(value).utf8)
        case .bulk(let bytes?):
            out.append(UInt8(ascii: "$"))
            out.append(contentsOf: String(bytes.count).utf8)
            out.append(13)
            out.append(10)
            out.append(contentsOf: bytes)
        case .bulk(nil):
            out.append(contentsOf: "$-1".utf8)
        case .array(let items?):
            out.append(UInt8(ascii: "*"))
            out.append(contentsOf: String(items.count).utf8)
            out.append(13)
            out.append(10)
            for item in items { item.encode(into: &out) }
            return
        case .array(nil):
            out.append(contentsOf: "*-1".utf8)
        }
        out.append(13)
        out.append(10)
    }

    /// A simple string or error may hold no line break.
    private static func clean(_ text: String) -> String {
        text.contains(where: { $0 == "\r" || $0 == "\n" }) ? text.map { $0 == "\r" || $0 == "\n" ? " " : String($0) }.joined() : text
    }

    public static func bulk(_ text: String) -> RESPReply { .bulk(Array(text.utf8)) }
}
