// `moraine serve --db DIR`: the database behind the Redis protocol (MoraineRESP), embedded in this
// process (or with --cluster, its files on a cluster's storage node). Prints the address it
// listens on as its first line, serves until SIGTERM, SIGINT, SIGHUP or a client's SHUTDOWN, then
// stops accepting, lets the running batches finish, closes the database and exits 0.
import ArgumentParser
import Moraine
import MoraineRESP
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a database over the Redis protocol (RESP2): redis-cli, redis-benchmark and Redis clients work.")
    @OptionGroup var database: DatabaseOptions
    @Option(help: "Where to listen: HOST:PORT (port 0: any free port).") var listen = "127.0.0.1:6379"
    @Option(name: .customLong("requirepass-file"), help: "A file holding the password AUTH must give (its first line).")
    var requirepassFile: String?
    @Flag(name: .customLong("enable-flushdb"), help: "Let FLUSHDB and FLUSHALL delete every key (refused otherwise).")
    var enableFlushdb = false
    @Option(help: "The most client connections at once.") var maxclients = 10_000

    func validate() throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port),
            colon != listen.startIndex
        else { throw ValidationError("--listen must be HOST:PORT, not \(listen)") }
        guard (1...1_000_000).contains(maxclients) else { throw ValidationError("--maxclients must be 1…1000000, not \(maxclients)") }
    }

    func run() throws {
        TerminationSignals.block()
        var settings = RESPService.Settings()
        settings.flushEnabled = enableFlushdb
        settings.clientsMax = maxclients
        if let requirepassFile {
            let text = try reporting { String(decoding: try PosixFileSystem.shared.readAll(requirepassFile), as: UTF8.self) }
            let password = text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            guard !password.isEmpty else {
                printError("error: invalid: --requirepass-file \(requirepassFile) holds no password on its first line")
                throw ExitCode(1)
            }
            settings.password = password
        }
        let colon = listen.lastIndex(of: ":")!
        let host = String(listen[..<colon])
        let port = Int(listen[listen.index(after: colon)...])!
        let db = try reporting { try database.open() }
        let server: RESPServer = try reporting {
            // SHUTDOWN asks the main thread to stop, as a signal does.
            let service = RESPService(database: db, settings: settings) { kill(getpid(), SIGTERM) }
            let server = try RESPServer(host: host, port: port, service: service)
            return server
        }
        print("listening on \(host):\(server.port)")
        fflush(nil)
        let signal = TerminationSignals.wait()
        SystemLog.info("serve: \(TerminationSignals.name(signal)): stopping")
        server.close()
        try reporting { try db.close() }
    }
}
