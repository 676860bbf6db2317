// This process's transport traffic, per opcode: requests its servers answered (with errors and
// the time the handlers took), and calls its clients made (with errors and round-trip time). A
// few relaxed atomic adds per request, against a round trip of microseconds; read at scrape time.
// The opcode's meaning (which role serves it, what it asks) belongs to MoraineMessages, which
// names the series.
//
// Thread-safety: atomics only.
import MoraineSystem
import Synchronization

public enum TransportStatistics {
    final class Slot: Sendable {
        let count = Atomic<Int>(0)
        let errors = Atomic<Int>(0)
        let nanos = Atomic<Int>(0)

        func record(nanos elapsed: Int64, failed: Bool) {
            count.add(1, ordering: .relaxed)
            nanos.add(Int(max(0, elapsed)), ordering: .relaxed)
            if failed { errors.add(1, ordering: .relaxed) }
        }
    }

    static let served: [Slot] = (0..<256).map { _ in Slot() }
    static let called: [Slot] = (0..<256).map { _ in Slot() }

    static func recordServed(_ opcode: UInt8, nanos: Int64, failed: Bool) { served[Int(opcode)].record(nanos: nanos, failed: failed) }
    static func recordCall(_ opcode: UInt8, nanos: Int64, failed: Bool) { called[Int(opcode)].record(nanos: nanos, failed: failed) }

    /// One opcode's totals.
    public struct Totals: Sendable {
        public var opcode: UInt8
        public var count: Int
        public var errors: Int
        public var nanos: Int
    }

    /// The opcodes this process's servers answered at least once.
    public static func servedTotals() -> [Totals] { totals(served) }

    /// The opcodes this process's clients called at least once (with `call`).
    public static func calledTotals() -> [Totals] { totals(called) }

    private static func totals(_ slots: [Slot]) -> [Totals] {
        slots.indices.compactMap { index in
            let count = slots[index].count.load(ordering: .relaxed)
            guard count > 0 else { return nil }
            return Totals(
                opcode: UInt8(index), count: count, errors: slots[index].errors.load(ordering: .relaxed),
                nanos: slots[index].nanos.load(ordering: .relaxed))
        }
    }
}
