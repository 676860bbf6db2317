// How a long-running process waits for its end: SIGTERM, SIGINT and SIGHUP are blocked in the
// main thread before any other thread starts (every thread inherits the mask, so none of them is
// interrupted), and the main thread then waits for one with sigwait. SIGKILL cannot be caught
// and ends the process where it stands; that is what the crash tests use.
//
// Call `block` first thing in `main`, before any thread exists.
#if canImport(Glibc)
    import Glibc
#endif

/// The signals that ask a role process to stop cleanly.
public enum TerminationSignals {
    private static let stopping: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// Blocks the stopping signals in the calling thread and every thread it starts later.
    public static func block() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in stopping { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits for one of the stopping signals; returns it.
    public static func wait() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in stopping { sigaddset(&set, signal) }
        var received: Int32 = 0
        while sigwait(&set, &received) != 0 {}
        return received
    }

    /// The signal's name, for a log line.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }
}
