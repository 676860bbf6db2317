// Where a process actually runs, read back from the kernel rather than taken from its command
// line, so that a placement can be checked: the CPUs each of its threads may run on
// (/proc/PID/task/*/status, Cpus_allowed_list), its memory policy and the nodes its resident
// pages sit on (/proc/PID/numa_maps). A mapping with no policy of its own is listed there with
// the process's policy, so the heap's line (or the stack's) says what `set_mempolicy` set.
//
// Value types; reads files of /proc only.
#if canImport(Glibc)
    import Glibc
#endif

/// A process's placement as the kernel reports it.
public struct ProcessPlacement: Sendable, Equatable {
    /// The CPUs the process's main thread may run on.
    public var cpus: [Int]
    /// Whether every thread of the process has the same CPU list (a thread started before the
    /// process pinned itself keeps the old list).
    public var threadsAgree: Bool
    /// The process's memory policy as numa_maps writes it (default, bind:0, interleave:0-1,
    /// prefer:1), or nil where the kernel has no numa_maps (no NUMA support).
    public var memoryPolicy: String?
    /// Resident pages per NUMA node (empty without numa_maps).
    public var pagesPerNode: [Int: Int]

    public init(cpus: [Int], threadsAgree: Bool = true, memoryPolicy: String? = nil, pagesPerNode: [Int: Int] = [:]) {
        self.cpus = cpus
        self.threadsAgree = threadsAgree
        self.memoryPolicy = memoryPolicy
        self.pagesPerNode = pagesPerNode
    }

    /// Reads the placement of `pid`; nil when the process is gone or /proc cannot be read.
    public static func read(pid: Int32) -> ProcessPlacement? {
        guard let status = readProcFile("/proc/\(pid)/status"), let cpus = allowedCPUs(inStatus: status) else { return nil }
        var placement = ProcessPlacement(cpus: cpus)
        for thread in threads(of: pid) {
            guard let text = readProcFile("/proc/\(pid)/task/\(thread)/status"), let threadCPUs = allowedCPUs(inStatus: text) else { continue }
            if threadCPUs != cpus { placement.threadsAgree = false }
        }
        if let maps = readProcFile("/proc/\(pid)/numa_maps") {
            (placement.memoryPolicy, placement.pagesPerNode) = parseNumaMaps(maps)
        }
        return placement
    }

    /// One line for reports: "cpus 0-3, bind:0, 12.3 MiB on node 0".
    public var summary: String {
        var parts = ["cpus " + NUMATopology.ranges(cpus) + (threadsAgree ? "" : " (threads differ)")]
        parts.append(memoryPolicy ?? "no NUMA policy")
        let total = pagesPerNode.values.reduce(0, +)
        if total > 0 {
            let nodes = pagesPerNode.keys.sorted().map { node in
                "\(pagesPerNode[node]! * 100 / total)% node \(node)"
            }
            parts.append("resident " + nodes.joined(separator: ", "))
        }
        return parts.joined(separator: ", ")
    }

    /// The CPUs of a kernel list ("0-3,8,10-11"); nil when it does not parse.
    public static func parseCPUList(_ text: Substring) -> [Int]? {
        var cpus: [Int] = []
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-", maxSplits: 1)
            guard let low = Int(bounds[0]), low >= 0 else { return nil }
            let high = bounds.count == 2 ? Int(bounds[1]) : low
            guard let high, high >= low, high - low < 1 << 16 else { return nil }
            cpus.append(contentsOf: low...high)
        }
        return cpus
    }

    /// The Cpus_allowed_list of a status file.
    static func allowedCPUs(inStatus text: String) -> [Int]? {
        for line in text.split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
            return parseCPUList(line.dropFirst("Cpus_allowed_list:".count).drop { $0 == " " || $0 == "\t" })
        }
        return nil
    }

    /// The process policy (from the heap's line, else the stack's, else the first) and the
    /// resident pages per node (the N<node>=<pages> fields of every line).
    public static func parseNumaMaps(_ text: String) -> (policy: String?, pagesPerNode: [Int: Int]) {
        var first: String?
        var heap: String?
        var stack: String?
        var pages: [Int: Int] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2 else { continue }
            let policy = String(fields[1])
            if first == nil { first = policy }
            for field in fields.dropFirst(2) {
                if field == "heap" { heap = policy }
                if field == "stack" { stack = policy }
                guard field.hasPrefix("N"), let equals = field.firstIndex(of: "="),
                    let node = Int(field[field.index(after: field.startIndex)..<equals]),
                    let count = Int(field[field.index(after: equals)...])
                else { continue }
                pages[node, default: 0] += count
            }
        }
        return (heap ?? stack ?? first, pages)
    }

    /// The thread ids of `pid` (empty when /proc/PID/task cannot be listed).
    static func threads(of pid: Int32) -> [Int] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var ids: [Int] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let id = Int(name) { ids.append(id) }
            if ids.count >= 4096 { break }
        }
        return ids
    }

    /// A file of /proc (whose size stat reports as 0), read to its end; at most 16 MiB.
    static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < 16 << 20 {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return count == 0 ? String(decoding: bytes, as: UTF8.self) : nil }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
