// Moraine's process log: start-up lines (what a node serves, where a role was placed, what
// durability a persistent-memory region gives), events an operator wants (a role restarted, a
// connection refused, a recovery set aside) and, at debug level, facts a quiet default keeps to
// itself (which I/O backend is in use). Every line goes through swift-log, as the logger labelled
// `moraine`: a program embedding Moraine sees them in whatever backend it bootstrapped, and the
// `moraine` command bootstraps `MoraineLogHandler` (one `moraine: …` line per message on standard
// error, level named when it is not info). A test may install a sink to capture them instead.
// (Each database's own event log, its LOG file, is EventLog in the engine.)
//
// Thread-safe: the sink is swapped under a lock and called outside it; swift-log's loggers are
// values.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import Logging
import Synchronization

/// Where Moraine's process messages go.
public enum SystemLog {
    private static let sink = Mutex<(@Sendable (String) -> Void)?>(nil)
    private static let said = Mutex<Set<String>>([])
    private static let debugEnabled = Atomic<Bool>(
        getenv("MORAINE_LOG_LEVEL").map { String(cString: $0) == "debug" } ?? false)
    /// Made at first use, so after the program bootstrapped its logging backend.
    private static let logger = Mutex<Logger?>(nil)

    /// Whether `debug` messages are written (MORAINE_LOG_LEVEL=debug, or a command's
    /// `--verbose`).
    public static var isDebugEnabled: Bool {
        get { debugEnabled.load(ordering: .relaxed) }
        set { debugEnabled.store(newValue, ordering: .relaxed) }
    }

    /// Replaces the sink (every message, as its text); `nil` restores swift-log.
    public static func setSink(_ newSink: (@Sendable (String) -> Void)?) {
        sink.withLock { $0 = newSink }
    }

    /// Writes `message` at debug level (only when debug messages are on).
    public static func debug(_ message: String) {
        guard isDebugEnabled else { return }
        log(.debug, message)
    }

    /// Writes `message` unless this process already wrote the same text (start-up facts that
    /// every reopen would repeat).
    public static func infoOnce(_ message: String) {
        if said.withLock({ $0.insert(message).inserted }) { info(message) }
    }

    /// Writes one message at info level.
    public static func info(_ message: String) { log(.info, message) }

    /// Writes one message at warning level: something went wrong and was handled.
    public static func warning(_ message: String) { log(.warning, message) }

    private static func log(_ level: Logger.Level, _ message: String) {
        if let custom = sink.withLock({ $0 }) {
            custom(message)
            return
        }
        var logger = logger.withLock { logger in
            if logger == nil { logger = Logger(label: "moraine") }
            return logger!
        }
        if isDebugEnabled { logger.logLevel = .debug }
        logger.log(level: level, "\(message)")
    }
}

/// The `moraine` command's swift-log backend: `moraine: MESSAGE` on standard error, with the
/// level after the prefix when it is not info (`moraine: warning: …`), metadata as `key=value`
/// after the message; one write per line, so lines from threads do not interleave.
public struct MoraineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level

    public init(label: String, level: Logger.Level = .info) {
        logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String, file: String, function: String,
        line: UInt
    ) {
        var all = metadata
        if let extra { all.merge(extra) { $1 } }
        let fields = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let prefix = level == .info ? "" : "\(level): "
        var bytes = Array("moraine: \(prefix)\(message)\(fields)\n".utf8)
        bytes.withUnsafeMutableBytes { raw in _ = write(2, raw.baseAddress, raw.count) }
    }
}
