// Frames on a TCP stream (SwiftNIO). The decoder reads the 24-byte header first and checks magic,
// flags and the payload length against the limit before it waits for (and so before NIO buffers)
// the payload; it then checks the CRC. A failure is thrown into the pipeline, where the connection
// handler logs it and closes that one connection.
import MoraineSystem
import NIOCore

/// The payload limit a decoder enforces; the handler raises it after the handshake.
final class FrameLimit: @unchecked Sendable {
    /// Only touched on the channel's event loop.
    var bytes: Int
    init(_ bytes: Int) { self.bytes = bytes }
}

/// Splits a byte stream into checked frames.
struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = TCPFrame
    let limit: FrameLimit

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= FrameHeader.byteCount else { return .needMoreData }
        let header = try buffer.withUnsafeReadableBytes { bytes throws(TransportError) in
            try FrameHeader.parse(
                UnsafeRawBufferPointer(rebasing: bytes[0..<FrameHeader.byteCount]), limitBytes: limit.bytes)
        }
        let frameBytes = FrameHeader.byteCount + Int(header.payloadByteCount)
        guard buffer.readableBytes >= frameBytes else { return .needMoreData }
        let payload = try buffer.withUnsafeReadableBytes { bytes throws(TransportError) -> [UInt8] in
            let body = UnsafeRawBufferPointer(rebasing: bytes[FrameHeader.byteCount..<frameBytes])
            try header.verify(header: bytes.baseAddress!, payload: body)
            return Array(body)
        }
        buffer.moveReaderIndex(forwardBy: frameBytes)
        context.fireChannelRead(Self.wrapInboundOut(TCPFrame(header: header, payload: payload)))
        return .continue
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

    init(_ emulation: LinkEmulation) { line = DelayLine(emulation) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        line.add(frame, byteCount: FrameHeader.byteCount + frame.payload.count, arrivalNanos: monotonicNanos())
        armTimer(context)
    }

    /// Read-completes are sent when held frames are delivered, not when bytes arrive.
    func channelReadComplete(context: ChannelHandlerContext) {}

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
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
