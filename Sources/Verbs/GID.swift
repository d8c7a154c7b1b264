import CShims

/// A 128-bit global identifier of a port, as in the port's GID table.
///
/// On RoCE an IPv4 address appears as an IPv4-mapped IPv6 GID (`::ffff:192.0.2.1`); on rxe that is
/// GID index 1 and up, while index 0 is the IPv6 link-local one.
public struct GID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes in network order.
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16, "a GID is 16 bytes")
        self.bytes = bytes
    }

    init(_ raw: ibv_gid) {
        var raw = raw
        self.bytes = withUnsafeBytes(of: &raw) { Array($0) }
    }

    var raw: ibv_gid {
        var raw = ibv_gid()
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: bytes) }
        return raw
    }

    /// True for the all-zero GID, an unused table entry.
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    /// The IPv4 address, when this GID is IPv4-mapped (`::ffff:a.b.c.d`).
    public var ipv4Address: String? {
        guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff else { return nil }
        return bytes[12..<16].map(String.init).joined(separator: ".")
    }

    /// The IPv6 text form, or the dotted IPv4 form for an IPv4-mapped GID.
    public var description: String {
        if let ipv4Address { return "::ffff:\(ipv4Address)" }
        var groups: [String] = []
        for i in stride(from: 0, to: 16, by: 2) {
            groups.append(String(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]), radix: 16))
        }
        return groups.joined(separator: ":")
    }
}

/// One entry of a port's GID table.
public struct GIDEntry: Hashable, Sendable {
    public let index: Int
    public let gid: GID
}
