#!/usr/bin/env bash
# The main job: install system packages if missing, build in release mode, and run an embedded
# database under ./data with a short demo (puts, gets, a scan, a flush, the LSM shape).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release --product moraine
.build/release/moraine demo --db ./data "$@"
