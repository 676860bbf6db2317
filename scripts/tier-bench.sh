#!/usr/bin/env bash
# Storage tiers' benchmark (BENCHMARKS.md, "Storage tiers"), in one run on one machine: Moraine
# and RocksDB side by side (`moraine-bench --engine both`, alternating workload by workload) under
# three placements of the tables, WAL and manifest staying in the database directory on disk:
#   disk     every table on disk (no tiers);
#   l0l1     L0 and L1 on the persistent-memory tier (a directory in /dev/shm standing in for a
#            DAX file system; Moraine reads it through mappings, `:pmem`), the rest on disk
#            (RocksDB: the same two db_paths);
#   pmem     every table on the persistent-memory tier.
# Workloads: fillrandom, overwrite, readrandom, seekrandom, then YCSB load, A and B, on --num keys
# of 100-byte values; memtables of 8 MiB, L1 of 32 MiB (x10 per level), so that at 1M keys the
# tree reaches L2 and the fast tier's 64 MiB (L0 counted as L1, plus L1) holds the upper levels
# only. Write amplification: tables written (flushes, compactions and, for Moraine, moves between
# tiers) over bytes flushed, RocksDB's own W-Amp. Prints Markdown tables of medians. Usage:
#   bash scripts/tier-bench.sh [--runs N] [--num N] [--placements disk,l0l1,pmem] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
num=1000000
placements=disk,l0l1,pmem
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --num) num=$2; shift 2 ;;
    --placements) placements=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
(cd bench && swift build -c release --product moraine-bench >/dev/null)
bench=$PWD/bench/.build/release/moraine-bench
out=${out:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/moraine-tier-bench.XXXXXX)
fast=$(mktemp -d /dev/shm/moraine-tier-bench.XXXXXX)
cleanup() { rm -rf "$work" "$fast"; }
trap cleanup EXIT
level_base=$((32 << 20))
common=(--engine both --num "$num" --value_size 100 --write_buffer_size $((8 << 20)) --target_file_size_base $((8 << 20))
  --max_bytes_for_level_base "$level_base" --benchmarks fillrandom,overwrite,readrandom,seekrandom,ycsb_load,ycsba,ycsbb
  --statistics)
for run in $(seq 1 "$runs"); do
  for placement in ${placements//,/ }; do
    case "$placement" in
      disk) tiers=() ;;
      l0l1) tiers=(--tiers "$fast/l0l1:$((2 * level_base)):pmem,$work/slow") ;;
      pmem) tiers=(--tiers "$fast/all:pmem") ;;
      *) echo "unknown placement $placement" >&2; exit 2 ;;
    esac
    echo "== $placement run $run" >&2
    rm -rf "$work"/* "$fast"/*
    "$bench" "${common[@]}" --db "$work/db" "${tiers[@]}" --json "$out/$placement-run$run.json" >"$out/$placement-run$run.txt"
    # Only what reaches the tiers' file systems counts: let the disk settle between runs.
    sync
  done
done
python3 scripts/tier_bench_table.py "$out"
echo "results in $out" >&2
