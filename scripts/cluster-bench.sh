#!/usr/bin/env bash
# The storage node's benchmark (BENCHMARKS.md, "Storage node"): embedded Moraine and the same
# engine with its files on a one-box cluster's storage node, alternating workload by workload
# in one `moraine bench` process (--engine cluster,moraine), over shared memory and over TCP,
# with 0, 2 and 20 µs of link delay injected on both ends. Prints a Markdown table of medians:
# throughput and p99 ratios to embedded, and storage requests per operation.
# Usage: bash scripts/cluster-bench.sh [--runs N] [--num N] [--carriers shm,tcp] [--delays_us 0,2,20] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
num=1000000
carriers=shm,tcp
delays=0,2,20
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --num) num=$2; shift 2 ;;
    --carriers) carriers=$2; shift 2 ;;
    --delays_us) delays=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
swift build -c release --product moraine >/dev/null
moraine=$PWD/.build/release/moraine
out=${out:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
run_dir=$work/run
cleanup() { "$moraine" down --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
threads=16
for run in $(seq 1 "$runs"); do
  for carrier in ${carriers//,/ }; do
    for delay in ${delays//,/ }; do
      tag="$carrier-${delay}us-run$run"
      cat > "$work/topology.toml" <<TOML
[[role]]
kind = "storage"
carrier = "$carrier"
link_delay_ns = $((delay * 1000))
TOML
      rm -rf "$run_dir" "$work/db"
      "$moraine" up --topology "$work/topology.toml" --run-dir "$run_dir" --detach >/dev/null
      bench() { "$moraine" bench --cluster "$run_dir" --engine cluster,moraine --db "$work/db" "$@" >&2; }
      echo "== $tag" >&2
      bench --num "$num" --benchmarks fillseq,fillrandom,overwrite,readrandom,seekrandom,readseq --json "$out/$tag-a.json"
      bench --num "$num" --use_existing_db=1 --batch_size=16 --benchmarks multireadrandom --json "$out/$tag-b.json"
      bench --num "$num" --use_existing_db=1 --cache_size=1073741824 --benchmarks readrandom --json "$out/$tag-c.json"
      bench --num 20000 --sync=1 --benchmarks fillrandom --json "$out/$tag-d.json"
      bench --num $((num / threads)) --threads "$threads" --benchmarks fillrandom,readrandom --json "$out/$tag-e.json"
      "$moraine" down --run-dir "$run_dir" >/dev/null
    done
  done
done
python3 scripts/cluster_bench_table.py "$out"
