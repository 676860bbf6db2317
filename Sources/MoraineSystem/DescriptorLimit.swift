// The process's limit on open file descriptors (RLIMIT_NOFILE). Many systems start a process
// with a soft limit of 1,024 and a far higher hard limit; a server that keeps a descriptor per
// connection and a storage node that keeps one per open table need more, so a long-running role
// raises the soft limit to the hard one once, at start. Raising it is allowed to any process
// and changes nothing else; lowering is never done here.
//
// Thread-safe: the raise happens once per process (a static let).
#if canImport(Glibc)
    import Glibc
#endif

/// The open-file limits of this process.
public enum DescriptorLimit {
    /// The limits after raising the soft limit to the hard one (done once per process).
    public static var raised: (soft: Int, hard: Int) { raisedOnce }

    private static let raisedOnce: (soft: Int, hard: Int) = {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (1024, 1024) }
        if limit.rlim_cur < limit.rlim_max {
            var wanted = limit
            wanted.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &wanted) == 0 {
                limit = wanted
            }
        }
        return (clamp(limit.rlim_cur), clamp(limit.rlim_max))
    }()

    /// The current soft limit (what `open` and `accept` are held to now).
    public static var current: Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        return clamp(limit.rlim_cur)
    }

    /// Descriptors this process has open now (counted in /proc/self/fd; nil where that cannot be read).
    public static func openCount() -> Int? {
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return count - 1  // the directory stream's own descriptor
    }

    private static func clamp(_ value: rlim_t) -> Int {
        value > rlim_t(Int32.max) ? Int(Int32.max) : Int(value)
    }
}
