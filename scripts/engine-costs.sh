#!/usr/bin/env bash
# What each engine costs per workload, each engine in its own process (BENCHMARKS.md, "What each
# engine costs"): the report's workloads (every db_bench workload, then YCSB A–F) on Moraine,
# RocksDB and LevelDB with identical options, and per workload
#   - throughput and p99 (medians of RUNS timed runs; the engines take turns going first),
#   - peak resident memory of the engine's process during the workload (moraine-bench resets the
#     kernel's high-water mark before each workload), so no other engine's memory is in it,
#   - instructions per operation, every thread of the process counted (flushes and compactions
#     included): callgrind, which splits its profile at each workload's start
#     (`--dump-before`), over a run of CALLGRIND_NUM keys (callgrind runs ~50x slower; this
#     machine's virtual CPUs expose no hardware counters to `perf stat`).
# Writes OUT/timed-ENGINE-runN.json, OUT/callgrind-ENGINE.json, OUT/callgrind-ENGINE/totals.txt
# (instructions of each profile part; the profiles themselves, for callgrind_annotate, stay only
# with --keep_profiles: about 5 MB an engine) and OUT/costs.md (the table; costs-compact.md,
# the same with one column per measure).
#
# Usage: bash scripts/engine-costs.sh [--config 1m-8m] [--runs 3] [--threads 1] [--callgrind_num 100000]
#          [--engines moraine,rocksdb,leveldb] [--benchmarks LIST] [--skip_callgrind] [--keep_profiles] [--out DIR]
#   --config   one of the report's configurations: 1m-8m, 1m-1g, 5m-8m, 5m-1g, 4k-8m, 4k-1g, each
#              optionally followed by -none (compression off) and/or -mmap (tables read through
#              mappings, as LevelDB always reads them): 1m-8m-none-mmap is LevelDB's like-for-like
#   --threads  moraine-bench's --threads (each thread does --num / threads operations)
#   --scale    multiplies the timed runs' key counts (0.01 makes a quick check of the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
config=1m-8m
runs=3
threads=1
callgrind_num=100000
engines=moraine,rocksdb,leveldb
benchmarks=fillseq,fillrandom,overwrite,compact,readrandom,multireadrandom,readseq,readreverse,seekrandom,readwhilewriting,deleterandom,ycsb_load,ycsba,ycsbb,ycsbc,ycsbf,ycsbd,ycsbe
skip_callgrind=0
keep_profiles=0
scale=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --callgrind_num) callgrind_num=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --benchmarks) benchmarks=$2; shift 2 ;;
    --skip_callgrind) skip_callgrind=1; shift ;;
    --keep_profiles) keep_profiles=1; shift ;;
    --scale) scale=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
# shellcheck source=scripts/bench-config.sh
source scripts/bench-config.sh
bench_config "$config" "$scale" || exit 2
bash scripts/install-deps.sh
if ! dpkg -s librocksdb-dev >/dev/null 2>&1 || ! dpkg -s libleveldb-dev >/dev/null 2>&1 \
  || { [ "$skip_callgrind" = 0 ] && ! command -v valgrind >/dev/null; }; then
  apt-get update -qq && apt-get install -y -qq librocksdb-dev libleveldb-dev valgrind >/dev/null
fi
(cd bench && swift build -c release --product moraine-bench >/dev/null)
out=${out:-bench/results/costs-$config-t$threads}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
IFS=, read -r -a engine_list <<< "$engines"

# The same options as scripts/benchmark-report.sh gives moraine-bench.
shape() { # $1: key count
  local n=$1 r=$reads
  [ "$r" -gt "$n" ] && r=$n
  echo "--num=$n --value_size=$value --reads=$r --records=$n --operations=$r --cache_size=$cache \
    --batch_size=16 --seek_nexts=10 --compression_type=$compression --mmap_read=$mmap --threads=$threads"
}

for run in $(seq 1 "$runs"); do
  count=${#engine_list[@]}
  for k in $(seq 0 $((count - 1))); do
    engine=${engine_list[$(((k + run - 1) % count))]}
    echo "== $config, $threads thread(s), run $run/$runs: $engine" >&2
    rm -rf "$work/db"
    # shellcheck disable=SC2046
    bench/.build/release/moraine-bench --engine "$engine" $(shape "$num") --benchmarks "$benchmarks" \
      --db "$work/db" --json "$out/timed-$engine-run$run.json" >&2
  done
done

if [ "$skip_callgrind" = 0 ]; then
  # Symbols kept, debug information dropped (callgrind reads it slowly and counts the same).
  cp bench/.build/release/moraine-bench "$work/moraine-bench"
  objcopy --strip-debug "$work/moraine-bench"
  for engine in "${engine_list[@]}"; do
    echo "== callgrind: $engine, $callgrind_num keys" >&2
    rm -rf "$out/callgrind-$engine" "$work/cg-$engine"
    mkdir -p "$out/callgrind-$engine"
    # One profile part per workload: a part ends where the next workload starts.
    # shellcheck disable=SC2046
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$engine/callgrind.out" \
      '--dump-before=$s12MoraineBench0B6RunnerC11runWorkload_6engineAA0B6ResultVSS_SStKF' \
      '--dump-before=$s12MoraineBench0B6RunnerC7runYCSB_6engineSayAA0B6ResultVGSS_SStKF' \
      "$work/moraine-bench" --engine "$engine" $(shape "$callgrind_num") --benchmarks "$benchmarks" \
      --db "$work/cg-$engine" --json "$out/callgrind-$engine.json" > "$out/callgrind-$engine/output.txt" 2>&1 &
  done
  wait
  rm -rf "$work"/cg-*
  for engine in "${engine_list[@]}"; do
    python3 scripts/engine_costs_table.py --totals "$out/callgrind-$engine"
    [ "$keep_profiles" = 1 ] || rm -f "$out/callgrind-$engine"/callgrind.out*
  done
fi
# The memory target's allowance: the block cache and two 64 MiB write buffers.
for form in "" --compact; do
  python3 scripts/engine_costs_table.py "$out" --config "$config" --threads "$threads" --callgrind_num "$callgrind_num" \
    --budget_mib $(((cache >> 20) + 128)) $form > "$out/costs${form:+-compact}.md"
done
echo "wrote $out/costs.md and $out/costs-compact.md" >&2
