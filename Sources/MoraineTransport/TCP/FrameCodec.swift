// Frames on a TCP stream (SwiftNIO). The decoder reads the 24-byte header first and checks magic,
// flags and the payload length against the limit before it waits for (and so before NIO buffers)
// the payload; it then checks the CRC. A failure is thrown into the pipeline, where the connection
// handler logs it and closes that one connection.
import MoraineSystem
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// What a decoder and its connection handler share: the payload limit (raised after the
/// handshake) and since when an incomplete frame has sat in the buffer (for the frame timeout).
final class FrameLimit: @unchecked Sendable {
    /// Only touched on the channel's event loop.
    var bytes: Int
    /// Monotonic time the current incomplete frame was first seen; 0 when the buffer is empty.
    var partialSinceNanos: Int64 = 0
    init(_ bytes: Int) { self.bytes = bytes }
}

/// TCP keepalive on a connection: probes after `idleSeconds` of silence, 3 of them 10 s apart, so
/// a peer whose machine is gone (no FIN ever comes) is noticed and its connection freed. Keepalive
/// only runs while nothing is unacknowledged: a peer that vanishes while replies are on their way
/// to it would hold the connection for the kernel's retransmission limit (about 15 minutes), so
/// TCP_USER_TIMEOUT gives up on unacknowledged bytes after the same time keepalive takes.
enum TCPKeepalive {
    static let probeIntervalSeconds = 10
    static let probeCount = 3

    /// Milliseconds bytes may stay unacknowledged (and keepalive may go unanswered) before the
    /// kernel drops the connection.
    static func userTimeoutMillis(idleSeconds: Int) -> Int {
        (idleSeconds + probeIntervalSeconds * probeCount) * 1000
    }

    /// The socket options, in the order they are set.
    static func options(idleSeconds: Int) -> [(ChannelOptions.Types.SocketOption, SocketOptionValue)] {
        [
            (.init(level: .socket, name: .so_keepalive), 1),
            (.init(level: .tcp, name: .init(rawValue: TCP_KEEPIDLE)), SocketOptionValue(clamping: idleSeconds)),
            (.init(level: .tcp, name: .init(rawValue: TCP_KEEPINTVL)), SocketOptionValue(probeIntervalSeconds)),
            (.init(level: .tcp, name: .init(rawValue: TCP_KEEPCNT)), SocketOptionValue(probeCount)),
            (
                .init(level: .tcp, name: .init(rawValue: TCP_USER_TIMEOUT)),
                SocketOptionValue(clamping: userTimeoutMillis(idleSeconds: idleSeconds))
            ),
        ]
    }
}

/// Splits a byte stream into checked frames.
struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = TCPFrame
    let limit: FrameLimit

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= FrameHeader.byteCount else { return waitForMore(buffer) }
        let header = try buffer.withUnsafeReadableBytes { bytes throws(TransportError) in
            try FrameHeader.parse(
                UnsafeRawBufferPointer(rebasing: bytes[0..<FrameHeader.byteCount]), limitBytes: limit.bytes)
        }
        let frameBytes = FrameHeader.byteCount + Int(header.payloadByteCount)
        guard buffer.readableBytes >= frameBytes else { return waitForMore(buffer) }
        let payload = try buffer.withUnsafeReadableBytes { bytes throws(TransportError) -> [UInt8] in
            let body = UnsafeRawBufferPointer(rebasing: bytes[FrameHeader.byteCount..<frameBytes])
            try header.verify(header: bytes.baseAddress!, payload: body)
            return Array(body)
        }
        buffer.moveReaderIndex(forwardBy: frameBytes)
        limit.partialSinceNanos = 0
        context.fireChannelRead(Self.wrapInboundOut(TCPFrame(header: header, payload: payload)))
        return .continue
    }

    /// Notes when an incomplete frame started waiting (the frame timeout counts from there).
    private func waitForMore(_ buffer: ByteBuffer) -> DecodingState {
        if buffer.readableBytes == 0 {
            limit.partialSinceNanos = 0
        } else if limit.partialSinceNanos == 0 {
            limit.partialSinceNanos = monotonicNanos()
        }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// One decoded frame.
struct TCPFrame {
    let header: FrameHeader
    let payload: [UInt8]
}

extension ByteBuffer {
    /// Appends a whole frame (header with checksum, then payload).
    mutating func writeFrame(version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64, payload: UnsafeRawBufferPointer) {
        let frameBytes = FrameHeader.byteCount + payload.count
        writeWithUnsafeMutableBytes(minimumWritableBytes: frameBytes) { target in
            FrameHeader.encode(
                into: target.baseAddress!, version: version, opcode: opcode, flags: flags, requestID: requestID, payload: payload)
            return frameBytes
        }
    }

    /// Appends a message as one frame or as chunks.
    mutating func writeMessage(
        version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64, bytes: [UInt8], chunkBytes: Int
    ) {
        bytes.withUnsafeBytes { raw in
            // forEachChunk only throws what its body throws; this body does not throw.
            try? forEachChunk(raw, flags: flags, chunkBytes: chunkBytes) { chunkFlags, chunk in
                writeFrame(version: version, opcode: opcode, flags: chunkFlags, requestID: requestID, payload: chunk)
            }
        }
    }
}

/// Holds decoded frames until the emulated link delivers them (LinkEmulation), then passes them
/// on in order, followed by a read-complete so the next handler flushes its replies.
final class LinkEmulationHandler: ChannelInboundHandler {
    typealias InboundIn = TCPFrame
    typealias InboundOut = TCPFrame

    private var line: DelayLine<TCPFrame>
    private var timer: Scheduled<Void>? = nil
    /// The connection has ended: frames decoded after that go on at once.
    private var inactive = false

    init(_ emulation: LinkEmulation) { line = DelayLine(emulation) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if inactive {
            context.fireChannelRead(wrapInboundOut(frame))
            context.fireChannelReadComplete()
            return
        }
        line.add(frame, byteCount: FrameHeader.byteCount + frame.payload.count, arrivalNanos: monotonicNanos())
        armTimer(context)
    }

    /// Read-completes are sent when held frames are delivered, not when bytes arrive.
    func channelReadComplete(context: ChannelHandlerContext) {}

    /// A client that went away: what it sent was on the emulated wire, and a real link delivers
    /// that too (as the shared-memory carrier does), so every frame still held goes on now.
    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
        timer?.cancel()
        timer = nil
        var delivered = false
        while let frame = line.takeReady(now: .max) {
            context.fireChannelRead(wrapInboundOut(frame))
            delivered = true
        }
        if delivered { context.fireChannelReadComplete() }
        context.fireChannelInactive()
    }

    /// How much earlier than a frame's due time the event loop's timer is set: a timer fires
    /// tens of microseconds late, so it wakes early and `deliver` spins out the rest. A frame due
    /// sooner than this is spun for on the spot (the loop waits; link emulation is a test mode).
    static let timerSlackNanos: Int64 = 60_000

    private func armTimer(_ context: ChannelHandlerContext) {
        guard timer == nil, let due = line.nextDue else { return }
        if due - monotonicNanos() <= Self.timerSlackNanos {
            deliver(context)
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: .uptimeNanoseconds(UInt64(max(0, due - Self.timerSlackNanos)))) {
            let (handler, context) = loopBound.value
            handler.timer = nil
            handler.deliver(context)
        }
    }

    /// Delivers every frame that is due (spinning out the last stretch before each), until the
    /// next one is far enough off for a timer.
    private func deliver(_ context: ChannelHandlerContext) {
        var delivered = false
        while let due = line.nextDue, due - monotonicNanos() <= Self.timerSlackNanos {
            _ = LinkShaper.wait(until: due)
            while let frame = line.takeReady(now: monotonicNanos()) {
                context.fireChannelRead(wrapInboundOut(frame))
                delivered = true
            }
        }
        if delivered { context.fireChannelReadComplete() }
        if line.nextDue != nil { armTimer(context) }
    }
}
