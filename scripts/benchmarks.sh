#!/usr/bin/env bash
# Regenerates the side-by-side table in BENCHMARKS.md's "Preliminary" section: builds
# moraine-bench in release mode, runs the workloads RUNS times (default 3) on Moraine and
# RocksDB with identical options, and prints a Markdown table of medians and ratios.
# Usage: bash scripts/benchmarks.sh [NUM] [RUNS] [extra moraine-bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
num=${1:-1000000}
runs=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
bash scripts/install-deps.sh
dpkg -s librocksdb-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq librocksdb-dev >/dev/null; }
(cd bench && swift build -c release --product moraine-bench >/dev/null)
out=$(mktemp -d)
benchmarks=fillseq,fillrandom,overwrite,compact,readrandom,readseq,readreverse,seekrandom
for i in $(seq 1 "$runs"); do
  bench/.build/release/moraine-bench --engine both --num "$num" --benchmarks "$benchmarks" \
    --db "$out/db" --json "$out/run$i.json" "$@" >&2
done
python3 scripts/benchmark_table.py "$out"/run*.json
rm -rf "$out"
