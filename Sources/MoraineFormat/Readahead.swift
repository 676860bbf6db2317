// Readahead for one table iterator: instead of one read per data block, a sequential scan reads
// a large span of the file at once and serves the following blocks from it.
// - Compaction inputs read ahead from the first block, in fixed spans (2 MiB by default, as
//   RocksDB's compaction_readahead_size).
// - User iterators start without it and switch it on after two block loads in a row that
//   follow each other in the file, starting at 16 KiB and doubling up to 256 KiB (RocksDB's
//   automatic iterator readahead works the same way). A seek elsewhere resets the size, so
//   point-ish scans never pay for a big read.
// For user iterators over a file the kernel can prefetch (a plain file: posix_fadvise WILLNEED),
// the readahead is the kernel's: each span is advised once, as the scan reaches it, and every
// block is then read on its own from the page cache. Reading the span into a buffer of our own
// made every scan step that refilled it wait for the whole span (readseq's p99 at 4 KiB values
// was 3x RocksDB's, which advises the kernel the same way for buffered files). Compaction keeps
// the buffer: its big reads are cheaper, and nobody waits on one step.
// Blocks found in the block cache skip the buffer entirely. Used by one iterator, one thread.
import MoraineSystem

/// A readahead buffer owned by one iterator.
public final class Readahead {
    /// Bytes of the first automatic readahead.
    public static let initialAutomaticBytes = 16 << 10
    /// The largest automatic readahead.
    public static let maxAutomaticBytes = 256 << 10
    /// The fixed readahead of compaction inputs.
    public static let compactionBytes = 2 << 20

    private let automatic: Bool
    private let maxBytes: Int
    private var currentBytes: Int
    private var buffer: UnsafeMutableRawBufferPointer
    private var bufferOffset: UInt64 = 0
    private var bufferLength = 0
    private var nextSequentialOffset: UInt64 = .max
    private var sequentialLoads = 0
    /// The end of the span last advised to the kernel (automatic mode).
    private var advisedEnd: UInt64 = 0
    /// Reads (or kernel prefetch requests) this readahead issued (for tests and stats).
    public private(set) var readCount = 0

    /// Automatic readahead for user iterators.
    public static func automatic() -> Readahead {
        Readahead(automatic: true, initialBytes: initialAutomaticBytes, maxBytes: maxAutomaticBytes)
    }

    /// Fixed readahead of `bytes` from the first block (compaction inputs).
    public static func fixed(bytes: Int = compactionBytes) -> Readahead {
        Readahead(automatic: false, initialBytes: bytes, maxBytes: bytes)
    }

    private init(automatic: Bool, initialBytes: Int, maxBytes: Int) {
        precondition(initialBytes > 0 && maxBytes >= initialBytes)
        self.automatic = automatic
        self.currentBytes = initialBytes
        self.maxBytes = maxBytes
        self.buffer = .allocate(byteCount: 0, alignment: 8)
    }

    deinit { buffer.deallocate() }

    /// The raw bytes (payload and trailer) of the block at `handle`, copied out of the readahead
    /// buffer (filling it first when needed), or nil when this load should read the block alone.
    /// - Returns: an owned buffer the caller passes on to the block decoder.
    func rawBlock(_ handle: BlockHandle, file: any RandomAccessFile) throws -> UnsafeMutableRawBufferPointer? {
        let need = Int(handle.size) + blockTrailerBytes
        let start = handle.offset
        let sequential = start == nextSequentialOffset
        nextSequentialOffset = start + UInt64(need)
        if !covers(start, need) {
            if automatic {
                if sequential {
                    sequentialLoads += 1
                } else {
                    sequentialLoads = 0
                    currentBytes = Self.initialAutomaticBytes
                    advisedEnd = 0
                }
                if sequentialLoads < 2 { return nil }
                if start + UInt64(need) <= advisedEnd { return nil }  // the kernel has it coming
                let length = max(currentBytes, need)
                if file.prefetch(at: start, length: length) {
                    readCount += 1
                    advisedEnd = start + UInt64(length)
                    currentBytes = min(currentBytes * 2, maxBytes)
                    return nil
                }
            }
            try fill(from: start, atLeast: need, file: file)
            if !covers(start, need) { return nil }  // the file ends first: let the plain read report it
        }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: need, alignment: 8)
        let from = Int(start - bufferOffset)
        raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[from..<from + need]))
        return raw
    }

    /// Counts a load another tier served toward finding a sequential scan, as a load from the
    /// file would count.
    func note(_ handle: BlockHandle) {
        guard automatic else { return }
        if handle.offset == nextSequentialOffset {
            sequentialLoads += 1
        } else {
            sequentialLoads = 0
            currentBytes = Self.initialAutomaticBytes
            advisedEnd = 0
        }
        nextSequentialOffset = handle.offset + UInt64(Int(handle.size) + blockTrailerBytes)
    }

    /// Whether the load of the block at `handle` would be served by reading ahead (a compaction's
    /// always; an iterator's once two loads in a row followed each other). Changes nothing.
    func readsAhead(_ handle: BlockHandle) -> Bool {
        if !automatic || covers(handle.offset, Int(handle.size) + blockTrailerBytes) { return true }
        return handle.offset == nextSequentialOffset && sequentialLoads >= 1
    }

    private func covers(_ start: UInt64, _ count: Int) -> Bool {
        start >= bufferOffset && start + UInt64(count) <= bufferOffset + UInt64(bufferLength)
    }

    private func fill(from start: UInt64, atLeast need: Int, file: any RandomAccessFile) throws {
        let wanted = max(currentBytes, need)
        let length = Int(min(UInt64(wanted), file.size > start ? file.size - start : 0))
        if buffer.count < length {
            buffer.deallocate()
            buffer = .allocate(byteCount: max(length, maxBytes), alignment: 4096)
        }
        bufferOffset = start
        bufferLength = 0
        readCount += 1
        bufferLength = try file.read(at: start, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]))
        if automatic { currentBytes = min(currentBytes * 2, maxBytes) }
    }
}
