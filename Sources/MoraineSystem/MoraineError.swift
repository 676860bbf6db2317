// The one error type every Moraine layer throws. Its kind tells a caller what to do about it
// (retry, fix the input, restore from a replica, reopen); its message names what was wrong and
// where (a file, an offset, a key length). Kinds carry stable numbers for the wire.

/// An operating error: bad input, damaged data, a failing device, or a closed handle.
public struct MoraineError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What the caller can do about the error. Raw values are stable across versions.
    public enum Kind: UInt8, Sendable, CustomStringConvertible {
        /// The input was wrong (a too-long key, a bad option); fix it and retry.
        case invalid = 1
        /// Stored bytes failed a check (checksum, magic, bounds); the data is damaged.
        case corruption = 2
        /// The operating system refused an I/O call (EIO and kin).
        case io = 3
        /// Temporarily unable to serve (a peer is gone, a resource is busy); retry later.
        case unavailable = 4
        /// The handle was closed, or stopped after an earlier fatal error.
        case closed = 5
        /// The database is locked by another process.
        case busy = 6
        /// The device is full (ENOSPC).
        case noSpace = 7
        /// A required file or directory does not exist.
        case notFound = 8
        /// A bug: an invariant did not hold.
        case internalError = 9
        /// A newer owner holds the database: this process lost its lease (its epoch is older)
        /// and may not change anything any more. Reopen to become the owner again.
        case fenced = 10

        public var description: String {
            switch self {
            case .invalid: "invalid"
            case .corruption: "corruption"
            case .io: "io"
            case .unavailable: "unavailable"
            case .closed: "closed"
            case .busy: "busy"
            case .noSpace: "no space"
            case .notFound: "not found"
            case .internalError: "internal"
            case .fenced: "fenced"
            }
        }
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(kind): \(message)" }

    /// A corruption error naming the damaged file.
    public static func corruption(_ message: String, file: String) -> MoraineError {
        MoraineError(.corruption, "\(message) in \(file)")
    }
}
