// The storage node's operations, one per opcode (docs/STORAGE.md says what each accepts and
// answers). Every one checks its names first; every mutation checks the lease epoch next.
import MoraineMessages
import MoraineSystem
import MoraineTransport

#if canImport(Glibc)
    import Glibc
#endif

extension StorageNode {
    // MARK: Writing

    func create(_ request: StorageCreate) throws(TransportError) -> Payload {
        let root = try StorageName.check(request.file)
        try leases.checkMutation(root, epoch: request.epoch)
        forget(request.file)
        let path = try path(request.file)
        let file = try perform {
            request.exclusive ? try files.createNew(path, hint: .log) : try files.createWritable(path, hint: .log)
        }
        writers.withLock { $0[request.file] = WriterSlot(file: file, sizeBytes: 0) }
        return .bytes([])
    }

    func append(_ request: StorageAppend) throws(TransportError) -> Payload {
        let root = try StorageName.check(request.file)
        try leases.checkMutation(root, epoch: request.epoch)
        // After the lease check: a stale owner's append is told it is fenced, and leaves the
        // failure to the writer it belongs to.
        if let failure = quietFailures.withLock({ $0.isEmpty ? nil : $0.removeValue(forKey: request.file) }) {
            throw failure
        }
        let slot = try writer(request.file)
        let reply = try slot.lock.withLock { () throws(TransportError) -> StorageAppendReply in
            try resume(slot, request)
            guard let file = slot.file else { throw TransportError(.closed, "\(request.file) was closed") }
            let count = UInt64(request.bytes.count)
            let (end, overflow) = request.offset.addingReportingOverflow(count)
            guard !overflow else { throw TransportError(.invalid, "append to \(request.file): offset and length overflow") }
            guard request.offset <= slot.sizeBytes else {
                throw TransportError(
                    .invalid,
                    "append to \(request.file) at offset \(request.offset), but the file has \(slot.sizeBytes) bytes (a gap)")
            }
            // Bytes already taken (a retry after a lost reply) must be the same bytes; deferred
            // ones are written first, so the file holds what is compared.
            let overlap = Int(min(end, slot.sizeBytes) - request.offset)
            if overlap > 0 {
                try writeDeferred(slot, file, request.file)
                try checkWritten(request, count: overlap)
            }
            let fresh = request.bytes.count - overlap
            do throws(TransportError) {
                try perform {
                    if fresh > 0 {
                        try request.bytes.withUnsafeBytes { try file.append(UnsafeRawBufferPointer(rebasing: $0[overlap...])) }
                    }
                    switch request.mode {
                    case .sync: try file.sync()
                    case .write: try file.flush()
                    case .deferred: break
                    }
                }
            } catch {
                fail(slot, request.file, error)
                throw error
            }
            slot.sizeBytes += UInt64(fresh)
            if request.mode == .deferred {
                if slot.writtenBytes < slot.sizeBytes { deferredSlots.withLock { $0[request.file] = slot } }
            } else {
                slot.writtenBytes = slot.sizeBytes
            }
            return StorageAppendReply(sizeBytes: slot.sizeBytes, writtenBytes: slot.writtenBytes)
        }
        return .bytes(reply.encoded())
    }

    /// Writes what deferred appends left in the slot's buffer. Precondition: the slot's lock.
    /// - Throws: the write's failure, after failing the slot.
    func writeDeferred(_ slot: WriterSlot, _ file: any WritableFile, _ name: StorageFile) throws(TransportError) {
        guard slot.writtenBytes < slot.sizeBytes else { return }
        do throws(TransportError) {
            try perform { try file.flush() }
        } catch {
            fail(slot, name, error)
            throw error
        }
        slot.writtenBytes = slot.sizeBytes
    }

    /// Writes every deferred append (the router's `drained`: a connection ran what it had). A
    /// failure fails its file's slot; the writer's next append hears it.
    func writeAllDeferred() {
        let slots = deferredSlots.withLock { table -> [(StorageFile, WriterSlot)] in
            defer { table.removeAll(keepingCapacity: true) }
            return table.map { ($0.key, $0.value) }
        }
        for (name, slot) in slots {
            slot.lock.withLock {
                guard let file = slot.file else { return }
                try? writeDeferred(slot, file, name)  // a failure stays in the slot
            }
        }
    }

    /// Writes the deferred appends of `name`, if it has any, before it is read or stat'ed.
    func writeDeferred(of name: StorageFile) {
        guard let slot = deferredSlots.withLock({ $0[name] }) else { return }
        slot.lock.withLock {
            guard let file = slot.file else { return }
            try? writeDeferred(slot, file, name)  // a failure stays in the slot
        }
    }

    /// After a write that failed (ENOSPC, EIO), which may have left part of its bytes: the file
    /// is cut back to what was written and acknowledged as written, and the handle dropped, so
    /// an append applies whole or not at all. The slot stays in the table, failed, until the
    /// writer sends again from its written mark (`resume`). Precondition: the slot's lock.
    private func fail(_ slot: WriterSlot, _ name: StorageFile, _ error: TransportError) {
        if let path = try? path(name) { _ = truncate(path, off_t(slot.writtenBytes)) }
        slot.file = nil
        slot.sizeBytes = slot.writtenBytes
        slot.failure = error
        deferredSlots.withLock { table in
            if table[name] === slot { table.removeValue(forKey: name) }
        }
    }

    /// Takes up a failed slot again for an append that starts at or before the written mark: the
    /// writer sending again what the failure cut off (it keeps every byte past the mark). An
    /// append past the mark was published before the writer heard of the failure: it hears it
    /// now, and the file stays failed (were it taken up, that append would find a gap, and the
    /// writer a refusal in place of the failure it can recover from). Precondition: the slot's
    /// lock.
    private func resume(_ slot: WriterSlot, _ request: StorageAppend) throws(TransportError) {
        guard let failure = slot.failure else { return }
        guard request.offset <= slot.writtenBytes else { throw failure }
        let opened = try perform { try files.openForAppend(try path(request.file), hint: .log) }
        slot.file = opened
        slot.sizeBytes = opened.size
        slot.writtenBytes = opened.size
        slot.failure = nil
    }

    /// Compares the first `count` bytes of an append with what the file holds at its offset.
    private func checkWritten(_ request: StorageAppend, count: Int) throws(TransportError) {
        let path = try path(request.file)
        let existing = try perform { () throws -> [UInt8] in
            let reader = try files.openRandomAccess(path)
            var bytes = [UInt8](repeating: 0, count: count)
            let got = try bytes.withUnsafeMutableBytes { try reader.read(at: request.offset, into: $0) }
            return Array(bytes[0..<got])
        }
        guard existing.count == count, existing[...] == request.bytes[0..<count] else {
            throw TransportError(
                .invalid,
                "append to \(request.file) at offset \(request.offset) overlaps \(count) written bytes with different ones")
        }
    }

    func sync(_ request: StorageFileMutation) throws(TransportError) -> Payload {
        let root = try StorageName.check(request.file)
        try leases.checkMutation(root, epoch: request.epoch)
        let slot = try writer(request.file)
        try slot.lock.withLock { () throws(TransportError) in
            if let failure = slot.failure { throw failure }
            guard let file = slot.file else { throw TransportError(.closed, "\(request.file) was closed") }
            try writeDeferred(slot, file, request.file)
            try perform { try file.sync() }
        }
        return .bytes([])
    }

    func close(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.check(request.file)
        let slot = writers.withLock { $0.removeValue(forKey: request.file) }
        if let slot {
            try slot.lock.withLock { () throws(TransportError) in
                if let failure = slot.failure { throw failure }
                let file = slot.file
                slot.file = nil
                try perform { try file?.close() }
            }
        }
        return .bytes([])
    }

    /// The slot of a file being written; a file written before a restart is taken up again.
    private func writer(_ file: StorageFile) throws(TransportError) -> WriterSlot {
        if let slot = writers.withLock({ $0[file] }) { return slot }
        let path = try path(file)
        let opened = try perform { try files.openForAppend(path, hint: .log) }
        return writers.withLock { table in
            if let raced = table[file] { return raced }
            let slot = WriterSlot(file: opened, sizeBytes: opened.size)
            table[file] = slot
            return slot
        }
    }

    /// Drops the cached handles of `file` (before it is created, removed or renamed over).
    func forget(_ file: StorageFile) {
        let slot = writers.withLock { $0.removeValue(forKey: file) }
        if let slot { slot.lock.withLock { try? slot.file?.close() } }
        _ = deferredSlots.withLock { $0.removeValue(forKey: file) }
        _ = quietFailures.withLock { $0.removeValue(forKey: file) }
        _ = readers.withLock { $0.removeValue(forKey: file) }
        wireReaders.withLock { $0.removeAll(keepingCapacity: true) }
    }

    // MARK: Reading

    func read(_ request: StorageRead) throws(TransportError) -> Payload {
        _ = try StorageName.check(request.file)
        try Self.checkReadLength(request.length)
        return try read(try reader(request.file), at: request.offset, length: request.length)
    }

    /// A read request as it came off the wire. A file read before is found by the request's
    /// bytes that name it, without decoding or checking its name again (the decoding and the
    /// checks were a fifth of the node's time per read); any other request takes the full path.
    func read(encoded bytes: [UInt8]) throws(TransportError) -> Payload {
        let key = WireFileKey(readRequest: bytes)
        if let key, deferredSlots.withLock({ $0.isEmpty }), let slot = wireReaders.withLock({ $0[key] }) {
            return try read(slot.file, at: key.offset, length: key.length)
        }
        do {
            let request = try StorageRead.decode(bytes)
            _ = try StorageName.check(request.file)
            try Self.checkReadLength(request.length)
            let file = try reader(request.file)
            if let key {
                wireReaders.withLock { table in
                    if table.count >= Self.readersMax { table.removeAll(keepingCapacity: true) }
                    table[key] = ReaderSlot(file: file)
                }
            }
            return try read(file, at: request.offset, length: request.length)
        }
    }

    private static func checkReadLength(_ length: UInt32) throws(TransportError) {
        guard Int(length) <= readBytesMax else {
            throw TransportError(.invalid, "read of \(length) bytes passes \(readBytesMax)")
        }
    }

    private func read(_ file: any RandomAccessFile, at offset: UInt64, length: UInt32) throws(TransportError) -> Payload {
        try Self.checkReadLength(length)
        let bytes = try perform { () throws -> [UInt8] in
            try [UInt8](unsafeUninitializedCapacity: Int(length)) { buffer, count in
                count = 0
                count = try file.read(at: offset, into: UnsafeMutableRawBufferPointer(buffer))
            }
        }
        return .bytes(bytes)
    }

    func readBatch(_ request: StorageReadBatch) throws(TransportError) -> Payload {
        let total = request.reads.reduce(0) { $0 + Int($1.length) }
        guard total <= Self.readBytesMax else {
            throw TransportError(.invalid, "a read batch of \(total) bytes passes \(Self.readBytesMax)")
        }
        var results = [Result<[UInt8], TransportError>](repeating: .success([]), count: request.reads.count)
        var batch: [BatchRead] = []
        var slots: [Int] = []
        let arena = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, total), alignment: 16)
        defer { arena.deallocate() }
        var offset = 0
        for (index, read) in request.reads.enumerated() {
            do {
                _ = try StorageName.check(read.file)
                let file = try reader(read.file)
                let buffer = UnsafeMutableRawBufferPointer(rebasing: arena[offset..<offset + Int(read.length)])
                batch.append(BatchRead(file: file, offset: read.offset, buffer: buffer))
                slots.append(index)
                offset += Int(read.length)
            } catch {
                results[index] = .failure(error)
            }
        }
        batch.withUnsafeMutableBufferPointer { files.read(batch: $0) }  // one submission
        for (done, index) in zip(batch, slots) {
            if let error = done.error {
                results[index] = .failure(TransportError(error))
            } else {
                results[index] = .success(Array(UnsafeRawBufferPointer(rebasing: done.buffer[0..<done.bytesRead])))
            }
        }
        return .bytes(StorageReadBatchReply(results: results).encoded())
    }

    func readAll(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.check(request.file)
        writeDeferred(of: request.file)
        let path = try path(request.file)
        let size = try perform { try files.fileSize(path) }
        guard size <= UInt64(Self.readBytesMax) else {
            throw TransportError(.invalid, "\(request.file) has \(size) bytes; read-all takes at most \(Self.readBytesMax)")
        }
        return .bytes(try perform { try files.readAll(path) })
    }

    /// A cached read handle of `file`, opened on first use.
    private func reader(_ file: StorageFile) throws(TransportError) -> any RandomAccessFile {
        writeDeferred(of: file)
        if let slot = readers.withLock({ $0[file] }) { return slot.file }
        let path = try path(file)
        // A table on a persistent-memory tier is served by loads from a mapping (tables are
        // whole and never change once a reader may ask for them).
        let mapped = tierIndex(of: file.database).map { tiers[$0].mapped } ?? false
        let opened = try perform {
            if mapped { return try files.openMapped(path) }
            return directReads ? try files.openDirect(path) : try files.openRandomAccess(path)
        }
        readers.withLock { table in
            if table.count >= Self.readersMax { table.removeAll(keepingCapacity: true) }
            table[file] = ReaderSlot(file: opened)
        }
        return opened
    }

    // MARK: Names

    func statFile(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.check(request.file, allowDirectory: true)
        if !request.file.name.isEmpty { writeDeferred(of: request.file) }
        let path = try path(request.file)
        let reply: StorageStatReply
        if let status = fileStatus(path) {
            let isDirectory = status.st_mode & S_IFMT == S_IFDIR
            reply = StorageStatReply(kind: isDirectory ? .directory : .file, sizeBytes: UInt64(status.st_size))
        } else if errno == ENOENT || errno == ENOTDIR {
            reply = StorageStatReply(kind: .absent, sizeBytes: 0)
        } else {
            throw TransportError(.io, "stat \(request.file): \(String(cString: strerror(errno)))")
        }
        return .bytes(reply.encoded())
    }

    func list(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.checkDatabase(request.file.database)
        let path = try directoryPath(request.file.database)
        let names = try perform { try files.children(of: path) }
        return .bytes(StorageNames(names: names.sorted()).encoded())
    }

    func remove(_ request: StorageFileMutation) throws(TransportError) -> Payload {
        let root = try StorageName.check(request.file)
        try leases.checkMutation(root, epoch: request.epoch)
        forget(request.file)
        let path = try path(request.file)
        try perform { try files.remove(path) }
        return .bytes([])
    }

    func rename(_ request: StorageRename) throws(TransportError) -> Payload {
        let root = try StorageName.checkDatabase(request.database)
        guard try StorageName.checkDatabase(request.targetDatabase) == root else {
            throw TransportError(
                .invalid, "rename from \(request.database) into \(request.targetDatabase): both must be under one database")
        }
        try StorageName.checkFile(request.source)
        try StorageName.checkFile(request.target)
        try leases.checkMutation(root, epoch: request.epoch)
        let source = StorageFile(database: request.database, name: request.source)
        let target = StorageFile(database: request.targetDatabase, name: request.target)
        forget(source)
        forget(target)
        var directories: [String] = []
        for database in Set([request.database, request.targetDatabase]).sorted() { directories.append(try directoryPath(database)) }
        try perform {
            try files.rename(try path(source), to: try path(target))
            for directory in directories { try files.syncDirectory(directory) }
        }
        return .bytes([])
    }

    func createDirectory(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.checkDatabase(request.file.database)
        let path = try directoryPath(request.file.database)
        try perform { try files.createDirectory(path) }
        return .bytes([])
    }

    func syncDirectory(_ request: StorageFileQuery) throws(TransportError) -> Payload {
        _ = try StorageName.checkDatabase(request.file.database)
        let path = try directoryPath(request.file.database)
        try perform { try files.syncDirectory(path) }
        return .bytes([])
    }

    func capacity() throws(TransportError) -> Payload {
        var fs = statvfs()
        guard statvfs(dataDirectory, &fs) == 0 else {
            throw TransportError(.io, "statvfs \(dataDirectory): \(String(cString: strerror(errno)))")
        }
        let free = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        var used: UInt64 = 0
        var count: UInt64 = 0
        for database in (try? files.children(of: dataDirectory)) ?? [] where !database.hasPrefix(".") {
            let directory = dataDirectory + "/" + database
            for name in (try? files.children(of: directory)) ?? [] {
                if let size = try? files.fileSize(directory + "/" + name) {
                    used += size
                    count += 1
                }
            }
        }
        return .bytes(StorageCapacityReply(bytesUsed: used, bytesFree: free, fileCount: count).encoded())
    }

    /// The node's tiers with what each holds (the files under it) and has free.
    func tierReport() throws(TransportError) -> Payload {
        var reply = StorageTiersReply(tiers: [])
        for tier in tiers {
            var fs = statvfs()
            let free = statvfs(tier.path, &fs) == 0 ? UInt64(fs.f_bavail) * UInt64(fs.f_frsize) : 0
            var used: UInt64 = 0
            for database in (try? files.children(of: tier.path)) ?? [] where !database.hasPrefix(".") {
                for name in (try? files.children(of: tier.path + "/" + database)) ?? [] {
                    used += (try? files.fileSize(tier.path + "/" + database + "/" + name)) ?? 0
                }
            }
            reply.tiers.append(StorageTierInfo(budgetBytes: tier.budgetBytes ?? 0, mapped: tier.mapped, bytesUsed: used, bytesFree: free))
        }
        return .bytes(reply.encoded())
    }

    // MARK: Leases

    func acquireLease(_ request: StorageLease) throws(TransportError) -> Payload {
        let root = try StorageName.checkDatabase(request.database)
        guard !request.database.contains("/") else { throw TransportError(.invalid, "a lease is taken on a whole database") }
        let epoch = try leases.acquire(root, owner: request.owner, ttlMillis: request.ttlMillis)
        // A new owner starts clean: failures of a former owner's quiet appends are not its own.
        quietFailures.withLock { table in
            guard !table.isEmpty else { return }
            table = table.filter { (try? StorageName.check($0.key)) != root }
        }
        return .bytes(StorageLeaseReply(epoch: epoch, ttlMillis: min(request.ttlMillis, LeaseTable.ttlMillisMax)).encoded())
    }

    func renewLease(_ request: StorageLease) throws(TransportError) -> Payload {
        let root = try StorageName.checkDatabase(request.database)
        try leases.renew(root, owner: request.owner, epoch: request.epoch, ttlMillis: request.ttlMillis)
        return .bytes(StorageLeaseReply(epoch: request.epoch, ttlMillis: min(request.ttlMillis, LeaseTable.ttlMillisMax)).encoded())
    }

    func releaseLease(_ request: StorageLease) throws(TransportError) -> Payload {
        let root = try StorageName.checkDatabase(request.database)
        leases.release(root, epoch: request.epoch)
        return .bytes([])
    }
}
