// Frames on a shared ring. The producer writes a frame's header and payload straight into the
// ring (no staging copy) and publishes when the caller says a batch is done; the consumer copies
// each frame out before it checks it, so a peer that rewrites shared memory after publishing
// cannot change bytes between the check and their use.
import MoraineSystem

/// The writing end of a ring, owned by one thread.
struct FrameProducer {
    let ring: SharedRing
    private(set) var tail: UInt64 = 0
    private var published: UInt64 = 0
    /// The consumer's head as last read; reloaded only when it says the frame does not fit.
    private var knownHead: UInt64 = 0

    init(ring: SharedRing) {
        self.ring = ring
        (tail, knownHead) = ring.producerPositions()
        published = tail
    }

    /// Whether `frameBytes` fit behind `tail`, reading the consumer's head only when the last
    /// value read says they do not.
    private mutating func fits(_ frameBytes: Int) -> Bool {
        if tail &+ UInt64(frameBytes) &- knownHead <= UInt64(ring.capacity) { return true }
        knownHead = ring.loadHead()
        return tail &+ UInt64(frameBytes) &- knownHead <= UInt64(ring.capacity)
    }

    /// Writes one frame; it becomes visible at the next `publish`.
    /// - Throws: `.unavailable` when the ring stays full and `stillWanted` says give up.
    mutating func write(
        version: UInt8, opcode: UInt8, flags: FrameFlags, requestID: UInt64, payload: UnsafeRawBufferPointer,
        stillWanted: () -> Bool
    ) throws(TransportError) {
        let frameBytes = FrameHeader.byteCount + payload.count
        if !fits(frameBytes) {
            publish()  // the consumer may be waiting for what is already written
            guard ring.waitForRoom(frameBytes, after: tail, stillWanted: stillWanted) else {
                throw TransportError(.unavailable, "the peer stopped reading (ring full)")
            }
            knownHead = ring.loadHead()
        }
        var header = FrameHeader(
            version: version, opcode: opcode, flags: flags, requestID: requestID, payloadByteCount: UInt32(payload.count))
        withUnsafeTemporaryAllocation(byteCount: FrameHeader.byteCount, alignment: 8) { raw in
            header.write(to: raw.baseAddress!)
            header.checksum = FrameHeader.checksum(header: raw.baseAddress!, payload: payload)
            raw.baseAddress!.storeBytes(of: header.checksum.littleEndian, toByteOffset: 20, as: UInt32.self)
            ring.write(UnsafeRawBufferPointer(raw), at: tail)
        }
        ring.write(payload, at: tail &+ UInt64(FrameHeader.byteCount))
        tail &+= UInt64(frameBytes)
    }

    /// Whether a frame with `payloadBytes` fits without waiting for the consumer.
    mutating func hasRoom(payloadBytes: Int) -> Bool { fits(FrameHeader.byteCount + payloadBytes) }

    /// Makes every written frame visible to the consumer (and wakes it if it sleeps).
    mutating func publish() {
        guard tail != published else { return }
        ring.publish(tail: tail)
        published = tail
    }
}

/// The reading end of a ring, owned by one thread.
struct FrameConsumer {
    let ring: SharedRing
    let limits: TransportLimits
    private(set) var head: UInt64 = 0

    init(ring: SharedRing, limits: TransportLimits) {
        self.ring = ring
        self.limits = limits
        head = ring.consumerPositions()?.head ?? 0
    }

    /// Whether a frame is waiting (does not block).
    func hasData() -> Bool { ring.loadTail() != head }  // next() reports a tail out of reach

    /// Waits for data; false when `stillWanted` gave up.
    func waitForData(stillWanted: () -> Bool) -> Bool {
        ring.waitForData(after: head, stillWanted: stillWanted)
    }

    /// Takes the next frame, or nil when none is published.
    /// - Throws: `.malformed`, `.frameTooLarge` or `.badChecksum`: the ring cannot be trusted
    ///   any more and the connection must close.
    mutating func next() throws(TransportError) -> (FrameHeader, [UInt8])? {
        // Measured from our own head: the shared one is ours to write, but the peer's to overwrite.
        let tail = ring.loadTail()
        let available = tail &- head
        if available == 0 { return nil }
        guard available <= UInt64(ring.capacity) else {
            throw TransportError(.malformed, "shared ring tail \(tail) is out of reach of head \(head)")
        }
        guard available >= UInt64(FrameHeader.byteCount) else {
            throw TransportError(.malformed, "\(available) published bytes are less than a frame header")
        }
        var raw = (UInt64(0), UInt64(0), UInt64(0))
        let header = try withUnsafeMutableBytes(of: &raw) { bytes throws(TransportError) -> FrameHeader in
            ring.read(into: bytes, at: head)
            return try FrameHeader.parse(UnsafeRawBufferPointer(bytes), limitBytes: limits.framePayloadBytesMax)
        }
        let frameBytes = UInt64(FrameHeader.byteCount) + UInt64(header.payloadByteCount)
        guard frameBytes <= available else {
            throw TransportError(
                .malformed, "frame of \(header.payloadByteCount) payload bytes but only \(available) bytes published")
        }
        let payload = [UInt8](unsafeUninitializedCapacity: Int(header.payloadByteCount)) { buffer, count in
            ring.read(into: UnsafeMutableRawBufferPointer(buffer), at: head &+ UInt64(FrameHeader.byteCount))
            count = buffer.count
        }
        try withBytes(of: &raw) { headerBytes throws(TransportError) in
            try withBytes(payload) { bytes throws(TransportError) in
                try header.verify(header: headerBytes.baseAddress!, payload: bytes)
            }
        }
        head &+= frameBytes
        return (header, payload)
    }

    /// Hands consumed space back to the producer.
    func release() { ring.release(head: head) }
}
