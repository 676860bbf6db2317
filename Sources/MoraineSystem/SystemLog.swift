// One-line start-up and warning messages from the system layer (which I/O backend is in use,
// what durability a persistent-memory region gives, the NUMA topology). They go to standard
// error by default; a program or test may install its own sink (to silence or capture them).
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
