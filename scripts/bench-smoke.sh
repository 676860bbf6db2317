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
  --benchmarks fillseq,fillrandom,overwrite,compact,readrandom,readseq,readreverse,seekrandom,deleterandom,readrandom,readwhilewriting,compact
python3 - "$out/results.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
by = {}
for i, r in enumerate(rows):
    by.setdefault((r["benchmark"], i // 2), {})[r["engine"]] = r
bad = 0
for (name, _), engines in sorted(by.items(), key=lambda kv: kv[0][1]):
    if set(engines) != {"moraine", "rocksdb"}:
        print(f"bench smoke: {name} did not run on both engines"); bad += 1; continue
    m, k = engines["moraine"], engines["rocksdb"]
    if name == "readwhilewriting":
        continue  # the concurrent writer makes found counts timing-dependent
    if m.get("found") != k.get("found") or (name not in ("compact",) and m["ops"] != k["ops"]):
        print(f"bench smoke: {name}: moraine ops={m['ops']} found={m.get('found')}, rocksdb ops={k['ops']} found={k.get('found')}")
        bad += 1
print(f"bench smoke: {len(rows)} results, {0 if bad else len(by)} workloads agree" if not bad else "bench smoke: FAILED")
sys.exit(1 if bad else 0)
PY
