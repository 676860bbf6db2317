// Hints to the CPU's caches, for hot paths that know which line they will touch next.
import CSystemShims

/// Asks the CPU to bring the cache line at `address` in ahead of a write to it, so its miss
/// overlaps other work (a hint: it never faults and changes nothing).
@inlinable
public func prefetchForWrite(_ address: UnsafeRawPointer) {
    CSystemShims_prefetch_for_write(address)
}
