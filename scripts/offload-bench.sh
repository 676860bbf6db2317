#!/usr/bin/env bash
# The offload benchmark (BENCHMARKS.md, "Workers: offload"): what flush and compaction workers buy a
# compute node with little CPU. The compute process (`moraine bench --engine cluster`) is pinned to
# CPU 0 with a one-box cluster (storage node, flush worker, compaction worker) pinned to CPU 1;
# embedded Moraine (`--engine moraine`, its background threads included) is pinned to the same CPU 0,
# with the same options. A compaction-heavy load: fillrandom and overwrite at each --nums size with a
# small write buffer, then YCSB-A at the smallest size (load, then 50% reads and 50% updates). Engines alternate, one
# process each, so neither's background work runs during the other's workload; then the cluster again
# with two compaction workers (fillrandom at the largest size). JSON per run in --out; a table of
# medians from scripts/offload_bench_table.py.
# Usage: bash scripts/offload-bench.sh [--runs N] [--nums 1000000,5000000] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
nums=1000000,5000000
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --nums) nums=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cpus=$(nproc)
if [ "$cpus" -lt 2 ]; then echo "the offload benchmark needs 2 CPUs, this machine has $cpus" >&2; exit 1; fi
swift build -c release --product moraine >/dev/null
moraine=$PWD/.build/release/moraine
out=${out:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
run_dir=$work/run
cleanup() { "$moraine" down --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
# Compaction-heavy: 4 MiB memtables and tables, a 16 MiB L1; four background threads for both.
options=(--write_buffer_size=4194304 --target_file_size_base=4194304 --max_bytes_for_level_base=16777216
  --max_background_jobs=4 --value_size=100)
one_worker='[[role]]
kind = "storage"
data = "data"
[[role]]
kind = "flush"
[[role]]
kind = "compaction"'
two_workers="$one_worker
count = 2"
up() {
  printf '%s\n' "$1" > "$work/topology.toml"
  rm -rf "$run_dir"
  taskset -c 1 "$moraine" up --topology "$work/topology.toml" --run-dir "$run_dir" --detach >/dev/null
}
down() { "$moraine" down --run-dir "$run_dir" >/dev/null; }
# bench ENGINE TAG ARGS...: one engine in its own process on CPU 0.
bench() {
  local engine=$1 tag=$2
  shift 2
  rm -rf "$work/db"
  echo "== $engine $tag" >&2
  if [ "$engine" = moraine ]; then
    taskset -c 0 "$moraine" bench --engine moraine --db "$work/db" "${options[@]}" "$@" --json "$out/$tag-moraine.json" >&2
  else
    taskset -c 0 "$moraine" bench --cluster "$run_dir" --engine cluster --db "$work/db" "${options[@]}" "$@" \
      --json "$out/$tag-$engine.json" >&2
  fi
}
largest=${nums##*,}
smallest=${nums%%,*}
for run in $(seq 1 "$runs"); do
  order="moraine cluster"
  [ $((run % 2)) -eq 0 ] && order="cluster moraine"
  for engine in $order; do
    [ "$engine" = cluster ] && up "$one_worker"
    for num in ${nums//,/ }; do
      bench "$engine" "fill-$num-run$run" --num "$num" --benchmarks fillrandom,overwrite
    done
    bench "$engine" "ycsba-run$run" --num "$smallest" --records "$smallest" --operations "$smallest" --benchmarks ycsb_load,ycsba
    [ "$engine" = cluster ] && down
  done
  up "$two_workers"
  bench cluster2 "fill-$largest-run$run" --num "$largest" --benchmarks fillrandom
  down
done
python3 scripts/offload_bench_table.py "$out"
echo "JSON in $out" >&2
