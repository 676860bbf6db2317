// A single-producer, single-consumer byte ring in memory that two processes share (a memfd
// both have mapped). It moves whole frames: the producer reserves space, copies bytes in (wrapping
// at the end), and publishes by advancing `tail` with release ordering; the consumer reads from
// `head` up to `tail` and hands space back by advancing `head`. Positions only grow (u64); the
// byte index is position & (capacity - 1).
//
// Control block, one cache line per word group. Head and tail are each written by one side only;
// the waiting flag and wake word on one line are written by both, but only around a sleep:
//    0  tail                 u64  written by the producer only
//   64  head                 u64  written by the consumer only
//  128  consumer waiting u32, consumer wake word u32
//  192  producer waiting u32, producer wake word u32   (the producer sleeps when the ring is full)
//  256  data (capacity bytes, a power of two)
//
// Waking: a waiter spins briefly (on the CPU's spin-wait hint, then yielding its CPU between
// looks), then sets its waiting flag (sequentially consistent), re-checks the ring, and sleeps on
// its wake word with a futex. The other side, after publishing, fences and wakes only if the flag
// is set: no syscall per message while both are busy, no burnt core while idle. Sleeps are bounded
// (`sleepSliceNanos`) so a waiter can notice a dead peer.
//
// Thread-safety: one producer thread and one consumer thread per ring (each may be in another
// process). Nothing in the shared memory is trusted: a consumer checks every position against
// the capacity, since a faulty peer could write anything there.
import CSystemShims

/// One direction of a shared-memory connection.
public struct SharedRing: @unchecked Sendable {
    /// Bytes of the control block in front of the data.
    public static let controlBytes = 256
    private let control: UnsafeMutableRawPointer
    private let data: UnsafeMutableRawPointer
    /// Data bytes (a power of two).
    public let capacity: Int
    private let mask: UInt64

    /// Bytes a ring of `capacity` data bytes occupies in the mapping.
    public static func footprint(capacity: Int) -> Int { controlBytes + capacity }

    /// A view of a ring at `base`, which has `footprint(capacity:)` bytes.
    /// - Precondition: `capacity` is a power of two of at least 4 KiB; `base` is 64-byte aligned.
    public init(at base: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity >= 4096 && capacity & (capacity - 1) == 0, "ring capacity must be a power of two")
        precondition(UInt(bitPattern: base) % 64 == 0, "ring must be cache-line aligned")
        control = base
        data = base + Self.controlBytes
        self.capacity = capacity
        mask = UInt64(capacity - 1)
    }

    /// Zeroes the control block (the creator does this once, before sharing the mapping).
    public func format() {
        control.initializeMemory(as: UInt8.self, repeating: 0, count: Self.controlBytes)
    }

    private var tailWord: UnsafeMutablePointer<UInt64> { control.assumingMemoryBound(to: UInt64.self) }
    private var headWord: UnsafeMutablePointer<UInt64> { (control + 64).assumingMemoryBound(to: UInt64.self) }
    private var consumerWaiting: UnsafeMutablePointer<UInt32> { (control + 128).assumingMemoryBound(to: UInt32.self) }
    private var consumerWake: UnsafeMutablePointer<UInt32> { (control + 132).assumingMemoryBound(to: UInt32.self) }
    private var producerWaiting: UnsafeMutablePointer<UInt32> { (control + 192).assumingMemoryBound(to: UInt32.self) }
    private var producerWake: UnsafeMutablePointer<UInt32> { (control + 196).assumingMemoryBound(to: UInt32.self) }

    // MARK: Producer

    /// The consumer's head (acquire): how far the producer may write. A producer keeps the last
    /// value it read and loads again only when that one says the ring is full, because the
    /// word sits on the consumer's cache line and every load of it may cross cores.
    @inline(__always)
    public func loadHead() -> UInt64 { CSystemShims_load_acquire_u64(headWord) }

    /// The producer's tail (acquire): how far the consumer may read.
    @inline(__always)
    public func loadTail() -> UInt64 { CSystemShims_load_acquire_u64(tailWord) }

    /// The producer's view: published tail and the consumer's head.
    public func producerPositions() -> (tail: UInt64, head: UInt64) {
        (CSystemShims_load_acquire_u64(tailWord), CSystemShims_load_acquire_u64(headWord))
    }

    /// Copies `bytes` in at position `at` (not yet visible to the consumer).
    /// - Precondition: the caller checked there is room (`at + count - head <= capacity`).
    public func write(_ bytes: UnsafeRawBufferPointer, at position: UInt64) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        let index = Int(position & mask)
        let first = min(bytes.count, capacity - index)
        (data + index).copyMemory(from: source, byteCount: first)
        if first < bytes.count { data.copyMemory(from: source + first, byteCount: bytes.count - first) }
    }

    /// Makes everything up to `tail` visible, and wakes the consumer if it sleeps.
    public func publish(tail: UInt64) {
        CSystemShims_store_release_u64(tailWord, tail)
        CSystemShims_fence_seq_cst()
        if CSystemShims_load_acquire_u32(consumerWaiting) != 0 { Self.wake(consumerWake) }
    }

    /// Waits until the consumer has freed room for `byteCount` more bytes past `tail`.
    /// Returns false when `stillWanted` says to give up (the peer is gone, or the caller closed).
    public func waitForRoom(_ byteCount: Int, after tail: UInt64, stillWanted: () -> Bool) -> Bool {
        precondition(byteCount <= capacity, "a frame larger than the ring")
        return Self.wait(
            ready: { tail &+ UInt64(byteCount) &- CSystemShims_load_acquire_u64(headWord) <= UInt64(capacity) },
            waiting: producerWaiting, wake: producerWake, stillWanted: stillWanted)
    }

    // MARK: Consumer

    /// The consumer's view: its head and the published tail (tail - head is what may be read).
    /// - Throws: nothing; returns nil when the peer left the positions inconsistent.
    public func consumerPositions() -> (head: UInt64, tail: UInt64)? {
        let head = CSystemShims_load_acquire_u64(headWord)
        let tail = CSystemShims_load_acquire_u64(tailWord)
        guard tail &- head <= UInt64(capacity) else { return nil }
        return (head, tail)
    }

    /// Copies `target.count` bytes out from position `at`.
    public func read(into target: UnsafeMutableRawBufferPointer, at position: UInt64) {
        guard let base = target.baseAddress, target.count > 0 else { return }
        let index = Int(position & mask)
        let first = min(target.count, capacity - index)
        base.copyMemory(from: data + index, byteCount: first)
        if first < target.count { (base + first).copyMemory(from: data, byteCount: target.count - first) }
    }

    /// Hands the bytes before `head` back to the producer, waking it if it waits for room.
    public func release(head: UInt64) {
        CSystemShims_store_release_u64(headWord, head)
        CSystemShims_fence_seq_cst()
        if CSystemShims_load_acquire_u32(producerWaiting) != 0 { Self.wake(producerWake) }
    }

    /// Waits until bytes past `head` are published. Returns false when `stillWanted` says stop.
    public func waitForData(after head: UInt64, stillWanted: () -> Bool) -> Bool {
        Self.wait(
            ready: { CSystemShims_load_acquire_u64(tailWord) != head },
            waiting: consumerWaiting, wake: consumerWake, stillWanted: stillWanted)
    }

    // MARK: Waking

    /// A producer waiting for room spins this many times before sleeping (tens to a few hundred
    /// microseconds, depending on the CPU's spin-wait hint).
    public static let spinCount = 4000
    /// A waiter first spins this many times on the CPU's spin-wait hint (about 18 µs here)...
    static let pauseSpins = 400
    /// ...then until this long has passed since, yielding its CPU between looks: on a machine
    /// with fewer cores than waiting threads, the thread that will publish what it waits for may
    /// be the one waiting for a core (on 2 vCPUs, yielding made writes through the compute node
    /// 1.7–2.2x faster than spinning on the hint alone; docs/TRANSPORT.md).
    static let yieldSpinNanos: Int64 = 200_000
    /// A sleeper wakes at least this often to ask `stillWanted`.
    public static let sleepSliceNanos: Int64 = 20_000_000

    private static func wake(_ word: UnsafeMutablePointer<UInt32>) {
        _ = CSystemShims_fetch_add_u32(word, 1)
        _ = CSystemShims_futex_wake(word, 1)
    }

    private static func wait(
        ready: () -> Bool, waiting: UnsafeMutablePointer<UInt32>, wake: UnsafeMutablePointer<UInt32>,
        stillWanted: () -> Bool
    ) -> Bool {
        for _ in 0..<pauseSpins {
            if ready() { return true }
            CSystemShims_cpu_relax()
        }
        let yieldUntil = monotonicNanos() + yieldSpinNanos
        repeat {
            if ready() { return true }
            _ = CSystemShims_yield()
        } while monotonicNanos() < yieldUntil
        while true {
            let sequence = CSystemShims_load_acquire_u32(wake)
            CSystemShims_store_seq_cst_u32(waiting, 1)
            CSystemShims_fence_seq_cst()
            if ready() {
                CSystemShims_store_release_u32(waiting, 0)
                return true
            }
            _ = CSystemShims_futex_wait(wake, sequence, sleepSliceNanos)
            CSystemShims_store_release_u32(waiting, 0)
            if ready() { return true }
            if !stillWanted() { return false }
        }
    }
}

/// A spin-wait hint to the CPU (PAUSE on x86, YIELD on ARM), for loops that wait on memory.
@inline(__always)
public func cpuRelax() { CSystemShims_cpu_relax() }
