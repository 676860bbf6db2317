// A temporary check of the RocksDB peer until moraine-bench exists: opens RocksDB in a fresh
// temporary directory through RocksDBFactory with a default BenchConfiguration, puts, reads
// (also from two threads at once), iterates both ways, deletes, compacts, closes, reopens and
// recounts; a second open of the locked directory must fail as MoraineError(.io).
// Prints "rocksdb peer ok", or the first mismatch and exits 1.
// Thread-safety: the engine is shared by the concurrent read phase; each cursor stays on one thread.

import Foundation
import Moraine
import MoraineBench
import RocksDBPeer
import Synchronization

let keyCount = 10_000

func key(_ i: Int) -> [UInt8] { Array(String(format: "key%08d", i).utf8) }
func valueSize(_ i: Int) -> Int { 100 + i % 57 }
func value(_ i: Int) -> [UInt8] { [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: valueSize(i)) }

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("rocksdb peer smoke: \(message)\n".utf8))
    exit(1)
}

func get(_ engine: any BenchEngine, _ i: Int) throws -> Int? {
    try key(i).withUnsafeBytes { try engine.get($0) }
}

/// Counts entries forward and backward and checks both give `expected` in order.
func count(_ engine: any BenchEngine, expected: Int) throws {
    let cursor = try engine.makeCursor()
    var forward = 0
    var bytes = 0
    try cursor.seekToFirst()
    while cursor.isValid {
        forward += 1
        bytes += cursor.entryBytes
        try cursor.next()
    }
    var backward = 0
    try cursor.seekToLast()
    while cursor.isValid {
        backward += 1
        try cursor.prev()
    }
    guard forward == expected, backward == expected else {
        fail("iterated \(forward) forward and \(backward) backward, expected \(expected)")
    }
    guard bytes > 0 else { fail("cursor entryBytes summed to 0") }
}

do {
    let directory = FileManager.default.temporaryDirectory
        .appendingPathComponent("rocksdb-peer-smoke-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }

    let factory = RocksDBFactory()
    guard factory.engineNames == ["rocksdb"] else { fail("engineNames \(factory.engineNames)") }
    let configuration = BenchConfiguration()
    var engine = try factory.open("rocksdb", path: directory, configuration: configuration)
    guard engine.name == "rocksdb" else { fail("engine name \(engine.name)") }

    // A second open of a locked database fails with RocksDB's message as MoraineError(.io, ...).
    do {
        _ = try factory.open("rocksdb", path: directory, configuration: configuration)
        fail("a second open of a locked database succeeded")
    } catch let error as MoraineError {
        guard error.kind == .io, error.message.hasPrefix("rocksdb: ") else { fail("lock error \(error)") }
    }

    for i in 0..<keyCount {
        try key(i).withUnsafeBytes { k in try value(i).withUnsafeBytes { v in try engine.put(k, v) } }
    }
    for i in 0..<keyCount {
        guard let size = try get(engine, i) else { fail("key \(i) not found") }
        guard size == valueSize(i) else { fail("key \(i) has \(size) bytes, expected \(valueSize(i))") }
    }
    guard try get(engine, keyCount) == nil else { fail("an absent key was found") }

    // Two threads read the one engine at once.
    let shared = engine
    let misses = Atomic(0)
    DispatchQueue.concurrentPerform(iterations: 2) { thread in
        for i in stride(from: thread, to: keyCount, by: 2) where (try? get(shared, i)) != valueSize(i) {
            misses.add(1, ordering: .relaxed)
        }
    }
    let missed = misses.load(ordering: .relaxed)
    guard missed == 0 else { fail("\(missed) concurrent reads missed") }

    try count(engine, expected: keyCount)

    // Seek lands on the first key at or after the target.
    do {
        let cursor = try engine.makeCursor()
        try Array("key00004999x".utf8).withUnsafeBytes { try cursor.seek($0) }
        guard cursor.isValid, cursor.entryBytes == key(5000).count + valueSize(5000) else {
            fail("seek did not land on key 5000")
        }
    }

    // Delete every tenth key, compact, and check the survivors.
    let deleted = stride(from: 0, to: keyCount, by: 10)
    for i in deleted { try key(i).withUnsafeBytes { try engine.delete($0) } }
    try engine.compactAll()
    for i in 0..<keyCount {
        let found = try get(engine, i)
        if i % 10 == 0 {
            guard found == nil else { fail("deleted key \(i) still found") }
        } else {
            guard found == valueSize(i) else { fail("key \(i) read \(String(describing: found)) after compact") }
        }
    }
    let survivors = keyCount - Array(deleted).count
    try count(engine, expected: survivors)
    try engine.close()
    try engine.close()  // a second close does nothing

    // Reopen: the data persisted.
    engine = try factory.open("rocksdb", path: directory, configuration: configuration)
    try count(engine, expected: survivors)
    try engine.close()
    print("rocksdb peer ok")
} catch {
    fail("\(error)")
}
