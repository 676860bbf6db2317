// Which backend a process uses, and one io_uring queue per thread. A ring must not be shared
// between threads (and with IORING_SETUP_SINGLE_ISSUER only its creator may submit), so every
// thread that does I/O gets its own ring on first use, kept in a pthread key and closed when
// the thread exits. The pread backend needs no state: all threads share one queue.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension IOBackend {
    /// The depth of the per-thread rings.
    public static let threadRingDepth = 64

    /// The process's default: MORAINE_IO_BACKEND ("io_uring" or "pread") when set, else io_uring
    /// when this process can create a ring, else pread. Decided and logged once per process.
    public static let preferred: IOBackend = {
        if let raw = getenv("MORAINE_IO_BACKEND") {
            let name = String(cString: raw)
            if let chosen = IOBackend(name: name) {
                SystemLog.debug("default I/O backend \(chosen) (chosen by MORAINE_IO_BACKEND)")
                return chosen
            }
            SystemLog.info("MORAINE_IO_BACKEND=\(name) is not io_uring or pread; probing instead")
        }
        do throws(MoraineError) {
            let probe = try IOQueue(ringDepth: 8)
            SystemLog.debug("default I/O backend \(probe.setupDescription)")
            return .ioUring
        } catch {
            SystemLog.warning("io_uring unavailable (\(error.message)\(disabledReason)); default I/O backend pread/pwrite")
            return .posix
        }
    }()

    /// Why io_uring is off, when the sysctl says so.
    private static var disabledReason: String {
        guard let file = fopen("/proc/sys/kernel/io_uring_disabled", "r") else { return "" }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 16)
        guard fgets(&line, 16, file) != nil else { return "" }
        let value = String(String(cString: line).filter { $0.isNumber })
        return value == "0" ? "" : ", kernel.io_uring_disabled=\(value)"
    }
}

extension IOQueue {
    /// The shared, stateless pread/pwrite queue.
    nonisolated(unsafe) public static let posix = IOQueue()

    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        let rc = pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<IOQueue>.fromOpaque(pointer).release() }
        }
        precondition(rc == 0, "pthread_key_create failed (\(rc))")
        return key
    }()

    /// The calling thread's queue for `backend`: its own ring for io_uring (created on first
    /// use; pread when this thread cannot get one), the shared queue for pread.
    /// - Precondition: the queue is used on this thread only.
    public static func forCurrentThread(_ backend: IOBackend) -> IOQueue {
        guard backend == .ioUring else { return posix }
        if let existing = pthread_getspecific(threadKey) {
            return Unmanaged<IOQueue>.fromOpaque(existing).takeUnretainedValue()
        }
        let queue: IOQueue
        do throws(MoraineError) {
            queue = try IOQueue(ringDepth: IOBackend.threadRingDepth)
        } catch {
            SystemLog.warning("this thread could not create an io_uring (\(error.message)); it uses pread/pwrite")
            queue = IOQueue()
        }
        pthread_setspecific(threadKey, Unmanaged.passRetained(queue).toOpaque())
        return queue
    }
}
