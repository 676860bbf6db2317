// The I/O queue: io_uring and the pread/pwrite fallback must give byte-identical results on
// the same randomized script of writes, vectored writes, reads (some past the end of the file),
// batches and linked fdatasyncs, on real files. Also: batched reads across files, registered
// files and buffers, O_DIRECT with aligned buffers, failures reported per request, and a
// failed link cancelling its successor. MORAINE_SEED replays the script.
import Glibc
import MoraineSystem
import MoraineTestSupport
import Testing

@Suite("I/O queue")
struct IOQueueTests {
    static func openFile(_ path: String, flags: Int32 = 0) throws -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | flags, 0o644)
        guard fd >= 0 else { throw MoraineError(.io, "open \(path): errno \(errno)") }
        return fd
    }

    static func ringQueue() throws -> IOQueue {
        try IOQueue(ringDepth: 8)  // small, so batches need several rounds
    }

    /// One step of the script, replayed on each backend.
    enum Step {
        case write(offset: UInt64, bytes: [UInt8], sync: Bool)
        case writeVectored(offset: UInt64, pieces: [[UInt8]])
        case reads([(offset: UInt64, length: Int)])
    }

    static func script(seed: UInt64, steps: Int) -> [Step] {
        var rng = SeededRandom(seed: seed)
        var result: [Step] = []
        var size: UInt64 = 0
        for _ in 0..<steps {
            let limit = max(size, 1)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<3:
                let offset = UInt64.random(in: 0...limit, using: &rng)
                let bytes = (0..<Int.random(in: 1...20_000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                size = max(size, offset + UInt64(bytes.count))
                result.append(.write(offset: offset, bytes: bytes, sync: Bool.random(using: &rng)))
            case 3:
                let offset = UInt64.random(in: 0...limit, using: &rng)
                let pieces = (0..<Int.random(in: 1...5, using: &rng)).map { _ in
                    (0..<Int.random(in: 1...5000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
                size = max(size, offset + UInt64(pieces.reduce(0) { $0 + $1.count }))
                result.append(.writeVectored(offset: offset, pieces: pieces))
            default:
                let reads = (0..<Int.random(in: 1...40, using: &rng)).map { _ in
                    (offset: UInt64.random(in: 0...limit + 100, using: &rng), length: Int.random(in: 0...9000, using: &rng))
                }
                result.append(.reads(reads))
            }
        }
        return result
    }

    /// Runs the script; returns a transcript of every result and the final file.
    static func run(_ steps: [Step], queue: IOQueue, path: String) throws -> [String] {
        let fd = try openFile(path)
        defer { close(fd) }
        var transcript: [String] = []
        for step in steps {
            switch step {
            case .write(let offset, let bytes, let sync):
                let failure = bytes.withUnsafeBytes { queue.write(fd: fd, at: offset, from: $0, sync: sync) }
                transcript.append("write \(offset) \(bytes.count) \(failure.map { "\($0.code)" } ?? "ok")")
            case .writeVectored(let offset, let pieces):
                let buffers = pieces.map { piece -> UnsafeMutableRawBufferPointer in
                    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: piece.count, alignment: 1)
                    b.copyBytes(from: piece)
                    return b
                }
                defer { buffers.forEach { $0.deallocate() } }
                var iovecs = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
                let request = iovecs.withUnsafeMutableBufferPointer { pointer in
                    var request = IORequest.vectored(
                        .writeVectored, fd: fd, at: offset, iovecs: pointer.baseAddress!, count: Int32(pointer.count))
                    withUnsafeMutablePointer(to: &request) { queue.submit(UnsafeMutableBufferPointer(start: $0, count: 1)) }
                    return request
                }
                transcript.append("writev \(offset) \(request.transferred) \(request.errorNumber)")
            case .reads(let reads):
                let buffers = reads.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.length, alignment: 8) }
                defer { buffers.forEach { $0.deallocate() } }
                var requests = zip(reads, buffers).map { IORequest.read(fd: fd, at: $0.offset, into: $1) }
                requests.withUnsafeMutableBufferPointer { queue.submit($0) }
                for (request, buffer) in zip(requests, buffers) {
                    let got = Array(buffer.prefix(request.transferred))
                    transcript.append("read \(request.offset) \(request.transferred) \(request.errorNumber) \(hashBytes(got))")
                }
            }
        }
        var st = stat()
        fstat(fd, &st)
        transcript.append("size \(st.st_size)")
        return transcript
    }

    static func hashBytes(_ bytes: [UInt8]) -> UInt64 {
        bytes.reduce(14_695_981_039_346_656_037) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
    }

    @Test("io_uring and pread/pwrite give byte-identical results on a random script")
    func backendsAgree() throws {
        let seed = testSeed()
        let directory = makeTemporaryDirectory("ioqueue")
        defer { removeTree(directory) }
        let steps = Self.script(seed: seed, steps: SeededRandom.environmentInt("MORAINE_IO_STEPS", default: 300))
        let ring = try Self.run(steps, queue: try Self.ringQueue(), path: directory + "/uring")
        let posix = try Self.run(steps, queue: IOQueue(), path: directory + "/posix")
        #expect(ring.count == posix.count)
        for (index, (a, b)) in zip(ring, posix).enumerated() where a != b {
            Issue.record("seed \(seed): step \(index) differs: io_uring \(a) vs pread \(b)")
            break
        }
        let a = try PosixFileSystem(ioBackend: .posix).readAll(directory + "/uring")
        let b = try PosixFileSystem(ioBackend: .posix).readAll(directory + "/posix")
        #expect(a == b, "seed \(seed): final files differ")
        #expect(a.count > 0)
    }

    @Test("a batch larger than the ring reads many files in one call", arguments: IOBackend.allCases)
    func batchedReadsAcrossFiles(backend: IOBackend) throws {
        let directory = makeTemporaryDirectory("iobatch")
        defer { removeTree(directory) }
        let fs = PosixFileSystem(ioBackend: backend)
        var files: [any RandomAccessFile] = []
        for f in 0..<5 {
            let writer = try fs.createWritable(directory + "/f\(f)", hint: .bulk)
            try writer.append((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ f) })
            try writer.sync()
            try writer.close()
            files.append(try fs.openRandomAccess(directory + "/f\(f)"))
        }
        let buffers = (0..<100).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8) }
        defer { buffers.forEach { $0.deallocate() } }
        var batch = (0..<100).map { i in BatchRead(file: files[i % 5], offset: UInt64(i * 997 % 90_000), buffer: buffers[i]) }
        batch.withUnsafeMutableBufferPointer { fs.read(batch: $0) }
        for (i, read) in batch.enumerated() {
            #expect(read.error == nil)
            #expect(read.bytesRead == 4096)
            let expected = (0..<4096).map { UInt8(truncatingIfNeeded: ($0 + i * 997 % 90_000) &* 7 &+ (i % 5)) }
            let same = Array(read.buffer) == expected
            #expect(same, "read \(i) returned the wrong bytes")
        }
    }

    @Test("registered files and buffers, and O_DIRECT with aligned buffers")
    func registeredAndDirect() throws {
        let directory = makeTemporaryDirectory("iodirect")
        defer { removeTree(directory) }
        let queue = try Self.ringQueue()
        let pattern = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let fd = try Self.openFile(directory + "/data")
        defer { close(fd) }
        #expect(pattern.withUnsafeBytes { queue.write(fd: fd, at: 0, from: $0, sync: true) } == nil)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 4096)
        defer { buffer.deallocate() }
        try queue.registerFiles([fd])
        try queue.registerBuffers([buffer])
        var request = IORequest.read(fd: fd, at: 8192, into: buffer)
        request.fixedFileIndex = 0
        request.fixedBufferIndex = 0
        withUnsafeMutablePointer(to: &request) { queue.submit(UnsafeMutableBufferPointer(start: $0, count: 1)) }
        #expect(request.errorNumber == 0)
        #expect(Array(buffer) == Array(pattern[8192..<8192 + (16 << 10)]))

        // O_DIRECT: a file system without it (tmpfs) refuses with EINVAL; anything else is a failure.
        let directFD = open(directory + "/data", O_RDONLY | O_CLOEXEC | IOQueue.directIOOpenFlag)
        guard directFD >= 0 else {
            #expect(errno == EINVAL, "O_DIRECT open failed with errno \(errno)")
            return
        }
        defer { close(directFD) }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        for backend in [queue, IOQueue()] {
            switch backend.read(fd: directFD, at: 4096, into: buffer) {
            case .success(let count): #expect(count == buffer.count)
            case .failure(let error): Issue.record("O_DIRECT read failed: \(error)")
            }
            #expect(Array(buffer) == Array(pattern[4096..<4096 + (16 << 10)]))
        }
    }

    @Test("a failed request reports its errno and cancels the request linked after it", arguments: IOBackend.allCases)
    func failuresAndLinks(backend: IOBackend) throws {
        let queue = backend == .ioUring ? try Self.ringQueue() : IOQueue()
        let bytes: [UInt8] = [1, 2, 3]
        let failure = bytes.withUnsafeBytes { queue.write(fd: 9999, at: 0, from: $0, sync: true) }
        #expect(failure?.code == EBADF)
        #expect(failure?.call == "write")
        let directory = makeTemporaryDirectory("iofail")
        defer { removeTree(directory) }
        let readOnly = try Self.openFile(directory + "/f")
        close(readOnly)
        let fd = open(directory + "/f", O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        var requests = bytes.withUnsafeBytes { [IORequest.write(fd: fd, at: 0, from: $0), IORequest.fdatasync(fd: fd)] }
        requests[0].linkNext = true
        requests.withUnsafeMutableBufferPointer { queue.submit($0) }
        #expect(requests[0].errorNumber == EBADF)
        #expect(requests[1].errorNumber == ECANCELED)
        switch queue.read(fd: fd, at: 100, into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) {
        case .success(let count): #expect(count == 0)
        case .failure(let error): Issue.record("empty read failed: \(error)")
        }
    }
}
