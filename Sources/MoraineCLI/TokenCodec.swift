// The shell's token encoding. Input: a token is printable ASCII without spaces, or `x:` and
// lowercase hex for arbitrary bytes. Output: bytes are printed as-is when non-empty, all in
// 33…126, not `-`, and not starting with `x:`; otherwise as `x:` and lowercase hex — so output
// can be compared byte for byte and read back as input.

enum TokenCodec {
    /// Decodes an input token. `-` is only special where a command says so (scan bounds).
    static func decode(_ token: Substring) throws -> [UInt8] {
        if token.hasPrefix("x:") {
            let hex = Array(token.dropFirst(2).utf8)
            guard hex.count % 2 == 0 else { throw ShellError("odd-length hex in token '\(token)'") }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(hex.count / 2)
            var i = 0
            while i < hex.count {
                guard let high = nibble(hex[i]), let low = nibble(hex[i + 1]) else {
                    throw ShellError("bad hex digit in token '\(token)'")
                }
                bytes.append(high << 4 | low)
                i += 2
            }
            return bytes
        }
        guard !token.isEmpty, token.utf8.allSatisfy({ $0 >= 33 && $0 <= 126 }) else {
            throw ShellError("token must be printable ASCII or x:HEX")
        }
        return Array(token.utf8)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Encodes bytes for output.
    static func encode(_ bytes: [UInt8]) -> String {
        let plain =
            !bytes.isEmpty && bytes.allSatisfy { $0 >= 33 && $0 <= 126 }
            && bytes != [UInt8(ascii: "-")]
            && !(bytes.count >= 2 && bytes[0] == UInt8(ascii: "x") && bytes[1] == UInt8(ascii: ":"))
        if plain { return String(decoding: bytes, as: UTF8.self) }
        var out: [UInt8] = Array("x:".utf8)
        out.reserveCapacity(2 + bytes.count * 2)
        for b in bytes {
            out.append(hexDigits[Int(b >> 4)])
            out.append(hexDigits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

struct ShellError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
