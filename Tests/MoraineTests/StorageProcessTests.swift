// The storage node and its clients as real processes, killed for real: `moraine node --role
// storage` SIGKILLed under a `moraine shell --sync --cluster` write load and restarted; the
// shell SIGKILLed, its lease taken over by the next opener with a higher epoch; and the shell
// SIGSTOPped past its lease, a second owner writing meanwhile, then SIGCONTed: every write of
// the first is refused as fenced. Every acknowledged write must be readable afterwards.
// MORAINE_STORAGE_KILL_ROUNDS (default 3) lengthens the first test.
import Foundation
import Moraine
import MoraineMessages
import MoraineStorage
import MoraineSystem
import MoraineTestSupport
import MoraineTransport
import Testing

/// A `moraine node --role storage` child and the run directory that names it.
final class StorageNodeProcess {
    let run: TempDir
    let carrier: Carrier
    private(set) var process: Process?
    private(set) var endpoint: Endpoint?

    /// With `diskBytes`, the node's data directory is a tmpfs of that size, mounted in a mount
    /// namespace of the node's own (`unshare`), so it can fill up for real.
    let diskBytes: Int?

    init(_ carrier: Carrier, diskBytes: Int? = nil) throws {
        self.carrier = carrier
        self.diskBytes = diskBytes
        run = TempDir("moraine-run")
        try FileManager.default.createDirectory(atPath: run.file("data"), withIntermediateDirectories: true)
        try ClusterKey.generate(path: RunDirectory(run.path).keyPath)
        try start()
    }

    /// Starts the node (again): on the socket path, or on the TCP port it had before.
    func start() throws {
        let listen: String
        switch endpoint {
        case .some(let known): listen = known.description
        case .none: listen = carrier == .sharedMemory ? "shm:" + run.file("storage.sock") : "tcp:127.0.0.1:0"
        }
        let child = Process()
        let node = [
            "node", "--role", "storage", "--data", run.file("data"), "--listen", listen, "--cluster-key",
            RunDirectory(run.path).keyPath,
        ]
        let errors = Pipe()
        if let diskBytes {
            // The sh becomes the node (exec), so the child's pid is the node's.
            launchDyingWithTests(
                child, "/usr/bin/unshare",
                (getuid() == 0 ? ["-m"] : ["-r", "-m"]) + [
                    "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=\(diskBytes) moraine-full \"$1\" && shift && exec \"$@\"",
                    "sh", run.file("data"), moraineExecutablePath(),
                ] + node)
            child.standardError = errors
        } else {
            launchDyingWithTests(child, moraineExecutablePath(), node)
            child.standardError = FileHandle(forWritingAtPath: "/dev/null")
        }
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        process = child
        // The first line is the endpoint.
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
        guard !line.isEmpty || diskBytes == nil else {
            child.waitUntilExit()
            process = nil
            let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw MoraineError(.unavailable, "no tmpfs for the node's data here: \(said.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        endpoint = try Endpoint(parsing: String(decoding: line, as: UTF8.self))
        try RunDirectory(run.path).write([RunDirectory.Role(role: "storage", index: 0, pid: child.processIdentifier, endpoint: endpoint!)])
    }

    func kill() {
        guard let process else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// The current epoch the node persisted for `database`.
    func epoch(of database: String) -> UInt64? {
        (try? String(contentsOfFile: run.file("data/.moraine/epochs/\(database)"), encoding: .utf8))
            .flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// A file system reaching the node from this process.
    func fileSystem(ttlMillis: UInt32 = 1_500) throws -> RemoteFileSystem {
        var options = RemoteFileSystem.Options()
        options.leaseTTLMillis = ttlMillis
        options.callTimeoutNanos = 10_000_000_000
        return RemoteFileSystem(endpoint: endpoint!, key: try ClusterKey.load(path: RunDirectory(run.path).keyPath), options: options)
    }

    deinit {
        kill()
        run.remove()
    }
}

@Suite("Storage node processes")
struct StorageProcessTests {
    /// Every key in `acknowledged` reads back its value, through a fresh process-side open.
    static func expectReadable(_ acknowledged: [String: String], node: StorageNodeProcess, database: String) throws {
        var options = Options()
        options.readOnly = true
        options.fileSystem = try node.fileSystem()
        let db = try Database(path: database, options: options)
        defer { try? db.close() }
        for key in acknowledged.keys.sorted() {
            let value = try db.get(Array(key.utf8)).map { String(decoding: $0, as: UTF8.self) }
            #expect(value == acknowledged[key], "acknowledged \(key) reads \(value ?? "nothing")")
        }
    }

    /// Without `--sync` a put is acknowledged once published (shared memory) or sent quietly
    /// (TCP); what the killed node had not written, the shell still holds and sends again.
    @Test("SIGKILL of the storage node under a write load loses no acknowledged write", arguments: Carrier.servers, [true, false])
    func killStorageNode(carrier: Carrier, sync: Bool) throws {
        let rounds = SeededRandom.environmentInt("MORAINE_STORAGE_KILL_ROUNDS", default: 3)
        let seed = SeededRandom.testSeed("storage kill \(carrier), sync \(sync), rounds \(rounds)")
        var rng = SeededRandom(seed: seed)
        let node = try StorageNodeProcess(carrier)
        let shell = try ShellProcess(arguments: ["shell"] + (sync ? ["--sync"] : []) + ["--cluster", node.run.path, "--db", "crash"])
        var acknowledged: [String: String] = [:]
        var written = 0
        for round in 0..<rounds {
            let before = 20 + Int(rng.next() % 60)
            for _ in 0..<before {
                let (key, value) = ("k\(written % 150)", "r\(round)-v\(written)")
                written += 1
                #expect(shell.send("put \(key) \(value)"))
                guard shell.readLine() == "OK" else { Issue.record("seed \(seed): put \(key) was not acknowledged"); return }
                acknowledged[key] = value
            }
            node.kill()
            // Writes sent while the node is down wait for it (up to the call deadline) and then succeed.
            let (key, value) = ("k\(written % 150)", "r\(round)-during")
            written += 1
            #expect(shell.send("put \(key) \(value)"))
            sleepNanos(Int64(100_000_000 + rng.next() % 400_000_000))
            try node.start()
            let answer = shell.readLine()
            #expect(answer == "OK", "seed \(seed) round \(round): a put across the restart answered \(answer ?? "nothing")")
            if answer == "OK" { acknowledged[key] = value }
        }
        shell.closeInput()
        shell.wait()
        #expect(shell.process.terminationStatus == 0)
        try Self.expectReadable(acknowledged, node: node, database: "crash")
    }

    /// Without `--sync` a put is acknowledged once its WAL append is in the node's hands: over
    /// shared memory published into a ring, over TCP sent as a quiet request; the node runs both
    /// after the compute is gone (docs/STORAGE.md, "Durability").
    @Test(
        "SIGKILL of the compute: the next opener takes the lease with a higher epoch and recovers every acknowledged write",
        arguments: Carrier.servers, [true, false])
    func killCompute(carrier: Carrier, sync: Bool) throws {
        let node = try StorageNodeProcess(carrier)
        let shell = try ShellProcess(arguments: ["shell"] + (sync ? ["--sync"] : []) + ["--cluster", node.run.path, "--db", "owned"])
        var acknowledged: [String: String] = [:]
        for i in 0..<100 {
            #expect(shell.send("put k\(i) v\(i)"))
            guard shell.readLine() == "OK" else { Issue.record("put k\(i) was not acknowledged"); return }
            acknowledged["k\(i)"] = "v\(i)"
        }
        let first = node.epoch(of: "owned")
        shell.kill()
        shell.wait()
        var options = Options()
        options.fileSystem = try node.fileSystem()
        // The dead shell's lease runs out within its TTL (5 s); until then the open is refused busy.
        var db: Database? = nil
        var refusals = 0
        let deadline = monotonicNanos() + 15_000_000_000
        while db == nil, monotonicNanos() < deadline {
            do {
                db = try Database(path: "owned", options: options)
            } catch let error as MoraineError where error.kind == .busy {
                refusals += 1
                sleepNanos(200_000_000)
            }
        }
        guard let db else { Issue.record("the lease of a killed owner was never given up"); return }
        defer { try? db.close() }
        #expect(refusals > 0, "the lease of a killed owner was granted at once, before its TTL")
        #expect((node.epoch(of: "owned") ?? 0) > (first ?? 0))
        for (key, value) in acknowledged { #expect(try db.get(Array(key.utf8)) == Array(value.utf8)) }
    }

    @Test("SIGSTOP of the owner past its lease: a new owner writes, and the old one, woken, is fenced")
    func stopOwner() throws {
        let node = try StorageNodeProcess(.sharedMemory)
        let shell = try ShellProcess(arguments: ["shell", "--sync", "--cluster", node.run.path, "--db", "fenced"])
        for i in 0..<20 {
            #expect(shell.send("put old\(i) first"))
            guard shell.readLine() == "OK" else { Issue.record("put old\(i) was not acknowledged"); return }
        }
        kill(shell.pid, SIGSTOP)
        var options = Options()
        options.fileSystem = try node.fileSystem()
        var second: Database? = nil
        let deadline = monotonicNanos() + 15_000_000_000
        while second == nil, monotonicNanos() < deadline {
            second = try? Database(path: "fenced", options: options)
            if second == nil { sleepNanos(200_000_000) }
        }
        guard let second else {
            kill(shell.pid, SIGCONT)
            Issue.record("a stopped owner's lease was never given up")
            return
        }
        for i in 0..<20 { try second.put(Array("old\(i)".utf8), Array("second".utf8), options: WriteOptions(sync: true)) }
        try second.put(Array("new".utf8), Array("second".utf8), options: WriteOptions(sync: true))
        let files = Set(try options.fileSystem.children(of: "fenced"))
        kill(shell.pid, SIGCONT)
        // The woken owner still believes it owns the database: each write must be refused.
        for i in 0..<5 {
            #expect(shell.send("put old\(i) woken"))
            let answer = shell.readLine() ?? ""
            #expect(answer.hasPrefix("ERR") && answer.contains("fenced"), "a write of the fenced owner answered \(answer)")
        }
        shell.closeInput()
        shell.wait()
        #expect(Set(try options.fileSystem.children(of: "fenced")) == files, "the fenced owner changed the file set")
        for i in 0..<20 { #expect(try second.get(Array("old\(i)".utf8)) == Array("second".utf8)) }
        try second.close()
        // Reopened: the data is the second owner's.
        let reopened = try Database(path: "fenced", options: options)
        defer { try? reopened.close() }
        for i in 0..<20 { #expect(try reopened.get(Array("old\(i)".utf8)) == Array("second".utf8)) }
        #expect(try reopened.get(Array("new".utf8)) == Array("second".utf8))
    }

    @Test("a full disk on the storage node is noSpace; the node keeps serving, and a reopen writes again once space is freed")
    func fullDisk() throws {
        // A real full disk: the node's data directory is an 8 MiB tmpfs. Where this machine cannot
        // mount one, the node runs in this process over a file system that fails the full
        // database's appends with ENOSPC (the fault layer) and the test asserts the same.
        var real: StorageNodeProcess? = nil
        var injected: (node: StorageTestNode, faults: FaultInjectingFileSystem)? = nil
        do {
            real = try StorageNodeProcess(.sharedMemory, diskBytes: 8 << 20)
        } catch {
            print("full disk: \(error); injecting ENOSPC instead")
            let faults = FaultInjectingFileSystem(wrapping: PosixFileSystem.shared)
            injected = (try StorageTestNode(.sharedMemory, nodeFileSystem: faults), faults)
        }
        defer {
            real?.kill()
            injected?.node.remove()
        }
        let remote = try real?.fileSystem() ?? injected!.node.remote
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = remote
        options.writeBufferSize = 256 << 10
        options.compression = .none
        let value = { (i: Int) in [UInt8]((0..<4096).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ (i &* 7919) ^ ($0 >> 3)) }) }
        // Ballast another database holds, destroyed later to free space.
        let ballast = try Database(path: "ballast", options: options)
        for i in 0..<768 { try ballast.put(Array("b\(i)".utf8), value(i), options: WriteOptions(sync: i % 64 == 63)) }
        try ballast.flush()
        try ballast.close()
        let db = try Database(path: "full", options: options)
        injected?.faults.arm(.noSpace, on: .any, trigger: .after(200, times: nil))
        var acknowledged: [Int] = []
        var failure: MoraineError? = nil
        for i in 0..<4000 {  // 16 MiB at most: twice the disk
            do {
                // Mostly without sync: published appends the node had not written when the disk
                // filled are held by the writer, and must land once space is freed.
                try db.put(Array("k\(i)".utf8), value(i), options: WriteOptions(sync: i % 8 == 7))
                acknowledged.append(i)
            } catch let error as MoraineError {
                failure = error
                break
            }
        }
        #expect(failure?.kind == .noSpace, "\(String(describing: failure))")
        #expect(failure?.description.lowercased().contains("space") == true, "\(String(describing: failure))")
        print("full disk: \(acknowledged.count) writes acknowledged, then: \(failure.map(\.description) ?? "none")")
        // The node keeps serving: another database reads, the capacity answers; the full one
        // stays read-only until reopened.
        #expect(try remote.capacity().fileCount > 0)
        var readOnly = options
        readOnly.readOnly = true
        let other = try Database(path: "ballast", options: readOnly)
        for i in [0, 100, 767] { #expect(try other.get(Array("b\(i)".utf8)) == value(i)) }
        try other.close()
        #expect(throws: MoraineError.self) { try db.put(Array("refused".utf8), [1], options: WriteOptions(sync: true)) }
        // Space is freed while the database is still open; its close writes what the writers
        // held (appends the node took but could not write included), and nothing fails.
        if real != nil { try Database.destroy(path: "ballast", options: options) } else { injected!.faults.disarm() }
        try db.close()
        let reopened = try Database(path: "full", options: options)
        defer { try? reopened.close() }
        for i in acknowledged { #expect(try reopened.get(Array("k\(i)".utf8)) == value(i), "acknowledged k\(i)") }
        try reopened.put(Array("after".utf8), Array("space".utf8), options: WriteOptions(sync: true))
        #expect(try reopened.get(Array("after".utf8)) == Array("space".utf8))
    }
}
