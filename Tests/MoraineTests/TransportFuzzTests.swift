// Bad input against a live server on both carriers: random bytes, mutated valid frames, lengths
// over the limit, bad checksums, truncated frames, unknown opcodes, a slow sender, a peer that
// vanishes mid-frame. After each attack the server must still answer a well-behaved client, and
// the attacking connection must be closed (or, for a merely unknown opcode, answered). Seeded:
// MORAINE_SEED replays a run, MORAINE_FUZZ_ROUNDS makes it longer.
import MoraineSystem
@testable import MoraineTransport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Transport fuzz")
struct TransportFuzzTests {
    enum Attack: CaseIterable {
        case randomBytes, mutatedFrame, oversizedLength, badChecksum, truncatedThenGone, unknownOpcode
        case slowSender, vanishMidFrame, randomBytesBeforeHandshake
    }

    @Test("the server survives bad input and keeps serving", arguments: Carrier.servers)
    func fuzz(carrier: Carrier) throws {
        let seed = testSeed("\(carrier)")
        var random = SeededRandom(seed: seed)
        let rounds = SeededRandom.environmentInt("MORAINE_FUZZ_ROUNDS", default: 40)
        var limits = TransportLimits()
        limits.framePayloadBytesMax = 64 << 10
        limits.chunkBytes = 64 << 10
        limits.handshakeNanos = 2_000_000_000
        let service = try TestService(carrier, limits: limits)
        defer { service.stop() }
        let good = try service.connect(limits: limits)
        defer { good.close() }
        for round in 0..<rounds {
            let attack = Attack.allCases[Int(random.next() % UInt64(Attack.allCases.count))]
            let context = "seed \(seed) round \(round) \(attack) on \(carrier)"
            let raw = try RawPeer(service)
            if attack != .randomBytesBeforeHandshake { try raw.authenticate(key: service.key) }
            let valid = raw.frameBytes(opcode: TestOp.echo, requestID: 5, payload: (0..<100).map { UInt8($0) })
            switch attack {
            case .randomBytes, .randomBytesBeforeHandshake:
                var bytes = (0..<(24 + Int(random.next() % 500))).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                if random.next() % 2 == 0 { bytes.replaceSubrange(0..<4, with: [0x4D, 0x52, 0x4E, 0x54]) }  // right magic, junk after
                try raw.sendBytes(bytes)
                #expect(raw.serverClosed(), "\(context): random bytes did not close the connection")
            case .mutatedFrame:
                var bytes = valid
                for _ in 0..<(1 + Int(random.next() % 4)) {
                    bytes[Int(random.next() % UInt64(bytes.count))] ^= UInt8(1 << (random.next() % 8))
                }
                // A flipped length bit may make the frame longer: follow it with enough bytes
                // to complete any length under the limit, so the checksum gets checked.
                try raw.sendBytes(bytes + [UInt8](repeating: 0, count: limits.framePayloadBytesMax + 24))
                // Any flipped bit breaks the checksum, the magic, the flags or the length.
                #expect(raw.serverClosed(), "\(context): a mutated frame was accepted")
            case .oversizedLength:
                var header = FrameHeader(version: 1, opcode: TestOp.echo, flags: [], requestID: 9, payloadByteCount: UInt32.max - 7)
                var bytes = [UInt8](repeating: 0, count: 24)
                bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
                header.checksum = 0
                // Only the header is sent: closing now proves the length was checked before
                // the server waited for (or allocated) the advertised payload.
                try raw.sendBytes(bytes)
                #expect(raw.serverClosed(), "\(context): an oversized length was not refused at the header")
            case .badChecksum:
                var bytes = valid
                bytes[20] ^= 0xFF
                try raw.sendBytes(bytes)
                #expect(raw.serverClosed(), "\(context)")
            case .truncatedThenGone, .vanishMidFrame:
                let cut = 1 + Int(random.next() % UInt64(valid.count - 1))
                if carrier == .tcp || attack == .truncatedThenGone {
                    try raw.sendBytes(Array(valid[0..<cut]))
                }
                raw.close()
            case .unknownOpcode:
                let opcode = UInt8(0x80 + random.next() % 0x7F)
                try raw.sendFrame(opcode: opcode, requestID: 11, payload: [1])
                let (header, payload) = try raw.receiveFrame()
                #expect(header.requestID == 11 && header.flags.contains(.error), "\(context)")
                #expect(payload.withUnsafeBytes { TransportError(wirePayload: $0) }.code == .unknownOpcode, "\(context)")
            case .slowSender:
                if carrier == .tcp {
                    for byte in valid {
                        try raw.sendBytes([byte])
                        usleep(200)
                    }
                } else {
                    try raw.sendBytes(valid)
                }
                let (header, payload) = try raw.receiveFrame()
                #expect(header.requestID == 5 && payload == (0..<100).map { UInt8($0) }, "\(context)")
            }
            raw.close()
            let probe = (0..<8).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            #expect(try good.call(TestOp.echo, probe, timeoutNanos: 10_000_000_000) == .bytes(probe), "\(context): the good client")
        }
        #expect(eventually { service.connectionCount == 1 }, "seed \(seed): connections leaked: \(service.connectionCount)")
    }
}
