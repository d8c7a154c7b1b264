#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 address and port, as rdma_cm binds, listens and connects on them (RoCEv2 over IPv4).
public struct IPv4Endpoint: Sendable, Hashable, CustomStringConvertible {
    /// Dotted-quad text, validated.
    public let address: String
    public let port: UInt16

    /// Fails with a clear error when `address` is not a dotted IPv4 address.
    public init(_ address: String, port: UInt16 = 0) throws(VerbsError) {
        var parsed = in_addr()
        guard inet_pton(AF_INET, address, &parsed) == 1 else {
            throw VerbsError(call: "inet_pton", errno: EINVAL, detail: "'\(address)' is not an IPv4 address")
        }
        self.address = address
        self.port = port
    }

    init(_ storage: sockaddr_in) {
        var addr = storage.sin_addr
        var text = [UInt8](repeating: 0, count: Int(INET_ADDRSTRLEN))
        text.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { _ = inet_ntop(AF_INET, &addr, $0.baseAddress, socklen_t($0.count)) }
        }
        self.address = String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
        self.port = UInt16(bigEndian: storage.sin_port)
    }

    var sockaddr: sockaddr_in {
        var storage = sockaddr_in()
        storage.sin_family = sa_family_t(AF_INET)
        storage.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &storage.sin_addr)
        return storage
    }

    public var description: String { "\(address):\(port)" }
}
