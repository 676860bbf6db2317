// Asking a role whether it answers, in the words of its own protocol: a storage node for its
// capacity, a flush or compaction worker for its status, a memory node for its arenas and its
// region (where, how peers reach it), a compute
// node for its databases and sessions. Used by the supervisor (is a started role up?) and by
// `moraine status`.
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTransport

/// What a role said when asked.
public enum RoleAnswer: Sendable {
    case storage(StorageCapacityReply, tiers: [StorageTierInfo])
    case worker(WorkerStatusReply)
    /// A memory node's arenas, and its region when it said (nil: it answered the status only).
    case memory(MemoryStatusReply, region: MemoryRegionInfo?)
    case compute(ComputeStatusReply)
}

enum RoleProbe {
    /// Asks the `kind` role at `endpoint`, waiting at most `timeoutNanos`.
    /// - Throws: why it did not answer.
    static func ask(_ kind: String, at endpoint: Endpoint, key: ClusterKey, timeoutNanos: Int64) throws(MoraineError) -> RoleAnswer {
        func status(_ opcode: UInt8) throws(MoraineError) -> [UInt8] {
            var limits = TransportLimits()
            limits.handshakeNanos = min(limits.handshakeNanos, timeoutNanos)
            do throws(TransportError) {
                let client = try endpoint.connect(key: key, limits: limits)
                defer { client.close() }
                guard case .bytes(let bytes) = try client.call(opcode, .bytes([]), timeoutNanos: timeoutNanos) else {
                    throw TransportError(.malformed, "a reference reply to a status request")
                }
                return bytes
            } catch {
                throw error.moraineError
            }
        }
        switch kind {
        case "compaction", "flush":
            let bytes = try status(WorkerOpcode.status)
            do throws(TransportError) {
                return .worker(try WorkerStatusReply.decode(bytes))
            } catch {
                throw error.moraineError
            }
        case "compute":
            let bytes = try status(ComputeOpcode.status)
            do throws(TransportError) {
                return .compute(try ComputeStatusReply.decode(bytes))
            } catch {
                throw error.moraineError
            }
        case "memory":
            // Both questions on one connection, within the one deadline; the region is extra.
            var limits = TransportLimits()
            limits.handshakeNanos = min(limits.handshakeNanos, timeoutNanos)
            let deadline = monotonicNanos() + timeoutNanos
            do throws(TransportError) {
                let client = try endpoint.connect(key: key, limits: limits)
                defer { client.close() }
                guard case .bytes(let bytes) = try client.call(MemoryOpcode.status, .bytes([]), timeoutNanos: max(1, deadline - monotonicNanos()))
                else { throw TransportError(.malformed, "a reference reply to a status request") }
                let status = try MemoryStatusReply.decode(bytes)
                var region: MemoryRegionInfo? = nil
                if case .bytes(let info)? = try? client.call(MemoryOpcode.regionInfo, .bytes([]), timeoutNanos: max(1, deadline - monotonicNanos())) {
                    region = try? MemoryRegionInfo.decode(info)
                }
                return .memory(status, region: region)
            } catch {
                throw error.moraineError
            }
        default:
            var options = RemoteFileSystem.Options()
            options.callTimeoutNanos = max(1_000_000, timeoutNanos)
            let files = RemoteFileSystem(endpoint: endpoint, key: key, options: options)
            return .storage(try files.capacity(), tiers: try files.tiers())
        }
    }
}
