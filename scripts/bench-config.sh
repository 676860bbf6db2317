# Sourced by the benchmark scripts: what a configuration name of the side-by-side report means.
# bench_config NAME SCALE sets num, value, reads, cache, compression and mmap:
#   1m-* 1M keys × 100 B; 5m-* 5M × 100 B with 1M reads (db_bench's --reads, as it is usually run at
#   that size); 4k-* 200K × 4 KiB; *-8m / *-1g the block cache; -none compression off; -mmap tables
#   read through mappings (LevelDB always maps its tables). SCALE multiplies the key counts.
bench_config() {
  local name=$1 scale=${2:-1}
  scaled() { python3 -c "print(max(1000, int($1 * $scale)))"; }
  case "$name" in
    1m-*) num=$(scaled 1000000); value=100; reads=$num ;;
    5m-*) num=$(scaled 5000000); value=100; reads=$(scaled 1000000) ;;
    4k-*) num=$(scaled 200000); value=4096; reads=$num ;;
    *) echo "unknown configuration: $name" >&2; return 2 ;;
  esac
  case "$name" in
    *-8m | *-8m-*) cache=$((8 << 20)) ;;
    *-1g | *-1g-*) cache=$((1 << 30)) ;;
    *) echo "unknown configuration: $name" >&2; return 2 ;;
  esac
  compression=lz4
  case "$name" in *-none | *-none-*) compression=none ;; esac
  mmap=0
  case "$name" in *-mmap) mmap=1 ;; esac
}
