// What a TCP server does when accept fails: out of descriptors (EMFILE for the process, ENFILE
// for the system), the pending connection stays in the kernel's backlog and accept is tried
// again after a pause, instead of at once and for ever. One line is logged when the condition
// starts and one when accepting works again, with the count of failed attempts between.
//
// Thread-safe: a small lock; `accepted` is called on every accept, from any event loop.
import MoraineSystem
import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tracks failed accepts of one server for its back-off and its log.
final class AcceptFailures: Sendable {
    /// How long accepting pauses after a failure for want of descriptors.
    static let descriptorBackoff = TimeAmount.milliseconds(200)
    /// How long it pauses after any other failure.
    static let otherBackoff = TimeAmount.milliseconds(50)

    private let listening: String
    private let state = Mutex<(failures: Int, sinceNanos: Int64)>((0, 0))

    init(listening: String) { self.listening = listening }

    /// The pause before the next accept, after `error`.
    func failed(_ error: IOError) -> TimeAmount? {
        let outOfDescriptors = error.errnoCode == EMFILE || error.errnoCode == ENFILE
        let first = state.withLock { state -> Bool in
            state.failures += 1
            if state.failures == 1 { state.sinceNanos = monotonicNanos() }
            return state.failures == 1
        }
        if first {
            let what = outOfDescriptors ? "out of file descriptors" : "accept failing"
            SystemLog.info(
                "transport: \(what) on \(listening) (\(error)); new connections wait in the backlog, "
                    + "accept is retried every \(outOfDescriptors ? 200 : 50) ms and this is logged once")
        }
        return outOfDescriptors ? Self.descriptorBackoff : Self.otherBackoff
    }

    /// Notes an accepted connection; logs the end of a failing spell.
    func accepted() {
        let ended = state.withLock { state -> (Int, Int64)? in
            guard state.failures > 0 else { return nil }
            defer { state.failures = 0 }
            return (state.failures, monotonicNanos() - state.sinceNanos)
        }
        if let (failures, nanos) = ended {
            SystemLog.info(
                "transport: accepting again on \(listening) after \(failures) failed attempts over \(nanos / 1_000_000) ms")
        }
    }

    /// Failed accepts since the last success.
    var failureCount: Int { state.withLock { $0.failures } }
}
