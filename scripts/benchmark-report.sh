#!/usr/bin/env bash
# Regenerates the side-by-side report in BENCHMARKS.md ("Moraine vs RocksDB"): builds bench/'s
# moraine-bench in release mode and runs every db_bench workload and YCSB A–F on Moraine, RocksDB
# and LevelDB (rotating which goes first, identical options) RUNS times for each configuration:
#   1M keys × 100 B values, 5M keys × 100 B, 200K keys × 4 KiB, each with an 8 MiB and a 1 GiB
#   block cache; a configuration with -none (1m-8m-none) runs with compression off, and one with
#   -mmap (1m-8m-none-mmap) reads tables through mappings (--mmap_read): LevelDB always maps its
#   tables and its only compression, Snappy, stands in for LZ4, so -none-mmap is its
#   like-for-like row.
# Each run also puts the same db_bench workloads, with the same flags, through RocksDB's own
# db_bench (Debian's rocksdb-tools) as a second RocksDB reference; its results join the run's JSON
# as engine "db_bench", found counts included.
# It writes the JSON of every run, a Markdown table of medians and ratios (report.md) and a chart
# of throughput ratio and p99 ratio per workload (chart.svg) into OUT.
#
# Usage: bash scripts/benchmark-report.sh [--runs N] [--configs LIST] [--engines LIST] [--out DIR (default bench/results)] [--scale F]
#   --configs  comma-separated subset of: 1m-8m,1m-1g,5m-8m,5m-1g,4k-8m,4k-1g, each optionally
#              followed by -none and/or -mmap (default: the six, with compression, no mappings)
#   --engines  moraine-bench's --engine (default all: moraine,rocksdb,leveldb; both: without LevelDB)
#   --scale    multiplies every key count (0.01 makes a quick check of the script itself)
# Takes about 100 minutes for everything with 3 runs on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
configs=1m-8m,1m-1g,5m-8m,5m-1g,4k-8m,4k-1g
out=bench/results
scale=1
engines=all
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
bash scripts/install-deps.sh
if ! dpkg -s librocksdb-dev >/dev/null 2>&1 || ! dpkg -s rocksdb-tools >/dev/null 2>&1 || ! dpkg -s libleveldb-dev >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq librocksdb-dev rocksdb-tools libleveldb-dev >/dev/null
fi
(cd bench && swift build -c release --product moraine-bench >/dev/null)
mkdir -p "$out"
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT

# db_bench order: fills on a fresh database, a whole-range compaction so both engines' trees have
# the same shape before the reads, the reads, reads with a writer, and deletes last. YCSB loads
# its own fresh database.
workloads=fillseq,fillrandom,overwrite,compact,readrandom,multireadrandom,readseq,readreverse,seekrandom,readwhilewriting,deleterandom
ycsb=ycsb_load,ycsba,ycsbb,ycsbc,ycsbf,ycsbd,ycsbe

# shellcheck source=scripts/bench-config.sh
source scripts/bench-config.sh

for config in ${configs//,/ }; do
  bench_config "$config" "$scale" || exit 2
  for i in $(seq 1 "$runs"); do
    echo "== $config run $i/$runs: --num $num --value_size $value --reads $reads --cache_size $cache" >&2
    shape="--num=$num --value_size=$value --reads=$reads --cache_size=$cache --batch_size=16 --seek_nexts=10"
    # Every option the C-API peer and Moraine get, spelled out for db_bench (whose own defaults
    # differ: Snappy, no bloom filter, a seed from the clock).
    peer="--seed=301 --key_size=16 --bloom_bits=10 --compression_type=$compression --compression_ratio=0.5 \
      --write_buffer_size=67108864 --max_write_buffer_number=2 --level0_file_num_compaction_trigger=4 \
      --level0_slowdown_writes_trigger=20 --level0_stop_writes_trigger=36 --target_file_size_base=67108864 \
      --max_bytes_for_level_base=268435456 --max_background_jobs=2"
    # shellcheck disable=SC2086
    bench/.build/release/moraine-bench --engine "$engines" $shape --compression_type "$compression" --mmap_read=$mmap --records "$num" --operations "$reads" \
      --benchmarks "$workloads,$ycsb" --db "$db/db" --json "$out/$config-run$i.json" >&2
    rm -rf "$db/db"
    # shellcheck disable=SC2086
    db_bench $shape $peer --mmap_read=$mmap --histogram=1 --benchmarks="$workloads" --db="$db/db_bench" 2>/dev/null |
      python3 scripts/db_bench_json.py "$out/$config-run$i.json"
    rm -rf "$db/db_bench"
  done
done
python3 scripts/benchmark_report.py "$out" > "$out/report.md"
echo "wrote $out/report.md and $out/chart.svg" >&2
