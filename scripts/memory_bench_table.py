#!/usr/bin/env python3
"""Markdown tables from scripts/memory-bench.sh's files: per workload, the median over runs of
the memory-node engine's throughput as a ratio to embedded Moraine with pmem durability and with
the WAL in the same run, and the recovery line of `moraine memory-bench`.
Usage: memory_bench_table.py DIR"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict


def main(directory):
    ratios = defaultdict(list)  # (workload, baseline) -> [memory / baseline]
    ops = defaultdict(list)  # (workload, engine) -> [ops/s]
    workloads = []
    for path in sorted(glob.glob(os.path.join(directory, "placement-*-run*.json"))):
        if os.path.basename(path).startswith("placement-request"):
            continue  # across boxes: its own table
        baseline = "pmem" if "-pmem-" in os.path.basename(path) else "wal"
        rows = json.load(open(path))
        by_engine = defaultdict(dict)
        for row in rows:
            by_engine[row["engine"]][row["benchmark"]] = row
        for name, memory in by_engine["memory"].items():
            embedded = by_engine["moraine"].get(name)
            if embedded is None:
                continue
            if name not in workloads:
                workloads.append(name)
            ratios[(name, baseline)].append(memory["ops_per_sec"] / max(embedded["ops_per_sec"], 1e-9))
            ops[(name, "memory-" + baseline)].append(memory["ops_per_sec"])
            ops[(name, "embedded-" + baseline)].append(embedded["ops_per_sec"])
    runs = max((len(v) for v in ratios.values()), default=0)
    if workloads:
        placement_table(workloads, runs, ratios, ops)
    request_table(directory)
    cache_table(directory)
    sharing_table(directory)
    for name in ("recovery.txt", "recovery-request.txt"):
        recovery = os.path.join(directory, name)
        if os.path.exists(recovery):
            for line in open(recovery):
                if line.startswith("median reopen") or line.startswith("memory-bench:") or line.startswith("the memory node's region"):
                    print("\n" + line.strip())


def placement_table(workloads, runs, ratios, ops):
    print(f"Medians of {runs} run(s).\n")
    print("| workload | memory node (ops/s) | embedded pmem (ops/s) | memory node / embedded pmem | embedded WAL (ops/s) | memory node / embedded WAL |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in workloads:
        def med(key):
            values = ops.get(key)
            return f"{statistics.median(values):,.0f}" if values else ""
        def ratio(baseline):
            values = ratios.get((name, baseline))
            return f"{statistics.median(values):.2f}" if values else ""
        print(f"| {name} | {med((name, 'memory-pmem'))} | {med((name, 'embedded-pmem'))} | {ratio('pmem')} "
              f"| {med((name, 'embedded-wal'))} | {ratio('wal')} |")


def request_table(directory):
    """Across boxes: the memtables in the benchmark's process, each write group in a log in an
    arena of a memory node reached over TCP by request, against embedded `pmem` in the same run."""
    ratios = defaultdict(list)  # (workload, threads) -> [memory / embedded]
    ops = defaultdict(list)  # (workload, threads, engine) -> [ops/s]
    rows_seen = []
    for path in sorted(glob.glob(os.path.join(directory, "placement-request*-pmem-run*.json"))):
        threads = 4 if os.path.basename(path).startswith("placement-request4") else 1
        by_engine = defaultdict(dict)
        for row in json.load(open(path)):
            by_engine[row["engine"]][row["benchmark"]] = row
        for name, memory in by_engine["memory"].items():
            embedded = by_engine["moraine"].get(name)
            if embedded is None:
                continue
            if (name, threads) not in rows_seen:
                rows_seen.append((name, threads))
            ratios[(name, threads)].append(memory["ops_per_sec"] / max(embedded["ops_per_sec"], 1e-9))
            ops[(name, threads, "memory")].append(memory["ops_per_sec"])
            ops[(name, threads, "embedded")].append(embedded["ops_per_sec"])
            if "p50_us" in memory:
                ops[(name, threads, "p50")].append(memory["p50_us"])
    if not rows_seen:
        return
    runs = max(len(v) for v in ratios.values())
    print(f"\nAcross boxes (memory node over TCP by request: memtable here, write groups to its logs), medians of {runs} run(s).\n")
    print("| workload | threads | by request (ops/s) | p50 µs | embedded pmem (ops/s) | by request / embedded pmem |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, threads in rows_seen:
        def med(kind, fmt="{:,.0f}"):
            values = ops.get((name, threads, kind))
            return fmt.format(statistics.median(values)) if values else ""
        print(f"| {name} | {threads} | {med('memory')} | {med('p50', '{:.1f}')} | {med('embedded')} "
              f"| {statistics.median(ratios[(name, threads)]):.2f} |")


def cache_table(directory):
    """readrandom and YCSB-B: the compute node (files on the storage node, an 8 MiB cache of its
    own) over the shared cache against embedded Moraine with 8 MiB and with 264 MiB, and without
    the shared cache against embedded with 8 MiB; per key count."""
    ratios = defaultdict(list)  # (keys, workload, setup) -> [cluster / embedded]
    ops = defaultdict(list)  # (keys, workload, engine label) -> [ops/s]
    hits = defaultdict(list)  # (keys, workload) -> [shared-cache hit rate]
    for path in sorted(glob.glob(os.path.join(directory, "cache-*-run*.json"))):
        match = re.match(r"cache-(\d+)-(shared|plain|request|tcpshared|tcpplain)-(\d+)-run\d+\.json", os.path.basename(path))
        if not match:
            continue
        keys, kind, peer = int(match.group(1)), match.group(2), int(match.group(3))
        setup = f"{kind}-{peer}"
        by_engine = defaultdict(dict)
        for row in json.load(open(path)):
            by_engine[row["engine"]][row["benchmark"]] = row  # a workload run twice: the second (warm) pass
        for name in ("readrandom", "ycsbb"):
            cluster = by_engine["cluster"].get(name)
            embedded = by_engine["moraine"].get(name)
            if cluster is None or embedded is None:
                continue
            ratios[(keys, name, setup)].append(cluster["ops_per_sec"] / max(embedded["ops_per_sec"], 1e-9))
            ops[(keys, name, "cluster-" + kind)].append(cluster["ops_per_sec"])
            ops[(keys, name, "cluster-" + setup)].append(cluster["ops_per_sec"])
            ops[(keys, name, f"embedded-{peer}")].append(embedded["ops_per_sec"])
    if not ratios:
        return
    runs = max(len(v) for v in ratios.values())
    small, large = 8388608, 276824064
    print(f"\nShared block cache, medians of {runs} run(s):\n")
    print("| keys | workload | compute 8 MiB + 256 MiB shared (ops/s) | / embedded 8 MiB | / embedded 264 MiB "
          "| compute 8 MiB, no shared cache (ops/s) | / embedded 8 MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for keys in sorted({k for k, _, _ in ratios}):
        for name in ("readrandom", "ycsbb"):
            def med(key):
                values = ops.get(key)
                return f"{statistics.median(values):,.0f}" if values else ""
            print(f"| {keys:,} | {name} | {med((keys, name, 'cluster-shared'))} "
                  f"| {fmt_ratio(ratios.get((keys, name, f'shared-{small}')))} "
                  f"| {fmt_ratio(ratios.get((keys, name, f'shared-{large}')))} "
                  f"| {med((keys, name, 'cluster-plain'))} | {fmt_ratio(ratios.get((keys, name, f'plain-{small}')))} |")
    remote = [("request", "memory node by request over TCP, storage node over shared memory"),
              ("tcpshared", "memory node by request and storage node over TCP"),
              ("tcpplain", "storage node over TCP, no shared cache")]
    if any(setup.split("-")[0] in dict(remote) for _, _, setup in ratios):
        print("\nThe shared cache reached by request over TCP (as from another box), compute 8 MiB, medians:\n")
        print("| keys | workload | setup | ops/s | / embedded 8 MiB |")
        print("|---:|---|---|---:|---:|")
        for keys in sorted({k for k, _, _ in ratios}):
            for name in ("readrandom", "ycsbb"):
                for kind, label in [("shared", "memory node mapped in place, storage node over shared memory")] + remote:
                    values = ratios.get((keys, name, f"{kind}-{small}"))
                    if values:
                        ops_values = ops.get((keys, name, f"cluster-{kind}-{small}"))
                        print(f"| {keys:,} | {name} | {label} | {med_value(ops_values)} | {fmt_ratio(values)} |")
    print(f"\nEmbedded peers (ops/s): " + ", ".join(
        f"{keys:,} {name} {label}: {med_value(ops.get((keys, name, f'embedded-{peer}')))}"
        for keys in sorted({k for k, _, _ in ratios}) for name in ("readrandom", "ycsbb")
        for label, peer in (("8 MiB", small), ("264 MiB", large))))


def med_value(values):
    return f"{statistics.median(values):,.0f}" if values else "-"


def sharing_table(directory):
    """Two compute processes at once: one shared cache against a private half each."""
    rows = []
    for setup in ("shared", "private"):
        for name in ("big", "small"):
            path = os.path.join(directory, f"share-{setup}-{name}.json")
            if not os.path.exists(path):
                continue
            reads = [r for r in json.load(open(path)) if r["benchmark"] == "readrandom"]
            hits = [line for line in open(os.path.join(directory, f"share-{setup}-{name}.txt")) if "shared cache hits" in line]
            rate = re.search(r"\(([\d.]+)%\)", hits[-1]).group(1) + "%" if hits else ""
            keys = reads[-1]["options"].get("num", "") if reads else ""
            rows.append((setup, name, keys, reads[-1]["ops_per_sec"] if reads else 0, rate))
    if not rows:
        return
    print("\nTwo compute processes at once (one run; the second readrandom pass):\n")
    print("| cache | database | keys | readrandom (ops/s) | shared-cache hit rate |")
    print("|---|---|---:|---:|---:|")
    for setup, name, keys, ops, rate in rows:
        label = "one 256 MiB shared" if setup == "shared" else "a private 128 MiB each"
        print(f"| {label} | {name} | {keys} | {ops:,.0f} | {rate} |")


def fmt_ratio(values):
    return f"{statistics.median(values):.2f}" if values else ""


if __name__ == "__main__":
    main(sys.argv[1])
