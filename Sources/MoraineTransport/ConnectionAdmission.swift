// Which connections a server admits, on both carriers. A connection is first a stranger: it
// holds one of `handshakesMax` handshake slots (and one of its address's
// `handshakesPerAddressMax`) until it proves the cluster key, and only then takes one of
// `connectionsMax` session slots. Strangers never take session slots, so a flood of connections
// without the key cannot keep an authenticated client out.
//
// A stranger past either handshake cap is not refused: it evicts the oldest stranger in the same
// scope that has sent nothing yet, or, when all have, the oldest. A flood of silent connections
// then only evicts itself, at whatever rate it opens them, and a client that sends its hello at
// once and answers the challenge within a round trip is never the one evicted unless the flood
// opens `handshakesPerAddressMax` connections from its address (or `handshakesMax` in all)
// faster than that round trip.
//
// Thread-safe: one lock; eviction callbacks run outside it.
import Synchronization

/// The admission state of one server's connections.
final class ConnectionAdmission: Sendable {
    /// One admitted connection, named by the number `admit` returned.
    typealias Ticket = UInt64

    private struct Stranger {
        let address: String
        var hasSpoken: Bool
        let evict: @Sendable () -> Void
    }

    private struct State {
        var nextTicket: Ticket = 1
        /// In admission order (tickets grow), so the oldest is the smallest.
        var strangers: [Ticket: Stranger] = [:]
        var perAddress: [String: Int] = [:]
        var sessions: Set<Ticket> = []
        var evictedCount = 0
    }

    private let limits: TransportLimits
    private let state = Mutex(State())

    init(limits: TransportLimits) { self.limits = limits }

    /// Admits a new connection from `address` as a stranger, evicting the oldest stranger of its
    /// address or of all when a cap is reached. `evict` closes this connection if it is evicted
    /// later; it must not block.
    func admit(address: String, evict: @escaping @Sendable () -> Void) -> Ticket {
        let (ticket, evicted) = state.withLock { state -> (Ticket, [@Sendable () -> Void]) in
            let ticket = state.nextTicket
            state.nextTicket += 1
            var evicted: [@Sendable () -> Void] = []
            if state.perAddress[address, default: 0] >= limits.handshakesPerAddressMax,
                let victim = Self.oldestStranger(in: state, address: address)
            {
                evicted.append(Self.remove(victim, from: &state))
            } else if state.strangers.count >= limits.handshakesMax, let victim = Self.oldestStranger(in: state, address: nil) {
                evicted.append(Self.remove(victim, from: &state))
            }
            state.evictedCount += evicted.count
            state.strangers[ticket] = Stranger(address: address, hasSpoken: false, evict: evict)
            state.perAddress[address, default: 0] += 1
            return (ticket, evicted)
        }
        for close in evicted { close() }
        return ticket
    }

    /// Notes that a stranger has sent its first bytes (it is evicted after the silent ones).
    func spoke(_ ticket: Ticket) {
        state.withLock { state in
            if state.strangers[ticket]?.hasSpoken == false { state.strangers[ticket]?.hasSpoken = true }
        }
    }

    /// Turns a stranger that proved the key into a session.
    /// - Throws: `.busy` when `connectionsMax` sessions are served; `.closed` when the
    ///   connection was evicted meanwhile.
    func authenticate(_ ticket: Ticket) throws(TransportError) {
        let outcome: TransportError? = state.withLock { state in
            guard state.strangers[ticket] != nil else {
                return TransportError(.closed, "the connection was dropped to admit newer ones during its handshake")
            }
            _ = Self.remove(ticket, from: &state)
            guard state.sessions.count < limits.connectionsMax else {
                return TransportError(.busy, "more than \(limits.connectionsMax) connections")
            }
            state.sessions.insert(ticket)
            return nil
        }
        if let outcome { throw outcome }
    }

    /// Forgets a connection that has closed (a stranger or a session; idempotent).
    func remove(_ ticket: Ticket) {
        state.withLock { state in
            if state.strangers[ticket] != nil { _ = Self.remove(ticket, from: &state) }
            state.sessions.remove(ticket)
        }
    }

    /// Connections in their handshake, and authenticated ones.
    var counts: (strangers: Int, sessions: Int) { state.withLock { ($0.strangers.count, $0.sessions.count) } }

    /// Strangers evicted so far.
    var evictedCount: Int { state.withLock { $0.evictedCount } }

    /// The oldest stranger that has not spoken, else the oldest, of `address` (or of all).
    private static func oldestStranger(in state: State, address: String?) -> Ticket? {
        var silent: Ticket? = nil
        var any: Ticket? = nil
        for (ticket, stranger) in state.strangers where address == nil || stranger.address == address {
            if !stranger.hasSpoken, ticket < (silent ?? .max) { silent = ticket }
            if ticket < (any ?? .max) { any = ticket }
        }
        return silent ?? any
    }

    private static func remove(_ ticket: Ticket, from state: inout State) -> @Sendable () -> Void {
        let stranger = state.strangers.removeValue(forKey: ticket)!
        let left = state.perAddress[stranger.address, default: 1] - 1
        state.perAddress[stranger.address] = left > 0 ? left : nil
        return stranger.evict
    }
}
