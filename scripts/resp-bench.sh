#!/usr/bin/env bash
# The Redis front end's benchmark (BENCHMARKS.md, "Redis front end"): redis-benchmark against
# redis-server, `moraine serve` and the Redis front end of a one-box cluster's compute node
# (`moraine up`, every role over shared memory) on this machine, one after the other, rotating
# which goes first from run to run: SET, GET, MSET and INCR, unpipelined (-P 1) and pipelined
# (-P 16), 50 clients, 100-byte values, keys drawn from 1M (-r). redis-server runs as Debian ships
# it but with persistence off (no RDB, no AOF: its default keeps data only in memory between
# snapshots); `moraine serve` and the compute node write their WAL (no fsync per write, the
# default; the compute node's on the storage node) with a 1 GiB block cache and a 256 MiB row
# cache (`--row_cache_size`), so the working set is cached: 1M keys of 100 bytes take about
# 170 MiB of row cache. GET is measured twice: a first pass after the SETs, then, after a
# warming pass of 2M GETs (-P 16) that is not reported (it touches ~86% of the 1M keys), with the
# working set cached.
# Prints requests per second per run and the medians' ratios to redis-server.
# Usage: bash scripts/resp-bench.sh [--runs N] [--requests N] [--out DIR] [--no-cluster]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
requests=500000
out=""
cluster=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cluster) cluster=0; shift ;;
    --runs) runs=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
swift build -c release --product moraine >/dev/null
moraine=$PWD/.build/release/moraine
out=${out:-$(mktemp -d)}
mkdir -p "$out"
rm -f "$out"/*.csv  # the table is built from every CSV there
work=$(mktemp -d)
redis_port=16379
moraine_port=16380
compute_port=16381
pids=()
cleanup() {
  [ "$cluster" = 1 ] && "$moraine" down --run-dir "$work/run" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >/dev/null &
pids+=($!)
"$moraine" serve --db "$work/db" --listen "127.0.0.1:$moraine_port" --cache_size 1073741824 --row_cache_size 268435456 \
  > "$work/serve.out" &
pids+=($!)
targets="redis moraine"
if [ "$cluster" = 1 ]; then
  cat > "$work/topology.toml" <<EOF
[[role]]
kind = "storage"
[[role]]
kind = "memory"
[[role]]
kind = "flush"
[[role]]
kind = "compaction"
[[role]]
kind = "compute"
block_cache_size = 1073741824
row_cache_size = 268435456
resp = "127.0.0.1:$compute_port"
EOF
  "$moraine" up --run-dir "$work/run" --topology "$work/topology.toml" --detach >/dev/null
  targets="redis moraine compute"
fi
for _ in $(seq 50); do
  redis-cli -p "$redis_port" PING >/dev/null 2>&1 && redis-cli -p "$moraine_port" PING >/dev/null 2>&1 && break
  sleep 0.2
done
# The compute node answers PING before its database is open; DBSIZE answers once it is.
if [ "$cluster" = 1 ]; then
  for _ in $(seq 100); do
    redis-cli -p "$compute_port" DBSIZE 2>/dev/null | grep -qv ERR && break
    sleep 0.2
  done
fi
# Waits (at most 120 s) until the machine is idle — at least 90% of the CPU time over a second —
# so one target's background flushes and compactions (the cluster's on its workers) do not run
# during the next target's measurement.
settle() {
  for _ in $(seq 120); do
    read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
    busy=$(( (u2 + n2 + s2 + q2 + sq2) - (u1 + n1 + s1 + q1 + sq1) ))
    idle=$(( (i2 + w2) - (i1 + w1) ))
    [ $(( idle * 100 )) -ge $(( (busy + idle) * 90 )) ] && return 0
  done
  echo "the machine did not settle within 120 s; measuring anyway" >&2
}
for run in $(seq 1 "$runs"); do
  # Rotate the order: each target goes first once every three runs.
  order=$(echo $targets | tr ' ' '\n' | awk -v r="$run" '{ a[NR] = $0 } END { for (i = 0; i < NR; i++) print a[(i + r - 1) % NR + 1] }')
  for target in $order; do
    port=$redis_port
    [ "$target" = moraine ] && port=$moraine_port
    [ "$target" = compute ] && port=$compute_port
    for pipeline in 1 16; do
      settle
      echo "== $target -P $pipeline run $run" >&2
      # GET runs twice: a first pass right after the SETs (reading what earlier runs' MSETs left
      # in tables, their blocks not yet in the cache after the compactions) and, after a warming
      # pass, a second with the working set cached, as the target is stated; both are reported.
      csv="$out/$target-P$pipeline-run$run.csv"
      bench() { redis-benchmark -p "$port" -t "$1" -P "$pipeline" -c 50 -d 100 -r 1000000 -n "$requests" --csv; }
      bench set > "$csv"
      bench get | sed 's/^"GET"/"GET-first-pass"/' | grep -v '^"test"' >> "$csv"
      redis-benchmark -p "$port" -t get -P 16 -c 50 -d 100 -r 1000000 -n 2000000 --csv > /dev/null
      bench get | grep -v '^"test"' >> "$csv"
      bench mset,incr | grep -v '^"test"' >> "$csv"
    done
  done
done
python3 - "$out" <<'PY'
import csv, glob, os, statistics, sys
from collections import defaultdict
rps = defaultdict(list)
for path in glob.glob(os.path.join(sys.argv[1], "*.csv")):
    target, pipeline, _ = os.path.basename(path)[:-4].split("-")
    with open(path) as f:
        for row in csv.reader(f):
            if row and row[0] != "test":
                rps[(row[0].split(" ")[0], pipeline, target)].append(float(row[1]))
print("| test | pipeline | redis-server req/s | moraine serve req/s | serve/redis | compute node req/s | compute/redis | runs |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for test in ["SET", "GET-first-pass", "GET", "MSET", "INCR"]:
    for pipeline in ["P1", "P16"]:
        r, m = rps.get((test, pipeline, "redis"), []), rps.get((test, pipeline, "moraine"), [])
        c = rps.get((test, pipeline, "compute"), [])
        if r and m:
            a, b = statistics.median(r), statistics.median(m)
            cc = f"{statistics.median(c):,.0f} | {statistics.median(c) / a:.2f}" if c else "- | -"
            print(f"| {test} | -{pipeline} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {cc} | {len(m)} |")
PY
echo "CSV in $out" >&2
