#!/usr/bin/env bash
# Smoke test of the benchmark harness (not a measurement): builds bench/'s moraine-bench, runs
# every db_bench workload once on Moraine, RocksDB and LevelDB at a tiny --num, and checks that
# every engine found the same keys; then runs the same flags through RocksDB's own db_bench (Debian's
# rocksdb-tools) and checks Moraine found exactly the keys db_bench found, workload by workload,
# so `moraine bench` draws its keys as db_bench does. Needs librocksdb-dev, rocksdb-tools and
# libleveldb-dev (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s librocksdb-dev >/dev/null 2>&1 || ! dpkg -s rocksdb-tools >/dev/null 2>&1 || ! dpkg -s libleveldb-dev >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq librocksdb-dev rocksdb-tools libleveldb-dev >/dev/null
fi
(cd bench && swift build --product moraine-bench)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
workloads=fillseq,fillrandom,overwrite,compact,readrandom,multireadrandom,readseq,readreverse,seekrandom,deleterandom,readrandom,multireadrandom,readwhilewriting,compact
shape="--num=3000 --reads=3000 --seed=301 --batch_size=16 --write_buffer_size=65536 --target_file_size_base=65536 --max_bytes_for_level_base=262144"
# shellcheck disable=SC2086
bench/.build/debug/moraine-bench --engine all $shape --db "$out/db" --json "$out/results.json" \
  --benchmarks "$workloads,ycsb_load,ycsba,ycsbb,ycsbc,ycsbd,ycsbe,ycsbf" --records 3000 --operations 2000
# shellcheck disable=SC2086
db_bench $shape --db="$out/db_bench" --benchmarks="$workloads" --compression_type=none >"$out/db_bench.txt" 2>/dev/null
python3 - "$out/results.json" "$out/db_bench.txt" <<'PY'
import json, re, sys
rows = json.load(open(sys.argv[1]))
reference = [(m.group(1), int(m.group(2)))
             for m in re.finditer(r"^(\w+)\s*:.*\((\d+) of \d+ found\)", open(sys.argv[2]).read(), re.M)]
per_engine = {}
for r in rows:
    per_engine.setdefault(r["engine"], []).append(r)
moraine = per_engine.get("moraine", [])
bad = 0
for peer in ("rocksdb", "leveldb"):
    other = per_engine.get(peer, [])
    if len(moraine) != len(other) or not moraine:
        print(f"bench smoke: moraine gave {len(moraine)} results, {peer} {len(other)}"); bad += 1
    for m, k in zip(moraine, other):
        name = m["benchmark"]
        if name != k["benchmark"]:
            print(f"bench smoke: results out of step: {name} vs {peer}'s {k['benchmark']}"); bad += 1; break
        if name == "readwhilewriting":
            continue  # the concurrent writer makes found counts timing-dependent
        if m.get("found") != k.get("found") or (name != "compact" and m["ops"] != k["ops"]):
            print(f"bench smoke: {name}: moraine ops={m['ops']} found={m.get('found')}, {peer} ops={k['ops']} found={k.get('found')}")
            bad += 1
found = [(r["benchmark"], r["found"]) for r in moraine if "found" in r and not r["benchmark"].startswith("ycsb")]
compared = 0
for (name, count), (reference_name, reference_count) in zip(found, reference):
    if name != reference_name:
        print(f"bench smoke: db_bench's results out of step: {name} vs {reference_name}"); bad += 1; break
    if name == "readwhilewriting":
        continue
    compared += 1
    if count != reference_count:
        print(f"bench smoke: {name}: moraine found {count}, RocksDB's db_bench {reference_count}"); bad += 1
if len(reference) != len(found):
    print(f"bench smoke: db_bench reported {len(reference)} found counts, moraine {len(found)}"); bad += 1
print("bench smoke: FAILED" if bad else
      f"bench smoke: {len(moraine)} results per engine agree (moraine, rocksdb, leveldb); {compared} found counts equal RocksDB's db_bench's")
sys.exit(1 if bad else 0)
PY
