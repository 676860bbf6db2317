// `moraine serve --db DIR`: the database behind the Redis protocol (MoraineRESP), embedded in this
// process (or with --cluster, its files on a cluster's storage node). Prints the address it
// listens on as its first line, serves until SIGTERM, SIGINT, SIGHUP or a client's SHUTDOWN, then
// stops accepting, lets the running batches finish, closes the database and exits 0.
// The compute node's `--resp` front end takes the same options (RESPFrontEndOptions).
import ArgumentParser
import Moraine
import MoraineRESP
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The Redis front end's options, for `serve` and for the compute node's `--resp`.
struct RESPFrontEndOptions: ParsableArguments {
    @Option(name: .customLong("requirepass-file"), help: "A file holding the password AUTH must give (its first line).")
    var requirepassFile: String?
    @Flag(name: .customLong("enable-flushdb"), help: "Let FLUSHDB and FLUSHALL delete every key (refused otherwise).")
    var enableFlushdb = false
    @Option(help: "The most client connections at once.") var maxclients = 10_000

    func validate() throws {
        guard (1...1_000_000).contains(maxclients) else { throw ValidationError("--maxclients must be 1…1000000, not \(maxclients)") }
    }

    /// HOST:PORT split; a ValidationError naming `flag` when it is not one.
    static func address(_ text: String, flag: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
            colon != text.startIndex
        else { throw ValidationError("\(flag) must be HOST:PORT, not \(text)") }
        return (String(text[..<colon]), port)
    }

    /// The service's settings, with the password read from its file.
    /// - Throws: a file that cannot be read or holds no password (reported, exit 1).
    func settings() throws -> RESPService.Settings {
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
        return settings
    }
}

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a database over the Redis protocol (RESP2): redis-cli, redis-benchmark and Redis clients work.")
    @OptionGroup var database: DatabaseOptions
    @Option(help: "Where to listen: HOST:PORT (port 0: any free port).") var listen = "127.0.0.1:6379"
    @OptionGroup var resp: RESPFrontEndOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        _ = try RESPFrontEndOptions.address(listen, flag: "--listen")
    }

    func run() throws {
        TerminationSignals.block()
        var settings = try resp.settings()
        // Plain writes run on the event loops when the log is local and appended without fsync
        // (every serve write; with --cluster each append is a round trip to the storage node).
        settings.writesOnEventLoop = database.cluster == nil && database.connect == nil
        // With --cluster a block-cache miss is a round trip to the storage node: such reads go
        // to the pool, so they do not hold up the loop's other connections.
        settings.memoryOnlyReadsOnEventLoop = database.cluster != nil
        settings.queueWritesFromEventLoop = database.cluster != nil
        let (host, port) = try RESPFrontEndOptions.address(listen, flag: "--listen")
        let exported = try metrics.exporter()  // before the service, whose counters swift-metrics makes
        let db = try reporting { try database.open() }
        // SHUTDOWN asks the main thread to stop, as a signal does.
        let service = RESPService(database: db, settings: settings) { kill(getpid(), SIGTERM) }
        // Metrics first: an address that cannot be bound stops the start before any client came.
        if let exported {
            let name = database.db.split(separator: "/").last.map(String.init) ?? database.db
            exported.exporter.add { [db] in db.stats().metricSamples(database: name) }
            exported.exporter.add { [service] in service.metricSamples() + IOStatistics.samples() }
            do {
                try reporting { try exported.start() }
            } catch {
                try? db.close()
                throw error
            }
        }
        let server: RESPServer
        do {
            server = try reporting { try RESPServer(host: host, port: port, service: service) }
        } catch {
            exported?.stop()
            try? db.close()
            throw error
        }
        print("listening on \(host):\(server.port)")
        if let exported { print(exported.announcement) }
        fflush(nil)
        let signal = TerminationSignals.wait()
        SystemLog.info("serve: \(TerminationSignals.name(signal)): stopping")
        exported?.stop()
        server.close()
        try reporting { try db.close() }
    }
}
