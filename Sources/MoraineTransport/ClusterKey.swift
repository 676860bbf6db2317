// The secret every node of a cluster shares. It lives in a file only its owner may read
// (mode 0600 or stricter); a key file that group or others can read is refused, as ssh refuses
// such a private key, because anyone who reads it can join the cluster.
import Crypto
import MoraineSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A cluster key: at least 16 bytes of secret.
public struct ClusterKey: Sendable {
    /// The shortest key accepted.
    public static let minimumBytes = 16
    private let secret: [UInt8]
    var symmetricKey: SymmetricKey { SymmetricKey(data: secret) }

    /// A key from raw bytes (tests, or a key already in memory).
    /// - Throws: `.invalid` when shorter than `minimumBytes`.
    public init(bytes: [UInt8]) throws(TransportError) {
        guard bytes.count >= Self.minimumBytes else {
            throw TransportError(.invalid, "cluster key of \(bytes.count) bytes; at least \(Self.minimumBytes) needed")
        }
        secret = bytes
    }

    /// Reads a key file: its bytes, without a trailing newline. The file is opened without
    /// blocking and checked through its descriptor, so a FIFO, a device or a directory given
    /// by mistake is refused at once instead of hanging the start or reading as empty.
    /// - Throws: `.notFound`, `.invalid` when it is not a regular file, when group or others
    ///   may read or write it, or when it is too short or too long.
    public static func load(path: String) throws(TransportError) -> ClusterKey {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let code = errno
            throw TransportError(
                code == ENOENT ? .notFound : .invalid, "cluster key file \(path): \(String(cString: strerror(code)))")
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            throw TransportError(.invalid, "cluster key file \(path): \(String(cString: strerror(errno)))")
        }
        let kind = status.st_mode & S_IFMT
        guard kind != S_IFDIR else {
            throw TransportError(.invalid, "cluster key file \(path) is a directory; give the key file inside it")
        }
        guard kind == S_IFREG else {
            let name =
                switch kind {
                case S_IFIFO: "a FIFO"
                case S_IFSOCK: "a socket"
                case S_IFCHR, S_IFBLK: "a device"
                default: "not a regular file"
                }
            throw TransportError(.invalid, "cluster key file \(path) is \(name); a key must be a regular file")
        }
        guard status.st_mode & 0o077 == 0 else {
            throw TransportError(
                .invalid,
                "cluster key file \(path) has mode \(String(status.st_mode & 0o777, radix: 8)); it must be 0600")
        }
        guard status.st_size <= 4096 else {
            throw TransportError(.invalid, "cluster key file \(path) is \(status.st_size) bytes; a key is at most 4096")
        }
        var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
        var count = 0
        while count < bytes.count {
            let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if got < 0 && errno == EINTR { continue }
            guard got >= 0 else {
                throw TransportError(.io, "cannot read cluster key file \(path): \(String(cString: strerror(errno)))")
            }
            if got == 0 { break }
            count += got
        }
        bytes.removeLast(bytes.count - count)
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        return try ClusterKey(bytes: bytes)
    }

    /// Writes a new random key (64 hex characters) to `path` with mode 0600.
    /// - Throws: `.invalid` when the file exists.
    public static func generate(path: String) throws(TransportError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else {
            throw TransportError(.invalid, "cannot create cluster key file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var generator = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef".utf8)
        var text = (0..<64).map { _ in hex[Int.random(in: 0..<16, using: &generator)] }
        text.append(0x0A)
        guard write(fd, text, text.count) == text.count else {
            throw TransportError(.io, "cannot write cluster key file \(path): \(String(cString: strerror(errno)))")
        }
        fsync(fd)
    }
}
