// Builds one block: entries with keys prefix-compressed against the previous key, a full key
// every `restartInterval` entries (a restart point), then the restart offsets and their count.
// Layout in docs/FORMAT.md. Keys must be added in strictly increasing order. Single-threaded.

/// Accumulates sorted entries into the block layout.
public struct BlockBuilder {
    public let restartInterval: Int
    public private(set) var buffer: [UInt8] = []
    private var restarts: [UInt32] = [0]
    private var counter = 0
    private var lastKey: [UInt8] = []
    public private(set) var entryCount = 0

    public init(restartInterval: Int = 16) {
        precondition(restartInterval >= 1)
        self.restartInterval = restartInterval
        buffer.reserveCapacity(4096 + 512)
    }

    public var isEmpty: Bool { entryCount == 0 }

    /// The size the finished block will have.
    public var estimatedSizeBytes: Int { buffer.count + restarts.count * 4 + 4 }

    /// The last key added.
    public var lastKeyBytes: [UInt8] { lastKey }

    /// Adds an entry. Precondition: `key` sorts after every key added before.
    public mutating func add(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        var shared = 0
        if counter < restartInterval {
            let limit = min(lastKey.count, key.count)
            lastKey.withUnsafeBytes { last in
                while shared < limit && last[shared] == key[shared] { shared += 1 }
            }
        } else {
            restarts.append(UInt32(buffer.count))
            counter = 0
        }
        let nonShared = key.count - shared
        buffer.appendVarint(UInt64(shared))
        buffer.appendVarint(UInt64(nonShared))
        buffer.appendVarint(UInt64(value.count))
        buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: key[shared...]))
        buffer.append(contentsOf: value)
        lastKey.removeSubrange(shared...)
        lastKey.append(contentsOf: UnsafeRawBufferPointer(rebasing: key[shared...]))
        counter += 1
        entryCount += 1
    }

    /// Adds an entry from arrays.
    public mutating func add(key: [UInt8], value: [UInt8]) {
        key.withUnsafeBytes { k in value.withUnsafeBytes { v in add(key: k, value: v) } }
    }

    /// Appends the restart array and returns the finished block contents; resets the builder.
    public mutating func finish() -> [UInt8] {
        for restart in restarts { buffer.appendFixed32(restart) }
        buffer.appendFixed32(UInt32(restarts.count))
        let result = buffer
        buffer.removeAll(keepingCapacity: true)
        restarts = [0]
        counter = 0
        lastKey.removeAll(keepingCapacity: true)
        entryCount = 0
        return result
    }
}
