// The `moraine shell` contract other tools drive: exact answers, token encoding both ways,
// atomic batches, errors that keep the shell going; and the inspection commands.
import Foundation
import Moraine
import MoraineFormat
import MoraineSystem
import MoraineTestSupport
import Testing

/// Runs `moraine` with `arguments`, feeding `input`; returns stdout lines and the exit status.
func runMoraine(_ arguments: [String], input: String = "") throws -> (lines: [String], status: Int32) {
    let run = try runMoraineCLI(arguments, input: input)
    return (run.out, run.status)
}

@Suite("moraine shell and tools")
struct ShellTests {
    @Test("answers follow the documented grammar exactly")
    func grammar() throws {
        let directory = makeTemporaryDirectory("moraine-shell")
        defer { removeTree(directory) }
        let script =
            [
                "put apple red",
                "put x:00ff x:",
                "put - dash",
                "put x:783a31 starts-with-x-colon",
                "get apple",
                "get x:00ff",
                "get -",
                "get missing",
                "del apple",
                "get apple",
                "batch 3",
                "put b1 v1",
                "put b2 v2",
                "del b1",
                "scan - - 10",
                "scan b - 1",
                "scan x:00 x:2e 5",
                "get bad token",
                "put x:0g oops",
                "frobnicate",
                "batch 2",
                "put ok1 v",
                "bogus line",
                "get ok1",
                "flush",
                "compact",
                "get b2",
            ].joined(separator: "\n") + "\n"
        let (lines, status) = try runMoraine(["shell", "--db", directory], input: script)
        #expect(status == 0)
        let expected = [
            "OK", "OK", "OK", "OK",
            "red", "x:", "dash", "(nil)",
            "OK", "(nil)",
            "OK",
            // scan - - 10: every pair in key order; "-" and "x:1" keys print hex-encoded
            "x:00ff x:", "x:2d dash", "b2 v2", "x:783a31 starts-with-x-colon", "END",
            "b2 v2", "END",
            "x:00ff x:", "x:2d dash", "END",
        ]
        #expect(Array(lines.prefix(expected.count)) == expected)
        let rest = Array(lines.dropFirst(expected.count))
        #expect(rest.count == 8, "\(rest)")
        guard rest.count == 8 else { return }
        #expect(rest[0].hasPrefix("ERR "), "get with two tokens: \(rest[0])")
        #expect(rest[1].hasPrefix("ERR "), "bad hex: \(rest[1])")
        #expect(rest[2].hasPrefix("ERR "), "unknown command: \(rest[2])")
        #expect(rest[3].hasPrefix("ERR ") && rest[3].contains("batch"), "bad batch line: \(rest[3])")
        #expect(rest[4] == "(nil)", "a failed batch applied part of itself")
        #expect(Array(rest[5...]) == ["OK", "OK", "v2"])
    }

    @Test("stats is one line of JSON with the tree's shape")
    func stats() throws {
        let directory = makeTemporaryDirectory("moraine-shell")
        defer { removeTree(directory) }
        let (lines, _) = try runMoraine(["shell", "--db", directory], input: "put a b\nflush\nstats\n")
        #expect(lines.count == 3)
        guard lines.count == 3 else { return }
        let object = try JSONSerialization.jsonObject(with: Data(lines[2].utf8)) as? [String: Any]
        let levels = object?["levels"] as? [[String: Any]]
        #expect(levels?.count == 7)
        #expect(levels?.first?["files"] as? Int == 1)
        #expect(object?["flushes"] as? Int == 1)
    }

    @Test("SIGTERM under load: the shell answers what it took, closes cleanly and exits 0; a reopen has every acknowledged write and no log to replay")
    func sigtermUnderLoad() throws {
        let directory = makeTemporaryDirectory("moraine-shell-term")
        defer { removeTree(directory) }
        let shell = try ShellProcess(arguments: ["shell", "--db", directory, "--write_buffer_size", "262144"])
        defer { shell.kill() }
        let total = 50_000
        let writer = Thread {
            for i in 0..<total where !shell.send("put k\(i) v\(i)") { break }
            shell.closeInput()
        }
        writer.start()
        var acknowledged = 0
        var answers: [String] = []
        let deadline = monotonicNanos() + 60_000_000_000
        while monotonicNanos() < deadline, let line = shell.readLine() {
            if line == "OK" { acknowledged += 1 } else { answers.append(line) }
            if acknowledged == 2000 { _ = kill(shell.pid, SIGTERM) }
        }
        shell.wait()
        #expect(shell.process.terminationStatus == 0, "exit status \(shell.process.terminationStatus)")
        #expect(answers.isEmpty, "\(answers.prefix(3))")
        #expect(acknowledged >= 2000 && acknowledged < total, "\(acknowledged) of \(total) acknowledged: the stop did not come under load")
        // A clean close leaves every log ending on a whole record: the reopen replays the log, but
        // has no torn tail to drop (what a kill mid-write would leave).
        let logs = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".log") }
        #expect(!logs.isEmpty)
        for log in logs {
            let bytes = Array(FileManager.default.contents(atPath: directory + "/" + log) ?? Data())
            let reader = LogReader(bytes: bytes, name: log, strictTail: true)
            var records = 0
            while try reader.nextRecord() != nil { records += 1 }
            #expect(reader.droppedTailBytes == 0 && reader.validEndOffset == bytes.count, "\(log): \(records) records, then a torn tail")
        }
        let db = try Database(path: directory)
        defer { try? db.close() }
        for i in 0..<acknowledged { #expect(try db.get("k\(i)") == "v\(i)", "k\(i) acknowledged, then lost") }
    }

    @Test("single-operation commands, sst dump and manifest dump")
    func tools() throws {
        let directory = makeTemporaryDirectory("moraine-tools")
        defer { removeTree(directory) }
        #expect(try runMoraine(["put", "--db", directory, "k1", "v1"]).lines == ["OK"])
        #expect(try runMoraine(["put", "--db", directory, "k2", "x:0001"]).lines == ["OK"])
        #expect(try runMoraine(["get", "--db", directory, "k2"]).lines == ["x:0001"])
        #expect(try runMoraine(["del", "--db", directory, "k1"]).lines == ["OK"])
        let deleted = try runMoraine(["get", "--db", directory, "k1"])
        #expect(deleted.lines.isEmpty && deleted.status == 1, "a missing key prints nothing and exits 1: \(deleted)")
        #expect(try runMoraine(["scan", "--db", directory]).lines == ["k2 x:0001", "END"])
        _ = try runMoraine(["shell", "--db", directory], input: "flush\n")
        // The shell's flush wrote the WAL's writes to a table: dump every table.
        let tables = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".sst") }
        #expect(!tables.isEmpty)
        var dumped: [String] = []
        for table in tables {
            let dump = try runMoraine(["sst", "dump", directory + "/" + table])
            #expect(dump.status == 0)
            dumped += dump.lines
        }
        #expect(dumped.contains { $0.hasPrefix("k2 @") && $0.hasSuffix("put => x:0001") }, "\(dumped)")
        #expect(dumped.contains { $0.hasPrefix("k1 @") && $0.hasSuffix(" del => x:") }, "\(dumped)")
        let manifest = try runMoraine(["manifest", "dump", directory])
        #expect(manifest.status == 0)
        #expect(manifest.lines.contains { $0.contains("+L0 #") }, "\(manifest.lines)")
        let missing = try runMoraine(["get", "--db", directory + "/nope", "k"])
        #expect(missing.status != 0)
    }
}
