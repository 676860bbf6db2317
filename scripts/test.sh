#!/usr/bin/env bash
# The whole test suite: install system packages if missing, build, run every test (Swift
# Testing). Long runs are opt-in through MORAINE_MODEL_STEPS, MORAINE_CRASH_ROUNDS,
# MORAINE_KILL_ROUNDS and MORAINE_FAULT_ROUNDS; MORAINE_SEED replays a randomized run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build --build-tests --explicit-target-dependency-import-check error
swift test --disable-xctest
# The benchmark harness, once on each engine at a tiny size (a smoke test, not a measurement).
bash scripts/bench-smoke.sh
