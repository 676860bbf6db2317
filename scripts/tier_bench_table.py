#!/usr/bin/env python3
"""Markdown tables from scripts/tier-bench.sh's files: per placement and workload, the median over
runs of each engine's throughput, p99 and the Moraine/RocksDB ratio; and each engine's write
amplification after the writes of fillrandom and overwrite (tables written over bytes flushed).
Usage: tier_bench_table.py DIR"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

PLACEMENTS = [("disk", "every table on disk"), ("l0l1", "L0-L1 on the pmem tier"), ("pmem", "every table on the pmem tier")]


def write_amplification(text):
    """Per engine, the write amplification printed after overwrite (--statistics)."""
    found = {}
    section = None
    for line in text.splitlines():
        match = re.match(r"^(moraine|rocksdb)\s+(\w+)\s+:", line)
        if match:
            section = (match.group(1), match.group(2))
            continue
        if section is None or section[1] != "overwrite":
            continue
        if line.startswith("  moraine stats: {"):
            stats = json.loads(line.split("moraine stats: ", 1)[1])
            flushed = max(stats["flush_bytes_written"], 1)
            written = stats["flush_bytes_written"] + stats["compaction_bytes_written"] + stats.get("tier_move_bytes", 0)
            found["moraine"] = written / flushed
        elif line.startswith("  rocksdb stats:  Sum "):
            columns = line.split("rocksdb stats:", 1)[1].split()
            # Sum files size-value size-unit score read rn rnp1 write wnew moved w-amp ...
            found["rocksdb"] = float(columns[11])
    return found


def main(directory):
    ops = defaultdict(list)  # (placement, workload, engine) -> [ops/s]
    p99 = defaultdict(list)
    amp = defaultdict(list)  # (placement, engine) -> [w-amp]
    ratios = defaultdict(list)
    workloads = []
    for placement, _ in PLACEMENTS:
        for path in sorted(glob.glob(os.path.join(directory, f"{placement}-run*.json"))):
            rows = json.load(open(path))
            by = defaultdict(dict)
            for row in rows:
                by[row["engine"]][row["benchmark"]] = row
                if row["benchmark"] not in workloads:
                    workloads.append(row["benchmark"])
            for name, row in by["moraine"].items():
                ops[(placement, name, "moraine")].append(row["ops_per_sec"])
                p99[(placement, name, "moraine")].append(row["p99_us"])
                other = by["rocksdb"].get(name)
                if other:
                    ops[(placement, name, "rocksdb")].append(other["ops_per_sec"])
                    p99[(placement, name, "rocksdb")].append(other["p99_us"])
                    ratios[(placement, name)].append(row["ops_per_sec"] / max(other["ops_per_sec"], 1e-9))
            text = path[:-5] + ".txt"
            if os.path.exists(text):
                for engine, value in write_amplification(open(text).read()).items():
                    amp[(placement, engine)].append(value)
    med = lambda values: statistics.median(values) if values else float("nan")
    print("| workload | placement | Moraine ops/s | RocksDB ops/s | Moraine/RocksDB | Moraine p99 µs | RocksDB p99 µs | Moraine vs its disk |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in workloads:
        for placement, label in PLACEMENTS:
            if (placement, name, "moraine") not in ops:
                continue
            m = med(ops[(placement, name, "moraine")])
            r = med(ops[(placement, name, "rocksdb")])
            base = med(ops[("disk", name, "moraine")])
            print(
                f"| {name} | {label} | {m:,.0f} | {r:,.0f} | {med(ratios[(placement, name)]):.2f} | "
                f"{med(p99[(placement, name, 'moraine')]):.1f} | {med(p99[(placement, name, 'rocksdb')]):.1f} | {m / base:.2f} |"
            )
    print()
    print("| placement | Moraine write amplification | RocksDB write amplification |")
    print("|---|---:|---:|")
    for placement, label in PLACEMENTS:
        if (placement, "moraine") in amp or (placement, "rocksdb") in amp:
            print(f"| {label} | {med(amp[(placement, 'moraine')]):.2f} | {med(amp[(placement, 'rocksdb')]):.1f} |")
    runs = max((len(v) for v in ratios.values()), default=0)
    print(f"\nmedians of {runs} runs")


if __name__ == "__main__":
    main(sys.argv[1])
