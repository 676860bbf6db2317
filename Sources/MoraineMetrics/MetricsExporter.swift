// Metrics in Prometheus' text format, built at scrape time. Sources are closures that read the
// counters a process keeps anyway (an engine's stats, a node's status, the transport's and
// io_uring's atomics) and return MetricSamples; a scrape runs them, sets the series of a
// swift-prometheus registry to what they returned, drops the series no source returned any more
// (a database closed), and renders the registry. The same registry backs swift-metrics once
// `bootstrapSwiftMetrics` ran, so what code records through swift-metrics (the Redis front end's
// per-command counters) is in the same scrape.
//
// A sample that contradicts an earlier one of its name (another kind, help text or label names)
// is left out and logged once: the registry would stop the process on it.
//
// Thread-safety: scrapes are serialized by one lock; sources may be added from any thread.
import CoreMetrics
import MoraineSystem
import Prometheus
import Synchronization

public final class MetricsExporter: Sendable {
    public let registry: PrometheusCollectorRegistry

    private enum Series {
        case counter(Prometheus.Counter)
        case gauge(Prometheus.Gauge)
    }

    private struct Family {
        let kind: MetricSample.Kind
        let help: String
        let labelNames: [String]
    }

    private struct State {
        var sources: [@Sendable () -> [MetricSample]] = []
        var families: [String: Family] = [:]
        var series: [String: Series] = [:]
        var refused: Set<String> = []
    }

    private let state = Mutex(State())

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    /// Makes swift-metrics record into this exporter's registry (once per process; later calls
    /// of any exporter do nothing).
    public func bootstrapSwiftMetrics() {
        Self.bootstrapped.withLock { done in
            guard !done else { return }
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            done = true
        }
    }

    private static let bootstrapped = Mutex(false)

    /// Adds a source, run at every scrape.
    public func add(_ source: @escaping @Sendable () -> [MetricSample]) {
        state.withLock { $0.sources.append(source) }
    }

    /// Runs the sources and returns the registry's text.
    public func scrape() -> [UInt8] {
        state.withLock { state in
            var seen = Set<String>()
            for source in state.sources {
                for sample in source() { apply(sample, &state, &seen) }
            }
            for (key, series) in state.series where !seen.contains(key) {
                switch series {
                case .counter(let counter): registry.unregisterCounter(counter)
                case .gauge(let gauge): registry.unregisterGauge(gauge)
                }
                state.series.removeValue(forKey: key)
            }
            var buffer: [UInt8] = []
            registry.emit(into: &buffer)
            return buffer
        }
    }

    private func apply(_ sample: MetricSample, _ state: inout State, _ seen: inout Set<String>) {
        let family = Family(kind: sample.kind, help: sample.help, labelNames: sample.labels.map(\.0))
        if let known = state.families[sample.name] {
            guard known.kind == family.kind, known.help == family.help, known.labelNames == family.labelNames else {
                if state.refused.insert(sample.name).inserted {
                    SystemLog.info("metrics: \(sample.name) left out: a sample contradicts its first one (kind, help or label names)")
                }
                return
            }
        } else {
            state.families[sample.name] = family
        }
        let key = sample.name + "{" + sample.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
        guard seen.insert(key).inserted else { return }  // one value per series and scrape: the first
        let value = sample.value.isFinite ? sample.value : 0
        switch sample.kind {
        case .gauge:
            let gauge: Prometheus.Gauge
            if case .gauge(let existing) = state.series[key] {
                gauge = existing
            } else {
                gauge = registry.makeGauge(name: sample.name, labels: sample.labels, help: sample.help)
                state.series[key] = .gauge(gauge)
            }
            gauge.set(value)
        case .counter:
            let counter: Prometheus.Counter
            if case .counter(let existing) = state.series[key] {
                counter = existing
            } else {
                counter = registry.makeCounter(name: sample.name, labels: sample.labels, help: sample.help)
                state.series[key] = .counter(counter)
            }
            // The source's total is the counter's value (a counter read, not an event).
            counter.reset()
            let total = max(0, value)
            if total == total.rounded(), total < 9e18 {
                counter.increment(by: Int64(total))
            } else {
                counter.increment(by: total)
            }
        }
    }
}
