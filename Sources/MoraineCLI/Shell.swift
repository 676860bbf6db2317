// `moraine shell`: one command per input line, one answer line per command (a scan answers
// with its pairs and then END). Errors answer `ERR <reason>` and the shell goes on. Output is
// written unbuffered, so a line printed is a line acknowledged. Grammar in README.md.
import Moraine
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

struct ShellSession {
    let database: Database
    let writeOptions: WriteOptions
    /// Held while a command runs; a stop (end of input or a signal) takes it for good.
    let gate = ConditionLock()

    /// Writes one line to stdout at once.
    static func emit(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.append(10)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            done += n
        }
    }

    /// The next input line, or nil at the end of the input.
    ///
    /// errno is cleared first: the standard library's `readLine` retries its `getline` while
    /// errno says EINTR, and at the end of the input getline fails without setting errno, so an
    /// EINTR left over from an earlier interrupted call (a futex wait of the transport, say)
    /// made the shell spin at the end of its input for ever (seen as a hung test).
    static func nextLine() -> String? {
        errno = 0
        return readLine(strippingNewline: true)
    }

    /// Answers commands until the end of the input, then closes the database (and returns the
    /// close's error, if any).
    func run() -> (any Error)? {
        while let line = Self.nextLine() {
            let tokens = line.split(separator: " ", omittingEmptySubsequences: false)
            gate.lock()
            do {
                try execute(tokens)
            } catch let error as MoraineError {
                Self.emit("ERR \(error)")
            } catch {
                Self.emit("ERR \(error)")
            }
            gate.unlock()
        }
        return stop()
    }

    /// Stops at a SIGTERM, SIGINT or SIGHUP (blocked by the caller before the database started
    /// any thread): the command in flight finishes and is answered, no other starts, the
    /// database closes cleanly (a `disableWAL` memtable is flushed), and the process exits 0 —
    /// 1 if the close failed.
    func stopOnSignal() {
        let session = self
        startThread(name: "shell-signals") {
            let signal = TerminationSignals.wait()
            SystemLog.info("shell: \(TerminationSignals.name(signal)): stopping")
            if let error = session.stop() {
                printError("error: \(error)")
                exit(1)
            }
            exit(0)
        }
    }

    /// Takes the gate for good and closes the database.
    private func stop() -> (any Error)? {
        gate.lock()
        do {
            try database.close()
            return nil
        } catch {
            return error
        }
    }

    private func expect(_ tokens: [Substring], _ count: Int, _ usage: String) throws {
        if tokens.count != count { throw ShellError("usage: \(usage)") }
    }

    func execute(_ tokens: [Substring]) throws {
        guard let command = tokens.first, !command.isEmpty else { throw ShellError("empty command") }
        switch command {
        case "put":
            try expect(tokens, 3, "put K V")
            try database.put(try TokenCodec.decode(tokens[1]), try TokenCodec.decode(tokens[2]), options: writeOptions)
            Self.emit("OK")
        case "del":
            try expect(tokens, 2, "del K")
            try database.delete(try TokenCodec.decode(tokens[1]), options: writeOptions)
            Self.emit("OK")
        case "get":
            try expect(tokens, 2, "get K")
            if let value = try database.get(try TokenCodec.decode(tokens[1])) {
                Self.emit(TokenCodec.encode(value))
            } else {
                Self.emit("(nil)")
            }
        case "scan":
            try expect(tokens, 4, "scan FROM TO LIMIT")
            let from = tokens[1] == "-" ? nil : try TokenCodec.decode(tokens[1])
            let to = tokens[2] == "-" ? nil : try TokenCodec.decode(tokens[2])
            guard let limit = Int(tokens[3]), limit >= 0 else {
                throw ShellError("LIMIT must be a non-negative integer")
            }
            var lines: [String] = []
            let iterator = try database.makeIterator(options: ReadOptions(lowerBound: from, upperBound: to))
            try iterator.seekToFirst()
            while iterator.isValid && lines.count < limit {
                lines.append(TokenCodec.encode(iterator.key) + " " + TokenCodec.encode(iterator.value))
                try iterator.next()
            }
            for line in lines { Self.emit(line) }
            Self.emit("END")
        case "batch":
            try expect(tokens, 2, "batch N")
            guard let count = Int(tokens[1]), count >= 0, count <= 1_000_000 else {
                throw ShellError("N must be an integer 0…1000000")
            }
            var batch = WriteBatch()
            var problem: String? = nil
            // Read all N lines even when one is bad, so the next command starts on its own line.
            for _ in 0..<count {
                guard let line = Self.nextLine() else {
                    throw ShellError("input ended inside a batch")
                }
                let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                do {
                    if parts.first == "put" && parts.count == 3 {
                        batch.put(try TokenCodec.decode(parts[1]), try TokenCodec.decode(parts[2]))
                    } else if parts.first == "del" && parts.count == 2 {
                        batch.delete(try TokenCodec.decode(parts[1]))
                    } else {
                        throw ShellError("batch lines must be 'put K V' or 'del K'")
                    }
                } catch {
                    problem = problem ?? "\(error)"
                }
            }
            if let problem { throw ShellError("batch not applied: \(problem)") }
            try database.write(consume batch, options: writeOptions)
            Self.emit("OK")
        case "flush":
            try expect(tokens, 1, "flush")
            try database.flush()
            Self.emit("OK")
        case "compact":
            try expect(tokens, 1, "compact")
            try database.compactRange()
            Self.emit("OK")
        case "stats":
            try expect(tokens, 1, "stats")
            Self.emit(database.stats().json)
        default:
            throw ShellError("unknown command '\(command)'")
        }
    }
}
