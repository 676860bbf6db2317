// Opens never destroy data, read commands never write, and `moraine repair` brings back what
// the damaged files hold. Every damage case is real files on disk driven through the real
// `moraine` binary, as a user would meet it: CURRENT deleted, the manifest cut or gone, a table
// corrupted, a WAL torn in the middle. Keys are chosen so each lives in exactly one file, so what
// repair must return is exact.
import Foundation
import Moraine
import Testing

/// Runs the built `moraine` with `input` on standard input; returns the lines of standard
/// output, standard error and the exit status. Both pipes are read to the end before the wait, so
/// a full pipe cannot block the child.
func runMoraineCLI(_ arguments: [String], input: String = "") throws -> (out: [String], err: String, status: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: moraineExecutablePath())
    process.arguments = arguments
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    final class Collected: @unchecked Sendable {
        var data = Data()
        let done = DispatchSemaphore(value: 0)
    }
    let errors = Collected()
    Thread {
        errors.data = stderr.fileHandleForReading.readDataToEndOfFile()
        errors.done.signal()
    }.start()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    let out = stdout.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    errors.done.wait()
    var lines = String(decoding: out, as: UTF8.self).components(separatedBy: "\n")
    if lines.last == "" { lines.removeLast() }
    return (lines, String(decoding: errors.data, as: UTF8.self), process.terminationStatus)
}

/// Every file under `directory` (recursively) with its size: what "changed nothing" compares.
func listing(_ directory: String) -> [String: Int] {
    var result: [String: Int] = [:]
    let enumerator = FileManager.default.enumerator(atPath: directory)
    while let name = enumerator?.nextObject() as? String {
        let attributes = try? FileManager.default.attributesOfItem(atPath: directory + "/" + name)
        result[name] = (attributes?[.size] as? Int) ?? -1
    }
    return result
}

/// A database written through `moraine shell`: each group of keys is put and flushed into a
/// table of its own, then `walKeys` are put and left in the WAL. Values are `v-KEY`.
struct ShellDatabase {
    let directory: String
    let tableGroups: [[String]]
    let walKeys: [String]

    init(_ label: String, tables: Int, keysPerTable: Int, walKeys: Int) throws {
        directory = makeTemporaryDirectory(label)
        tableGroups = (0..<tables).map { t in (0..<keysPerTable).map { "t\(t)-k\(padded($0, 4))" } }
        self.walKeys = (0..<walKeys).map { "w-k\(padded($0, 4))" }
        var script = ""
        for group in tableGroups {
            for key in group { script += "put \(key) v-\(key)\n" }
            script += "flush\n"
        }
        for key in self.walKeys { script += "put \(key) v-\(key)\n" }
        let run = try runMoraineCLI(["shell", "--db", directory], input: script)
        #expect(run.status == 0 && !run.out.contains { $0.hasPrefix("ERR") }, "setup: \(run.out.suffix(3)) \(run.err)")
    }

    var allKeys: [String] { tableGroups.flatMap { $0 } + walKeys }

    func remove() { removeTree(directory) }

    func file(_ name: String) -> String { directory + "/" + name }

    func names(suffix: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(suffix) }.sorted()
    }

    var manifest: String { names(suffix: "").first { $0.hasPrefix("MANIFEST-") }! }

    /// The keys `moraine scan` returns, checking each value; nil when the scan fails.
    func scannedKeys() throws -> [String]? {
        let scan = try runMoraineCLI(["scan", "--db", directory, "--limit", "1000000"])
        guard scan.status == 0 else { return nil }
        var keys: [String] = []
        for line in scan.out.dropLast() {
            let parts = line.split(separator: " ").map(String.init)
            #expect(parts.count == 2 && parts[1] == "v-" + parts[0], "scan line \(line)")
            keys.append(parts[0])
        }
        #expect(scan.out.last == "END")
        return keys
    }

    /// Runs `moraine repair` and returns its report lines.
    func repair() throws -> [String] {
        let run = try runMoraineCLI(["repair", "--db", directory])
        #expect(run.status == 0, "repair failed: \(run.err)")
        return run.out
    }
}

@Suite("Open safety and repair, through the moraine binary")
struct OpenSafetyTests {
    @Test("a database without CURRENT is refused by every command, changes nothing, and repair restores it")
    func missingCurrent() throws {
        let db = try ShellDatabase("moraine-nocurrent", tables: 3, keysPerTable: 50, walKeys: 20)
        defer { db.remove() }
        try FileManager.default.removeItem(atPath: db.file("CURRENT"))
        let before = listing(db.directory)
        for arguments in [["get", "--db", db.directory, "t0-k0001"], ["put", "--db", db.directory, "k", "v"],
                          ["scan", "--db", db.directory], ["del", "--db", db.directory, "t0-k0001"]] {
            let run = try runMoraineCLI(arguments)
            #expect(run.status == 1, "\(arguments[0]) exited \(run.status)")
            #expect(run.err.contains("corruption") && run.err.contains("no CURRENT") && run.err.contains("moraine repair"),
                    "\(arguments[0]): \(run.err)")
            #expect(!run.out.contains("OK"), "\(arguments[0]) acknowledged a write: \(run.out)")
            #expect(listing(db.directory) == before, "\(arguments[0]) changed the directory")
        }
        let report = try db.repair()
        #expect(report.first?.hasPrefix("repaired: ") == true, "\(report)")
        #expect(try db.scannedKeys() == db.allKeys.sorted())
        #expect(FileManager.default.fileExists(atPath: db.file("lost")), "replayed WALs and old manifests go to lost/")
    }

    @Test("a manifest cut short is refused without deleting anything; repair recovers every key")
    func truncatedManifest() throws {
        let db = try ShellDatabase("moraine-cutmanifest", tables: 3, keysPerTable: 40, walKeys: 10)
        defer { db.remove() }
        truncateFile(db.file(db.manifest), to: fileSize(db.file(db.manifest)) - 5)
        let before = listing(db.directory)
        let scan = try runMoraineCLI(["scan", "--db", db.directory])
        #expect(scan.status == 1)
        #expect(scan.err.contains("corruption") && scan.err.contains(".sst") && scan.err.contains("moraine repair"), "\(scan.err)")
        let put = try runMoraineCLI(["put", "--db", db.directory, "new", "v"])
        #expect(put.status == 1 && put.err.contains("a manifest edit was lost"), "\(put.err)")
        #expect(listing(db.directory) == before, "a refused open changed the directory")
        _ = try db.repair()
        #expect(try db.scannedKeys() == db.allKeys.sorted())
        #expect(try runMoraineCLI(["put", "--db", db.directory, "after", "v-after"]).status == 0)
        #expect(try runMoraineCLI(["get", "--db", db.directory, "after"]).out == ["v-after"])
    }

    @Test("a manifest that is gone is refused; repair recovers every key")
    func missingManifest() throws {
        let db = try ShellDatabase("moraine-nomanifest", tables: 2, keysPerTable: 40, walKeys: 10)
        defer { db.remove() }
        try FileManager.default.removeItem(atPath: db.file(db.manifest))
        let before = listing(db.directory)
        let get = try runMoraineCLI(["get", "--db", db.directory, "t0-k0000"])
        #expect(get.status == 1 && get.err.contains("corruption") && get.err.contains("moraine repair"), "\(get.err)")
        #expect(listing(db.directory) == before)
        _ = try db.repair()
        #expect(try db.scannedKeys() == db.allKeys.sorted())
    }

    @Test("a corrupted table moves to lost/; every key of every other file is readable after repair")
    func corruptedTable() throws {
        let db = try ShellDatabase("moraine-badtable", tables: 3, keysPerTable: 60, walKeys: 10)
        defer { db.remove() }
        let tables = db.names(suffix: ".sst")
        #expect(tables.count == 3, "\(tables)")
        // The middle table holds group 1 (tables are numbered in flush order).
        let damaged = tables[1]
        flipByte(db.file(damaged), at: 20)
        let report = try db.repair()
        #expect(report.contains { $0.contains("moved \(damaged) to lost/: cannot be read") }, "\(report)")
        #expect(FileManager.default.fileExists(atPath: db.file("lost/" + damaged)), "the damaged table is kept in lost/")
        let expected = (db.tableGroups[0] + db.tableGroups[2] + db.walKeys).sorted()
        #expect(try db.scannedKeys() == expected)
    }

    @Test("a WAL torn in the middle: open refuses, repair keeps every whole record")
    func tornWAL() throws {
        let db = try ShellDatabase("moraine-tornwal", tables: 1, keysPerTable: 20, walKeys: 200)
        defer { db.remove() }
        let wal = db.names(suffix: ".log").last!
        let size = fileSize(db.file(wal))
        flipByte(db.file(wal), at: size / 2)
        let before = listing(db.directory)
        let scan = try runMoraineCLI(["scan", "--db", db.directory])
        #expect(scan.status == 1 && scan.err.contains("corruption") && scan.err.contains(wal), "\(scan.err)")
        #expect(listing(db.directory) == before)
        let report = try db.repair()
        let skipped = report.first { $0.contains("damaged byte") } ?? ""
        #expect(!skipped.contains("skipped 0 damaged"), "\(report)")
        guard let keys = try db.scannedKeys() else {
            Issue.record("scan after repair failed")
            return
        }
        // One record held the flipped byte; every other one is back.
        let missing = Set(db.allKeys).subtracting(keys)
        #expect(missing.count == 1 && missing.allSatisfy { $0.hasPrefix("w-") }, "missing \(missing.sorted())")
        #expect(Set(keys).isSubset(of: Set(db.allKeys)))
    }

    @Test("read commands change nothing, on a healthy database and on a damaged one")
    func readCommandsWriteNothing() throws {
        let db = try ShellDatabase("moraine-readonly", tables: 2, keysPerTable: 30, walKeys: 15)
        defer { db.remove() }
        let table = db.file(db.names(suffix: ".sst")[0])
        let wal = db.file(db.names(suffix: ".log").last!)
        let commands: [[String]] = [
            ["get", "--db", db.directory, "w-k0003"], ["get", "--db", db.directory, "absent"],
            ["scan", "--db", db.directory], ["scan", "--db", db.directory, "--reverse", "--limit", "3"],
            ["stats", "--db", db.directory], ["manifest", "dump", db.directory], ["sst", "dump", table],
            ["wal", "dump", wal],
        ]
        for damaged in [false, true] {
            if damaged { truncateFile(db.file(db.manifest), to: fileSize(db.file(db.manifest)) - 5) }
            let before = listing(db.directory)
            for arguments in commands {
                let run = try runMoraineCLI(arguments)
                if !damaged {
                    let missingKey = arguments.last == "absent"
                    #expect(run.status == (missingKey ? 1 : 0), "\(arguments): \(run.err)")
                }
                #expect(listing(db.directory) == before, "\(arguments) changed the directory (damaged: \(damaged))")
            }
        }
    }

    @Test("get, scan, --version and numeric flags behave as RocksDB's tools do")
    func commandLineContract() throws {
        let db = try ShellDatabase("moraine-cli", tables: 1, keysPerTable: 5, walKeys: 0)
        defer { db.remove() }
        let missing = try runMoraineCLI(["get", "--db", db.directory, "nope"])
        #expect(missing.out.isEmpty && missing.err.contains("not found") && missing.status == 1, "\(missing)")
        let found = try runMoraineCLI(["get", "--db", db.directory, "t0-k0002"])
        #expect(found.out == ["v-t0-k0002"] && found.status == 0 && found.err.isEmpty, "\(found)")
        let cut = try runMoraineCLI(["scan", "--db", db.directory, "--limit", "2"])
        #expect(cut.out.count == 3 && cut.err.contains("--limit"), "\(cut)")
        let whole = try runMoraineCLI(["scan", "--db", db.directory, "--limit", "5"])
        #expect(whole.out.count == 6 && whole.err.isEmpty, "\(whole)")
        let byDirectory = try runMoraineCLI(["manifest", "dump", db.directory])
        let byFile = try runMoraineCLI(["manifest", "dump", db.file(db.manifest)])
        #expect(byFile.status == 0 && byFile.out == byDirectory.out && byFile.out.contains { $0.contains("+L0 #") }, "\(byFile)")
        let version = try runMoraineCLI(["--version"])
        #expect(version.status == 0 && version.out.first?.first?.isNumber == true, "\(version)")
        for (arguments, flag) in [
            (["demo", "--keys=-5", "--db", db.directory + "/demo"], "--keys"),
            (["scan", "--db", db.directory, "--limit", "-1"], "--limit"),
            (["shell", "--db", db.directory, "--write_buffer_size", "-4"], "--write_buffer_size"),
            (["sst", "dump", "x.sst", "--limit", "-7"], "--limit"),
            (["wal", "dump", "x.log", "--limit", "-7"], "--limit"),
            (["io-bench", "--file", db.directory + "/io", "--seconds", "-1"], "--seconds"),
            (["transport-bench", "--inflight", "1,-5"], "--inflight"),
            (["numa", "--node", "-1"], "--node"),
            (["bench", "--num=-3"], "--num"),
        ] {
            let run = try runMoraineCLI(arguments)
            #expect(run.status == 2, "\(arguments) exited \(run.status)")
            #expect(run.err.contains(flag), "\(arguments): \(run.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: db.directory + "/demo"), "a refused demo created its database")
    }

    @Test("wal dump prints each batch with its sequence numbers, and names a damaged stretch")
    func walDump() throws {
        let db = try ShellDatabase("moraine-waldump", tables: 0, keysPerTable: 0, walKeys: 30)
        defer { db.remove() }
        let wal = db.file(db.names(suffix: ".log").last!)
        let clean = try runMoraineCLI(["wal", "dump", wal])
        #expect(clean.status == 0)
        #expect(clean.out.contains { $0.contains("batch @1…1, 1 op(s): put w-k0000 v-w-k0000") }, "\(clean.out.prefix(4))")
        #expect(clean.out.last == "30 record(s), 0 damaged stretch(es) skipped", "\(clean.out.last ?? "")")
        flipByte(wal, at: fileSize(wal) / 2)
        let torn = try runMoraineCLI(["wal", "dump", wal])
        #expect(torn.status == 0)
        #expect(torn.out.contains { $0.hasPrefix("(damaged: skipped") }, "\(torn.out)")
    }
}
