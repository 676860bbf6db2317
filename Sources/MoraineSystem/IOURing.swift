// One io_uring instance and the batch loop over it. The ring is owned by one IOQueue, which
// belongs to one thread; nothing here locks.
//
// A batch runs in rounds. Each round queues every unfinished request, in order, until the
// submission ring is full; a request linked from its predecessor gets IOSQE_IO_LINK on the
// predecessor's entry when both are in the round. One io_uring_submit_and_wait hands the round
// to the kernel and waits for all of it. Requests that came back short, interrupted (EINTR),
// busy (EAGAIN) or cancelled because a linked predecessor came back short go again in the next
// round (a read that says `endsAtShortRead` is done at its first short transfer); a request whose
// linked predecessor failed for good fails with ECANCELED.
import CSystemShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// An owned io_uring (setup and teardown, registration, the batch loop).
final class IOURing {
    private let ring: UnsafeMutablePointer<io_uring>
    let depth: Int
    let setupDescription: String
    /// Set after a submission failed outright; the ring is not entered again.
    var broken = false

    /// Creates a ring, asking for the cheapest completion mode the kernel offers.
    /// - Throws: `.unavailable` with the errno when no ring can be created.
    init(depth requested: Int) throws(MoraineError) {
        precondition(requested > 0 && requested <= 4096, "ring depth must be in 1...4096")
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let attempts: [(UInt32, String)] = [
            (CSystemShims_ioring_setup_single_issuer_deferred(), "single issuer, deferred task run"),
            (CSystemShims_ioring_setup_coop_taskrun(), "cooperative task run"),
            (0, "default setup"),
        ]
        var lastError: Int32 = 0
        var accepted: String? = nil
        for (flags, name) in attempts {
            var params = io_uring_params()
            params.flags = flags
            let rc = io_uring_queue_init_params(UInt32(requested), ring, &params)
            if rc == 0 {
                accepted = name
                break
            }
            lastError = -rc
            // EINVAL means "flag not known here"; anything else means no ring at all.
            if lastError != EINVAL { break }
        }
        guard let accepted else {
            ring.deallocate()
            throw MoraineError(
                .unavailable, "io_uring_queue_init: \(String(cString: strerror(lastError))) (errno \(lastError))")
        }
        depth = requested
        setupDescription = "io_uring, depth \(requested), \(accepted)"
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    func registerFiles(_ fds: [Int32]) throws {
        let rc = fds.withUnsafeBufferPointer { io_uring_register_files(ring, $0.baseAddress, UInt32($0.count)) }
        if rc < 0 { throw posixError("io_uring_register_files", "\(fds.count) files", -rc) }
    }

    func registerBuffers(_ buffers: [UnsafeMutableRawBufferPointer]) throws {
        let iovecs = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let rc = iovecs.withUnsafeBufferPointer { io_uring_register_buffers(ring, $0.baseAddress, UInt32($0.count)) }
        if rc < 0 { throw posixError("io_uring_register_buffers", "\(buffers.count) buffers", -rc) }
    }

    /// Runs the batch to completion (see the file comment).
    func perform(_ requests: UnsafeMutableBufferPointer<IORequest>) {
        var remaining = requests.count
        var rounds = 0
        while remaining > 0 {
            rounds += 1
            let queued = queueRound(requests, &remaining, giveUp: rounds > IOQueue.maxRounds)
            if queued == 0 { continue }
            IOStatistics.inFlight.add(queued, ordering: .relaxed)
            defer { IOStatistics.inFlight.subtract(queued, ordering: .relaxed) }
            let failure = submitAndWait(queued)
            if failure != 0 {
                failQueued(requests, code: failure, &remaining)
                continue
            }
            remaining -= reap(requests, queued: queued)
        }
    }

    /// Puts the next round's requests into the submission ring; returns how many.
    private func queueRound(
        _ requests: UnsafeMutableBufferPointer<IORequest>, _ remaining: inout Int, giveUp: Bool
    ) -> Int {
        var queued = 0
        var previousEntry: UnsafeMutablePointer<io_uring_sqe>? = nil
        for i in requests.indices where !requests[i].done {
            if giveUp {
                requests[i].errorNumber = EAGAIN
                requests[i].done = true
                remaining -= 1
                continue
            }
            let linkedFrom = i > 0 && requests[i - 1].linkNext
            if linkedFrom && requests[i - 1].done && requests[i - 1].errorNumber != 0 {
                requests[i].errorNumber = ECANCELED
                requests[i].done = true
                remaining -= 1
                continue
            }
            if linkedFrom && !requests[i - 1].done && previousEntry == nil { break }
            guard queued < depth, let entry = io_uring_get_sqe(ring) else { break }
            prepare(entry, requests[i], index: i)
            if linkedFrom && !requests[i - 1].done, let previousEntry {
                previousEntry.pointee.flags |= UInt8(CSystemShims_iosqe_io_link())
            }
            previousEntry = entry
            queued += 1
        }
        return queued
    }

    func prepare(_ entry: UnsafeMutablePointer<io_uring_sqe>, _ r: IORequest, index: Int) {
        let offset = r.offset + UInt64(r.transferred)
        let fd = r.fixedFileIndex >= 0 ? r.fixedFileIndex : r.fd
        let left = UInt32(r.length - r.transferred)
        let position = r.buffer.map { $0 + r.transferred }
        switch r.operation {
        case .read where r.fixedBufferIndex >= 0:
            io_uring_prep_read_fixed(entry, fd, position, left, offset, r.fixedBufferIndex)
        case .read:
            io_uring_prep_read(entry, fd, position, left, offset)
        case .write where r.fixedBufferIndex >= 0:
            io_uring_prep_write_fixed(entry, fd, position, left, offset, r.fixedBufferIndex)
        case .write:
            io_uring_prep_write(entry, fd, position, left, offset)
        case .readVectored:
            io_uring_prep_readv(entry, fd, r.iovecs, UInt32(r.iovecCount), offset)
        case .writeVectored:
            io_uring_prep_writev(entry, fd, r.iovecs, UInt32(r.iovecCount), offset)
        case .fdatasync:
            io_uring_prep_fsync(entry, fd, UInt32(IORING_FSYNC_DATASYNC))
        }
        if r.fixedFileIndex >= 0 { entry.pointee.flags |= UInt8(CSystemShims_iosqe_fixed_file()) }
        entry.pointee.user_data = UInt64(index)
    }

    /// Submits what is queued and waits for that many completions; returns 0 or an errno.
    private func submitAndWait(_ queued: Int) -> Int32 {
        var submitted = 0
        while submitted < queued {
            let rc = io_uring_submit_and_wait(ring, UInt32(queued - submitted))
            if rc < 0 {
                if -rc == EINTR || -rc == EAGAIN || -rc == EBUSY { continue }
                return -rc
            }
            submitted += Int(rc)
            IOStatistics.submissions.add(1, ordering: .relaxed)
            IOStatistics.operations.add(Int(rc), ordering: .relaxed)
        }
        return 0
    }

    /// Takes `queued` completions and applies them; returns how many requests finished.
    private func reap(_ requests: UnsafeMutableBufferPointer<IORequest>, queued: Int) -> Int {
        var finished = 0
        var reaped = 0
        while reaped < queued {
            var completion: UnsafeMutablePointer<io_uring_cqe>? = nil
            let rc = io_uring_wait_cqe(ring, &completion)
            if rc < 0 {
                if -rc == EINTR || -rc == EAGAIN { continue }
                preconditionFailure("io_uring_wait_cqe failed with errno \(-rc) while \(queued - reaped) completions were due")
            }
            let index = Int(completion!.pointee.user_data)
            let result = completion!.pointee.res
            io_uring_cqe_seen(ring, completion)
            reaped += 1
            precondition(index < requests.count && !requests[index].done, "completion for an unknown request")
            if result < 0 {
                let code = -result
                let retry =
                    code == EINTR || code == EAGAIN
                    || (code == ECANCELED && index > 0 && requests[index - 1].linkNext)
                if !retry {
                    requests[index].errorNumber = code
                    requests[index].done = true
                }
            } else {
                IOQueue.complete(&requests[index], result: Int(result))
            }
            if requests[index].done { finished += 1 }
        }
        return finished
    }

    /// Marks every queued-but-unfinished request as failed after a failed submission.
    private func failQueued(_ requests: UnsafeMutableBufferPointer<IORequest>, code: Int32, _ remaining: inout Int) {
        // The submission ring may still hold entries that point at these requests' buffers:
        // never enter this ring again (the queue falls back to pread/pwrite).
        broken = true
        for i in requests.indices where !requests[i].done {
            requests[i].errorNumber = code
            requests[i].done = true
            remaining -= 1
        }
    }

    /// The streaming loop waits for this fraction of the requests in flight (at least one).
    static let streamReapFraction = 4

    /// Keeps up to `depth` single requests in flight: `next` supplies a request for a free slot
    /// (nil: no more), `completed` receives each finished one. Short transfers and EINTR/EAGAIN
    /// are resubmitted from the same slot. Links are not supported here.
    func stream(depth: Int, next: (Int) -> IORequest?, completed: (Int, IORequest) -> Void) {
        precondition(depth > 0 && depth <= self.depth, "stream depth exceeds the ring")
        var slots = [IORequest?](repeating: nil, count: depth)
        var inFlight = 0
        func queue(_ slot: Int) {
            guard let entry = io_uring_get_sqe(ring) else { preconditionFailure("ring full with \(inFlight) in flight") }
            prepare(entry, slots[slot]!, index: slot)
            inFlight += 1
            IOStatistics.operations.add(1, ordering: .relaxed)
            IOStatistics.inFlight.add(1, ordering: .relaxed)
        }
        for slot in 0..<depth {
            guard let request = next(slot) else { break }
            slots[slot] = request
            queue(slot)
        }
        while inFlight > 0 {
            if broken {
                IOStatistics.inFlight.subtract(inFlight, ordering: .relaxed)
                return
            }
            // Waking for every completion costs a context switch per read, and on a small
            // machine the woken thread competes with the interrupt work that completes the next
            // reads. Waiting for a quarter of what is in flight keeps three quarters at the
            // device and cut the switches enough to lift depth-32 reads from about 0.8 to 0.95
            // of fio (BENCHMARKS.md, "I/O queue").
            let want = UInt32(max(1, inFlight / Self.streamReapFraction))
            var rc = io_uring_submit_and_wait(ring, want)
            while rc == -EINTR || rc == -EAGAIN || rc == -EBUSY { rc = io_uring_submit_and_wait(ring, want) }
            if rc > 0 { IOStatistics.submissions.add(1, ordering: .relaxed) }  // a wait that submitted something
            if rc < 0 {
                broken = true
                IOStatistics.inFlight.subtract(inFlight, ordering: .relaxed)
                for slot in 0..<depth where slots[slot] != nil {
                    slots[slot]!.errorNumber = -rc
                    completed(slot, slots[slot]!)
                }
                return
            }
            var completion: UnsafeMutablePointer<io_uring_cqe>? = nil
            while io_uring_peek_cqe(ring, &completion) == 0, let cqe = completion {
                let slot = Int(cqe.pointee.user_data)
                let result = cqe.pointee.res
                io_uring_cqe_seen(ring, cqe)
                inFlight -= 1
                IOStatistics.inFlight.subtract(1, ordering: .relaxed)
                if result < 0 {
                    if result != -EINTR && result != -EAGAIN {
                        slots[slot]!.errorNumber = -result
                        slots[slot]!.done = true
                    }
                } else {
                    IOQueue.complete(&slots[slot]!, result: Int(result))
                }
                if slots[slot]!.done {
                    completed(slot, slots[slot]!)
                    slots[slot] = next(slot)
                }
                if slots[slot] != nil { queue(slot) }
            }
        }
    }
}
