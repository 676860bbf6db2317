// Confinement: what names a storage node accepts. A database is one flat directory name, or two
// (a database and one of its subdirectories, such as `lost`); a file is one flat name inside it.
// `..`, `/` inside a component, NUL, empty components, components over 255 bytes and database
// components that start with `.` (the node keeps its own state under `.moraine/`) are refused,
// so nothing outside `DATA/<database>/` can be named.
//
// Pure functions.
import MoraineMessages
import MoraineTransport

enum StorageName {
    static let componentBytesMax = 255

    /// Checks a database name; returns its lease root (its first component). Works on the
    /// UTF-8 bytes and builds a message only for a refusal: every request passes here.
    static func checkDatabase(_ database: String) throws(TransportError) -> String {
        let bytes = database.utf8
        var slash: String.Index? = nil
        var start = bytes.startIndex
        var index = bytes.startIndex
        while true {
            if index == bytes.endIndex || bytes[index] == UInt8(ascii: "/") {
                let component = bytes[start..<index]
                if let problem = problem(component) {
                    throw TransportError(.invalid, "database name \(quoted(database)): \(problem)")
                }
                if component.first == UInt8(ascii: ".") {
                    throw TransportError(.invalid, "database name \(quoted(database)): a component may not start with '.'")
                }
                if index == bytes.endIndex { break }
                guard slash == nil else {
                    throw TransportError(
                        .invalid, "database name \(quoted(database)): at most two components (DATABASE or DATABASE/SUBDIRECTORY)")
                }
                slash = index
                start = bytes.index(after: index)
            }
            index = bytes.index(after: index)
        }
        guard let slash else { return database }
        return String(database[..<slash])
    }

    /// Checks a file name (flat, inside a database).
    static func checkFile(_ name: String) throws(TransportError) {
        if name.utf8.contains(UInt8(ascii: "/")) { throw TransportError(.invalid, "file name \(quoted(name)): contains '/'") }
        if let problem = problem(name.utf8[...]) { throw TransportError(.invalid, "file name \(quoted(name)): \(problem)") }
    }

    /// Checks a request's file (a database, and a file name unless `allowDirectory` and empty);
    /// returns the database's lease root.
    static func check(_ file: StorageFile, allowDirectory: Bool = false) throws(TransportError) -> String {
        let root = try checkDatabase(file.database)
        if !(allowDirectory && file.name.isEmpty) { try checkFile(file.name) }
        return root
    }

    /// What is wrong with one component, or nil.
    private static func problem(_ part: Substring.UTF8View) -> String? {
        if part.isEmpty { return "an empty component" }
        if part.elementsEqual(".".utf8) || part.elementsEqual("..".utf8) { return "'.' and '..' are refused" }
        if part.count > componentBytesMax { return "a component of \(part.count) bytes passes \(componentBytesMax)" }
        if part.contains(0) { return "contains a NUL byte" }
        return nil
    }

    /// A name for a message: cut to 80 characters, control bytes shown as escapes.
    static func quoted(_ text: String) -> String {
        let shown = text.prefix(80).unicodeScalars.map { scalar in
            scalar.value < 0x20 || scalar.value == 0x7f ? "\\u{\(String(scalar.value, radix: 16))}" : String(scalar)
        }
        return "'" + shown.joined() + (text.count > 80 ? "…" : "") + "'"
    }
}
