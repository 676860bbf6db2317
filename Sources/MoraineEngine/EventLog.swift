// The database's LOG: what happened to it, in words, for an operator after an incident (as
// RocksDB's info LOG): each open and what recovery replayed or set aside, every flush and
// compaction with its inputs, outputs, bytes and time, write stalls, background errors and
// their resumption, and each close. One line per event, each starting with the local time.
//
// The file lives in the database directory, through the database's file system (so a database
// on a storage node keeps its LOG there too). An open moves the previous LOG to
// `LOG.old.<microseconds since the epoch>` and keeps the newest `keptOldLogs` of those. Lines
// are handed to the operating system as they are written (they survive a process crash), not
// synced. The LOG is advisory: a failure to write it is never the database's failure — the
// LOG stops, and that is reported once through the process log. Read-only opens write none.
//
// Thread-safety: any thread may write; a thread of the LOG's own writes the lines in order.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

final class EventLog: @unchecked Sendable {
    /// How many `LOG.old.*` files an open keeps.
    static let keptOldLogs = 4
    /// Lines waiting for the writer thread beyond this are dropped (and counted in the LOG).
    static let pendingMax = 4096

    private let lock = ConditionLock()
    private var pending: [String] = []
    private var dropped = 0
    private var closing = false
    private var writerDone = false
    /// Set by `start`, then written by the writer thread only.
    private var file: (any WritableFile)? = nil
    let path: String

    private let fileSystem: any FileSystem
    private let directory: String
    private var started = false
    private var disabled = false

    /// A LOG for `directory`. Lines written before `start` wait in memory: an open that is
    /// refused leaves the directory as it found it, LOG included.
    init(directory: String, fileSystem: any FileSystem) {
        self.directory = directory
        self.fileSystem = fileSystem
        path = joinPath(directory, DatabaseFile.infoLog.name)
    }

    /// Moves the previous LOG aside (keeping the newest `keptOldLogs`), creates the new one and
    /// starts writing, the lines queued so far first. A failure leaves the database without a
    /// LOG (reported once through the process log).
    func start() {
        do {
            if try fileSystem.exists(path) {
                var now = timespec()
                clock_gettime(CLOCK_REALTIME, &now)
                let micros = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec / 1000)
                try fileSystem.rename(path, to: joinPath(directory, DatabaseFile.oldInfoLog(micros).name))
            }
            let old = try fileSystem.children(of: directory).compactMap { name -> UInt64? in
                if case .oldInfoLog(let stamp) = DatabaseFile(name: name) { stamp } else { nil }
            }.sorted()
            for stamp in old.dropLast(Self.keptOldLogs) { try? fileSystem.remove(joinPath(directory, DatabaseFile.oldInfoLog(stamp).name)) }
            let file = try fileSystem.createWritable(path)
            lock.withLock {
                self.file = file
                started = true
            }
        } catch {
            SystemLog.warning("\(path): cannot start the LOG (\(error)); the database runs without one")
            lock.withLock {
                disabled = true
                pending = []
            }
            return
        }
        // The writer is a thread of its own: a line costs its caller no I/O (the engine writes
        // some under its mutex, and a storage node may be slow to answer).
        startThread(name: "moraine-log") { [self] in drain() }
    }

    /// Queues one line, stamped with the local time now.
    func write(_ event: String) {
        let line = Self.stamp() + " " + event + "\n"
        lock.withLock {
            guard !closing && !disabled else { return }
            if pending.count >= Self.pendingMax {
                dropped += 1
                return
            }
            pending.append(line)
            lock.broadcast()
        }
    }

    /// Queues a last line, waits (up to `timeoutSeconds`) for every line to be written, and closes.
    func close(_ event: String, timeoutSeconds: Double = 5) {
        write(event)
        guard lock.withLock({ started }) else { return }
        let deadline = monotonicNanos() + Int64(timeoutSeconds * 1e9)
        lock.withLock {
            closing = true
            lock.broadcast()
            while !writerDone && monotonicNanos() < deadline { lock.wait(seconds: 0.05) }
        }
    }

    private func drain() {
        var failed = false
        while true {
            let (lines, lost, done): ([String], Int, Bool) = lock.withLock {
                while pending.isEmpty && dropped == 0 && !closing { lock.wait() }
                defer {
                    pending = []
                    dropped = 0
                }
                return (pending, dropped, closing && pending.isEmpty)
            }
            var text = lines.joined()
            if lost > 0 { text += Self.stamp() + " (\(lost) lines dropped: the LOG could not keep up)\n" }
            if !text.isEmpty && !failed, let file {
                do {
                    try Array(text.utf8).withUnsafeBytes { try file.append($0) }
                    try file.flush()
                } catch {
                    failed = true
                    SystemLog.warning("\(path): the LOG could not be written (\(error)); no more lines go to it")
                }
            }
            if done || (closing && lines.isEmpty) {
                try? file?.close()
                lock.withLock {
                    writerDone = true
                    lock.broadcast()
                }
                return
            }
        }
    }

    /// "2026/12/06-16:55:01.123456", local time, as RocksDB's LOG stamps lines.
    static func stamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let micros = String(now.tv_nsec / 1000)
        return "\(parts.tm_year + 1900)/\(two(parts.tm_mon + 1))/\(two(parts.tm_mday))-\(two(parts.tm_hour)):\(two(parts.tm_min)):"
            + "\(two(parts.tm_sec)).\(String(repeating: "0", count: 6 - micros.count))\(micros)"
    }

    /// "1.2 MiB", "512 B": sizes as a reader of the LOG wants them.
    static func bytes(_ count: some BinaryInteger) -> String {
        let value = Double(count)
        for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where value >= Double(scale) {
            let tenths = Int(value / Double(scale) * 10)
            return "\(tenths / 10).\(tenths % 10) \(unit)"
        }
        return "\(count) B"
    }
}

extension Engine {
    /// The options in force, as the OPTIONS file names and writes them, for the LOG's open line.
    func describeOptions() -> String {
        var parts = OptionsFile.fields.map { "\($0.name)=\($0.field.get(options))" }
        if options.memtableRegion != nil { parts.append("memtables in a memory node's region") }
        if options.secondaryBlockCache != nil { parts.append("second-tier block cache on a memory node") }
        return parts.joined(separator: " ")
    }

    /// The tree's shape on one line: "L0 2 files 1.2 MiB, L1 4 files 8.0 MiB".
    func describeShape() -> String {
        let levels = versions.current.levels.enumerated().filter { !$0.element.isEmpty }.map { level, files in
            "L\(level) \(files.count) file\(files.count == 1 ? "" : "s") \(EventLog.bytes(files.reduce(UInt64(0)) { $0 + $1.info.sizeBytes }))"
        }
        return levels.isEmpty ? "no tables" : levels.joined(separator: ", ")
    }
}
