#!/usr/bin/env python3
"""Markdown tables from scripts/compute-bench.sh's JSON files: for each workload (with its cache
and client threads) and each carrier/delay, the median over runs of each cluster mode's
throughput and p99 as ratios to embedded Moraine's in the same run, RocksDB's ratio beside
them, and embedded ops/s for scale. Usage: compute_bench_table.py DIR"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

MODES = [("application", "compute in the application"), ("connect", "through the compute node")]


def label(row, cache_mib, threads):
    cache = "1 GiB" if cache_mib >= 1024 else f"{cache_mib} MiB"
    return f"{row['benchmark']} ({cache}, {threads} client{'s' if threads > 1 else ''})"


def main(directory):
    ratios = defaultdict(list)  # (engine, label, config) -> [ratio]
    p99 = defaultdict(list)
    embedded_ops = defaultdict(list)
    configs, labels = [], []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        match = re.match(r"(\w+)-(\d+)us-(\d+)m-run\d+-t(\d+)\.json", os.path.basename(path))
        if not match:
            continue
        config = f"{match.group(1)} {match.group(2)} µs"
        if config not in configs:
            configs.append(config)
        cache_mib, threads = int(match.group(3)), int(match.group(4))
        by_engine = defaultdict(dict)
        for row in json.load(open(path)):
            by_engine[row["engine"]][label(row, cache_mib, threads)] = row
        for name, embedded in by_engine["moraine"].items():
            if "." in embedded["benchmark"]:
                continue  # a YCSB workload's per-operation rows
            if name not in labels:
                labels.append(name)
            embedded_ops[(name, config)].append(embedded["ops_per_sec"])
            for engine in ["application", "connect", "rocksdb"]:
                other = by_engine[engine].get(name)
                if other is None:
                    continue
                ratios[(engine, name, config)].append(other["ops_per_sec"] / max(embedded["ops_per_sec"], 1e-9))
                p99[(engine, name, config)].append(other["p99_us"] / max(embedded["p99_us"], 1e-9))

    configs.sort(key=lambda c: (c.split()[0] != "shm", int(c.split()[1])))

    def table(title, cell):
        print(f"\n{title}\n")
        print("| workload | " + " | ".join(configs) + " |")
        print("|---|" + "---:|" * len(configs))
        for name in labels:
            print(f"| {name} | " + " | ".join(cell(name, config) for config in configs) + " |")

    def median(values, key):
        got = values.get(key)
        return f"{statistics.median(got):.2f}" if got else ""

    runs = max((len(v) for v in ratios.values()), default=0)
    print(f"Medians of {runs} run(s).")
    for engine, title in MODES:
        table(f"Throughput, {title} / embedded:", lambda n, c, e=engine: median(ratios, (e, n, c)))
        table(f"p99 latency, {title} / embedded (above 1: slower):", lambda n, c, e=engine: median(p99, (e, n, c)))
    table("Throughput, RocksDB / embedded (the same runs):", lambda n, c: median(ratios, ("rocksdb", n, c)))
    table(
        "Embedded ops/s in the same runs (for scale):",
        lambda n, c: f"{statistics.median(embedded_ops[(n, c)]):,.0f}" if embedded_ops.get((n, c)) else "",
    )


if __name__ == "__main__":
    main(sys.argv[1])
