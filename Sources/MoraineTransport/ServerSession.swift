// What a server does with each frame after the handshake, the same on both carriers: check the
// version, answer pings, stop at goodbye, refuse transport opcodes that have no business here,
// join chunks, and run the router. The carrier writes the replies its own way. A quiet request
// (FrameFlags.quiet, protocol version 2) runs like any other and is answered with nothing.
import MoraineSystem

/// The per-connection request logic of a server.
struct ServerSession {
    enum Outcome {
        /// Nothing to send yet (a chunk of a larger request), or nothing to send at all (a quiet
        /// transport request).
        case none
        /// A quiet request ran: nothing to send.
        case quiet
        /// Send this reply to the frame's request id and opcode.
        case reply(Result<Payload, TransportError>)
        /// The client said goodbye.
        case goodbye
    }

    var assembler: MessageAssembler
    let version: UInt8
    let router: RequestRouter

    init(limits: TransportLimits, version: UInt8, router: RequestRouter, budget: MessageBudget) {
        assembler = MessageAssembler(limits: limits, budget: budget)
        self.version = version
        self.router = router
    }

    /// Handles one checked frame.
    /// - Throws: for a frame that breaks the protocol badly enough that the connection must close
    ///   (a response sent to a server, a chunk over the limits).
    mutating func handle(_ header: FrameHeader, _ payload: [UInt8]) throws(TransportError) -> Outcome {
        guard !header.flags.contains(.response) else {
            throw TransportError(.malformed, "a client sent a response frame (request \(header.requestID))")
        }
        guard header.version == version else {
            return .reply(
                .failure(TransportError(.unsupportedVersion, "frame in version \(header.version); this connection speaks \(version)")))
        }
        let quiet = header.flags.contains(.quiet)
        if quiet && version < ProtocolVersion.quietRequests {
            return .reply(
                .failure(TransportError(.malformed, "a quiet request (request \(header.requestID)) on a version \(version) connection")))
        }
        switch header.opcode {
        case Opcode.goodbye:
            return .goodbye
        case Opcode.ping:
            return quiet ? .none : .reply(.success(.bytes([])))
        case ..<Opcode.firstApplication:
            if quiet { return .none }
            return .reply(
                .failure(TransportError(.unknownOpcode, "opcode 0x\(String(header.opcode, radix: 16)) is not valid here")))
        default:
            guard let message = try assembler.add(header, payload: payload) else { return .none }
            switch message.payload {
            case .success(let body):
                let started = monotonicNanos()
                let result = router.handle(
                    Request(opcode: message.opcode, requestID: message.requestID, payload: body, quiet: quiet))
                if case .failure = result {
                    TransportStatistics.recordServed(message.opcode, nanos: monotonicNanos() - started, failed: true)
                } else {
                    TransportStatistics.recordServed(message.opcode, nanos: monotonicNanos() - started, failed: false)
                }
                return quiet ? .quiet : .reply(result)
            case .failure:
                if quiet { return .none }
                return .reply(.failure(TransportError(.malformed, "a request cannot be an error")))
            }
        }
    }
}
