// A flush or compaction worker's metrics, read at scrape time: its slots, the jobs running and
// their bytes so far, the jobs finished, and this process's I/O and transport traffic. (A job's
// bytes, entries dropped and CPU time also reach the compute node that dispatched it, whose
// metrics count them per database.)
import MoraineMessages
import MoraineSystem

extension CompactionWorker {
    public func metricSamples() -> [MetricSample] {
        let status = self.status
        return [
            .gauge("moraine_worker_slots", "Jobs the worker runs at once at most", status.slots),
            .gauge("moraine_worker_jobs_running", "Jobs running now", status.running),
            .counter("moraine_worker_jobs_finished_total", "Jobs finished since the worker started", status.finished),
            .gauge("moraine_worker_running_bytes", "Bytes the running jobs have done so far", status.jobs.reduce(0) { $0 + $1.bytesDone }),
        ] + IOStatistics.samples() + TransportMetrics.samples()
    }
}
