/// The kind of network a NID lives on (`lo`, `tcp`, `o2ib`, ...).
///
/// The raw values are the Lustre LND type numbers so that the 64-bit wire encoding of a NID
/// (`network << 32 | address`, with `network = type << 16 | number`) matches Lustre's classic NID layout.
public struct LNetNetworkType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Socket LND (`tcp`).
    public static let tcp = LNetNetworkType(rawValue: 2)
    /// InfiniBand / RoCE RDMA LND (`o2ib`).
    public static let o2ib = LNetNetworkType(rawValue: 5)
    /// Loopback (`lo`): messages to self.
    public static let loopback = LNetNetworkType(rawValue: 9)

    private static let names: [(String, LNetNetworkType)] = [("tcp", .tcp), ("o2ib", .o2ib), ("lo", .loopback)]

    /// The type for a textual name such as `o2ib`, or `nil` if the name is unknown.
    public init?(name: String) {
        guard let match = Self.names.first(where: { $0.0 == name }) else { return nil }
        self = match.1
    }

    /// The textual name (`o2ib`), or `type<N>` for a type this build does not know.
    public var name: String {
        Self.names.first(where: { $0.1 == self })?.0 ?? "type\(rawValue)"
    }

    public var description: String { name }

    /// Whether addresses on this network are IPv4 addresses written in dotted-quad form.
    public var usesIPv4Addresses: Bool { self == .tcp || self == .o2ib }
}

/// A network: a type plus a number (`o2ib` is `o2ib0`, `o2ib1` is a second IB network, `lo` is `lo0`).
public struct LNetNetwork: Hashable, Sendable, CustomStringConvertible {
    public var type: LNetNetworkType
    public var number: UInt16

    public init(type: LNetNetworkType, number: UInt16 = 0) {
        self.type = type
        self.number = number
    }

    /// The loopback network `lo`.
    public static let loopback = LNetNetwork(type: .loopback)
    /// The first InfiniBand network `o2ib`.
    public static let o2ib = LNetNetwork(type: .o2ib)

    /// Parses `o2ib`, `o2ib1`, `tcp0`, `lo`.
    public init(parsing text: some StringProtocol) throws(LNetError) {
        let text = String(text)
        // The number is the trailing run of digits ("o2ib1" is o2ib number 1; "o2ib" has none).
        let digits = text.reversed().prefix(while: { $0.isASCII && $0.isNumber }).reversed()
        let letters = text.dropLast(digits.count)
        guard !letters.isEmpty, let type = LNetNetworkType(name: String(letters)) else {
            throw LNetError.invalidNetwork(text: text, reason: "unknown network type '\(letters)' (expected one of lo, tcp, o2ib)")
        }
        var number: UInt16 = 0
        if !digits.isEmpty {
            guard let value = UInt16(String(digits)) else {
                throw LNetError.invalidNetwork(text: text, reason: "network number '\(digits)' is not a number in 0...65535")
            }
            number = value
        }
        if type == .loopback && number != 0 {
            throw LNetError.invalidNetwork(text: text, reason: "the loopback network has no number")
        }
        self.init(type: type, number: number)
    }

    /// `o2ib`, `o2ib1`, `lo`.
    public var description: String { number == 0 ? type.name : "\(type.name)\(number)" }

    /// The 32-bit network value used in the 64-bit NID encoding.
    public var rawValue: UInt32 { UInt32(type.rawValue) << 16 | UInt32(number) }

    public init(rawValue: UInt32) {
        self.init(type: LNetNetworkType(rawValue: UInt16(truncatingIfNeeded: rawValue >> 16)),
                  number: UInt16(truncatingIfNeeded: rawValue))
    }
}

/// A network identifier: an address on a network, written `ADDRESS@NET` (`192.0.2.1@o2ib`, `0@lo`).
///
/// The wire form is 64 bits: the network (`type << 16 | number`) in the high 32 bits and the address in the low 32 bits.
public struct NID: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// The address within the network: an IPv4 address in host order for `tcp`/`o2ib`, `0` for `lo`.
    public var address: UInt32
    public var network: LNetNetwork

    public init(address: UInt32, network: LNetNetwork) {
        self.address = address
        self.network = network
    }

    /// `0@lo`, the loopback NID.
    public static let loopback = NID(address: 0, network: .loopback)
    /// The wildcard NID used in match-entry source filters (`LNET_NID_ANY`).
    public static let any = NID(rawValue: .max)

    /// Whether this is the wildcard NID.
    public var isAny: Bool { rawValue == .max }

    /// The 64-bit wire encoding.
    public var rawValue: UInt64 { UInt64(network.rawValue) << 32 | UInt64(address) }

    public init(rawValue: UInt64) {
        self.init(address: UInt32(truncatingIfNeeded: rawValue),
                  network: LNetNetwork(rawValue: UInt32(truncatingIfNeeded: rawValue >> 32)))
    }

    /// Parses `192.0.2.1@o2ib`, `10.0.0.1@tcp1`, `0@lo`, `*` (the wildcard).
    public init(parsing text: some StringProtocol) throws(LNetError) {
        let text = String(text)
        if text == "*" { self = .any; return }
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw LNetError.invalidNID(text: text, reason: "expected ADDRESS@NET, e.g. 192.0.2.1@o2ib or 0@lo")
        }
        let network: LNetNetwork
        do { network = try LNetNetwork(parsing: parts[1]) } catch {
            throw LNetError.invalidNID(text: text, reason: error.description)
        }
        let addressText = parts[0]
        if network.type == .loopback {
            guard addressText == "0" else {
                throw LNetError.invalidNID(text: text, reason: "the only loopback address is 0")
            }
            self.init(address: 0, network: network)
            return
        }
        if network.type.usesIPv4Addresses {
            guard let address = parseIPv4(addressText) else {
                throw LNetError.invalidNID(text: text, reason: "'\(addressText)' is not a dotted-quad IPv4 address")
            }
            self.init(address: address, network: network)
            return
        }
        guard let address = UInt32(addressText) else {
            throw LNetError.invalidNID(text: text, reason: "'\(addressText)' is not a 32-bit address")
        }
        self.init(address: address, network: network)
    }

    public var description: String {
        if isAny { return "*" }
        if network.type.usesIPv4Addresses { return "\(formatIPv4(address))@\(network)" }
        return "\(address)@\(network)"
    }

    public static func < (lhs: NID, rhs: NID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Parses a dotted-quad IPv4 address into a host-order `UInt32`; `nil` if malformed. For every module of the
/// package (the RDMA LND's addresses are NIDs' addresses).
package func parseIPv4(_ text: some StringProtocol) -> UInt32? {
    let octets = text.split(separator: ".", omittingEmptySubsequences: false)
    guard octets.count == 4 else { return nil }
    var value: UInt32 = 0
    for octet in octets {
        guard !octet.isEmpty, octet.count <= 3, octet.allSatisfy({ $0.isASCII && $0.isNumber }),
              let byte = UInt8(octet) else { return nil }
        value = value << 8 | UInt32(byte)
    }
    return value
}

/// Formats a host-order IPv4 address as a dotted quad.
package func formatIPv4(_ address: UInt32) -> String {
    "\(address >> 24).\((address >> 16) & 0xFF).\((address >> 8) & 0xFF).\(address & 0xFF)"
}
