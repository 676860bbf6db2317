#!/usr/bin/env bash
# The I/O queue against the machine's limit: random 4 KiB O_DIRECT reads of one file through
# Moraine's io_uring queue and its pread fallback (batches of 1, 8, 32), then fio on the same
# file at the same depths (io_uring engine, and psync for depth 1). Prints one table.
# Usage: scripts/io-bench.sh [FILE] [SECONDS]   (FILE must be on the disk under test, not tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-$PWD/.build/io-bench.dat}
seconds=${2:-10}
size=$((1 << 30))
command -v fio >/dev/null || { echo "fio is needed (apt-get install fio)"; exit 1; }
swift build -c release --product moraine >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
.build/release/moraine io-bench --file "$file" --file_size $size --seconds "$seconds" --depths 1,8,32 --json "$out/moraine.json"
for depth in 1 8 32; do
  fio --name=randread --filename="$file" --size=$size --rw=randread --bs=4k --direct=1 --ioengine=io_uring \
    --iodepth=$depth --runtime="$seconds" --time_based --output-format=json > "$out/fio-$depth.json"
done
fio --name=randread --filename="$file" --size=$size --rw=randread --bs=4k --direct=1 --ioengine=psync \
  --runtime="$seconds" --time_based --output-format=json > "$out/fio-psync.json"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = json.load(open(os.path.join(out, "moraine.json")))
fio = {d: json.load(open(os.path.join(out, f"fio-{d}.json")))["jobs"][0]["read"]["iops"] for d in (1, 8, 32)}
psync = json.load(open(os.path.join(out, "fio-psync.json")))["jobs"][0]["read"]["iops"]
print("\n| depth | fio io_uring IOPS | Moraine io_uring stream | ratio | Moraine io_uring batch | ratio | Moraine pread | ratio |")
print("|---|---|---|---|---|---|---|---|")
for d in (1, 8, 32):
    s = next(r for r in rows if r["backend"] == "io_uring-stream" and r["depth"] == d)
    u = next(r for r in rows if r["backend"] == "io_uring" and r["depth"] == d)
    p = next(r for r in rows if r["backend"] == "pread" and r["depth"] == d)
    print(f"| {d} | {fio[d]:.0f} | {s['iops']} | {s['iops']/fio[d]:.2f} | {u['iops']} | {u['iops']/fio[d]:.2f} "
          f"| {p['iops']} | {p['iops']/fio[d]:.2f} |")
print(f"\nfio psync (one thread, depth 1): {psync:.0f} IOPS")
PY
