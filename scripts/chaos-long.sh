#!/usr/bin/env bash
# The cluster-under-fire test's long run (docs/TESTING.md): several one-box clusters under fire at
# once, each its own test process with its own seed and `--kills` kills, so that 10,000 kills fit in
# hours rather than half a day (the test waits 1–3 s between kills, counted from when every role
# answers again, so one cluster spends most of its time waiting). Each cluster is the CI test
# unchanged: its own run directory, its own region, its own roles, its own client.
#
#   bash scripts/chaos-long.sh [--clusters N] [--kills K] [--seed S] [--out DIR]
#
# Cluster i runs with MORAINE_SEED=S+i (S defaults to the time), so any one of them replays alone:
#   MORAINE_SEED=<its seed> MORAINE_CHAOS_KILLS=<K> swift test --disable-xctest --filter ChaosTests
# The logs stay in DIR (default: a new directory under /tmp), each cluster's roles' logs in
# DIR/roles-i (MORAINE_CHAOS_LOGS); the summary sums kills per role,
# operations, writes, keys and reads checked and errors, and gives the longest outage of all.
set -euo pipefail
cd "$(dirname "$0")/.."
clusters=6
kills=50
seed=$(date +%s)
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clusters) clusters=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--clusters N] [--kills K] [--seed S] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || out=$(mktemp -d /tmp/moraine-chaos-long.XXXXXX)
mkdir -p "$out"
swift build --build-tests
# The test binary directly: `swift test` holds a lock on .build, so two cannot run at once.
binary=$(swift build --show-bin-path)/MorainePackageTests.xctest
[ -x "$binary" ] || { echo "no test binary at $binary" >&2; exit 1; }
echo "$clusters clusters x $kills kills, seeds $seed..$((seed + clusters - 1)), commit $(git rev-parse --short HEAD), logs in $out"
start=$(date +%s)
pids=()
for i in $(seq 0 $((clusters - 1))); do
  MORAINE_SEED=$((seed + i)) MORAINE_CHAOS_KILLS=$kills MORAINE_CHAOS_LOGS="$out/roles-$i" \
    "$binary" --testing-library swift-testing --filter ChaosTests >"$out/cluster-$i.log" 2>&1 &
  pids+=($!)
  sleep 2  # staggered, so the clusters do not start (and kill) in step
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "cluster $i (MORAINE_SEED=$((seed + i))) failed: $out/cluster-$i.log"
    failed=1
  fi
done
echo "wall time $(( $(date +%s) - start )) s"
python3 - "$out" "$clusters" <<'PY'
import re, sys
out, clusters = sys.argv[1], int(sys.argv[2])
pattern = re.compile(
    r"chaos \(MORAINE_SEED=(\d+)\): (\d+) kills \(([^)]*)\); (\d+) operations, (\d+) writes acknowledged \((\d+) synced\), "
    r"(\d+) keys checked after, (\d+) reads checked, (\d+) scans; errors: (.*); longest outage (\d+) ms")
totals = dict(kills=0, operations=0, writes=0, synced=0, keys=0, reads=0, scans=0)
roles, errors, outage, found = {}, {}, 0, 0
for i in range(clusters):
    text = open(f"{out}/cluster-{i}.log", errors="replace").read()
    match = pattern.search(text)
    if not match:
        print(f"cluster {i}: no summary line")
        continue
    found += 1
    print(match.group(0))
    seed, kills, per_role, ops, writes, synced, keys, reads, scans, errs, longest = match.groups()
    for name, value in zip(["kills", "operations", "writes", "synced", "keys", "reads", "scans"],
                           [kills, ops, writes, synced, keys, reads, scans]):
        totals[name] += int(value)
    for part in per_role.split(", "):
        role, count = part.rsplit(" ", 1)
        roles[role] = roles.get(role, 0) + int(count)
    if errs != "none":
        for part in errs.split(", "):
            kind, count = part.rsplit(" ", 1)
            errors[kind] = errors.get(kind, 0) + int(count)
    outage = max(outage, int(longest))
print(f"{found} of {clusters} clusters reported: {totals['kills']:,} kills ("
      + ", ".join(f"{role} {count:,}" for role, count in sorted(roles.items())) + f"); {totals['operations']:,} operations, "
      + f"{totals['writes']:,} writes acknowledged ({totals['synced']:,} synced), {totals['keys']:,} keys checked after, "
      + f"{totals['reads']:,} reads checked, {totals['scans']:,} scans; errors: "
      + (", ".join(f"{kind} {count:,}" for kind, count in sorted(errors.items())) or "none")
      + f"; longest outage {outage:,} ms")
PY
exit $failed
