// Closing a database while a write group is in flight: close waits for the group (its WAL append
// and memtable inserts run with the engine's mutex released) before it flushes the memtables and
// closes the WAL, so the write the group acknowledges is there after a reopen: replayed from the
// WAL, or, after earlier writes without the WAL, flushed by close.
import Dispatch
import Moraine
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@Suite("Close")
struct CloseTests {
    @Test("close waits for a write group in flight; the write it acknowledged is there after a reopen", arguments: [false, true])
    func closeWaitsForAGroupInFlight(disableWAL: Bool) throws {
        let directory = makeTemporaryDirectory("moraine-close-in-flight")
        defer { removeTree(directory) }
        let fileSystem = PausingFileSystem()
        var options = Options()
        options.createIfMissing = true
        options.fileSystem = fileSystem
        let db = try Database(path: directory, options: options)
        var write = WriteOptions()
        write.disableWAL = disableWAL
        try db.put(Array("first".utf8), Array("1".utf8), options: write)
        // The next WAL append (the put below) stops there. After an earlier write without the
        // WAL, close also flushes the memtables, which must then hold the write in flight.
        fileSystem.armedAppend.withLock { $0 = true }
        let written = Mutex<Result<Void, MoraineError>?>(nil)
        let writerDone = DispatchSemaphore(value: 0)
        // Threads of their own: a GCD worker held in the paused append could leave the closer
        // without a worker to run on, which would look like a close that waits.
        startThread(name: "test-writer") {
            let outcome: Result<Void, MoraineError>
            do {
                try db.put(Array("k".utf8), Array("v".utf8))
                outcome = .success(())
            } catch {
                outcome = .failure(error as? MoraineError ?? MoraineError(.internalError, "\(error)"))
            }
            written.withLock { $0 = outcome }
            writerDone.signal()
        }
        #expect(fileSystem.paused.wait(timeout: .now() + 10) == .success, "the write never reached the WAL")
        let closed = DispatchSemaphore(value: 0)
        startThread(name: "test-closer") {
            try? db.close()
            closed.signal()
        }
        // While the group is held in its WAL append, close must not finish.
        #expect(closed.wait(timeout: .now() + 0.3) == .timedOut, "close returned while a write group was in flight")
        fileSystem.resume.signal()
        #expect(writerDone.wait(timeout: .now() + 10) == .success)
        #expect(closed.wait(timeout: .now() + 10) == .success)
        let outcome = written.withLock { $0 }
        guard case .success = outcome else {
            Issue.record("the write in flight failed: \(String(describing: outcome))")
            return
        }
        let reopened = try Database(path: directory, options: options)
        #expect(try reopened.get(Array("k".utf8)) == Array("v".utf8))
        #expect(try reopened.get(Array("first".utf8)) == Array("1".utf8))
        try reopened.close()
    }
}
