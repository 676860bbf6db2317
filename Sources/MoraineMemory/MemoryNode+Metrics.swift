// The memory node's metrics, read at scrape time: its region's arenas (held per database, with
// the holder's epoch, and free), the region's geometry, and this process's transport traffic.
import MoraineMessages
import MoraineSystem

extension MemoryNode {
    public func metricSamples() -> [MetricSample] {
        let info = self.info
        let status = self.status
        var samples: [MetricSample] = [
            .gauge("moraine_region_bytes", "Bytes of the memory node's region", info.regionBytes),
            .gauge("moraine_region_arena_bytes", "Bytes of one memtable arena", info.arenaBytes),
            .gauge("moraine_region_arena_count", "Memtable arenas the region holds", status.arenaCount),
            .gauge("moraine_region_arenas_free", "Memtable arenas free", status.freeArenas),
            .gauge("moraine_region_cache_slots", "Slots of the shared block cache in the region", info.cacheSlots),
            .gauge("moraine_region_persistent", "1 when the region is persistent memory (libpmem), 0 when emulated", info.isPersistentMemory ? 1 : 0),
            .counter("moraine_shared_cache_request_lookups_total", "Shared-cache blocks asked for by request (peers that cannot map the region)",
                lookupCounters.lookups),
            .counter("moraine_shared_cache_request_hits_total", "Shared-cache blocks served by request", lookupCounters.hits),
        ]
        for holder in status.holders {
            let labels = [("db", String(holder.database))]
            samples.append(.gauge("moraine_region_arenas_held", "Arenas a database's memtables hold", holder.arenas, labels: labels))
            samples.append(.gauge("moraine_lease_epoch", "A database's newest lease epoch (its owner's incarnation)", holder.epoch, labels: labels))
        }
        return samples + TransportMetrics.samples()
    }
}
