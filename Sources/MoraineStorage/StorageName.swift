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

    /// Checks a database name; returns its lease root (its first component).
    static func checkDatabase(_ database: String) throws(TransportError) -> String {
        let parts = database.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else {
            throw TransportError(
                .invalid, "database name \(quoted(database)): at most two components (DATABASE or DATABASE/SUBDIRECTORY)")
        }
        for part in parts {
            try checkComponent(String(part), what: "database name \(quoted(database))")
            guard !part.hasPrefix(".") else {
                throw TransportError(.invalid, "database name \(quoted(database)): a component may not start with '.'")
            }
        }
        return String(parts[0])
    }

    /// Checks a file name (flat, inside a database).
    static func checkFile(_ name: String) throws(TransportError) {
        guard !name.contains("/") else { throw TransportError(.invalid, "file name \(quoted(name)): contains '/'") }
        try checkComponent(name, what: "file name \(quoted(name))")
    }

    /// Checks a request's file (a database, and a file name unless `allowDirectory` and empty);
    /// returns the database's lease root.
    static func check(_ file: StorageFile, allowDirectory: Bool = false) throws(TransportError) -> String {
        let root = try checkDatabase(file.database)
        if !(allowDirectory && file.name.isEmpty) { try checkFile(file.name) }
        return root
    }

    private static func checkComponent(_ part: String, what: String) throws(TransportError) {
        guard !part.isEmpty else { throw TransportError(.invalid, "\(what): an empty component") }
        guard part != "." && part != ".." else { throw TransportError(.invalid, "\(what): '.' and '..' are refused") }
        guard part.utf8.count <= componentBytesMax else {
            throw TransportError(.invalid, "\(what): a component of \(part.utf8.count) bytes passes \(componentBytesMax)")
        }
        guard !part.utf8.contains(0) else { throw TransportError(.invalid, "\(what): contains a NUL byte") }
    }

    /// A name for a message: cut to 80 characters, control bytes shown as escapes.
    static func quoted(_ text: String) -> String {
        let shown = text.prefix(80).unicodeScalars.map { scalar in
            scalar.value < 0x20 || scalar.value == 0x7f ? "\\u{\(String(scalar.value, radix: 16))}" : String(scalar)
        }
        return "'" + shown.joined() + (text.count > 80 ? "…" : "") + "'"
    }
}
