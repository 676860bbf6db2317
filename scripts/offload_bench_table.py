#!/usr/bin/env python3
"""Markdown table from scripts/offload-bench.sh's JSON files: per workload, the median over runs of
each engine's throughput, write p99 and p99.9, write-stall seconds, CPU seconds of the measured
process, and compaction MB/s (compaction bytes read and written over compaction time, as the
compute node sees it); then the cluster's ratios to embedded. Usage: offload_bench_table.py DIR"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

ENGINES = [("moraine", "embedded, 1 CPU"), ("cluster", "compute on 1 CPU + 1 worker"), ("cluster2", "compute + 2 workers")]


def main(directory):
    rows = defaultdict(lambda: defaultdict(list))  # (workload) -> engine -> [row]
    order = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        match = re.match(r"(fill-(\d+)|ycsba)-run\d+-(\w+)\.json", os.path.basename(path))
        if not match:
            continue
        engine = match.group(3)
        with open(path) as f:
            for row in json.load(f):
                label = row["benchmark"]
                if row["benchmark"] in ("fillrandom", "overwrite"):
                    label += f" {int(row['options']['num']) / 1e6:g}M"
                if label not in order:
                    order.append(label)
                rows[label][engine].append(row)

    def med(values):
        return statistics.median(values) if values else None

    print("| workload | engine | ops/s | p99 µs | p99.9 µs | stalls s | CPU s | compaction MB/s | runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in order:
        for engine, name in ENGINES:
            sample = rows[label].get(engine, [])
            if not sample:
                continue
            ops = med([r["ops_per_sec"] for r in sample])
            p99 = med([r["p99_us"] for r in sample])
            p999 = med([r["p999_us"] for r in sample])
            stalls = med([r.get("stall_micros", 0) / 1e6 for r in sample])
            cpu = med([r["cpu_seconds"] for r in sample])
            rates = [r["compaction_bytes"] / r["compaction_micros"] for r in sample if r.get("compaction_micros", 0) > 0]
            rate = f"{med(rates) * 1e6 / 1048576:.1f}" if rates else "–"
            print(f"| {label} | {name} | {ops:,.0f} | {p99:.1f} | {p999:.1f} | {stalls:.2f} | {cpu:.1f} | {rate} | {len(sample)} |")
    print()
    print("| workload | throughput cluster/embedded | p99 cluster/embedded | CPU s cluster/embedded |")
    print("|---|---:|---:|---:|")
    for label in order:
        a, b = rows[label].get("cluster", []), rows[label].get("moraine", [])
        if not a or not b:
            continue
        ratio = med([r["ops_per_sec"] for r in a]) / med([r["ops_per_sec"] for r in b])
        p99 = med([r["p99_us"] for r in a]) / max(med([r["p99_us"] for r in b]), 1e-9)
        cpu = med([r["cpu_seconds"] for r in a]) / max(med([r["cpu_seconds"] for r in b]), 1e-9)
        print(f"| {label} | {ratio:.2f} | {p99:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
