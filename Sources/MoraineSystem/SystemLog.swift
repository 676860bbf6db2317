// One-line start-up and warning messages from the system layer (what durability a
// persistent-memory region gives, the NUMA topology, a file recovery set aside) and, at debug
// level only, facts a quiet default keeps to itself (which I/O backend is in use). They go to
// standard error by default; a program or test may install its own sink (to silence or capture
// them).
// Thread-safe: the sink is swapped under a lock and called outside it.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import Synchronization

/// Where the system layer's messages go.
public enum SystemLog {
    private static let sink = Mutex<(@Sendable (String) -> Void)?>(nil)
    private static let said = Mutex<Set<String>>([])
    private static let debugEnabled = Atomic<Bool>(
        getenv("MORAINE_LOG_LEVEL").map { String(cString: $0) == "debug" } ?? false)

    /// Whether `debug` messages are written (MORAINE_LOG_LEVEL=debug, or a command's
    /// `--verbose`).
    public static var isDebugEnabled: Bool {
        get { debugEnabled.load(ordering: .relaxed) }
        set { debugEnabled.store(newValue, ordering: .relaxed) }
    }

    /// Writes `message` only when debug messages are on: facts a quiet default keeps to itself
    /// (which I/O backend a process chose).
    public static func debug(_ message: String) {
        if isDebugEnabled { info(message) }
    }

    /// Replaces the sink; `nil` restores standard error.
    public static func setSink(_ newSink: (@Sendable (String) -> Void)?) {
        sink.withLock { $0 = newSink }
    }

    /// Writes `message` unless this process already wrote the same text (start-up facts that
    /// every reopen would repeat).
    public static func infoOnce(_ message: String) {
        if said.withLock({ $0.insert(message).inserted }) { info(message) }
    }

    /// Writes one message, prefixed with "moraine: " on standard error.
    public static func info(_ message: String) {
        if let custom = sink.withLock({ $0 }) {
            custom(message)
            return
        }
        let line = "moraine: \(message)\n"
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { raw in _ = write(2, raw.baseAddress, raw.count) }
    }
}
