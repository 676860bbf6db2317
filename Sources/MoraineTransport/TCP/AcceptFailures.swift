// What a TCP server does when accept fails: out of descriptors (EMFILE for the process, ENFILE
// for the system), the pending connection stays in the kernel's backlog and accept is tried
// again after a pause, instead of at once and for ever. One line is logged when the condition
// starts and one when accepting works again, with the count of failed attempts between.
//
// NIO's AcceptBackoffHandler does not pause here: it delays the next `read` the pipeline asks
// for, but a server channel whose first accept of a wake-up fails keeps its read pending and
// stays registered for readability, so the event loop wakes and fails again at once (measured:
// 38,000 failed accepts a second, a whole core). AcceptPauseHandler turns `autoRead` off,
// which takes the listening socket out of the poll set, and on again after the pause.
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

    private let state = Mutex<(failures: Int, sinceNanos: Int64, listening: String)>((0, 0, "a TCP port"))

    /// The pause before the next accept, after `error` on the server channel bound to `address`.
    func failed(_ error: IOError, on address: SocketAddress?) -> TimeAmount {
        let outOfDescriptors = error.errnoCode == EMFILE || error.errnoCode == ENFILE
        let listening = address.flatMap { address in address.port.map { "\(address.ipAddress ?? "?"):\($0)" } } ?? "a TCP port"
        let first = state.withLock { state -> Bool in
            state.failures += 1
            state.listening = listening
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
        let ended = state.withLock { state -> (Int, Int64, String)? in
            guard state.failures > 0 else { return nil }
            defer { state.failures = 0 }
            return (state.failures, monotonicNanos() - state.sinceNanos, state.listening)
        }
        if let (failures, nanos, listening) = ended {
            SystemLog.info(
                "transport: accepting again on \(listening) after \(failures) failed attempts over \(nanos / 1_000_000) ms")
        }
    }

    /// Failed accepts since the last success.
    var failureCount: Int { state.withLock { $0.failures } }
}

/// Pauses accepting on a server channel after a failed accept (see the top of the file).
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Channel
    typealias InboundOut = Channel

    private let failures: AcceptFailures
    private var resume: Scheduled<Void>? = nil

    init(failures: AcceptFailures) { self.failures = failures }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let ioError = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        let pause = failures.failed(ioError, on: context.channel.localAddress)
        guard resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(.autoRead, value: false)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        resume = context.eventLoop.scheduleTask(in: pause) {
            let (handler, context) = loopBound.value
            handler.resume = nil
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }
}
