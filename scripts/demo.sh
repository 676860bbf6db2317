#!/usr/bin/env bash
# The main job: install system packages if missing, build in release mode, start a one-box
# cluster (`moraine up`: a storage node, a memory node, a flush and a compaction worker over shared
# memory) in ./run, run the demo with its files on the storage node, its reads through the memory
# node's shared cache and its flushes and compactions on the workers (puts, gets, a scan, a flush,
# the LSM shape), show the cluster's status, and stop it. `--embedded` runs the same demo on a local database under ./data instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release --product moraine
moraine=.build/release/moraine
if [ "${1:-}" = "--embedded" ]; then
    shift
    exec "$moraine" demo --db ./data "$@"
fi
run=./run
"$moraine" up --run-dir "$run" --detach
trap '"$moraine" down --run-dir "$run"' EXIT
"$moraine" demo --cluster "$run" --db demo "$@"
"$moraine" status --run-dir "$run"
