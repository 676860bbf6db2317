"""Turns moraine-bench --json files (one per run) into a Markdown table of medians and ratios."""
import json
import statistics
import sys

rows = [r for path in sys.argv[1:] for r in json.load(open(path))]
order = []
cells = {}
for r in rows:
    if r["benchmark"] not in order:
        order.append(r["benchmark"])
    cells.setdefault((r["benchmark"], r["engine"]), []).append(r)

def med(benchmark, engine, key):
    return statistics.median(x[key] for x in cells[(benchmark, engine)])

print(f"runs: {len(sys.argv) - 1}; options: {json.dumps(rows[0]['options'], sort_keys=True)}\n")
print("| workload | Moraine ops/s | RocksDB ops/s | ratio | Moraine p99 µs | RocksDB p99 µs | p99 ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for b in order:
    if (b, "moraine") not in cells or (b, "rocksdb") not in cells:
        continue
    m, k = med(b, "moraine", "ops_per_sec"), med(b, "rocksdb", "ops_per_sec")
    mp, kp = med(b, "moraine", "p99_us"), med(b, "rocksdb", "p99_us")
    print(f"| {b} | {m:,.0f} | {k:,.0f} | {m / k:.2f} | {mp:.1f} | {kp:.1f} | {mp / kp:.2f} |")
