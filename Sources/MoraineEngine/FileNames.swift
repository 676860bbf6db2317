// Names of the files in a database directory. Numbers come from one counter, so every file
// number is used once. Stateless.
import MoraineFormat
import MoraineSystem

/// The kinds of files a database directory holds.
public enum DatabaseFile: Equatable, Sendable {
    case log(UInt64)
    case table(UInt64)
    case manifest(UInt64)
    case current
    case lock
    case temporary(UInt64)
    /// The event log (`LOG`), and an earlier one moved aside at an open (`LOG.old.MICROS`).
    case infoLog
    case oldInfoLog(UInt64)
    /// The options in force at an open (`OPTIONS-NNNNNN`).
    case options(UInt64)
    /// The database's identity among its storage tiers (`TIERS`, in the database directory).
    case tierIdentity
    /// A tier directory's marker (`TIER`): the database it belongs to, and an id of its own.
    case tierMarker

    /// The file's name inside the database directory.
    public var name: String {
        switch self {
        case .log(let n): Self.padded(n) + ".log"
        case .table(let n): Self.padded(n) + ".sst"
        case .manifest(let n): "MANIFEST-" + Self.padded(n)
        case .current: "CURRENT"
        case .lock: "LOCK"
        case .temporary(let n): Self.padded(n) + ".dbtmp"
        case .infoLog: "LOG"
        case .oldInfoLog(let micros): "LOG.old.\(micros)"
        case .options(let n): "OPTIONS-" + Self.padded(n)
        case .tierIdentity: "TIERS"
        case .tierMarker: "TIER"
        }
    }

    static func padded(_ n: UInt64) -> String {
        let digits = String(n)
        return digits.count >= 6 ? digits : String(repeating: "0", count: 6 - digits.count) + digits
    }

    /// Parses a name found in the directory; nil for names that are not Moraine's.
    public init?(name: String) {
        if name == "CURRENT" { self = .current; return }
        if name == "LOCK" { self = .lock; return }
        if name == "LOG" { self = .infoLog; return }
        if name == "TIERS" { self = .tierIdentity; return }
        if name == "TIER" { self = .tierMarker; return }
        if name.hasPrefix("LOG.old."), let micros = UInt64(name.dropFirst(8)) { self = .oldInfoLog(micros); return }
        if name.hasPrefix("MANIFEST-"), let n = UInt64(name.dropFirst(9)) { self = .manifest(n); return }
        if name.hasPrefix("OPTIONS-"), let n = UInt64(name.dropFirst(8)) { self = .options(n); return }
        for (suffix, make) in [
            (".log", DatabaseFile.log), (".sst", DatabaseFile.table), (".dbtmp", DatabaseFile.temporary),
        ] {
            if name.hasSuffix(suffix), let n = UInt64(name.dropLast(suffix.count)), !name.hasPrefix("+") {
                self = make(n)
                return
            }
        }
        return nil
    }
}

extension TieredJobSpec {
    /// The path of table `number` on `tier`.
    public func tablePath(_ number: UInt64, tier: Int) -> String {
        joinPath(tableDirectory(tier: tier), DatabaseFile.table(number).name)
    }
}
