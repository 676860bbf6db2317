// The OPTIONS file: the options in force at an open, written into the database directory as
// RocksDB writes its OPTIONS-NNNNNN (an INI-like text: sections, then `name=value` lines, with
// RocksDB's option names), so an operator sees what a database ran with, and a later open can
// start from it (`moraine … --options_file PATH`, or `OptionsFile.apply` in Swift).
//
// Each writable open writes `OPTIONS-NNNNNN` (a number from the database's file counter) through
// a temporary file, a sync and a rename, and removes all but the two newest. Only the options
// that shape the database are written: the file system, job runner, memory node and caches a
// process attaches are not options of the database.
//
// Parsing is strict: an unknown name, a value that does not parse or a line that is neither a
// section nor `name=value` is an `invalid` error naming the file and the line. Comments (`#`)
// and blank lines are skipped, and so is the `[Version]` section.
import MoraineFormat
import MoraineSystem

/// Reads and writes the OPTIONS file's text.
public enum OptionsFile {
    /// How many OPTIONS files an open keeps.
    static let kept = 2

    /// The text of an OPTIONS file for `options`.
    public static func render(_ options: Options) -> String {
        var lines = ["# Moraine options file: the options in force when the database was opened.", "", "[Version]", "  options_file_version=1", ""]
        lines.append("[DBOptions]")
        for (name, field) in fields where field.section == .database { lines.append("  \(name)=\(field.get(options))") }
        lines.append("")
        lines.append("[CFOptions \"default\"]")
        for (name, field) in fields where field.section == .family { lines.append("  \(name)=\(field.get(options))") }
        lines.append("")
        lines.append("[TableOptions/BlockBasedTable \"default\"]")
        for (name, field) in fields where field.section == .table { lines.append("  \(name)=\(field.get(options))") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Sets in `options` every option `text` names. `name` is the file's name, for errors.
    /// - Throws: `invalid` naming the line that is wrong.
    public static func apply(_ text: String, to options: inout Options, name: String) throws {
        var inVersion = false
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw MoraineError(.invalid, "\(name) line \(index + 1): an unclosed section: \(line)") }
                inVersion = line == "[Version]"
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw MoraineError(.invalid, "\(name) line \(index + 1): not name=value: \(line)")
            }
            if inVersion { continue }
            let key = String(line[..<equals]).trimmingSpaces()
            let value = String(line[line.index(after: equals)...]).trimmingSpaces()
            guard let field = fields.first(where: { $0.name == key })?.field else {
                throw MoraineError(.invalid, "\(name) line \(index + 1): unknown option \(key)")
            }
            guard field.set(&options, value) else {
                throw MoraineError(.invalid, "\(name) line \(index + 1): \(key)=\(value) is not a valid value")
            }
        }
    }

    // MARK: the options

    enum Section: Sendable { case database, family, table }

    struct Field: Sendable {
        let section: Section
        let get: @Sendable (Options) -> String
        let set: @Sendable (inout Options, String) -> Bool
    }

    static func int(_ section: Section, _ path: WritableKeyPath<Options, Int> & Sendable, minimum: Int = 0) -> Field {
        Field(section: section, get: { "\($0[keyPath: path])" }) { options, text in
            guard let value = Int(text), value >= minimum else { return false }
            options[keyPath: path] = value
            return true
        }
    }

    static func bool(_ section: Section, _ path: WritableKeyPath<Options, Bool> & Sendable) -> Field {
        Field(section: section, get: { "\($0[keyPath: path])" }) { options, text in
            guard let value = Bool(text) else { return false }
            options[keyPath: path] = value
            return true
        }
    }

    static let fields: [(name: String, field: Field)] = [
        ("max_background_jobs", int(.database, \.maxBackgroundJobs, minimum: 1)),
        ("max_manifest_file_size", int(.database, \.maxManifestFileSize, minimum: 1)),
        ("max_open_files", int(.database, \.maxOpenFiles, minimum: 1)),
        ("allow_mmap_reads", bool(.database, \.allowMmapReads)),
        ("use_direct_reads", bool(.database, \.useDirectReads)),
        (
            "wal_recovery_mode",
            Field(section: .database, get: { $0.walRecoveryMode.rawValue }) { options, text in
                guard let mode = LogRecoveryMode(rawValue: text) else { return false }
                options.walRecoveryMode = mode
                return true
            }
        ),
        (
            "durability",
            Field(section: .database, get: { $0.durability.rawValue }) { options, text in
                guard let durability = Durability(rawValue: text) else { return false }
                options.durability = durability
                return true
            }
        ),
        ("max_key_size", int(.database, \.maxKeySize, minimum: 1)),
        ("max_value_size", int(.database, \.maxValueSize, minimum: 1)),
        ("write_buffer_size", int(.family, \.writeBufferSize, minimum: 4096)),
        ("memtable_hash_index", bool(.family, \.memtableHashIndex)),
        ("memtable_huge_pages", bool(.family, \.memtableHugePages)),
        ("max_write_buffer_number", int(.family, \.maxWriteBufferNumber, minimum: 2)),
        ("level0_file_num_compaction_trigger", int(.family, \.level0FileNumCompactionTrigger, minimum: 1)),
        ("level0_slowdown_writes_trigger", int(.family, \.level0SlowdownWritesTrigger, minimum: 1)),
        ("level0_stop_writes_trigger", int(.family, \.level0StopWritesTrigger, minimum: 1)),
        ("target_file_size_base", int(.family, \.targetFileSizeBase, minimum: 1)),
        ("max_bytes_for_level_base", int(.family, \.maxBytesForLevelBase, minimum: 1)),
        (
            "max_bytes_for_level_multiplier",
            Field(section: .family, get: { "\($0.maxBytesForLevelMultiplier)" }) { options, text in
                guard let value = Double(text), value > 1 else { return false }
                options.maxBytesForLevelMultiplier = value
                return true
            }
        ),
        ("disable_auto_compactions", bool(.family, \.disableAutoCompactions)),
        (
            "compression",
            Field(section: .family, get: { $0.compression == .lz4 ? "kLZ4Compression" : "kNoCompression" }) { options, text in
                switch text {
                case "kLZ4Compression", "lz4": options.compression = .lz4
                case "kNoCompression", "none": options.compression = .none
                default: return false
                }
                return true
            }
        ),
        ("block_size", int(.table, \.blockSize, minimum: 256)),
        ("block_restart_interval", int(.table, \.blockRestartInterval, minimum: 1)),
        ("bloom_bits_per_key", int(.table, \.bloomBitsPerKey)),
        ("block_cache_size", int(.table, \.blockCacheSize)),
        ("row_cache_size", int(.database, \.rowCacheSize)),
    ]
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        String(drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}

extension Engine {
    /// Writes this open's OPTIONS file (temporary file, sync, rename) and removes all but the
    /// newest `OptionsFile.kept`. A failure is written to the LOG, not thrown: the file is for
    /// the operator, and the database is open either way.
    func writeOptionsFile() {
        let number = versions.newFileNumber()
        let temporary = path(.temporary(number))
        do {
            let file = try fileSystem.createWritable(temporary)
            try Array(OptionsFile.render(options).utf8).withUnsafeBytes { try file.append($0) }
            try file.sync()
            try file.close()
            try fileSystem.rename(temporary, to: path(.options(number)))
            let written = try fileSystem.children(of: path).compactMap { name -> UInt64? in
                if case .options(let n) = DatabaseFile(name: name) { n } else { nil }
            }.sorted()
            for old in written.dropLast(OptionsFile.kept) { try? fileSystem.remove(path(.options(old))) }
            event("options written to \(DatabaseFile.options(number).name)")
        } catch {
            try? fileSystem.remove(temporary)
            event("could not write \(DatabaseFile.options(number).name): \(error)")
        }
    }
}
