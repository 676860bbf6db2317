#!/usr/bin/env bash
# The main job: install system packages if missing, build in release mode, start a one-box
# cluster (`moraine up`: a compute node, a storage node, a memory node, a flush and a compaction
# worker, over shared memory) in ./run, run the demo through the compute node — its database's
# files on the storage node, its reads through the memory node's shared cache, its flushes and
# compactions on the workers (puts, gets, a scan, a flush, the LSM shape) — show the cluster's
# status (the compute node lists the database and its shape), and stop it. `--embedded` runs the
# same demo on a local database under ./data instead.
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
"$moraine" demo --connect "$run" --db demo "$@"
"$moraine" status --run-dir "$run"
