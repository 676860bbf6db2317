"""Turns the JSON files of scripts/benchmark-report.sh (OUT/<config>-run<i>.json) into a Markdown
report of medians and Moraine/RocksDB (and, where it ran, Moraine/LevelDB) ratios on stdout, and
OUT/chart.svg: per configuration and workload, the throughput ratio and the p99 ratio against
RocksDB as bars around the 1.0 line. No third-party
modules: the SVG is written by hand."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
CONFIG_ORDER = ["1m-8m", "1m-1g", "5m-8m", "5m-1g", "4k-8m", "4k-1g"]
CONFIG_NAMES = {
    "1m-8m": "1M keys × 100 B, 8 MiB cache",
    "1m-1g": "1M keys × 100 B, 1 GiB cache",
    "5m-8m": "5M keys × 100 B, 8 MiB cache (1M reads)",
    "5m-1g": "5M keys × 100 B, 1 GiB cache (1M reads)",
    "4k-8m": "200K keys × 4 KiB, 8 MiB cache",
    "4k-1g": "200K keys × 4 KiB, 1 GiB cache",
}

runs = {}
for path in sorted(glob.glob(os.path.join(out, "*-run*.json"))):
    config = os.path.basename(path).rsplit("-run", 1)[0]
    runs.setdefault(config, []).append(json.load(open(path)))
if not runs:
    sys.exit(f"no *-run*.json files in {out}")


def summarize(config_runs):
    """(order of workloads, {(workload, engine): [row per run]}, options of the first run)."""
    order, cells = [], {}
    for rows in config_runs:
        for r in rows:
            if r["benchmark"] not in order:
                order.append(r["benchmark"])
            cells.setdefault((r["benchmark"], r["engine"]), []).append(r)
    return order, cells, config_runs[0][0]["options"]


def med(cells, workload, engine, key):
    return statistics.median(x[key] for x in cells[(workload, engine)])


chart = []  # (config, workload, throughput ratio, p99 ratio)
print("Medians over the runs of each configuration; ratio = Moraine / peer (throughput: above 1.0")
print("is Moraine faster; p99: below 1.0 is Moraine's tail shorter). Where LevelDB ran, `vs best` is")
print("Moraine over the faster of RocksDB and LevelDB. `compact` is one operation, so its row compares")
print("1/seconds. YCSB rows named `ycsbX.op` are one operation type within a phase. Where RocksDB's own")
print("db_bench ran the same flags, its median and Moraine / db_bench follow; found counts are")
print("Moraine's over all threads and db_bench's first thread's (equal with one thread).\n")
for c in list(CONFIG_NAMES):
    CONFIG_NAMES[c + "-none"] = CONFIG_NAMES[c] + ", compression off"
    CONFIG_NAMES[c + "-mmap"] = CONFIG_NAMES[c] + ", tables mapped (--mmap_read)"
    CONFIG_NAMES[c + "-none-mmap"] = CONFIG_NAMES[c] + ", compression off, tables mapped (--mmap_read)"
CONFIG_ORDER = [x for c in CONFIG_ORDER for x in (c, c + "-mmap", c + "-none", c + "-none-mmap")]
for config in sorted(runs, key=lambda c: CONFIG_ORDER.index(c) if c in CONFIG_ORDER else 99):
    order, cells, options = summarize(runs[config])
    print(f"### {CONFIG_NAMES.get(config, config)}\n")
    print(f"{len(runs[config])} runs; options: `{json.dumps(options, sort_keys=True)}`\n")
    reference = any((w, "db_bench") in cells for w in order)
    leveldb = any((w, "leveldb") in cells for w in order)
    head = "| workload | Moraine ops/s | RocksDB ops/s | ratio |"
    rule = "|---|---:|---:|---:|"
    if leveldb:
        head += " LevelDB ops/s | vs LevelDB | vs best |"
        rule += "---:|---:|---:|"
    head += " Moraine p99 µs | RocksDB p99 µs | p99 ratio |"
    rule += "---:|---:|---:|"
    if leveldb:
        head += " LevelDB p99 µs |"
        rule += "---:|"
    if reference:
        head += " db_bench ops/s | vs db_bench | found: Moraine / db_bench |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for w in order:
        if (w, "moraine") not in cells or (w, "rocksdb") not in cells:
            continue
        m, k = med(cells, w, "moraine", "ops_per_sec"), med(cells, w, "rocksdb", "ops_per_sec")
        mp, kp = med(cells, w, "moraine", "p99_us"), med(cells, w, "rocksdb", "p99_us")
        ratio = m / k if k else float("nan")
        p99_ratio = mp / kp if kp else float("nan")
        compact = w == "compact"
        shown = (lambda x: f"{1 / x:.2f} s") if compact else (lambda x: f"{x:,.0f}")
        line = f"| {'compact (s)' if compact else w} | {shown(m)} | {shown(k)} | {ratio:.2f} |"
        if leveldb:
            if (w, "leveldb") in cells:
                l = med(cells, w, "leveldb", "ops_per_sec")
                line += f" {shown(l)} | {m / l:.2f} | {m / max(k, l):.2f} |"
            else:
                line += " — | — | — |"
        line += " — | — | — |" if compact else f" {mp:.1f} | {kp:.1f} | {p99_ratio:.2f} |"
        if leveldb:
            line += f" {med(cells, w, 'leveldb', 'p99_us'):.1f} |" if (w, "leveldb") in cells and not compact else " — |"
        if reference:
            if (w, "db_bench") in cells:
                d = med(cells, w, "db_bench", "ops_per_sec")
                found = ""
                if "found" in cells[(w, "db_bench")][0] and "found" in cells[(w, "moraine")][0]:
                    found = f"{med(cells, w, 'moraine', 'found'):,.0f} / {med(cells, w, 'db_bench', 'found'):,.0f}"
                line += f" {shown(d)} | {m / d:.2f} | {found} |"
            else:
                line += " — | — | |"
        print(line)
        if "." not in w:
            chart.append((config, w, ratio, None if compact else p99_ratio))
    print()

# The chart: one panel per configuration; per workload two bars on a log scale around 1.0.
panel_height, row, left, width = 40, 16, 150, 520
configs = []
for c, *_ in chart:
    if c not in configs:
        configs.append(c)
rows_per = {c: [x for x in chart if x[0] == c] for c in configs}
height = sum(panel_height + row * len(rows_per[c]) for c in configs) + 60
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 40}" height="{height}" '
    'font-family="sans-serif" font-size="11">',
    '<rect width="100%" height="100%" fill="white"/>',
    f'<text x="10" y="18" font-size="14">Moraine / RocksDB per workload (log scale, 0.25x–4x; 1.0 = par)</text>',
    f'<rect x="{left}" y="28" width="10" height="8" fill="#2b6cb0"/><text x="{left + 14}" y="36">throughput ratio (higher is better)</text>',
    f'<rect x="{left + 230}" y="28" width="10" height="8" fill="#dd6b20"/><text x="{left + 244}" y="36">p99 ratio (lower is better)</text>',
]
import math


def x_of(ratio):
    clipped = min(4.0, max(0.25, ratio))
    return left + width / 2 + (math.log(clipped, 4)) * (width / 2)


y = 50
for c in configs:
    svg.append(f'<text x="10" y="{y + 14}" font-size="12" font-weight="bold">{CONFIG_NAMES.get(c, c)}</text>')
    top = y + 22
    for i, tick in enumerate([0.25, 0.5, 1, 2, 4]):
        tx = x_of(tick)
        svg.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + row * len(rows_per[c])}" '
                   f'stroke="{"#000" if tick == 1 else "#ccc"}" stroke-width="{1 if tick == 1 else 0.5}"/>')
        svg.append(f'<text x="{tx - 8:.1f}" y="{top - 2}" fill="#666">{tick:g}x</text>')
    for j, (_, w, ratio, p99_ratio) in enumerate(rows_per[c]):
        ry = top + j * row
        svg.append(f'<text x="10" y="{ry + 11}">{w}</text>')
        mid = x_of(1.0)
        for k, (value, color) in enumerate([(ratio, "#2b6cb0"), (p99_ratio, "#dd6b20")]):
            if value is None or value != value:
                continue
            bx = x_of(value)
            svg.append(f'<rect x="{min(mid, bx):.1f}" y="{ry + 2 + k * 6}" width="{abs(bx - mid):.1f}" height="5" fill="{color}">'
                       f'<title>{w}: {value:.2f}</title></rect>')
        svg.append(f'<text x="{left + width + 4}" y="{ry + 11}" fill="#2b6cb0">{ratio:.2f}</text>')
    y = top + row * len(rows_per[c]) + 18
svg.append("</svg>")
open(os.path.join(out, "chart.svg"), "w").write("\n".join(svg) + "\n")
