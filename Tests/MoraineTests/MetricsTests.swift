// `/metrics` as Prometheus scrapes it, over real HTTP from real processes: `moraine serve
// --metrics` while redis-cli writes, and every role of a `moraine up` cluster (whose compute node
// also serves a database over the Redis protocol, driven by redis-cli, the redis-py oracle and
// redis-benchmark) — each scraped before and after work, the values checked to move by what the
// work did. Then the exporter's own rules (a contradicting sample left out, a vanished series
// dropped) and the topology's `metrics`, `resp` and `resp_db` keys.
import Foundation
@testable import MoraineCluster
import MoraineMessages
import MoraineMetrics
import MoraineSystem
import MoraineTestSupport
import Moraine
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// An HTTP request to 127.0.0.1:`port` (one connection, closed after the answer).
func httpRequest(port: Int, _ method: String = "GET", _ path: String = "/metrics") throws -> (status: Int, body: String) {
    let connection = try RawConnection(port: port)
    connection.send("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    let (text, _) = connection.receive(atLeast: Int.max)
    guard let headerEnd = text.range(of: "\r\n\r\n"), let statusLine = text.split(separator: "\r\n").first else {
        throw MoraineError(.corruption, "not an HTTP answer: \(text.prefix(200))")
    }
    let fields = statusLine.split(separator: " ")
    guard fields.count >= 2, let status = Int(fields[1]) else { throw MoraineError(.corruption, "status line \(statusLine)") }
    return (status, String(text[headerEnd.upperBound...]))
}

/// The series of a scrape: `name{labels}` (as rendered) to value.
func scrapeMetrics(port: Int) throws -> [String: Double] {
    let (status, body) = try httpRequest(port: port)
    guard status == 200 else { throw MoraineError(.unavailable, "GET /metrics on \(port): \(status)") }
    var series: [String: Double] = [:]
    for line in body.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        series[String(line[..<space])] = value
    }
    return series
}

/// The sum of every series of `name` whose labels contain each of `matching` (`key="value"`).
func metricSum(_ series: [String: Double], _ name: String, _ matching: String...) -> Double {
    metricSumMatching(series, name, matching)
}

@Suite("Metrics and the compute node's Redis front end", .serialized)
struct MetricsTests {
    @Test("serve --metrics: commands, writes and WAL bytes move with redis-cli's writes; HEAD, 404 and 405")
    func serveMetrics() throws {
        let server = try ServeProcess(extra: ["--metrics", "127.0.0.1:0"])
        #expect(server.metricsPort > 0)
        let before = try scrapeMetrics(port: server.metricsPort)
        let writes = try runTool(RESPServeTests.redisCLI, ["-p", String(server.port), "-r", "200", "SET", "metric-key", "a-value"])
        #expect(writes.status == 0 && writes.out.count == 200, "\(writes.err)")
        #expect(try runTool(RESPServeTests.redisCLI, ["-p", String(server.port), "GET", "metric-key"]).out == ["a-value"])
        let after = try scrapeMetrics(port: server.metricsPort)
        #expect(metricSum(after, "moraine_resp_commands_total", "command=\"set\"") - metricSum(before, "moraine_resp_commands_total", "command=\"set\"") == 200)
        #expect(metricSum(after, "moraine_resp_commands_total", "command=\"get\"") >= 1)
        #expect(metricSum(after, "moraine_writes_total", "db=\"db\"") - metricSum(before, "moraine_writes_total", "db=\"db\"") == 200)
        #expect(metricSum(after, "moraine_wal_bytes_total") > metricSum(before, "moraine_wal_bytes_total"))
        #expect(metricSum(after, "moraine_resp_connections_total") >= 2)
        #expect(after["moraine_level_files{db=\"db\",level=\"0\"}"] != nil, "per-level series: \(after.keys.sorted().prefix(20))")
        // The rest of HTTP as a scraper or a person meets it.
        let head = try httpRequest(port: server.metricsPort, "HEAD")
        #expect(head.status == 200 && head.body.isEmpty)
        #expect(try httpRequest(port: server.metricsPort, "GET", "/nothing-here").status == 404)
        #expect(try httpRequest(port: server.metricsPort, "POST").status == 405)
        #expect(server.stop() == 0)
    }

    @Test("a cluster with /metrics on every role and a Redis front end on its compute node: clients work, and each role's values move")
    func clusterMetricsAndComputeRESP() throws {
        let run = TempDir("moraine-metrics")
        let region = Supervisor.defaultRegion(run: RunDirectory(run.path), index: 0)
        defer {
            _ = try? runMoraineCLI(["down", "--run-dir", run.path])
            run.remove()
            try? PosixFileSystem.shared.remove(region)
        }
        let topology = """
            [[role]]
            kind = "storage"
            metrics = "127.0.0.1:0"
            [[role]]
            kind = "memory"
            region_size = 268435456
            cache_size = 67108864
            metrics = "127.0.0.1:0"
            [[role]]
            kind = "flush"
            metrics = "127.0.0.1:0"
            [[role]]
            kind = "compaction"
            metrics = "127.0.0.1:0"
            [[role]]
            kind = "compute"
            metrics = "127.0.0.1:0"
            resp = "127.0.0.1:0"
            resp_db = "redis"
            row_cache_size = 1048576
            """
        try topology.write(toFile: run.file("topology.toml"), atomically: true, encoding: .utf8)
        let up = try runMoraineCLI(["up", "--run-dir", run.path, "--topology", run.file("topology.toml"), "--detach"])
        try #require(up.status == 0, "up: \(up.err)")
        // Where each role serves, as the run directory and status list it.
        let services = try String(contentsOfFile: run.file("services"), encoding: .utf8).split(separator: "\n").map { $0.split(separator: " ") }
        func port(_ role: String, _ kind: String) -> Int {
            services.first { $0.count == 4 && $0[0] == role && $0[2] == kind }.flatMap { $0[3].split(separator: ":").last }.flatMap { Int($0) } ?? 0
        }
        let roles = ["storage", "memory", "flush", "compaction", "compute"]
        #expect(roles.allSatisfy { port($0, "metrics") > 0 } && port("compute", "resp") > 0, "\(services)")
        let status = try runMoraineCLI(["status", "--run-dir", run.path])
        #expect(status.out.filter { $0.hasPrefix("  serves: ") && $0.contains("metrics http://127.0.0.1:") }.count == 5, "\(status.out)")
        #expect(status.out.contains { $0.contains("resp 127.0.0.1:\(port("compute", "resp"))") }, "\(status.out)")
        var before: [String: [String: Double]] = [:]
        for role in roles { before[role] = try scrapeMetrics(port: port(role, "metrics")) }

        // The Redis clients against the compute node's front end.
        let resp = port("compute", "resp")
        let cli = { (words: [String]) throws -> [String] in try runTool(RESPServeTests.redisCLI, ["-p", String(resp)] + words).out }
        // The oracle first: it expects an empty database.
        let seed = SeededRandom.testSeed()
        let model = try #require(try RESPServeTests.redisPyOracle(port: resp, seed: seed))
        #expect(!model.isEmpty)
        #expect(try cli(["SET", "greeting", "hello"]) == ["OK"])
        #expect(try cli(["INCRBY", "counter", "5"]) == ["5"])
        #expect(try cli(["GET", "greeting"]) == ["hello"])
        #expect(try cli(["INFO", "moraine"]).contains { $0.hasPrefix("level0:") })
        let bench = try runTool(RESPServeTests.redisBenchmark, ["-p", String(resp), "-t", "set,get", "-n", "2000", "-P", "16", "-q"])
        #expect(bench.status == 0 && !bench.err.contains("ERR"), "\(bench.out) \(bench.err)")
        // The same database through the node's own clients, which cannot destroy it.
        let db = try Database(connect: run.path, database: "redis")
        #expect(try db.get(Array("greeting".utf8)) == Array("hello".utf8))
        for (key, value) in model.prefix(50) { #expect(try db.get(Array(key.utf8)) == value, "\(key), seed \(seed)") }
        try db.flush()
        try db.close()
        do {
            try Database.destroy(connect: run.path, database: "redis")
            Issue.record("the database the node serves over RESP was destroyed")
        } catch let error as MoraineError {
            #expect(error.kind == .busy && error.message.contains("Redis protocol"), "\(error)")
        }
        // A read after the flush goes to the storage node (and the shared cache on the memory node),
        // and its answer into the row cache the topology gave the node; the next read takes it there.
        #expect(try cli(["GET", "greeting"]) == ["hello"])
        #expect(try cli(["GET", "greeting"]) == ["hello"])
        let rowCacheBytes = try cli(["INFO", "memory"]).first { $0.hasPrefix("moraine_row_cache_bytes:") }
        let rowCacheUsed = rowCacheBytes.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        #expect(rowCacheUsed > 0, "\(String(describing: rowCacheBytes))")

        sleepNanos(1_100_000_000)  // past the storage node's reuse of its last directory walk
        var after: [String: [String: Double]] = [:]
        for role in roles { after[role] = try scrapeMetrics(port: port(role, "metrics")) }
        func moved(_ role: String, _ name: String, _ matching: String..., by least: Double = 1) {
            let old = before[role].map { series in metricSumMatching(series, name, matching) } ?? 0
            let new = after[role].map { series in metricSumMatching(series, name, matching) } ?? 0
            #expect(new - old >= least, "\(role): \(name) \(matching) went \(old) → \(new)")
        }
        moved("compute", "moraine_writes_total", "db=\"redis\"", by: 100)
        moved("compute", "moraine_resp_commands_processed_total", by: 4000)
        moved("compute", "moraine_flushes_total", "db=\"redis\"")
        moved("compute", "moraine_remote_jobs_total", "kind=\"flush\"")
        moved("compute", "moraine_transport_calls_total", "peer=\"storage\"")
        moved("storage", "moraine_storage_bytes_stored", by: 1000)
        moved("storage", "moraine_transport_requests_served_total", "role=\"storage\"")
        moved("flush", "moraine_worker_jobs_finished_total")
        moved("flush", "moraine_transport_requests_served_total", "role=\"worker\"")
        moved("memory", "moraine_transport_requests_served_total", "role=\"memory\"")
        #expect(metricSum(after["storage"] ?? [:], "moraine_lease_epoch", "db=\"redis\"") >= 1)
        #expect(metricSum(after["compute"] ?? [:], "moraine_level_files", "db=\"redis\"") >= 1)

        let down = try runMoraineCLI(["down", "--run-dir", run.path])
        #expect(down.status == 0, "\(down.err)")
        #expect(!FileManager.default.fileExists(atPath: run.file("services")))
    }

    @Test("the exporter leaves out a sample that contradicts its name's first, and drops a series no source reports any more")
    func exporterRules() throws {
        let exporter = MetricsExporter()
        let databases = Mutex<[String]>(["a", "b"])
        exporter.add {
            databases.withLock { $0 }.map { MetricSample.counter("moraine_test_writes_total", "Writes", 7, labels: [("db", $0)]) }
        }
        exporter.add {
            [
                .gauge("moraine_test_bytes", "Bytes", 5),
                .counter("moraine_test_bytes", "Bytes", 6),  // another kind: left out, no crash
                .gauge("moraine_test_bytes", "Other help", 8, labels: [("x", "y")]),  // other help and labels: left out
                .gauge("moraine_test_ratio", "A ratio", value: .nan),  // not finite: 0
            ]
        }
        let first = String(decoding: exporter.scrape(), as: UTF8.self)
        #expect(first.contains("moraine_test_writes_total{db=\"a\"} 7") && first.contains("moraine_test_writes_total{db=\"b\"} 7"), "\(first)")
        #expect(first.contains("# TYPE moraine_test_writes_total counter") && first.contains("# HELP moraine_test_writes_total Writes"))
        #expect(first.contains("moraine_test_bytes 5") && !first.contains("x=\"y\""), "\(first)")
        #expect(first.contains("moraine_test_ratio 0"), "\(first)")
        databases.withLock { $0 = ["b"] }
        let second = String(decoding: exporter.scrape(), as: UTF8.self)
        #expect(!second.contains("db=\"a\"") && second.contains("moraine_test_writes_total{db=\"b\"} 7"), "\(second)")
    }

    @Test("topology: metrics on any role, resp and resp_db on compute only, each instance on its own port")
    func topologyKeys() throws {
        let topology = try Topology(parsing: 
            """
            [[role]]
            kind = "storage"
            count = 2
            metrics = "127.0.0.1:9300"
            [[role]]
            kind = "compute"
            resp = "0.0.0.0:6380"
            resp_db = "cache"
            row_cache_size = 268435456
            """, name: "t.toml")
        try topology.check()
        #expect(Topology.RoleSpec.address(topology.roles[0].metrics!, instance: 1) == "127.0.0.1:9301")
        #expect(topology.roles[1].resp?.port == 6380 && topology.roles[1].respDatabase == "cache")
        #expect(topology.roles[1].rowCacheBytes == 268_435_456)
        // A row cache is a compute node's, and never negative.
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"storage\"\nrow_cache_size = 1024\n", name: "t.toml").check()
        }
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"compute\"\nrow_cache_size = -1\n", name: "t.toml").check()
        }
        #expect(throws: MoraineError.self) { try Topology(parsing: "[[role]]\nkind = \"storage\"\nresp = \"127.0.0.1:1\"\n", name: "t.toml") }
        #expect(throws: MoraineError.self) { try Topology(parsing: "[[role]]\nkind = \"compute\"\nmetrics = \"nonsense\"\n", name: "t.toml") }
        #expect(throws: MoraineError.self) {
            try Topology(parsing: "[[role]]\nkind = \"storage\"\ncount = 2\nmetrics = \"127.0.0.1:65535\"\n", name: "t.toml")
        }
    }
}

/// `metricSum` with the label filters as an array.
func metricSumMatching(_ series: [String: Double], _ name: String, _ matching: [String]) -> Double {
    series.filter { key, _ in (key == name || key.hasPrefix(name + "{")) && matching.allSatisfy { key.contains($0) } }.values.reduce(0, +)
}
