// What a process reports to a metrics scrape: named values with labels, read from counters the
// code keeps anyway, at scrape time (nothing on the hot path knows about metrics). The exporter
// (MoraineMetrics) turns them into Prometheus' text format; everything below it only produces
// samples, so the engine and the roles need no metrics library.
//
// Value types, plus IOStatistics' process-wide atomic counters.
import Synchronization

/// One value of one time series.
public struct MetricSample: Sendable {
    public enum Kind: Sendable { case counter, gauge }

    /// A Prometheus metric name: `moraine_…`, counters ending in `_total`.
    public var name: String
    public var kind: Kind
    /// One line saying what it counts (the same for every series of a name).
    public var help: String
    /// Label names and values; every series of a name has the same label names.
    public var labels: [(String, String)]
    public var value: Double

    public init(_ name: String, _ kind: Kind, _ help: String, labels: [(String, String)] = [], value: Double) {
        self.name = name
        self.kind = kind
        self.help = help
        self.labels = labels
        self.value = value
    }

    public static func counter(_ name: String, _ help: String, _ value: some BinaryInteger, labels: [(String, String)] = []) -> MetricSample {
        MetricSample(name, .counter, help, labels: labels, value: Double(value))
    }

    public static func counter(_ name: String, _ help: String, seconds value: Double, labels: [(String, String)] = []) -> MetricSample {
        MetricSample(name, .counter, help, labels: labels, value: value)
    }

    public static func gauge(_ name: String, _ help: String, _ value: some BinaryInteger, labels: [(String, String)] = []) -> MetricSample {
        MetricSample(name, .gauge, help, labels: labels, value: Double(value))
    }

    public static func gauge(_ name: String, _ help: String, value: Double, labels: [(String, String)] = []) -> MetricSample {
        MetricSample(name, .gauge, help, labels: labels, value: value)
    }
}

/// This process's io_uring activity: submissions (one syscall each), the operations they
/// carried (their ratio is the mean queue depth a submission fills), and what is in flight now.
public enum IOStatistics {
    static let submissions = Atomic<Int>(0)
    static let operations = Atomic<Int>(0)
    static let inFlight = Atomic<Int>(0)

    public static func samples() -> [MetricSample] {
        [
            .counter("moraine_io_uring_submissions_total", "io_uring submit calls of this process", submissions.load(ordering: .relaxed)),
            .counter(
                "moraine_io_uring_operations_total", "I/O operations submitted through io_uring (per submission: the mean queue depth)",
                operations.load(ordering: .relaxed)),
            .gauge("moraine_io_uring_in_flight", "I/O operations submitted and not yet completed", inFlight.load(ordering: .relaxed)),
        ]
    }
}

/// Starts exporting a role's metrics (the command wires it to a `/metrics` server): given the
/// role's source of samples, read at each scrape; returns how to stop. Called by the role once
/// it exists, before it announces itself.
public typealias MetricsHook = @Sendable (@escaping @Sendable () -> [MetricSample]) throws -> (@Sendable () -> Void)
