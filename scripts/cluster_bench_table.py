#!/usr/bin/env python3
"""Markdown tables from scripts/cluster-bench.sh's JSON files: for each workload and each
carrier/delay, the median over runs of the cluster's throughput and p99 as ratios to embedded
Moraine's in the same run, and of the cluster's storage requests (and block-cache misses) per
operation. Usage: cluster_bench_table.py DIR"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict


def label(row):
    o = row["options"]
    name = row["benchmark"]
    extras = []
    if o.get("cache_size", 0) >= 1 << 30:
        extras.append("1 GiB cache")
    if o.get("sync"):
        extras.append("sync")
    if o.get("threads", 1) > 1:
        extras.append(f"{o['threads']} threads")
    if name == "multireadrandom":
        extras.append(f"batch {o.get('batch_size', 1)}")
    return name + (f" ({', '.join(extras)})" if extras else "")


def main(directory):
    ratios = defaultdict(list)  # (label, config) -> [ratio]
    p99 = defaultdict(list)
    requests = defaultdict(list)
    misses = defaultdict(list)
    embedded_ops = defaultdict(list)
    configs = []
    labels = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        match = re.match(r"(\w+)-(\d+)us-run\d+-\w\.json", os.path.basename(path))
        if not match:
            continue
        config = f"{match.group(1)} {match.group(2)} µs"
        if config not in configs:
            configs.append(config)
        rows = json.load(open(path))
        by_engine = defaultdict(dict)
        for row in rows:
            by_engine[row["engine"]][label(row)] = row
        for name, cluster in by_engine["cluster"].items():
            embedded = by_engine["moraine"].get(name)
            if embedded is None:
                continue
            if name not in labels:
                labels.append(name)
            key = (name, config)
            ratios[key].append(cluster["ops_per_sec"] / max(embedded["ops_per_sec"], 1e-9))
            p99[key].append(cluster["p99_us"] / max(embedded["p99_us"], 1e-9))
            embedded_ops[key].append(embedded["ops_per_sec"])
            if "storage_requests_per_op" in cluster:
                requests[key].append(cluster["storage_requests_per_op"])
            if "block_cache_misses_per_op" in cluster:
                misses[key].append(cluster["block_cache_misses_per_op"])

    def table(title, values, fmt):
        print(f"\n{title}\n")
        print("| workload | " + " | ".join(configs) + " |")
        print("|---|" + "---:|" * len(configs))
        for name in labels:
            cells = []
            for config in configs:
                got = values.get((name, config))
                cells.append(fmt(got) if got else "")
            print(f"| {name} | " + " | ".join(cells) + " |")

    configs.sort(key=lambda c: (c.split()[0] != "shm", int(c.split()[1])))
    runs = max((len(v) for v in ratios.values()), default=0)
    print(f"Medians of {runs} run(s).")
    table("Throughput, cluster / embedded:", ratios, lambda v: f"{statistics.median(v):.2f}")
    table("p99 latency, cluster / embedded (above 1: slower):", p99, lambda v: f"{statistics.median(v):.2f}")
    table(
        "Storage requests per operation (block-cache misses per operation):",
        {k: (requests[k], misses.get(k, [])) for k in requests},
        lambda v: f"{statistics.median(v[0]):.3f}" + (f" ({statistics.median(v[1]):.3f})" if v[1] else ""),
    )
    table("Embedded ops/s in the same runs (for scale):", embedded_ops, lambda v: f"{statistics.median(v):,.0f}")


if __name__ == "__main__":
    main(sys.argv[1])
