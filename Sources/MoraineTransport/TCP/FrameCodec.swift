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
