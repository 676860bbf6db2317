// Errors of the transport layer and their stable numbers on the wire. An error response carries
// a code and a message; the codes below 16 are MoraineError kinds, so an engine error crosses a
// connection unchanged, and the codes from 16 up are the transport's own.
import MoraineSystem

/// A transport failure, or an error response from the peer.
public struct TransportError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong. Raw values are the stable wire codes.
    public enum Code: UInt16, Sendable, CustomStringConvertible {
        case invalid = 1
        case corruption = 2
        case io = 3
        /// The peer is gone or not reachable; retry later (possibly elsewhere).
        case unavailable = 4
        /// This connection was closed.
        case closed = 5
        case busy = 6
        case noSpace = 7
        case notFound = 8
        case internalError = 9
        /// The sender's epoch is older than the owner's: it lost its lease (MoraineError.fenced).
        case fenced = 10
        /// The frame or its contents do not follow the protocol.
        case malformed = 16
        /// A frame payload or a reassembled message exceeds the receiver's limit.
        case frameTooLarge = 17
        /// A frame's CRC32C does not match its bytes.
        case badChecksum = 18
        /// No protocol version both sides speak, or a frame in a version not negotiated.
        case unsupportedVersion = 19
        /// The receiver has no handler for the opcode.
        case unknownOpcode = 20
        /// The peer could not prove it holds the cluster key (or is the wrong user).
        case authenticationFailed = 21
        /// More requests in flight than the connection allows.
        case tooManyInFlight = 22
        /// No answer in the time the caller allowed.
        case timedOut = 23

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
            case .malformed: "malformed frame"
            case .frameTooLarge: "frame too large"
            case .badChecksum: "bad checksum"
            case .unsupportedVersion: "unsupported version"
            case .unknownOpcode: "unknown opcode"
            case .authenticationFailed: "authentication failed"
            case .tooManyInFlight: "too many requests in flight"
            case .timedOut: "timed out"
            }
        }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Carries an engine error across a connection with its kind intact.
    public init(_ error: MoraineError) {
        self.init(Code(rawValue: UInt16(error.kind.rawValue)) ?? .internalError, error.message)
    }

    public var description: String { "\(code): \(message)" }

    /// The error as the engine's error type (transport codes map to the nearest kind).
    public var moraineError: MoraineError {
        let kind: MoraineError.Kind =
            switch code {
            case .invalid, .malformed, .frameTooLarge, .unknownOpcode, .unsupportedVersion: .invalid
            case .corruption, .badChecksum: .corruption
            case .io: .io
            case .unavailable, .tooManyInFlight, .timedOut: .unavailable
            case .closed: .closed
            case .busy: .busy
            case .noSpace: .noSpace
            case .notFound: .notFound
            case .fenced: .fenced
            case .authenticationFailed, .internalError: .internalError
            }
        return MoraineError(kind, message)
    }

    /// The payload of an error frame: u16 code, then the UTF-8 message (cut to 1 KiB).
    var wirePayload: [UInt8] {
        let text = Array(message.utf8.prefix(1024))
        return [UInt8(truncatingIfNeeded: code.rawValue), UInt8(truncatingIfNeeded: code.rawValue >> 8)] + text
    }

    /// Decodes an error frame's payload; an unknown code arrives as `.internalError` with its number.
    init(wirePayload bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 2 else {
            self.init(.malformed, "error response shorter than its code")
            return
        }
        let raw = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[2...]), as: UTF8.self)
        if let code = Code(rawValue: raw) {
            self.init(code, text)
        } else {
            self.init(.internalError, "error code \(raw) unknown to this version: \(text)")
        }
    }
}
