// The storage node's metrics, read at scrape time: bytes and files it stores, bytes free on its
// device (the directory walked at most once a second), each database's lease epoch, this
// process's io_uring activity and transport traffic.
import MoraineMessages
import MoraineSystem

extension StorageNode {
    /// How long a scrape reuses the last walk of the data directory (a walk stats every file).
    static let capacityReuseNanos: Int64 = 1_000_000_000

    /// The capacity as of at most `capacityReuseNanos` ago.
    func recentCapacity() -> StorageCapacityReply? {
        let now = monotonicNanos()
        if let (at, reply) = lastCapacity.withLock({ $0 }), now - at < Self.capacityReuseNanos { return reply }
        guard let payload = try? capacity(), let bytes = payload.byteArray, let reply = try? StorageCapacityReply.decode(.bytes(bytes)) else {
            return nil
        }
        lastCapacity.withLock { $0 = (now, reply) }
        return reply
    }

    public func metricSamples() -> [MetricSample] {
        var samples: [MetricSample] = []
        if let reply = recentCapacity() {
            samples += [
                .gauge("moraine_storage_bytes_stored", "Bytes of the databases' files on this storage node", reply.bytesUsed),
                .gauge("moraine_storage_bytes_free", "Bytes free on the storage node's file system", reply.bytesFree),
                .gauge("moraine_storage_files", "Files of the databases on this storage node", reply.fileCount),
            ]
        }
        for (root, epoch, leased) in leases.epochs() {
            samples.append(.gauge("moraine_lease_epoch", "A database's newest lease epoch (its owner's incarnation)", epoch, labels: [("db", root)]))
            samples.append(.gauge("moraine_lease_held", "1 while an owner's lease on the database runs", leased ? 1 : 0, labels: [("db", root)]))
        }
        return samples + IOStatistics.samples() + TransportMetrics.samples()
    }
}
