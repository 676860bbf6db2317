// The monotonic clock, the wall clock and a precise sleep, for every module that times or paces something
// (benchmarks, link emulation, deadlines). CLOCK_MONOTONIC is shared by all processes on a
// machine, so two processes may compare its readings. Free functions; no state.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// CLOCK_MONOTONIC in nanoseconds.
@inline(__always)
public func monotonicNanos() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// CLOCK_REALTIME in nanoseconds since 1970: what a deadline that crosses machines is written in
/// (it moves with the wall clock, so keep margins; same-box deadlines could use the monotonic one).
public func wallClockNanos() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// CPU time of the calling thread in nanoseconds (CLOCK_THREAD_CPUTIME_ID): what one thread's
/// work cost, whatever else the process does meanwhile.
public func threadCPUNanos() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// Sleeps at least `nanos` nanoseconds (resumed after a signal). Non-positive: returns at once.
public func sleepNanos(_ nanos: Int64) {
    guard nanos > 0 else { return }
    var request = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
