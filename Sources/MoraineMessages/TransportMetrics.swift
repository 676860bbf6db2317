// The transport's per-opcode counts (TransportStatistics) as metric samples, named by what the
// opcode is: the role that serves it (storage 0x20–0x3F, flush and compaction workers 0x40–0x4F,
// memory 0x50–0x5F, compute 0x60–0x6F) and its number. Calls this process made are summed per
// peer role; requests its server answered are kept per opcode.
import MoraineSystem
import MoraineTransport

public enum TransportMetrics {
    /// The role that serves `opcode`.
    public static func role(ofOpcode opcode: UInt8) -> String {
        switch opcode {
        case 0x20..<0x40: "storage"
        case 0x40..<0x50: "worker"
        case 0x50..<0x60: "memory"
        case 0x60..<0x70: "compute"
        default: "other"
        }
    }

    public static func samples() -> [MetricSample] {
        var samples: [MetricSample] = []
        for totals in TransportStatistics.servedTotals() {
            let labels = [("role", role(ofOpcode: totals.opcode)), ("opcode", "0x" + String(totals.opcode, radix: 16))]
            samples += [
                .counter("moraine_transport_requests_served_total", "Requests this process's server answered", totals.count, labels: labels),
                .counter("moraine_transport_request_errors_total", "Requests this process's server answered with an error", totals.errors, labels: labels),
                .counter(
                    "moraine_transport_request_seconds_total", "Time this process's handlers spent on requests",
                    seconds: Double(totals.nanos) / 1e9, labels: labels),
            ]
        }
        var perPeer: [String: (count: Int, errors: Int, nanos: Int)] = [:]
        for totals in TransportStatistics.calledTotals() {
            let peer = role(ofOpcode: totals.opcode)
            let sum = perPeer[peer] ?? (0, 0, 0)
            perPeer[peer] = (sum.count + totals.count, sum.errors + totals.errors, sum.nanos + totals.nanos)
        }
        for (peer, sum) in perPeer.sorted(by: { $0.key < $1.key }) {
            let labels = [("peer", peer)]
            samples += [
                .counter("moraine_transport_calls_total", "Requests this process sent to a peer role and waited for", sum.count, labels: labels),
                .counter("moraine_transport_call_errors_total", "Calls to a peer role that failed or got an error", sum.errors, labels: labels),
                .counter(
                    "moraine_transport_call_seconds_total", "Round-trip time of calls to a peer role (divide by calls for the mean)",
                    seconds: Double(sum.nanos) / 1e9, labels: labels),
            ]
        }
        return samples
    }
}
