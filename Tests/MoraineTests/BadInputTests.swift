// Bad input and misuse through the public Database API: the documented limits, opening the
// wrong directory, opening twice, and using a closed handle.
import Foundation
import Glibc
import Moraine
import MoraineSystem
import MoraineTestSupport
import Synchronization
import Testing

@Suite("BadInput")
struct BadInputTests {
    static func options(_ configure: (inout Options) -> Void = { _ in }) -> Options {
        var options = Options()
        options.createIfMissing = true
        configure(&options)
        return options
    }

    @Test func emptyKeyIsAllowedAndSortsFirst() throws {
        let dir = TempDir("moraine-empty-key")
        defer { dir.remove() }
        var db = try Database(path: dir.path, options: Self.options())
        try db.put(Array("a".utf8), Array("A".utf8))
        try db.put([], Array("empty".utf8))
        try db.put([0], Array("zero".utf8))
        #expect(try db.get([]) == Array("empty".utf8))
        func firstKeys() throws -> [[UInt8]] {
            let iterator = try db.makeIterator()
            try iterator.seekToFirst()
            var keys: [[UInt8]] = []
            while iterator.isValid {
                keys.append(iterator.key)
                try iterator.next()
            }
            return keys
        }
        #expect(try firstKeys() == [[], [0], Array("a".utf8)])
        // Through a table and a reopen too.
        try db.flush()
        #expect(try db.get([]) == Array("empty".utf8))
        try db.close()
        db = try Database(path: dir.path, options: Self.options())
        #expect(try db.get([]) == Array("empty".utf8))
        #expect(try firstKeys() == [[], [0], Array("a".utf8)])
        let iterator = try db.makeIterator()
        try iterator.seekToLast()
        try iterator.prev()
        try iterator.prev()
        #expect(iterator.isValid && iterator.key == [])
        try db.delete([])
        #expect(try db.get([]) == nil)
        #expect(try db.get(Array("a".utf8)) == Array("A".utf8))
        #expect(try firstKeys() == [[0], Array("a".utf8)])
        try db.close()
    }

    @Test func oversizedKeyAndValueAreRejected() throws {
        let dir = TempDir("moraine-limits")
        defer { dir.remove() }
        let db = try Database(
            path: dir.path,
            options: Self.options {
                $0.maxKeySize = 100
                $0.maxValueSize = 1000
            })
        let longKey = moraineError { try db.put([UInt8](repeating: 1, count: 101), [1]) }
        #expect(longKey?.kind == .invalid, "\(String(describing: longKey))")
        #expect(
            longKey?.message.contains("101") == true && longKey?.message.contains("100") == true,
            "\(String(describing: longKey))")
        let longValue = moraineError { try db.put([1], [UInt8](repeating: 1, count: 1001)) }
        #expect(longValue?.kind == .invalid, "\(String(describing: longValue))")
        #expect(longValue?.message.contains("1001") == true, "\(String(describing: longValue))")
        let longDelete = moraineError { try db.delete([UInt8](repeating: 2, count: 5000)) }
        #expect(
            longDelete?.kind == .invalid && longDelete?.message.contains("5000") == true,
            "\(String(describing: longDelete))")
        // A batch with one bad operation applies none of them.
        var batch = WriteBatch()
        batch.put(Array("good".utf8), Array("1".utf8))
        batch.put([UInt8](repeating: 3, count: 200), Array("2".utf8))
        #expect(moraineError { try db.write(batch) }?.kind == .invalid)
        #expect(try db.get(Array("good".utf8)) == nil)
        #expect(try db.get([UInt8](repeating: 1, count: 101)) == nil)

        // The limits themselves are accepted, and the database still works.
        try db.put([UInt8](repeating: 7, count: 100), [UInt8](repeating: 8, count: 1000))
        #expect(try db.get([UInt8](repeating: 7, count: 100)) == [UInt8](repeating: 8, count: 1000))
        try db.put("after", "works")
        try db.flush()
        #expect(try db.get("after") == "works")
        try db.close()
    }

    @Test func missingDirectoryWithoutCreateIsNotFound() {
        let dir = TempDir("moraine-missing")
        dir.remove()
        var options = Options()
        options.createIfMissing = false
        let error = moraineError { _ = try Database(path: dir.path, options: options) }
        #expect(error?.kind == .notFound, "\(String(describing: error))")
        #expect(
            !FileManager.default.fileExists(atPath: dir.path), "opening without create_if_missing made the directory")
    }

    @Test func emptyDirectoryWithoutCreateIsInvalid() {
        let dir = TempDir("moraine-empty-dir")
        defer { dir.remove() }
        let error = moraineError { _ = try Database(path: dir.path, options: Options()) }
        #expect(error?.kind == .invalid, "\(String(describing: error))")
        #expect(error?.message.contains("CURRENT") == true, "\(String(describing: error))")
        // The failed open left the lock free: creating now works.
        #expect(moraineError { try Database(path: dir.path, options: Self.options()).close() } == nil)
    }

    @Test func errorIfExists() throws {
        let dir = TempDir("moraine-exists")
        defer { dir.remove() }
        let created = try Database(path: dir.path, options: Self.options { $0.errorIfExists = true })
        try created.put("k", "v")
        try created.close()
        let error = moraineError { _ = try Database(path: dir.path, options: Self.options { $0.errorIfExists = true }) }
        #expect(error?.kind == .invalid, "\(String(describing: error))")
        // The database is untouched and still opens normally.
        let db = try Database(path: dir.path, options: Self.options())
        #expect(try db.get("k") == "v")
        try db.close()
    }

    @Test("a lock held an instant longer (a child's copy of the descriptor before its exec) is waited for; one held on is busy")
    func lockHeldAnInstant() throws {
        let dir = TempDir("moraine-lock-instant")
        defer { dir.remove() }
        let path = dir.file("LOCK")
        // Another open file description holding the flock, as a child being started holds one.
        let holder = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        try #require(holder >= 0 && flock(holder, LOCK_EX | LOCK_NB) == 0)
        let released = Mutex(false)
        startThread(name: "lock-release") {
            usleep(15_000)
            close(holder)
            released.withLock { $0 = true }
        }
        let lock = try PosixFileSystem.shared.lock(path)
        #expect(released.withLock { $0 }, "the lock was taken while another description held it")
        // Held on (here by the lock just taken, through a second description): busy.
        let error = moraineError { _ = try PosixFileSystem.shared.lock(path) }
        #expect(error?.kind == .busy && error?.message.contains("locked") == true, "\(String(describing: error))")
        lock.unlock()
    }

    @Test func secondOpenWhileOpenIsBusy() throws {
        let dir = TempDir("moraine-busy")
        defer { dir.remove() }
        let first = try Database(path: dir.path, options: Self.options())
        try first.put("k", "v")
        let error = moraineError { _ = try Database(path: dir.path, options: Self.options()) }
        #expect(error?.kind == .busy, "\(String(describing: error))")
        #expect(error?.message.contains("locked") == true, "\(String(describing: error))")
        // The first handle is unaffected; after it closes, the database opens again.
        try first.put("k2", "v2")
        #expect(try first.get("k") == "v")
        try first.close()
        let second = try Database(path: dir.path, options: Self.options())
        #expect(try second.get("k2") == "v2")
        try second.close()
    }

    @Test func closedHandleRefusesWork() throws {
        let dir = TempDir("moraine-closed")
        defer { dir.remove() }
        let db = try Database(path: dir.path, options: Self.options())
        try db.put("k", "v")
        try db.close()
        try db.close()  // idempotent
        #expect(moraineError { try db.put("k", "w") }?.kind == .closed)
        #expect(moraineError { try db.delete("k") }?.kind == .closed)
        #expect(moraineError { _ = try db.get("k") }?.kind == .closed)
        #expect(moraineError { _ = try db.makeIterator() }?.kind == .closed)
        #expect(moraineError { try db.flush() }?.kind == .closed)
    }

    @Test func invalidOptionsAreRejected() {
        let dir = TempDir("moraine-bad-options")
        defer { dir.remove() }
        for (what, configure) in [
            ("write buffer", { (o: inout Options) in o.writeBufferSize = 10 }),
            ("block size", { (o: inout Options) in o.blockSize = 1 }),
            ("max key size", { (o: inout Options) in o.maxKeySize = 0 }),
            ("write buffer number", { (o: inout Options) in o.maxWriteBufferNumber = 1 }),
        ] as [(String, (inout Options) -> Void)] {
            let error = moraineError { _ = try Database(path: dir.path, options: Self.options(configure)) }
            #expect(error?.kind == .invalid, "\(what): \(String(describing: error))")
        }
    }
}
