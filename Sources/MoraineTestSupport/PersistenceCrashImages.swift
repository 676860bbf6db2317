// Crash images of a persistent-memory region built from its persistence trace, the way
// pmreorder checks PMDK programs (Debian ships no pmreorder). Model (x86 with clwb/clflushopt):
// a store sits in the CPU cache until a flush of its cache line followed by a fence makes it
// durable; before that it may or may not have reached the media, independently per 8-byte
// word (the unit the hardware writes atomically), and in any order. An image for a crash after
// event k keeps every store made durable by event k, and a random subset of the rest, applied
// in program order (a later store to the same word wins when both are kept; a durable store
// hides every earlier store to its word).
// Not thread-safe; build images from a finished trace.
import MoraineSystem

/// Builds crash images from a trace.
public struct PersistenceCrashImages {
    /// One 8-byte-aligned word of one store.
    struct WordStore {
        let event: Int
        let wordOffset: Int
        let firstByte: Int  // within the word
        let bytes: [UInt8]
    }

    let initial: [UInt8]
    let events: [PersistenceTracer.Event]

    /// - Parameter initial: the region's bytes when tracing started (a new file: zeros).
    public init(initial: [UInt8], events: [PersistenceTracer.Event]) {
        self.initial = initial
        self.events = events
    }

    /// Positions worth crashing at: just before and after every fence, and the end.
    public var interestingCrashPoints: [Int] {
        var points: [Int] = [0]
        for (index, event) in events.enumerated() {
            if case .fence = event {
                points.append(index)
                points.append(index + 1)
            }
        }
        points.append(events.count)
        return points
    }

    /// The region as it might be found after a crash before event `crashAt`.
    public func image(crashAt: Int, using rng: inout SeededRandom) -> [UInt8] {
        var durable = initial
        var durableEvent: [Int: Int] = [:]  // word offset -> event of the store it holds
        var pending: [WordStore] = []  // not yet flushed
        var flushed: [WordStore] = []  // flushed, waiting for a fence
        for index in 0..<min(crashAt, events.count) {
            switch events[index] {
            case .store(let offset, let bytes):
                pending.append(contentsOf: Self.split(event: index, offset: offset, bytes: bytes))
            case .flush(let offset, let length):
                let firstLine = offset / 64
                let lastLine = (offset + length - 1) / 64
                var still: [WordStore] = []
                for word in pending {
                    let line = word.wordOffset / 64
                    if line >= firstLine && line <= lastLine { flushed.append(word) } else { still.append(word) }
                }
                pending = still
            case .fence:
                for word in flushed.sorted(by: { $0.event < $1.event }) {
                    Self.apply(word, to: &durable)
                    durableEvent[word.wordOffset] = max(durableEvent[word.wordOffset] ?? -1, word.event)
                }
                flushed.removeAll()
            }
        }
        var image = durable
        for word in (pending + flushed).sorted(by: { $0.event < $1.event })
        where word.event > (durableEvent[word.wordOffset] ?? -1) && Bool.random(using: &rng) {
            Self.apply(word, to: &image)
        }
        return image
    }

    static func split(event: Int, offset: Int, bytes: [UInt8]) -> [WordStore] {
        var words: [WordStore] = []
        var position = 0
        while position < bytes.count {
            let address = offset + position
            let wordOffset = address & ~7
            let firstByte = address - wordOffset
            let count = min(8 - firstByte, bytes.count - position)
            words.append(
                WordStore(
                    event: event, wordOffset: wordOffset, firstByte: firstByte,
                    bytes: Array(bytes[position..<position + count])))
            position += count
        }
        return words
    }

    static func apply(_ word: WordStore, to image: inout [UInt8]) {
        for (i, byte) in word.bytes.enumerated() { image[word.wordOffset + word.firstByte + i] = byte }
    }
}
