#!/usr/bin/env python3
"""The table of scripts/engine-costs.sh: per workload and engine, median throughput and p99 over
the timed runs, median peak resident memory, and instructions per operation from callgrind's
per-workload profile parts. Ratios are Moraine over the better of the other engines (throughput:
above 1 is Moraine faster; memory and instructions: below 1 is Moraine leaner).

Usage: engine_costs_table.py DIR [--config C] [--threads N] [--callgrind_num N] [--budget_mib M]
       engine_costs_table.py --totals PROFILE_DIR   (writes PROFILE_DIR/totals.txt from its parts)
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys


def load_timed(directory):
    """{engine: {workload: [rows over runs]}}"""
    timed = {}
    for path in sorted(glob.glob(os.path.join(directory, "timed-*-run*.json"))):
        engine = re.match(r"timed-(.+)-run\d+\.json", os.path.basename(path)).group(1)
        with open(path) as f:
            for row in json.load(f):
                timed.setdefault(engine, {}).setdefault(row["benchmark"], []).append(row)
    return timed


def part_totals(directory):
    """Instruction totals of callgrind's parts, in the order they were written: the parts
    numbered from 1, then the last part (written at exit, no number). From totals.txt (one per
    line) when the profiles were summed up and removed."""
    saved = os.path.join(directory, "totals.txt")
    if os.path.exists(saved):
        with open(saved) as f:
            return [int(line) for line in f if line.strip()]
    numbered = []
    for path in glob.glob(os.path.join(directory, "callgrind.out.*")):
        suffix = path.rsplit(".", 1)[1]
        if suffix.isdigit():
            numbered.append((int(suffix), path))
    paths = [p for _, p in sorted(numbered)] + [os.path.join(directory, "callgrind.out")]
    totals = []
    for path in paths:
        if not os.path.exists(path):
            return None
        total = None
        with open(path) as f:
            for line in f:
                if line.startswith("totals:") or (total is None and line.startswith("summary:")):
                    total = int(line.split()[1])
        totals.append(total or 0)
    return totals


def load_instructions(directory, engine):
    """{workload: instructions per operation} from OUT/callgrind-ENGINE{.json,/}."""
    rows_path = os.path.join(directory, f"callgrind-{engine}.json")
    parts = part_totals(os.path.join(directory, f"callgrind-{engine}"))
    if not os.path.exists(rows_path) or parts is None:
        return {}
    with open(rows_path) as f:
        rows = json.load(f)
    workloads = [r for r in rows if "." not in r["benchmark"]]
    # Part 1 is the start (options, open); part k + 1 is workload k; the last also holds close.
    if len(parts) != len(workloads) + 1:
        return {}
    return {r["benchmark"]: parts[i + 1] / max(r["ops"], 1) for i, r in enumerate(workloads)}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def cells_of(engine, name, timed, instructions):
    rows = timed[engine].get(name, [])
    return (median([r["ops_per_sec"] for r in rows]), median([r["p99_us"] for r in rows]),
            median([r.get("peak_rss_mib") for r in rows]), instructions[engine].get(name))


def print_compact(args, engines, workloads, timed, instructions):
    names = " / ".join(engines)
    print(f"| workload | ops/s: {names} | vs best | p99 µs: {names} | peak RSS MiB: {names} | RSS vs target | "
          f"instructions/op: {names} | vs fewest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in workloads:
        if "." in name:
            continue
        cells = {e: cells_of(e, name, timed, instructions) for e in engines}
        peers = [cells[e] for e in engines if e != "moraine"]
        mine = cells.get("moraine")
        best = max((c for c in peers if c[0]), key=lambda c: c[0], default=None)
        least_rss = min((c[2] for c in peers if c[2]), default=None)
        least_ins = min((c[3] for c in peers if c[3]), default=None)
        def joined(i, digits=0):
            return " / ".join(fmt(cells[e][i], digits) for e in engines)
        def ratio(a, b):
            return fmt(a / b, 2) if a is not None and b else "—"
        target = least_rss + args.budget_mib if least_rss is not None and args.budget_mib is not None else None
        throughput = joined(0)
        if name == "compact":
            # One operation: its seconds (the JSON's ops/s has one decimal; its p99 is the
            # operation's time), and the ratio compares 1/seconds.
            cells = {e: (1e6 / c[1] if c[1] else None, c[1], c[2], c[3]) for e, c in cells.items()}
            peers = [cells[e] for e in engines if e != "moraine"]
            mine = cells.get("moraine")
            best = max((c for c in peers if c[0]), key=lambda c: c[0], default=None)
            throughput = " / ".join(f"{cells[e][1] / 1e6:.2f} s" if cells[e][1] else "—" for e in engines)
        print(f"| {name} | {throughput} | {ratio(mine[0], best[0] if best else None)} | {joined(1, 1)} | {joined(2)} | "
              f"{ratio(mine[2], target)} | {joined(3)} | {ratio(mine[3], least_ins)} |")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--totals":
        totals = part_totals(sys.argv[2])
        if totals is None:
            sys.exit(f"no complete profile in {sys.argv[2]}")
        with open(os.path.join(sys.argv[2], "totals.txt"), "w") as f:
            f.write("".join(f"{t}\n" for t in totals))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--config", default="")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--callgrind_num", default="")
    parser.add_argument("--compact", action="store_true",
                        help="one column per measure, the engines' values joined by ' / ' (BENCHMARKS.md's form)")
    parser.add_argument("--budget_mib", type=float, default=None,
                        help="the configured block cache and write buffers, MiB: the memory target is "
                             "the leaner peer's peak plus this")
    args = parser.parse_args()
    timed = load_timed(args.directory)
    engines = [e for e in ("moraine", "rocksdb", "leveldb") if e in timed] + sorted(
        e for e in timed if e not in ("moraine", "rocksdb", "leveldb"))
    instructions = {e: load_instructions(args.directory, e) for e in engines}
    runs = max((len(v) for e in timed.values() for v in e.values()), default=0)
    workloads = []
    for engine in engines:
        for name in timed[engine]:
            if name not in workloads:
                workloads.append(name)
    print(f"{args.config}, {args.threads} thread(s): medians of {runs} timed runs, each engine in its own "
          f"process; instructions per operation from callgrind over {args.callgrind_num} keys "
          "(every thread of the process).\n")
    if args.compact:
        print_compact(args, engines, workloads, timed, instructions)
        return
    header = "| workload |"
    rule = "|---|"
    for engine in engines:
        header += f" {engine} ops/s | {engine} p99 µs | {engine} peak RSS MiB | {engine} instr/op |"
        rule += "---:|---:|---:|---:|"
    header += " Moraine vs best: ops/s | p99 | RSS | instr/op |"
    rule += "---:|---:|---:|---:|"
    if args.budget_mib is not None:
        header += " RSS vs target |"
        rule += "---:|"
    print(header)
    print(rule)
    for name in workloads:
        cells = {}
        line = f"| {name} |"
        for engine in engines:
            rows = timed[engine].get(name, [])
            ops = median([r["ops_per_sec"] for r in rows])
            p99 = median([r["p99_us"] for r in rows])
            rss = median([r.get("peak_rss_mib") for r in rows])
            ins = instructions[engine].get(name)
            cells[engine] = (ops, p99, rss, ins)
            line += f" {fmt(ops)} | {fmt(p99, 1)} | {fmt(rss)} | {fmt(ins)} |"
        peers = [cells[e] for e in engines if e != "moraine" and cells[e][0]]
        mine = cells.get("moraine")
        if mine and mine[0] and peers:
            best = max(peers, key=lambda c: c[0])
            def ratio(a, b):
                return fmt(a / b, 2) if a is not None and b else "—"
            least_rss = min((c[2] for c in peers if c[2]), default=None)
            least_ins = min((c[3] for c in peers if c[3]), default=None)
            line += f" {ratio(mine[0], best[0])} | {ratio(mine[1], best[1])} | {ratio(mine[2], least_rss)} | {ratio(mine[3], least_ins)} |"
            if args.budget_mib is not None:
                line += f" {ratio(mine[2], least_rss + args.budget_mib if least_rss else None)} |"
        else:
            line += " — | — | — | — |" + (" — |" if args.budget_mib is not None else "")
        print(line)
    print("\nRatios: Moraine over the peer with the higher throughput (p99 against that peer's), and "
          "over the lower peak RSS and the fewer instructions of the peers. "
          + (f"RSS vs target: Moraine's peak over the leaner peer's plus the configured cache and write buffers "
             f"({args.budget_mib:,.0f} MiB): at most 1.00 meets the target. " if args.budget_mib is not None else "")
          + "YCSB rows named `ycsbX.op` are one operation type within a phase (no profile part of their own).")


if __name__ == "__main__":
    main()
