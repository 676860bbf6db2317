// A file read through a read-only shared mapping: every read is a copy out of memory, no system
// call per read. For tables on a persistent-memory tier: on a DAX file system the mapping is the
// media itself (no page cache between), on tmpfs (/dev/shm, which stands in for persistent memory
// here) it is the file's pages. Loads need nothing from libpmem (it makes stores durable; tables
// are written through the ordinary write path and fdatasync before anything reads them).
//
// Invariant: the file is not truncated while mapped (tables are immutable once written; an
// unlinked table stays mapped until the last reader lets go). A media error under a mapping is a
// SIGBUS, not an error return: the price of load/store access, as for any DAX reader.
// Thread-safety: reads are concurrent; the mapping lives until deinit.
#if canImport(Glibc)
    import Glibc
#endif

/// A read-only mapping of a whole file, read at arbitrary offsets.
final class MappedRandomAccessFile: RandomAccessFile, @unchecked Sendable {
    let path: String
    let size: UInt64
    /// The mapping (nil for an empty file, which cannot be mapped).
    private let base: UnsafeRawPointer?

    /// Maps `path` read-only.
    /// - Throws: the open, stat or mmap error naming the file.
    init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("open", path) }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw posixError("fstat", path) }
        self.path = path
        size = UInt64(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let address = mmap(nil, Int(size), PROT_READ, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else { throw posixError("mmap", path) }
        base = UnsafeRawPointer(address)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), Int(size)) }
    }

    func mappedBytes(at offset: UInt64, count: Int) -> UnsafeRawBufferPointer? {
        guard let base, count >= 0, offset <= size, UInt64(count) <= size - offset else { return nil }
        return UnsafeRawBufferPointer(start: base + Int(offset), count: count)
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let base, offset < size, buffer.count > 0 else { return 0 }
        let count = Int(min(UInt64(buffer.count), size - offset))
        buffer.baseAddress!.copyMemory(from: base + Int(offset), byteCount: count)
        return count
    }
}

extension PosixFileSystem {
    /// Opens `path` through a read-only mapping (see MappedRandomAccessFile).
    public func openMapped(_ path: String) throws -> any RandomAccessFile { try MappedRandomAccessFile(path: path) }
}
