"""Reads RocksDB db_bench's output on stdin and appends its results, as rows of engine "db_bench",
to the JSON array of scripts/benchmark-report.sh's run file named by argv[1]: ops per second,
micros per op, the p50/p99/p99.9 of --histogram=1, and the found count (db_bench prints its
first thread's). No third-party modules."""
import json
import re
import sys

path = sys.argv[1]
rows = json.load(open(path))
options = rows[0]["options"] if rows else {}
result = re.compile(r"^(\w+)\s*:\s*([\d.]+) micros/op (\d+) ops/sec.*?(?:\((\d+) of (\d+) found\))?\s*$")
percentiles = re.compile(r"^Percentiles: P50: ([\d.]+) P75: [\d.]+ P99: ([\d.]+) P99\.9: ([\d.]+)")
added = []
for line in sys.stdin:
    line = line.rstrip("\n")
    m = result.match(line)
    if m:
        row = {"engine": "db_bench", "benchmark": m.group(1), "micros_per_op": float(m.group(2)),
               "ops_per_sec": float(m.group(3)) or 1e6 / float(m.group(2)), "options": options}
        if m.group(4) is not None:
            row["found"] = int(m.group(4))
            row["found_of"] = int(m.group(5))
        added.append(row)
        continue
    p = percentiles.match(line)
    if p and added and "p99_us" not in added[-1]:
        added[-1].update(p50_us=float(p.group(1)), p99_us=float(p.group(2)), p999_us=float(p.group(3)))
json.dump(rows + added, open(path, "w"), indent=0)
print(f"db_bench: {len(added)} results added to {path}", file=sys.stderr)
