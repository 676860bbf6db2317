// Starting role processes without Foundation: posix_spawn with the child's standard output on a
// pipe (a role prints its endpoint there) and its standard error appended to a log file. The
// child starts with the signal mask and dispositions reset, so the supervisor's blocked signals
// do not leak into roles (a role blocks its own).
//
// Free functions and a small value; the caller reaps its children.
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A started child: its pid and the read end of its standard output (or -1).
struct SpawnedChild {
    let pid: Int32
    let output: Int32
}

enum ChildProcess {
    /// glibc's POSIX_SPAWN_SETSID (0x80), which the C importer hides behind _GNU_SOURCE.
    static let spawnSetSID: Int16 = 0x80

    /// Starts `executable` with `arguments`.
    /// - Parameters:
    ///   - captureOutput: give the child a pipe as standard output and return its read end.
    ///   - errorLog: append the child's standard error (and output when not captured) here.
    ///   - newSession: start the child in a session of its own (a detached supervisor).
    /// - Throws: `.io` naming what failed.
    static func spawn(
        _ executable: String, _ arguments: [String], captureOutput: Bool, errorLog: String, newSession: Bool = false
    ) throws(MoraineError) -> SpawnedChild {
        closeOnExecAll()
        var pipeEnds: [Int32] = [-1, -1]
        if captureOutput {
            guard pipe(&pipeEnds) == 0 else { throw MoraineError(.io, "pipe: errno \(errno)") }
            // Neither end leaks into later children; dup2 onto the child's fd 1 clears the flag there.
            for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, errorLog, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        if captureOutput {
            posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 2, 1)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var flags = Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= Self.spawnSetSID }
        posix_spawnattr_setflags(&attributes, flags)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let code = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        if captureOutput { close(pipeEnds[1]) }
        guard code == 0 else {
            if captureOutput { close(pipeEnds[0]) }
            throw MoraineError(.io, "cannot start \(executable): \(String(cString: strerror(code)))")
        }
        return SpawnedChild(pid: pid, output: captureOutput ? pipeEnds[0] : -1)
    }

    /// Marks every descriptor above 2 close-on-exec, so a child inherits only its standard
    /// streams. Without it a detached supervisor kept a pipe of the shell that started it (its
    /// caller then waited for an end of file that never came), and roles kept each other's.
    static func closeOnExecAll() {
        guard let directory = opendir("/proc/self/fd") else { return }
        defer { closedir(directory) }
        let own = dirfd(directory)
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard let fd = Int32(name), fd > 2, fd != own else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    /// Reads one line from `fd` within `timeoutNanos`; nil when the child closed it or the time ran out.
    static func readLine(_ fd: Int32, timeoutNanos: Int64) -> String? {
        let deadline = monotonicNanos() + timeoutNanos
        var line: [UInt8] = []
        while true {
            let left = deadline - monotonicNanos()
            guard left > 0 else { return nil }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(min(left / 1_000_000 + 1, 1000)))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            var byte: UInt8 = 0
            let got = read(fd, &byte, 1)
            if got < 0 && errno == EINTR { continue }
            guard got == 1 else { return nil }
            if byte == 10 { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
    }

    /// Whether a process with `pid` exists (it may be a zombie not yet reaped).
    static func isAlive(_ pid: Int32) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }
}

/// What the `moraine up --detach` command needs to start its supervisor.
public enum ClusterLaunch {
    /// Starts `executable` in a new session with its output appended to `log`; returns its pid.
    public static func spawnDetached(_ executable: String, _ arguments: [String], log: String) throws(MoraineError) -> Int32 {
        try ChildProcess.spawn(executable, arguments, captureOutput: false, errorLog: log, newSession: true).pid
    }

    /// The last lines of a log.
    public static func tail(of path: String) -> String { Supervisor.tail(of: path) }
}
