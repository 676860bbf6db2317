#!/usr/bin/env bash
# The system layer's engine-level measurements (issue: io_uring, pmem), RUNS times each, as one
# Markdown report on stdout:
#  1. readrandom and multireadrandom with a 1 MiB block cache: Moraine on io_uring, Moraine on
#     the pread fallback, and RocksDB, on the same keys (fillrandom + compact first).
#  2. fillrandom by durability: Moraine pmem, Moraine WAL unsynced, Moraine WAL synced, RocksDB
#     synced. Synced runs write SYNC_NUM keys (fsync-bound), the others NUM.
# Usage: bash scripts/system-bench.sh [NUM] [RUNS] [SYNC_NUM]
set -euo pipefail
cd "$(dirname "$0")/.."
num=${1:-1000000}
runs=${2:-3}
sync_num=${3:-30000}
(cd bench && swift build -c release --product moraine-bench >/dev/null)
bench=bench/.build/release/moraine-bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$runs"); do
  for backend in io_uring pread; do
    engines=moraine
    [ "$backend" = io_uring ] && engines=both
    $bench --engine $engines --io_backend $backend --num "$num" --cache_size 1048576 --batch_size 32 \
      --benchmarks fillrandom,compact,readrandom,multireadrandom --db "$out/db" --json "$out/read-$backend-$i.json" >&2
  done
  $bench --engine moraine --durability pmem --num "$num" --benchmarks fillrandom --db "$out/db" \
    --json "$out/fill-pmem-$i.json" >&2
  $bench --engine moraine --num "$num" --benchmarks fillrandom --db "$out/db" --json "$out/fill-wal-$i.json" >&2
  $bench --engine both --sync 1 --num "$sync_num" --benchmarks fillrandom --db "$out/db" \
    --json "$out/fill-sync-$i.json" >&2
done
python3 - "$out" "$runs" <<'PY'
import json, sys, os, statistics
out, runs = sys.argv[1], int(sys.argv[2])
def rows(prefix):
    result = []
    for i in range(1, runs + 1):
        result.extend(json.load(open(os.path.join(out, f"{prefix}-{i}.json"))))
    return result
def median(rs, engine, bench, key="ops_per_sec"):
    values = [r[key] for r in rs if r["engine"] == engine and r["benchmark"] == bench]
    return statistics.median(values) if values else float("nan")
uring, pread = rows("read-io_uring"), rows("read-pread")
print("| workload (1 MiB cache) | Moraine io_uring ops/s | Moraine pread ops/s | RocksDB ops/s | io_uring/pread | Moraine io_uring/RocksDB | p99 us io_uring / pread / RocksDB |")
print("|---|---|---|---|---|---|---|")
for b in ("readrandom", "multireadrandom"):
    u, p, r = median(uring, "moraine", b), median(pread, "moraine", b), median(uring, "rocksdb", b)
    p99 = (median(uring, "moraine", b, "p99_us"), median(pread, "moraine", b, "p99_us"), median(uring, "rocksdb", b, "p99_us"))
    print(f"| {b} | {u:,.0f} | {p:,.0f} | {r:,.0f} | {u/p:.2f} | {u/r:.2f} | {p99[0]:.1f} / {p99[1]:.1f} / {p99[2]:.1f} |")
pm, wal, sync = rows("fill-pmem"), rows("fill-wal"), rows("fill-sync")
pmem_rate = median(pm, "moraine", "fillrandom")
wal_rate = median(wal, "moraine", "fillrandom")
sync_m, sync_r = median(sync, "moraine", "fillrandom"), median(sync, "rocksdb", "fillrandom")
print()
print("| fillrandom | ops/s (median) | p99 us | vs RocksDB synced | vs Moraine WAL unsynced |")
print("|---|---|---|---|---|")
for name, rs, engine, rate in (("Moraine pmem", pm, "moraine", pmem_rate), ("Moraine WAL, sync=0", wal, "moraine", wal_rate),
                               ("Moraine WAL, sync=1", sync, "moraine", sync_m), ("RocksDB WAL, sync=1", sync, "rocksdb", sync_r)):
    print(f"| {name} | {rate:,.0f} | {median(rs, engine, 'fillrandom', 'p99_us'):.1f} | {rate/sync_r:.1f}x | {rate/wal_rate:.2f} |")
PY
