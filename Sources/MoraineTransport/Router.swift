// Requests go to handlers by opcode. The carriers answer an opcode nobody registered with an
// `unknownOpcode` error response and keep the connection, so a newer peer can probe an older one.
import MoraineSystem

/// Maps opcodes to handlers. Build it before the server starts; it is immutable afterwards.
public struct RequestRouter: Sendable {
    private var handlers: [RequestHandler?] = Array(repeating: nil, count: 256)
    /// Called by a connection once it has run the requests it had (the shared-memory carrier
    /// after each batch it drained from the ring, TCP after each request): a service may hold
    /// work back until then, such as the storage node's deferred appends.
    public var drained: (@Sendable () -> Void)? = nil

    public init() {}

    /// Routes `opcode` to `handler`.
    /// - Precondition: `opcode` is an application opcode (0x10 or above) not registered before.
    public mutating func register(_ opcode: UInt8, _ handler: @escaping RequestHandler) {
        precondition(opcode >= Opcode.firstApplication, "opcodes below 0x10 belong to the transport")
        precondition(handlers[Int(opcode)] == nil, "opcode \(opcode) registered twice")
        handlers[Int(opcode)] = handler
    }

    /// Runs the request's handler, or answers `unknownOpcode`.
    public func handle(_ request: Request) -> Result<Payload, TransportError> {
        guard let handler = handlers[Int(request.opcode)] else {
            return .failure(
                TransportError(.unknownOpcode, "no handler for opcode 0x\(String(request.opcode, radix: 16))"))
        }
        return handler(request)
    }
}

/// Regions this process has mapped and may send or resolve references into.
public final class SharedRegionTable: @unchecked Sendable {
    private struct Entry {
        let base: UnsafeRawPointer
        let byteCount: Int
    }
    private var entries: [UInt64: Entry] = [:]
    private let lock = ConditionLock()

    public init() {}

    /// Makes `byteCount` bytes at `base` known as region `id`. The caller keeps them mapped
    /// for as long as the table is in use.
    public func register(id: UInt64, base: UnsafeRawPointer, byteCount: Int) {
        lock.withLock { entries[id] = Entry(base: base, byteCount: byteCount) }
    }

    /// The bytes a reference names, in place.
    /// - Throws: `.notFound` for an unknown region, `.invalid` for a range outside it.
    public func resolve(_ reference: RegionReference) throws(TransportError) -> UnsafeRawBufferPointer {
        guard let entry = lock.withLock({ entries[reference.region] }) else {
            throw TransportError(.notFound, "region \(reference.region) is not mapped here")
        }
        let (end, overflow) = reference.offset.addingReportingOverflow(reference.length)
        guard !overflow, end <= UInt64(entry.byteCount) else {
            throw TransportError(
                .invalid,
                "reference \(reference.offset)+\(reference.length) outside region \(reference.region) of "
                    + "\(entry.byteCount) bytes")
        }
        return UnsafeRawBufferPointer(start: entry.base + Int(reference.offset), count: Int(reference.length))
    }
}
