// A rate limit for log lines an outsider can cause (a refused connection, a dropped handshake):
// the first few lines of each interval are written as they come, the rest only counted, and the
// count is written with the latest line as a sample when the interval ends. A flood of thousands
// of refusals a second then costs a few lines per interval, not megabytes of log.
//
// Thread-safe: every call takes one small lock; the sink is called outside it.
import Synchronization

/// Writes at most `burst` lines per interval through `SystemLog`, then one summary line.
public final class LogThrottle: Sendable {
    private struct Window {
        var startNanos: Int64 = 0
        var written = 0
        var suppressed = 0
        var sample = ""
    }

    private let intervalNanos: Int64
    private let burst: Int
    private let subject: String
    private let clock: @Sendable () -> Int64
    private let window = Mutex(Window())

    /// - Parameters:
    ///   - subject: what the summary line counts ("refused connections on …").
    ///   - intervalNanos: the length of one window.
    ///   - burst: lines written as they come in one window.
    ///   - clock: monotonic nanoseconds; a test may pass its own.
    public init(
        subject: String, intervalNanos: Int64 = 10_000_000_000, burst: Int = 5,
        clock: @escaping @Sendable () -> Int64 = monotonicNanos
    ) {
        precondition(intervalNanos > 0 && burst >= 0)
        self.subject = subject
        self.intervalNanos = intervalNanos
        self.burst = burst
        self.clock = clock
    }

    /// Writes `line`, or counts it when this window has had its `burst`.
    public func info(_ line: String) {
        let now = clock()
        var out: [String] = []
        window.withLock { state in
            if let summary = Self.roll(&state, now: now, intervalNanos: intervalNanos, subject: subject) {
                out.append(summary)
            }
            if state.written < burst {
                state.written += 1
                out.append(line)
            } else {
                state.suppressed += 1
                state.sample = line
            }
        }
        for line in out { SystemLog.info(line) }
    }

    /// Writes the summary of a window that has ended (call it now and then, so the count of the
    /// last window of a flood is not held until the next line).
    public func flush() {
        let now = clock()
        let summary = window.withLock { Self.roll(&$0, now: now, intervalNanos: intervalNanos, subject: subject) }
        if let summary { SystemLog.info(summary) }
    }

    /// Lines counted and not yet written.
    public var suppressedCount: Int { window.withLock { $0.suppressed } }

    /// Starts a new window when the current one has ended; returns its summary, if any.
    private static func roll(_ state: inout Window, now: Int64, intervalNanos: Int64, subject: String) -> String? {
        guard now - state.startNanos >= intervalNanos else { return nil }
        let elapsed = now - state.startNanos
        var summary: String? = nil
        if state.suppressed > 0 {
            summary =
                "\(state.suppressed) more \(subject) in the last \(elapsed / 1_000_000) ms, not logged one by one; "
                + "the latest: \(state.sample)"
        }
        state = Window(startNanos: now)
        return summary
    }
}
