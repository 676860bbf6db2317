// TLS for the TCP carrier (swift-nio-ssl). It encrypts and authenticates the channel; the cluster
// key handshake still runs inside it, so a node needs both the key and, for a client, a
// certificate chain it trusts. Files are PEM.
import NIOCore
import NIOSSL

/// TLS settings of a TCP server or client.
public struct TransportTLS: Sendable {
    /// The certificate chain this end presents (required for a server).
    public var certificateChainPath: String?
    /// Its private key (required for a server).
    public var privateKeyPath: String?
    /// Certificates a client trusts to have signed the server's (nil: the system's roots).
    public var trustRootsPath: String?
    /// Whether a client checks that the certificate names the host it connected to.
    public var verifyHostname = true
    /// For a server: certificates that must have signed every client's certificate. When set, a
    /// client without a certificate (`certificateChainPath` and `privateKeyPath` on its side)
    /// signed by one of them is refused during the TLS handshake (mutual TLS). Nil: clients need
    /// no certificate and are authenticated by the cluster key alone.
    public var clientTrustRootsPath: String?

    public init(
        certificateChainPath: String? = nil, privateKeyPath: String? = nil, trustRootsPath: String? = nil,
        verifyHostname: Bool = true, clientTrustRootsPath: String? = nil
    ) {
        self.certificateChainPath = certificateChainPath
        self.privateKeyPath = privateKeyPath
        self.trustRootsPath = trustRootsPath
        self.verifyHostname = verifyHostname
        self.clientTrustRootsPath = clientTrustRootsPath
    }

    func makeServerContext() throws(TransportError) -> TLSContext {
        guard let certificateChainPath, let privateKeyPath else {
            throw TransportError(.invalid, "a TLS server needs a certificate chain and a private key")
        }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificateChainPath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: privateKeyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
            if let clientTrustRootsPath {
                // A client certificate names no host the server could check against.
                configuration.trustRoots = .file(clientTrustRootsPath)
                configuration.certificateVerification = .noHostnameVerification
            }
            return TLSContext(context: try NIOSSLContext(configuration: configuration))
        } catch {
            throw TransportError(.invalid, "TLS server setup from \(certificateChainPath) and \(privateKeyPath): \(error)")
        }
    }

    func makeClientContext() throws(TransportError) -> TLSContext {
        do {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            if let trustRootsPath { configuration.trustRoots = .file(trustRootsPath) }
            configuration.certificateVerification = verifyHostname ? .fullVerification : .noHostnameVerification
            if let certificateChainPath, let privateKeyPath {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateChainPath).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: privateKeyPath, format: .pem))
            }
            return TLSContext(context: try NIOSSLContext(configuration: configuration))
        } catch {
            throw TransportError(.invalid, "TLS client setup: \(error)")
        }
    }
}

/// A built TLS context, shared by the connections of one server or client.
struct TLSContext: @unchecked Sendable {
    let context: NIOSSLContext

    func addServerHandler(to channel: Channel) throws {
        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
    }

    func addClientHandler(to channel: Channel, serverHostname: String) throws {
        let isAddress = serverHostname.allSatisfy { $0.isNumber || $0 == "." || $0 == ":" }
        try channel.pipeline.syncOperations.addHandler(
            try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : serverHostname))
    }
}
