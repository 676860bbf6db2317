// The caller's side of a connection, the same for both carriers: send requests without waiting
// (many in flight), receive responses as they come, or `call` for one request and its answer.
// A client belongs to one thread at a time, like a file handle: open one per thread that talks.
import MoraineSystem

/// A connection to one server.
public protocol TransportClient: AnyObject {
    /// Sends a request and returns its id without waiting for the answer.
    /// - Throws: `.unavailable` when the server is gone, `.tooManyInFlight` past the limit,
    ///   `.frameTooLarge` for a payload over the message limit, `.closed` after `close`.
    func send(opcode: UInt8, payload: Payload) throws(TransportError) -> UInt64

    /// The response to `requestID` (or to any request, when nil), waiting at most `timeoutNanos`
    /// (nil: no limit). Responses to other requests that arrive meanwhile are kept for later.
    /// - Throws: `.timedOut`, `.unavailable` when the server went away (every request in
    ///   flight then fails this way), `.closed`. An error *response* is not thrown: it is
    ///   the response's result.
    func receive(requestID: UInt64?, timeoutNanos: Int64?) throws(TransportError) -> Response

    /// Requests in flight (sent, response not yet received).
    var inFlightCount: Int { get }

    /// Says goodbye and releases the connection. Idempotent.
    func close()
}

extension TransportClient {
    /// Sends one request and waits for its answer; an error response is thrown.
    public func call(_ opcode: UInt8, _ payload: Payload, timeoutNanos: Int64? = nil) throws(TransportError) -> Payload {
        let started = monotonicNanos()
        do {
            let id = try send(opcode: opcode, payload: payload)
            let answer = try receive(requestID: id, timeoutNanos: timeoutNanos).get()
            TransportStatistics.recordCall(opcode, nanos: monotonicNanos() - started, failed: false)
            return answer
        } catch {
            TransportStatistics.recordCall(opcode, nanos: monotonicNanos() - started, failed: true)
            throw error
        }
    }

    /// Sends one request of bytes and waits for its answer's bytes.
    public func call(_ opcode: UInt8, _ bytes: [UInt8], timeoutNanos: Int64? = nil) throws(TransportError) -> Payload {
        try call(opcode, .bytes(bytes), timeoutNanos: timeoutNanos)
    }
}

/// Responses that arrived while the caller waited for another one, in arrival order.
struct ResponseStash {
    private var stashed: [UInt64: Response] = [:]
    /// Arrival order; ids already taken by id are skipped, and compacted away when they pile up.
    private var order: [UInt64] = []
    private var orderHead = 0

    var isEmpty: Bool { stashed.isEmpty }

    mutating func put(_ response: Response) {
        stashed[response.requestID] = response
        order.append(response.requestID)
    }

    mutating func take(_ requestID: UInt64?) -> Response? {
        if let requestID {
            let response = stashed.removeValue(forKey: requestID)
            if order.count - orderHead > 2 * stashed.count + 64 {
                order = order[orderHead...].filter { stashed[$0] != nil }
                orderHead = 0
            }
            return response
        }
        while orderHead < order.count {
            let first = order[orderHead]
            orderHead += 1
            if orderHead == order.count {
                order.removeAll(keepingCapacity: true)
                orderHead = 0
            }
            if let response = stashed.removeValue(forKey: first) { return response }
        }
        return nil
    }
}
