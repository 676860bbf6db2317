// Link emulation: an injected one-way delay and a bandwidth cap per connection, so that one box
// can stand in for CXL, RDMA or datacenter-network distance between roles.
//
// Each end applies its emulation to the frames it *receives*: a frame that arrives at time t
// becomes visible to the protocol at its due time (LinkShaper), computed as on a store-and-forward
// link: transmission starts when the link is free, takes bytes / bandwidth, and the frame then
// travels `delay`. Due times never decrease, so frames stay in order even when the delay is drawn
// from a distribution. Give both ends the same emulation for a symmetric link.
//
// Waiting for a due time sleeps while it is far off and spins for the last stretch
// (`spinNanos`), because a sleep on this scale overshoots by tens of microseconds. Accuracy is
// measured by `moraine transport-bench --delay_us` (BENCHMARKS.md).
//
// Thread-safety: value types; a shaper belongs to the one thread (or event loop) that receives.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The emulated link between two ends of a connection (as seen by the receiving end).
public struct LinkEmulation: Sendable, Equatable {
    /// How long a frame travels once sent.
    public enum Delay: Sendable, Equatable {
        /// The same delay for every frame.
        case fixed(nanos: Int64)
        /// Uniform between the bounds (inclusive).
        case uniform(lowerNanos: Int64, upperNanos: Int64)
        /// Normal around the mean, cut at zero.
        case normal(meanNanos: Int64, deviationNanos: Int64)
    }

    /// The one-way delay, or nil for none.
    public var delay: Delay?
    /// The link's bandwidth in bytes per second, or nil for no cap.
    public var bandwidthBytesPerSecond: Int64?
    /// Seeds the delay distribution (same seed, same delays).
    public var seed: UInt64

    /// No emulation: frames are used as soon as they arrive.
    public static let none = LinkEmulation()

    /// - Precondition: delays are not negative, the bandwidth is positive.
    public init(delay: Delay? = nil, bandwidthBytesPerSecond: Int64? = nil, seed: UInt64 = 1) {
        switch delay {
        case .fixed(let nanos): precondition(nanos >= 0, "a negative delay")
        case .uniform(let lower, let upper): precondition(0 <= lower && lower <= upper, "uniform bounds out of order")
        case .normal(let mean, let deviation): precondition(mean >= 0 && deviation >= 0, "a negative delay")
        case nil: break
        }
        if let bandwidthBytesPerSecond { precondition(bandwidthBytesPerSecond > 0, "a bandwidth must be positive") }
        self.delay = delay
        self.bandwidthBytesPerSecond = bandwidthBytesPerSecond
        self.seed = seed
    }

    /// Whether frames are held at all.
    public var isActive: Bool { delay != nil || bandwidthBytesPerSecond != nil }

    /// The mean one-way delay this emulation asks for (for reports).
    public var meanDelayNanos: Int64 {
        switch delay {
        case .fixed(let nanos): nanos
        case .uniform(let lower, let upper): (lower + upper) / 2
        case .normal(let mean, _): mean
        case nil: 0
        }
    }

    /// Sleeps are used only while more than this is left; the rest is spun.
    public static let spinNanos: Int64 = 150_000
}

/// Computes when each received frame is due (one per receiving direction of a connection).
struct LinkShaper {
    let emulation: LinkEmulation
    private var random: SplitMix64
    private var linkFreeNanos: Int64 = 0
    private var lastDueNanos: Int64 = 0

    init(_ emulation: LinkEmulation) {
        self.emulation = emulation
        random = SplitMix64(seed: emulation.seed)
    }

    /// When a frame of `byteCount` bytes that arrived at `arrivalNanos` may be used.
    mutating func due(arrivalNanos: Int64, byteCount: Int) -> Int64 {
        var sent = arrivalNanos
        if let bandwidth = emulation.bandwidthBytesPerSecond {
            let start = max(arrivalNanos, linkFreeNanos)
            let (product, overflow) = Int64(byteCount).multipliedReportingOverflow(by: 1_000_000_000)
            let transmit = overflow ? Int64(Double(byteCount) * 1e9 / Double(bandwidth)) : product / bandwidth
            sent = start + transmit
            linkFreeNanos = sent
        }
        let due = max(sent + sampleDelay(), lastDueNanos)
        lastDueNanos = due
        return due
    }

    private mutating func sampleDelay() -> Int64 {
        switch emulation.delay {
        case nil: return 0
        case .fixed(let nanos): return nanos
        case .uniform(let lower, let upper):
            return lower + Int64(random.next() % UInt64(upper - lower + 1))
        case .normal(let mean, let deviation):
            // Box–Muller from two uniforms in (0, 1].
            let u1 = (Double(random.next() >> 11) + 1) / 9_007_199_254_740_992.0
            let u2 = Double(random.next() >> 11) / 9_007_199_254_740_992.0
            let z = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
            return max(0, mean + Int64(z * Double(deviation)))
        }
    }

    /// Waits until `due`, returning early when `interrupt` says something else needs attention
    /// (checked between sleeps and while spinning). Returns whether `due` was reached.
    static func wait(until due: Int64, interrupt: () -> Bool = { false }) -> Bool {
        while true {
            let left = due - monotonicNanos()
            if left <= 0 { return true }
            if interrupt() { return false }
            if left > LinkEmulation.spinNanos {
                sleepNanos(min(left - LinkEmulation.spinNanos, 50_000))
            } else {
                cpuRelax()
            }
        }
    }
}

/// Received items held until their due time, in arrival order.
struct DelayLine<Item> {
    private var shaper: LinkShaper
    private var items: [(due: Int64, item: Item)] = []
    private var head = 0

    init(_ emulation: LinkEmulation) { shaper = LinkShaper(emulation) }

    var isEmpty: Bool { head == items.count }

    /// The due time of the oldest item held.
    var nextDue: Int64? { isEmpty ? nil : items[head].due }

    mutating func add(_ item: Item, byteCount: Int, arrivalNanos: Int64) {
        items.append((shaper.due(arrivalNanos: arrivalNanos, byteCount: byteCount), item))
    }

    /// The oldest item, when it is due by `now`.
    mutating func takeReady(now: Int64) -> Item? {
        guard head < items.count, items[head].due <= now else { return nil }
        let item = items[head].item
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        return item
    }
}
