// The I/O queue measured against the device: random 4 KiB reads of one file with O_DIRECT
// (so the page cache does not answer), at depths 1, 8 and 32, three ways: io_uring streaming
// (depth reads kept in flight, each slot refilled as it completes, as fio's iodepth), io_uring
// batches (a batch submitted in one call and waited for whole, as multiGet does), and the pread
// queue doing the same batch one read after another (what the fallback can do on one thread).
// The file and the buffers are registered with the ring. scripts/io-bench.sh runs fio on the same
// file beside it for the machine's own limit.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// One measured configuration.
public struct IOBenchRow: Sendable {
    public let backend: String
    public let depth: Int
    public let reads: Int
    public let seconds: Double
    public let p50Micros: Double
    public let p99Micros: Double
    public var iops: Double { Double(reads) / seconds }
}

/// Random-read measurement of the I/O queue.
public struct IOBench {
    public var path: String
    public var fileBytes: Int
    public var secondsPerRow: Double
    public var depths: [Int]
    public var direct: Bool
    public static let blockBytes = 4096

    public init(path: String, fileBytes: Int, secondsPerRow: Double, depths: [Int], direct: Bool) {
        self.path = path
        self.fileBytes = fileBytes
        self.secondsPerRow = secondsPerRow
        self.depths = depths
        self.direct = direct
    }

    /// Creates the data file (random bytes) unless it exists with the right size.
    public func prepareFile() throws {
        var st = stat()
        if stat(path, &st) == 0 && Int(st.st_size) >= fileBytes { return }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MoraineError(.io, "open \(path): errno \(errno)") }
        defer { close(fd) }
        var rng = BenchRandom(seed: 42)
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var written = 0
        while written < fileBytes {
            for i in stride(from: 0, to: chunk.count, by: 8) {
                withUnsafeBytes(of: rng.next()) { word in for j in 0..<8 { chunk[i + j] = word[j] } }
            }
            let n = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(written)) }
            guard n == chunk.count else { throw MoraineError(.io, "write \(path): errno \(errno)") }
            written += n
        }
        guard fsync(fd) == 0 else { throw MoraineError(.io, "fsync \(path): errno \(errno)") }
    }

    /// Measures every backend at every depth.
    public func run() throws -> [IOBenchRow] {
        var rows: [IOBenchRow] = []
        for depth in depths {
            rows.append(try measureStream(depth: depth))
            for backend in IOBackend.allCases {
                rows.append(try measure(backend: backend, depth: depth))
            }
        }
        return rows
    }

    /// io_uring with `depth` reads kept in flight (each slot refilled as it completes).
    func measureStream(depth: Int) throws -> IOBenchRow {
        let target = try Target(path: path, direct: direct, backend: .ioUring, depth: depth)
        let (fd, queue, buffers) = (target.fd, target.queue, target.buffers)
        defer { withExtendedLifetime(target) {} }  // the descriptor and buffers outlive the loop
        let blocks = fileBytes / Self.blockBytes
        var rng = BenchRandom(seed: UInt64(depth) &* 31 &+ 3)
        var started = [UInt64](repeating: 0, count: depth)
        var latencies: [UInt64] = []
        var reads = 0
        var failure: String? = nil
        let start = nowNanos()
        let deadline = start + UInt64(secondsPerRow * 1e9)
        queue.stream(
            depth: depth,
            next: { slot in
                guard failure == nil, nowNanos() < deadline else { return nil }
                var request = IORequest.read(
                    fd: fd, at: UInt64(rng.below(blocks)) * UInt64(Self.blockBytes), into: buffers[slot])
                request.fixedFileIndex = 0
                request.fixedBufferIndex = Int32(slot)
                started[slot] = nowNanos()
                return request
            },
            completed: { slot, request in
                latencies.append(nowNanos() - started[slot])
                if request.errorNumber != 0 || request.transferred != Self.blockBytes {
                    failure = "read at \(request.offset): errno \(request.errorNumber), \(request.transferred) bytes"
                }
                reads += 1
            })
        if let failure { throw MoraineError(.io, "\(path): \(failure)") }
        latencies.sort()
        return IOBenchRow(
            backend: "io_uring-stream", depth: depth, reads: reads, seconds: Double(nowNanos() - start) / 1e9,
            p50Micros: Double(latencies[latencies.count / 2]) / 1000,
            p99Micros: Double(latencies[min(latencies.count - 1, latencies.count * 99 / 100)]) / 1000)
    }

    func measure(backend: IOBackend, depth: Int) throws -> IOBenchRow {
        let target = try Target(path: path, direct: direct, backend: backend, depth: depth)
        let (fd, queue, buffers) = (target.fd, target.queue, target.buffers)
        defer { withExtendedLifetime(target) {} }  // the descriptor and buffers outlive the loop
        let blocks = UInt64(fileBytes / Self.blockBytes)
        var rng = BenchRandom(seed: UInt64(depth) &* 31 &+ (backend == .ioUring ? 1 : 2))
        var requests = [IORequest](
            repeating: .read(fd: fd, at: 0, into: buffers[0]), count: depth)
        var latencies: [UInt64] = []
        var reads = 0
        let start = nowNanos()
        let deadline = start + UInt64(secondsPerRow * 1e9)
        var now = start
        while now < deadline {
            for i in 0..<depth {
                requests[i] = .read(fd: fd, at: UInt64(rng.below(Int(blocks))) * UInt64(Self.blockBytes), into: buffers[i])
                if backend == .ioUring {
                    requests[i].fixedFileIndex = 0
                    requests[i].fixedBufferIndex = Int32(i)
                }
            }
            let batchStart = nowNanos()
            requests.withUnsafeMutableBufferPointer { queue.submit($0) }
            now = nowNanos()
            latencies.append(now - batchStart)
            for request in requests where request.errorNumber != 0 || request.transferred != Self.blockBytes {
                throw MoraineError(.io, "read at \(request.offset) of \(path): errno \(request.errorNumber), \(request.transferred) bytes")
            }
            reads += depth
        }
        latencies.sort()
        let seconds = Double(now - start) / 1e9
        return IOBenchRow(
            backend: backend.rawValue, depth: depth, reads: reads, seconds: seconds,
            p50Micros: Double(latencies[latencies.count / 2]) / 1000,
            p99Micros: Double(latencies[min(latencies.count - 1, latencies.count * 99 / 100)]) / 1000)
    }

    /// The file opened for one row, its queue, and one aligned buffer per slot, registered with
    /// the ring (a no-op for pread).
    final class Target {
        let fd: Int32
        let queue: IOQueue
        let buffers: [UnsafeMutableRawBufferPointer]

        init(path: String, direct: Bool, backend: IOBackend, depth: Int) throws {
            fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? IOQueue.directIOOpenFlag : 0))
            guard fd >= 0 else { throw MoraineError(.io, "open \(path)\(direct ? " with O_DIRECT" : ""): errno \(errno)") }
            buffers = (0..<depth).map { _ in
                UnsafeMutableRawBufferPointer.allocate(byteCount: IOBench.blockBytes, alignment: IOBench.blockBytes)
            }
            do {
                queue = backend == .ioUring ? try IOQueue(ringDepth: max(depth, 8)) : IOQueue()
                try queue.registerFiles([fd])
                try queue.registerBuffers(buffers)
            } catch {
                close(fd)
                buffers.forEach { $0.deallocate() }
                throw error
            }
        }

        deinit {
            close(fd)
            buffers.forEach { $0.deallocate() }
        }
    }
}
