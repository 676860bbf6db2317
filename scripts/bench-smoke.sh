#!/usr/bin/env bash
# Smoke test of the benchmark harness (not a measurement): builds bench/'s moraine-bench, runs
# every db_bench workload once on Moraine and RocksDB at a tiny --num, and checks that both
# engines found the same keys. Needs librocksdb-dev (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s librocksdb-dev >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq librocksdb-dev >/dev/null
fi
(cd bench && swift build --product moraine-bench)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bench/.build/debug/moraine-bench --engine both --num 3000 --reads 3000 --db "$out/db" --json "$out/results.json" \
  --write_buffer_size 65536 --target_file_size_base 65536 --max_bytes_for_level_base 262144 \
  --benchmarks fillseq,fillrandom,overwrite,compact,readrandom,multireadrandom,readseq,readreverse,seekrandom,deleterandom,readrandom,multireadrandom,readwhilewriting,compact,ycsb_load,ycsba,ycsbb,ycsbc,ycsbd,ycsbe,ycsbf \
  --batch_size 16 --records 3000 --operations 2000
python3 - "$out/results.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
per_engine = {}
for r in rows:
    per_engine.setdefault(r["engine"], []).append(r)
moraine, rocksdb = per_engine.get("moraine", []), per_engine.get("rocksdb", [])
bad = 0
if len(moraine) != len(rocksdb) or not moraine:
    print(f"bench smoke: moraine gave {len(moraine)} results, rocksdb {len(rocksdb)}"); bad += 1
for m, k in zip(moraine, rocksdb):
    name = m["benchmark"]
    if name != k["benchmark"]:
        print(f"bench smoke: results out of step: {name} vs {k['benchmark']}"); bad += 1; break
    if name == "readwhilewriting":
        continue  # the concurrent writer makes found counts timing-dependent
    if m.get("found") != k.get("found") or (name != "compact" and m["ops"] != k["ops"]):
        print(f"bench smoke: {name}: moraine ops={m['ops']} found={m.get('found')}, rocksdb ops={k['ops']} found={k.get('found')}")
        bad += 1
print("bench smoke: FAILED" if bad else f"bench smoke: {len(moraine)} results per engine agree")
sys.exit(1 if bad else 0)
PY
