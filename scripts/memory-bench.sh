#!/usr/bin/env bash
# The memory node's benchmark (BENCHMARKS.md, "Memory node"), in one run on one machine:
#  1. memtable placement: fillrandom, overwrite and memtable-resident readrandom with the memtable
#     written in place in the memory node's region (`--engine memory`, pmem durability through it)
#     against embedded Moraine with `--durability pmem` (its own region) and with the WAL (memtable
#     in local memory), alternating workload by workload in one `moraine bench` process;
#  2. recovery: reopening with two full 64 MiB memtables unflushed, re-attached from the region
#     against replayed from the WAL (`moraine memory-bench`);
#  3. the shared block cache: readrandom and YCSB-B over --cache_nums keys of 100-byte values, a
#     compute node (`--engine cluster`: files on the storage node) with an 8 MiB cache of its own
#     over the memory node's 256 MiB shared cache, against embedded Moraine with 8 MiB and with
#     264 MiB (--embedded_cache_size), alternating in one `moraine bench` process; and the same
#     compute node on a cluster whose memory node has no shared cache, against embedded 8 MiB.
#     Each read workload runs twice and the second pass counts (a warm cache, as db_bench's
#     warm-up does: the first pass fills the shared cache, which a fill does not).
#     With --direct_reads, the embedded peers read their tables with O_DIRECT and the storage
#     nodes serve reads with O_DIRECT (topology `direct_reads`), so a miss of every cache reads
#     the device instead of the page cache (RocksDB's use_direct_reads, as cache benchmarks run).
#     Their databases and run directories are under $TMPDIR (mktemp -d): it must be on a device
#     (not tmpfs, whose direct reads still read memory).
#     --request also runs the placement workloads (and the recovery, replaying the logs read back
#     by request) against a memory node over TCP reached by request
#     (memtables in the benchmark's process, each write group in a log in an arena by request, as
#     a compute node on another box runs; fillrandom again with 4 threads) against embedded
#     `pmem` in the same process; and it adds three cache setups: `request`, the same compute node with the memory node reached
#     over TCP by request only (topology `carrier = "tcp"`, `region_access = "request"`), as a
#     compute node on another box reaches it, its storage node still over shared memory;
#     `tcpshared`, storage node over TCP too (every role the compute side uses across a network);
#     `tcpplain`, storage node over TCP and no shared cache. --setups picks setups (default:
#     every one asked for).
#  4. sharing: two compute processes at once, one database of --share_big keys and one of
#     --share_small, reading through one 256 MiB shared cache against each through a private
#     128 MiB one (two more clusters); hit rates and throughput per database. Memtables of 4 MiB and
#     a compaction after the fill, so both databases read from tables.
# Prints Markdown tables of medians. Usage:
#   bash scripts/memory-bench.sh [--runs N] [--num N] [--megabytes N] [--cache_nums N,N] [--cache_runs N]
#                                [--share_big N] [--share_small N] [--skip placement,recovery,cache,sharing] [--direct_reads]
#                                [--request] [--setups shared-8388608,shared-276824064,plain-8388608,request-8388608,
#                                tcpshared-8388608,tcpplain-8388608] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
num=200000
megabytes=128
cache_nums=1000000,5000000
cache_runs=3
share_big=1200000
share_small=400000
skip=""
out=""
direct_reads=0
request=0
setups=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --num) num=$2; shift 2 ;;
    --megabytes) megabytes=$2; shift 2 ;;
    --cache_nums) cache_nums=$2; shift 2 ;;
    --cache_runs) cache_runs=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --share_big) share_big=$2; shift 2 ;;
    --share_small) share_small=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --direct_reads) direct_reads=1; shift ;;
    --request) request=1; shift ;;
    --setups) setups=$2; shift 2 ;;
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
plain_dir=$work/plain
cleanup() {
  for dir in "$run_dir" "$plain_dir" "$work/placereq" "$work/shared" "$work/request" "$work/tcpshared" "$work/tcpplain" "$work/half1" "$work/half2"; do "$moraine" down --run-dir "$dir" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  # The regions and embedded pmem logs of this run (named after its directories) go too.
  rm -f /dev/shm/moraine-"$(printf '%s' "$work" | sed 's/[^A-Za-z0-9.-]/_/g')"_*
}
trap cleanup EXIT
"$moraine" up --run-dir "$run_dir" --detach >/dev/null
# 200,000 writes of 16-byte keys and 100-byte values, twice (fill, overwrite), stay in one 64 MiB
# memtable: every read is a memtable read.
common=(--cluster "$run_dir" --engine memory,moraine --db "$work/db" --num "$num" --value_size 100
  --write_buffer_size 67108864 --benchmarks fillrandom,overwrite,readrandom)
if [ "$request" = 1 ]; then
  # Across boxes: a memory node over TCP reached by request only. The memtables stay in the
  # benchmark's process and each write group goes to a log in an arena by request (placement:
  # fillrandom again with 4 threads, whose groups share a request; recovery: the logs replayed).
  printf '[[role]]\nkind = "storage"\n[[role]]\nkind = "memory"\ncarrier = "tcp"\nregion_access = "request"\n' > "$work/placereq.toml"
  "$moraine" up --topology "$work/placereq.toml" --run-dir "$work/placereq" --detach >/dev/null
fi
if [[ ",$skip," != *",placement,"* ]]; then
  for run in $(seq 1 "$runs"); do
    echo "== placement run $run" >&2
    "$moraine" bench "${common[@]}" --durability pmem --json "$out/placement-pmem-run$run.json" >&2
    "$moraine" bench "${common[@]}" --durability wal --json "$out/placement-wal-run$run.json" >&2
    if [ "$request" = 1 ]; then
      across=(--cluster "$work/placereq" --engine memory,moraine --db "$work/db" --num "$num" --value_size 100
        --write_buffer_size 67108864)
      "$moraine" bench "${across[@]}" --benchmarks fillrandom,overwrite,readrandom --durability pmem \
        --json "$out/placement-request-pmem-run$run.json" >&2
      "$moraine" bench "${across[@]}" --benchmarks fillrandom --threads 4 --durability pmem \
        --json "$out/placement-request4-pmem-run$run.json" >&2
    fi
  done
fi
if [[ ",$skip," != *",recovery,"* ]]; then
  echo "== recovery" >&2
  "$moraine" memory-bench --cluster "$run_dir" --db "$work/recovery" --megabytes "$megabytes" --runs "$runs" | tee "$out/recovery.txt" >&2
  if [ "$request" = 1 ]; then
    echo "== recovery across boxes" >&2
    "$moraine" memory-bench --cluster "$work/placereq" --db "$work/recovery" --megabytes "$megabytes" --runs "$runs" \
      | tee "$out/recovery-request.txt" >&2
  fi
fi
if [[ ",$skip," != *",cache,"* ]]; then
  # The same cluster without a shared cache: what the compute node gets from its storage node alone.
  direct=()
  shared_dir=$run_dir
  if [ "$direct_reads" = 1 ]; then
    direct=(--use_direct_reads 1)
    # The default topology's storage, memory and worker roles (the benchmark's process is the
    # compute side), with a storage node that reads with O_DIRECT.
    shared_dir=$work/shared
    cat > "$work/shared.toml" <<TOML
[[role]]
kind = "storage"
direct_reads = true
[[role]]
kind = "memory"
[[role]]
kind = "flush"
[[role]]
kind = "compaction"
TOML
    "$moraine" up --topology "$work/shared.toml" --run-dir "$shared_dir" --detach >/dev/null
  fi
  cat > "$work/plain.toml" <<TOML
[[role]]
kind = "storage"
direct_reads = $([ "$direct_reads" = 1 ] && echo true || echo false)
[[role]]
kind = "memory"
cache_size = 0
[[role]]
kind = "flush"
[[role]]
kind = "compaction"
TOML
  "$moraine" up --topology "$work/plain.toml" --run-dir "$plain_dir" --detach >/dev/null
  default_setups=shared-8388608,shared-276824064,plain-8388608
  if [ "$request" = 1 ]; then
    default_setups=$default_setups,request-8388608,tcpshared-8388608,tcpplain-8388608
    # The memory node over TCP, reached by request only (the compute side never maps its region),
    # and the storage node over shared memory (request) or TCP (tcpshared); tcpplain: no shared cache.
    direct_value=$([ "$direct_reads" = 1 ] && echo true || echo false)
    for setup in request tcpshared tcpplain; do
      storage_carrier=$([ "$setup" = request ] && echo shm || echo tcp)
      memory_keys=$([ "$setup" = tcpplain ] && echo 'cache_size = 0' || printf 'carrier = "tcp"\nregion_access = "request"')
      printf '[[role]]\nkind = "storage"\ncarrier = "%s"\ndirect_reads = %s\n[[role]]\nkind = "memory"\n%s\n[[role]]\nkind = "flush"\n[[role]]\nkind = "compaction"\n' \
        "$storage_carrier" "$direct_value" "$memory_keys" > "$work/$setup.toml"
      "$moraine" up --topology "$work/$setup.toml" --run-dir "$work/$setup" --detach >/dev/null
    done
  fi
  for keys in ${cache_nums//,/ }; do
    for run in $(seq 1 "$cache_runs"); do
      chosen=${setups:-$default_setups}
      if [ "$request" = 0 ] && [[ ",$chosen" =~ ,(request|tcpshared|tcpplain)- ]]; then
        echo "--setups names a setup of --request; add --request" >&2
        exit 2
      fi
      for setup in ${chosen//,/ }; do
        peer=${setup#*-}
        cluster=$shared_dir
        [ "${setup%%-*}" = plain ] && cluster=$plain_dir
        case "${setup%%-*}" in request|tcpshared|tcpplain) cluster=$work/${setup%%-*} ;; esac
        echo "== cache $keys keys, $setup, run $run" >&2
        "$moraine" bench --cluster "$cluster" --engine cluster,moraine --db "$work/db" --num "$keys" --value_size 100 \
          --reads 500000 --cache_size 8388608 --embedded_cache_size "$peer" ${direct[@]+"${direct[@]}"} \
          --benchmarks fillrandom,readrandom,readrandom,ycsb_load,ycsbb,ycsbb --json "$out/cache-$keys-$setup-run$run.json" >&2
      done
    done
  done
fi
if [[ ",$skip," != *",sharing,"* ]]; then
  cat > "$work/half.toml" <<TOML
[[role]]
kind = "storage"
[[role]]
kind = "memory"
cache_size = 134217728
[[role]]
kind = "flush"
[[role]]
kind = "compaction"
TOML
  "$moraine" up --topology "$work/half.toml" --run-dir "$work/half1" --detach >/dev/null
  "$moraine" up --topology "$work/half.toml" --run-dir "$work/half2" --detach >/dev/null
  share() {  # share SETUP CLUSTER KEYS NAME
    "$moraine" bench --cluster "$2" --engine cluster --db "$work/share-$4" --num "$3" --value_size 100 --reads 500000 \
      --cache_size 8388608 --write_buffer_size 4194304 --benchmarks fillrandom,compact,readrandom,readrandom \
      --json "$out/share-$1-$4.json" > "$out/share-$1-$4.txt" 2>&1
  }
  echo "== sharing: one 256 MiB cache" >&2
  share shared "$run_dir" "$share_big" big & share shared "$run_dir" "$share_small" small & wait
  echo "== sharing: a private 128 MiB cache each" >&2
  share private "$work/half1" "$share_big" big & share private "$work/half2" "$share_small" small & wait
  grep -h "shared cache hits" "$out"/share-*.txt | awk 'NR % 2 == 0' >&2 || true
fi
python3 scripts/memory_bench_table.py "$out"
