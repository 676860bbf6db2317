// A VersionEdit is one change to the set of live tables (files added and removed per level) plus
// the counters that must survive a restart. The manifest is a log of encoded edits: a tag varint
// per field, then the field. Unknown tags are corruption, so an old binary never silently
// misreads a newer manifest. Value type.
import MoraineSystem

/// What the manifest records about one table file.
public struct TableFileInfo: Sendable, Equatable {
    public var number: UInt64
    public var sizeBytes: UInt64
    /// Smallest and largest internal keys.
    public var smallest: [UInt8]
    public var largest: [UInt8]
    public var smallestSequence: SequenceNumber
    public var largestSequence: SequenceNumber
    /// The storage tier holding the file: an index into the database's tiers, fastest first
    /// (0 where the database has one place for its tables).
    public var tier: Int

    /// The most tiers a database may have.
    public static let tiersMax = 8

    public init(
        number: UInt64, sizeBytes: UInt64, smallest: [UInt8], largest: [UInt8],
        smallestSequence: SequenceNumber, largestSequence: SequenceNumber, tier: Int = 0
    ) {
        self.number = number
        self.sizeBytes = sizeBytes
        self.smallest = smallest
        self.largest = largest
        self.smallestSequence = smallestSequence
        self.largestSequence = largestSequence
        self.tier = tier
    }
}

/// One change to the version set.
public struct VersionEdit: Sendable, Equatable {
    public var logNumber: UInt64? = nil
    public var nextFileNumber: UInt64? = nil
    public var lastSequence: SequenceNumber? = nil
    /// Per level, the key after which the next compaction of that level starts.
    public var compactPointers: [(level: Int, key: [UInt8])] = []
    public var deletedFiles: [(level: Int, number: UInt64)] = []
    public var newFiles: [(level: Int, file: TableFileInfo)] = []
    /// Output numbers reserved for jobs in flight: until released, a table numbered inside one
    /// that no version names is an unfinished job's output, and the next open deletes it.
    public var reservations: [Range<UInt64>] = []
    /// Reservations (by first number) whose jobs are installed or whose outputs are gone.
    public var releasedReservations: [UInt64] = []

    public init() {}

    public static func == (a: VersionEdit, b: VersionEdit) -> Bool {
        a.logNumber == b.logNumber && a.nextFileNumber == b.nextFileNumber
            && a.lastSequence == b.lastSequence
            && a.compactPointers.map(\.level) == b.compactPointers.map(\.level)
            && a.compactPointers.map(\.key) == b.compactPointers.map(\.key)
            && a.deletedFiles.map(\.level) == b.deletedFiles.map(\.level)
            && a.deletedFiles.map(\.number) == b.deletedFiles.map(\.number)
            && a.newFiles.map(\.level) == b.newFiles.map(\.level)
            && a.newFiles.map(\.file) == b.newFiles.map(\.file)
            && a.reservations == b.reservations && a.releasedReservations == b.releasedReservations
    }

    enum Tag: UInt64 {
        case logNumber = 2
        case nextFileNumber = 3
        case lastSequence = 4
        case compactPointer = 5
        case deletedFile = 6
        case newFile = 7
        case reservation = 8
        case releasedReservation = 9
        /// A new file outside tier 0: the fields of `newFile`, then the tier. Written only for
        /// such files, so a database with one tier keeps the manifest an older binary reads.
        case tieredNewFile = 10
    }

    public static let maxLevels = 7

    public func encode() -> [UInt8] {
        var out = [UInt8]()
        if let logNumber {
            out.appendVarint(Tag.logNumber.rawValue)
            out.appendVarint(logNumber)
        }
        if let nextFileNumber {
            out.appendVarint(Tag.nextFileNumber.rawValue)
            out.appendVarint(nextFileNumber)
        }
        if let lastSequence {
            out.appendVarint(Tag.lastSequence.rawValue)
            out.appendVarint(lastSequence)
        }
        for (level, key) in compactPointers {
            out.appendVarint(Tag.compactPointer.rawValue)
            out.appendVarint(UInt64(level))
            out.appendLengthPrefixed(key)
        }
        for (level, number) in deletedFiles {
            out.appendVarint(Tag.deletedFile.rawValue)
            out.appendVarint(UInt64(level))
            out.appendVarint(number)
        }
        for (level, file) in newFiles {
            out.appendVarint(file.tier == 0 ? Tag.newFile.rawValue : Tag.tieredNewFile.rawValue)
            out.appendVarint(UInt64(level))
            out.appendVarint(file.number)
            out.appendVarint(file.sizeBytes)
            out.appendLengthPrefixed(file.smallest)
            out.appendLengthPrefixed(file.largest)
            out.appendVarint(file.smallestSequence)
            out.appendVarint(file.largestSequence)
            if file.tier != 0 { out.appendVarint(UInt64(file.tier)) }
        }
        for range in reservations {
            out.appendVarint(Tag.reservation.rawValue)
            out.appendVarint(range.lowerBound)
            out.appendVarint(UInt64(range.count))
        }
        for first in releasedReservations {
            out.appendVarint(Tag.releasedReservation.rawValue)
            out.appendVarint(first)
        }
        return out
    }

    /// Parses an edit.
    /// - Throws: `.corruption` naming `origin` on an unknown tag, a bad level or short input.
    public static func decode(_ bytes: [UInt8], origin: String) throws -> VersionEdit {
        try bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw, what: "version edit in \(origin)")
            var edit = VersionEdit()
            func level() throws -> Int {
                let l = try reader.varint()
                guard l < UInt64(maxLevels) else {
                    throw MoraineError(.corruption, "level \(l) out of range in version edit in \(origin)")
                }
                return Int(l)
            }
            while !reader.isAtEnd {
                let tagValue = try reader.varint()
                guard let tag = Tag(rawValue: tagValue) else {
                    throw MoraineError(.corruption, "unknown version edit tag \(tagValue) in \(origin)")
                }
                switch tag {
                case .logNumber: edit.logNumber = try reader.varint()
                case .nextFileNumber: edit.nextFileNumber = try reader.varint()
                case .lastSequence: edit.lastSequence = try reader.varint()
                case .compactPointer:
                    edit.compactPointers.append((try level(), try reader.lengthPrefixed()))
                case .deletedFile:
                    edit.deletedFiles.append((try level(), try reader.varint()))
                case .newFile, .tieredNewFile:
                    let l = try level()
                    var file = TableFileInfo(
                        number: try reader.varint(), sizeBytes: try reader.varint(),
                        smallest: try reader.lengthPrefixed(), largest: try reader.lengthPrefixed(),
                        smallestSequence: try reader.varint(), largestSequence: try reader.varint())
                    if tag == .tieredNewFile {
                        let tier = try reader.varint()
                        guard tier > 0, tier < UInt64(TableFileInfo.tiersMax) else {
                            throw MoraineError(
                                .corruption, "table \(file.number) is on tier \(tier), outside 1..<\(TableFileInfo.tiersMax), in \(origin)")
                        }
                        file.tier = Int(tier)
                    }
                    guard file.smallest.count >= internalKeyTagBytes, file.largest.count >= internalKeyTagBytes else {
                        throw MoraineError(.corruption, "table \(file.number) has a malformed key range in \(origin)")
                    }
                    edit.newFiles.append((l, file))
                case .reservation:
                    let first = try reader.varint()
                    let count = try reader.varint()
                    guard count > 0, first <= UInt64.max - count else {
                        throw MoraineError(.corruption, "reservation of \(count) numbers from \(first) in \(origin)")
                    }
                    edit.reservations.append(first..<first + count)
                case .releasedReservation:
                    edit.releasedReservations.append(try reader.varint())
                }
            }
            return edit
        }
    }
}
