#!/usr/bin/env bash
# The compute node's benchmark (BENCHMARKS.md, "Compute node and compute in the application"):
# for each carrier (shm, tcp), injected link delay (0, 2, 20 µs, on every role's link) and block
# cache (8 MiB, 1 GiB), start a one-box cluster of every role (`moraine up`), then run each
# workload in one `moraine-bench` process on embedded Moraine, RocksDB, compute in the
# application (`application`: the engine here, every other role remote) and a thin client of
# the compute node (`connect`), alternating which goes first. One client thread, then 16.
# Prints Markdown tables of medians: throughput and p99 as ratios to embedded, and RocksDB.
# Usage: bash scripts/compute-bench.sh [--runs N] [--num N] [--carriers shm,tcp] [--delays_us 0,2,20]
#          [--caches 8388608,1073741824] [--benchmarks LIST] [--threads 1,16] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
num=1000000
carriers=shm,tcp
delays=0,2,20
caches=8388608,1073741824
benchmarks=fillrandom,overwrite,readrandom,readwhilewriting,seekrandom,ycsba,ycsbb,ycsbe,ycsbf
threads_list=1,16
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --num) num=$2; shift 2 ;;
    --carriers) carriers=$2; shift 2 ;;
    --delays_us) delays=$2; shift 2 ;;
    --caches) caches=$2; shift 2 ;;
    --benchmarks) benchmarks=$2; shift 2 ;;
    --threads) threads_list=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
swift build -c release --product moraine >/dev/null
(cd bench && swift build -c release --product moraine-bench >/dev/null)
moraine=$PWD/.build/release/moraine
bench=$PWD/bench/.build/release/moraine-bench
out=${out:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
run_dir=$work/run
cleanup() { "$moraine" down --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
for run in $(seq 1 "$runs"); do
  for carrier in ${carriers//,/ }; do
    for delay in ${delays//,/ }; do
      for cache in ${caches//,/ }; do
        tag="$carrier-${delay}us-$((cache >> 20))m-run$run"
        : > "$work/topology.toml"
        for kind in storage memory flush compaction compute; do
          printf '[[role]]\nkind = "%s"\ncarrier = "%s"\nlink_delay_ns = %d\n' "$kind" "$carrier" $((delay * 1000)) >> "$work/topology.toml"
        done
        printf 'block_cache_size = %d\n' "$cache" >> "$work/topology.toml"
        rm -rf "$run_dir" "$work/db"
        "$moraine" up --topology "$work/topology.toml" --run-dir "$run_dir" --detach >/dev/null
        for threads in ${threads_list//,/ }; do
          echo "== $tag, $threads thread(s)" >&2
          "$bench" --engine moraine,rocksdb,application,connect --cluster "$run_dir" --connect "$run_dir" --db "$work/db" \
            --num $((num / threads)) --threads "$threads" --cache_size "$cache" --benchmarks "$benchmarks" \
            --json "$out/$tag-t$threads.json" >&2
        done
        "$moraine" down --run-dir "$run_dir" >/dev/null
      done
    done
  done
done
python3 scripts/compute_bench_table.py "$out"
