// The arena skiplist memtable: lookup semantics by sequence (with and without the point-lookup
// index, and with an index that filled up), iterator order both ways and seeks, and one writer
// racing two lock-free readers.
import Dispatch
import Foundation
import Synchronization
import Testing

@testable import MoraineFormat
@testable import MoraineMemtable

extension MemTable {
    func add(_ sequence: SequenceNumber, _ type: ValueType, _ key: [UInt8], _ value: [UInt8]) {
        key.withUnsafeBytes { k in value.withUnsafeBytes { v in add(sequence: sequence, type: type, key: k, value: v) }
        }
    }
    func get(_ key: [UInt8], _ sequence: SequenceNumber) -> LookupResult {
        key.withUnsafeBytes { get($0, sequence: sequence) }
    }
}

@Suite("MemTable")
struct MemTableTests {
    @Test(arguments: [false, true]) func sequencesSnapshotsAndDeletions(hashIndex: Bool) {
        let table = MemTable(capacityBytes: 1 << 20, logNumber: 3, hashIndex: hashIndex)
        #expect((table.hashIndexBytes > 0) == hashIndex)
        #expect(table.isEmpty && table.logNumber == 3)
        let k = Array("key".utf8)
        table.add(10, .value, k, Array("old".utf8))
        table.add(20, .value, k, Array("new".utf8))
        table.add(30, .deletion, k, [])
        table.add(40, .value, k, Array("again".utf8))
        table.add(15, .value, Array("ke".utf8), Array("prefix".utf8))
        table.add(16, .value, Array("key\u{0}".utf8), Array("longer".utf8))
        table.add(17, .value, [], Array("empty".utf8))

        #expect(table.get(k, 9) == .notFound)
        #expect(table.get(k, 10) == .found(Array("old".utf8)))
        #expect(table.get(k, 19) == .found(Array("old".utf8)))
        #expect(table.get(k, 20) == .found(Array("new".utf8)))
        #expect(table.get(k, 29) == .found(Array("new".utf8)))
        #expect(table.get(k, 30) == .deleted)
        #expect(table.get(k, 39) == .deleted)
        #expect(table.get(k, 40) == .found(Array("again".utf8)))
        #expect(table.get(k, maxSequenceNumber) == .found(Array("again".utf8)))
        #expect(table.get(Array("ke".utf8), 100) == .found(Array("prefix".utf8)))
        #expect(table.get(Array("ke".utf8), 14) == .notFound)
        #expect(table.get(Array("key\u{0}".utf8), 100) == .found(Array("longer".utf8)))
        #expect(table.get([], 100) == .found(Array("empty".utf8)))
        #expect(table.get(Array("k".utf8), 100) == .notFound)
        #expect(table.get(Array("kez".utf8), 100) == .notFound)
        #expect(table.entryCount == 7)
        #expect(table.smallestSequence == 10 && table.largestSequence == 40)
        #expect(table.memoryUsageBytes > 0)
    }

    @Test func iteratorOrderAndSeek() throws {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        let table = MemTable(capacityBytes: 8 << 20, logNumber: 1, seed: seed)
        var model: [ModelEntry] = []
        var nextSequence: SequenceNumber = 1
        for _ in 0..<5000 {
            let n = Int.random(in: 0..<3000, using: &rng) * 2  // repeats give several versions
            let type: ValueType = Int.random(in: 0..<8, using: &rng) == 0 ? .deletion : .value
            let value = type == .value ? rng.bytes(Int.random(in: 0...30, using: &rng)) : []
            table.add(nextSequence, type, userKeyBytes(n), value)
            model.append(ModelEntry(key: makeInternalKey(userKeyBytes(n), nextSequence, type), value: value))
            nextSequence += 1
        }
        model.sort { compareKeys($0.key, $1.key) < 0 }
        try checkIterator(table.makeIterator(), model, seed: seed, label: "memtable")

        // get agrees with the model at random snapshots.
        let versions = Dictionary(grouping: model, by: \.user)  // each group newest first
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<6000, using: &rng)
            let at = SequenceNumber.random(in: 0...nextSequence, using: &rng)
            let user = userKeyBytes(n)
            let candidate = versions[user]?.first { sequence(ofKey: $0.key) <= at }
            let expected: LookupResult
            if let candidate {
                expected =
                    candidate.key.withUnsafeBytes { valueType($0) } == .value ? .found(candidate.value) : .deleted
            } else {
                expected = .notFound
            }
            #expect(table.get(user, at) == expected, "seed \(seed): key \(n) at \(at)")
        }
    }

    @Test("the point-lookup index answers as the walk does, also once it is full")
    func hashIndexAgreesWithTheWalk() {
        let seed = testSeed()
        var rng = SeededRandom(seed: seed)
        // 256 KiB: 4,096 slots, so the index takes 2,048 keys of the 3,000 used.
        let indexed = MemTable(capacityBytes: 256 << 10, logNumber: 1, seed: seed, hashIndex: true)
        let walked = MemTable(capacityBytes: 256 << 10, logNumber: 1, seed: seed)
        #expect(indexed.hashIndexBytes == 4096 * 8)
        var nextSequence: SequenceNumber = 1
        var firstVersion: [Int: SequenceNumber] = [:]
        func add(_ n: Int, _ type: ValueType, _ value: [UInt8]) {
            indexed.add(nextSequence, type, userKeyBytes(n), value)
            walked.add(nextSequence, type, userKeyBytes(n), value)
            if firstVersion[n] == nil { firstVersion[n] = nextSequence }
            nextSequence += 1
        }
        func check(_ label: String) {
            for _ in 0..<3000 {
                let n = Int.random(in: 0..<6000, using: &rng)
                let at = SequenceNumber.random(in: 0...nextSequence, using: &rng)
                let got = indexed.get(userKeyBytes(n), at)
                let expected = walked.get(userKeyBytes(n), at)
                if got != expected {
                    Issue.record("seed \(seed), \(label): key \(n) at \(at): index \(got), walk \(expected)")
                    return
                }
                #expect(indexed.get(userKeyBytes(n), maxSequenceNumber) == walked.get(userKeyBytes(n), maxSequenceNumber))
            }
        }
        for _ in 0..<1500 {
            let type: ValueType = Int.random(in: 0..<6, using: &rng) == 0 ? .deletion : .value
            add(Int.random(in: 0..<1500, using: &rng), type, type == .value ? rng.bytes(Int.random(in: 0...8, using: &rng)) : [])
        }
        #expect(!indexed.hashIndexIsFull, "seed \(seed)")
        check("index with room")
        for _ in 0..<2500 {
            let type: ValueType = Int.random(in: 0..<6, using: &rng) == 0 ? .deletion : .value
            add(Int.random(in: 0..<3000, using: &rng), type, type == .value ? rng.bytes(Int.random(in: 0...8, using: &rng)) : [])
        }
        #expect(indexed.hashIndexIsFull, "seed \(seed): \(firstVersion.count) keys should have filled the index")
        check("index full")
        // A key indexed before the index filled still answers its newest version.
        let early = firstVersion.min { $0.value < $1.value }!.key
        add(early, .value, Array("newest".utf8))
        #expect(indexed.get(userKeyBytes(early), maxSequenceNumber) == .found(Array("newest".utf8)), "seed \(seed)")
        #expect(indexed.get(userKeyBytes(early), nextSequence - 2) == walked.get(userKeyBytes(early), nextSequence - 2), "seed \(seed)")
    }

    @Test func emptyTableIterator() {
        let table = MemTable(capacityBytes: 64 << 10, logNumber: 0)
        let iterator = table.makeIterator()
        iterator.seekToFirst()
        #expect(!iterator.isValid)
        iterator.seekToLast()
        #expect(!iterator.isValid)
        #expect(table.get([], maxSequenceNumber) == .notFound)
    }

    @Test("a recycled arena starts empty; the pool keeps at most its limit and no oversized arena")
    func recycledArena() {
        let pool = MemTableArenaPool(limit: 1, maxCapacity: 1 << 20)
        var first: MemTable? = MemTable(capacityBytes: 256 << 10, logNumber: 1, pool: pool)
        var second: MemTable? = MemTable(capacityBytes: 256 << 10, logNumber: 2, pool: pool)
        for i in 0..<2000 {
            first!.add(SequenceNumber(i + 1), .value, Self.key(i), Self.value(i))
            second!.add(SequenceNumber(i + 1), .value, Self.key(i), Self.value(i))
        }
        first = nil
        second = nil
        #expect(pool.count == 1, "the pool holds more than its limit")
        let reused = MemTable(capacityBytes: 128 << 10, logNumber: 3, pool: pool)
        #expect(pool.count == 0 && reused.capacityBytes == 256 << 10, "the arena was not reused")
        #expect(reused.isEmpty && reused.memoryUsageBytes < 100)
        let iterator = reused.makeIterator()
        iterator.seekToFirst()
        #expect(!iterator.isValid, "a recycled arena shows its old entries")
        #expect(reused.get(Self.key(5), maxSequenceNumber) == .notFound)
        reused.add(7, .value, Self.key(5), [1, 2, 3])
        #expect(reused.get(Self.key(5), maxSequenceNumber) == .found([1, 2, 3]))
        #expect(reused.get(Self.key(6), maxSequenceNumber) == .notFound)
        var count = 0
        iterator.seekToFirst()
        while iterator.isValid {
            count += 1
            iterator.next()
        }
        #expect(count == 1)
        var oversized: MemTable? = MemTable(capacityBytes: 2 << 20, logNumber: 4, pool: pool)
        oversized!.add(1, .value, [1], [1])
        oversized = nil
        #expect(pool.count == 0, "an arena over maxCapacity was kept")
    }

    // MARK: Concurrency

    static let writes = 200_000

    /// The key inserted at step i: a permutation of 0..<writes, so inserts land all over the list.
    static func keyID(_ step: Int) -> Int { step &* 7919 % 1_000_003 }
    static func key(_ id: Int) -> [UInt8] { Array("k\(padded(id, 7))".utf8) }
    /// A value derived from the key, so a reader can tell a whole entry from a torn one.
    static func value(_ id: Int) -> [UInt8] {
        Array("v\(id)-".utf8) + [UInt8](repeating: UInt8(truncatingIfNeeded: id), count: id % 23)
    }
    static func id(of internalKey: UnsafeRawBufferPointer) -> Int? {
        let user = userKey(internalKey)
        guard user.count == 8, user[0] == UInt8(ascii: "k") else { return nil }
        return Int(String(decoding: user.dropFirst(), as: UTF8.self))
    }

    final class Shared: Sendable {
        let published = Atomic<Int>(0)
        let writerDone = Atomic<Bool>(false)
        let failures = Mutex<[String]>([])
        let passes = Atomic<Int>(0)
        func fail(_ message: String) { failures.withLock { if $0.count < 20 { $0.append(message) } } }
    }

    @Test(arguments: [false, true]) func oneWriterTwoReaders(hashIndex: Bool) {
        let seed = testSeed()
        let table = MemTable(capacityBytes: 64 << 20, logNumber: 1, seed: seed, hashIndex: hashIndex)
        let shared = Shared()
        let group = DispatchGroup()

        group.enter()
        Thread {
            for step in 0..<Self.writes {
                let id = Self.keyID(step)
                table.add(SequenceNumber(step + 1), .value, Self.key(id), Self.value(id))
                shared.published.store(step + 1, ordering: .releasing)
            }
            shared.writerDone.store(true, ordering: .releasing)
            group.leave()
        }.start()

        for reader in 0..<2 {
            group.enter()
            Thread {
                var rng = SeededRandom(seed: seed &+ UInt64(reader))
                var last = false
                while !last {
                    last = shared.writerDone.load(ordering: .acquiring)
                    let before = shared.published.load(ordering: .acquiring)
                    // A full scan: sorted, whole entries, at least everything published before it.
                    let iterator = table.makeIterator()
                    iterator.seekToFirst()
                    var previous: [UInt8]? = nil
                    var count = 0
                    while iterator.isValid {
                        let key = iterator.key
                        if let previous, previous.withUnsafeBytes({ compareInternalKeys($0, key) }) >= 0 {
                            shared.fail("reader \(reader): keys out of order after \(count) entries")
                            break
                        }
                        guard let id = Self.id(of: key), Array(iterator.value) == Self.value(id),
                            MoraineFormat.sequence(key) >= 1, valueType(key) == .value
                        else {
                            shared.fail("reader \(reader): malformed entry \(Array(key)) at \(count)")
                            break
                        }
                        previous = Array(key)
                        count += 1
                        iterator.next()
                    }
                    if count < before {
                        shared.fail("reader \(reader): scan saw \(count) entries, \(before) were published")
                    }
                    if last && count != Self.writes {
                        shared.fail("reader \(reader): final scan saw \(count) of \(Self.writes)")
                    }
                    // Point lookups of published keys, and a few seeks.
                    let published = shared.published.load(ordering: .acquiring)
                    for _ in 0..<2000 where published > 0 {
                        let id = Self.keyID(Int.random(in: 0..<published, using: &rng))
                        let got = table.get(Self.key(id), maxSequenceNumber)
                        if got != .found(Self.value(id)) {
                            shared.fail("reader \(reader): get of published key \(id) gave \(got)")
                        }
                        let target = makeInternalKey(Self.key(id), maxSequenceNumber, .forSeek)
                        target.withUnsafeBytes { iterator.seek($0) }
                        if !iterator.isValid || Self.id(of: iterator.key) != id {
                            shared.fail("reader \(reader): seek to published key \(id) missed")
                        }
                    }
                    shared.passes.add(1, ordering: .relaxed)
                }
                group.leave()
            }.start()
        }
        group.wait()
        let failures = shared.failures.withLock { $0 }
        #expect(failures.isEmpty, "seed \(seed): \(failures)")
        #expect(table.entryCount == Self.writes, "seed \(seed)")
        #expect(shared.passes.load(ordering: .relaxed) >= 2, "seed \(seed): readers made no passes")
    }
}
