#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One configured network interface: `o2ib(rxe0)` or `o2ib(rxe0:192.0.2.1)` or `lo`.
public struct NetworkInterfaceConfiguration: Hashable, Sendable, CustomStringConvertible {
    /// The network the interface joins.
    public var network: LNetNetwork
    /// The device or interface name (`rxe0`, `eth0`), if given.
    public var interfaceName: String?
    /// The address to use on that network, if given; otherwise the LND resolves it (from the device).
    public var address: UInt32?

    public init(network: LNetNetwork, interfaceName: String? = nil, address: UInt32? = nil) {
        self.network = network
        self.interfaceName = interfaceName
        self.address = address
    }

    /// The loopback interface `lo` (`0@lo`).
    public static let loopback = NetworkInterfaceConfiguration(network: .loopback, address: 0)

    /// Parses one entry: `o2ib`, `o2ib1(rxe0)`, `o2ib(rxe0:192.0.2.1)`, `lo`.
    public init(parsing text: some StringProtocol) throws(LNetError) {
        let text = String(text).trimmingSpaces()
        guard !text.isEmpty else { throw LNetError.invalidNetworkList(text: text, reason: "empty interface entry") }
        guard let open = text.firstIndex(of: "(") else {
            guard !text.contains(")") else {
                throw LNetError.invalidNetworkList(text: text, reason: "')' without '('")
            }
            do { self.init(network: try LNetNetwork(parsing: text)) } catch {
                throw LNetError.invalidNetworkList(text: text, reason: error.description)
            }
            if network.type == .loopback { address = 0 }
            return
        }
        guard text.last == ")", text.firstIndex(of: ")") == text.index(before: text.endIndex) else {
            throw LNetError.invalidNetworkList(text: text, reason: "expected NET(INTERFACE) or NET(INTERFACE:ADDRESS)")
        }
        let network: LNetNetwork
        do { network = try LNetNetwork(parsing: text[..<open]) } catch {
            throw LNetError.invalidNetworkList(text: text, reason: error.description)
        }
        let inner = text[text.index(after: open)..<text.index(before: text.endIndex)]
        let parts = inner.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let name = parts.first, !name.isEmpty,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }) else {
            throw LNetError.invalidNetworkList(text: text, reason: "interface name '\(inner)' is empty or has invalid characters")
        }
        var address: UInt32?
        if parts.count == 2 {
            if network.type.usesIPv4Addresses {
                guard let parsed = parseIPv4(parts[1]) else {
                    throw LNetError.invalidNetworkList(text: text, reason: "'\(parts[1])' is not a dotted-quad IPv4 address")
                }
                address = parsed
            } else {
                guard let parsed = UInt32(parts[1]) else {
                    throw LNetError.invalidNetworkList(text: text, reason: "'\(parts[1])' is not a 32-bit address")
                }
                address = parsed
            }
        }
        if network.type == .loopback { address = 0 }
        self.init(network: network, interfaceName: String(name), address: address)
    }

    /// The NID this entry names, when its address is known.
    public var nid: NID? { address.map { NID(address: $0, network: network) } }

    public var description: String {
        guard let interfaceName else { return network.description }
        guard let address, network.type != .loopback else { return "\(network)(\(interfaceName))" }
        let text = network.type.usesIPv4Addresses ? formatIPv4(address) : String(address)
        return "\(network)(\(interfaceName):\(text))"
    }
}

/// A network list such as `o2ib(rxe0:192.0.2.1),lo`: the interfaces an LNet instance brings up.
///
/// Readable from the environment variable `LNET_NETWORKS` (the equivalent of Lustre's `networks=` module parameter).
public struct NetworkConfiguration: Hashable, Sendable, CustomStringConvertible {
    /// The environment variable read by ``fromEnvironment(_:)``.
    public static let environmentVariable = "LNET_NETWORKS"

    public var interfaces: [NetworkInterfaceConfiguration]

    public init(interfaces: [NetworkInterfaceConfiguration]) {
        self.interfaces = interfaces
    }

    /// Parses a comma-separated list; each network may appear once.
    public init(parsing text: some StringProtocol) throws(LNetError) {
        let text = String(text)
        var entries: [String] = []
        var depth = 0
        var current = ""
        for character in text {
            switch character {
            case "(": depth += 1; current.append(character)
            case ")": depth -= 1; current.append(character)
            case "," where depth == 0: entries.append(current); current = ""
            default: current.append(character)
            }
            guard depth >= 0, depth <= 1 else {
                throw LNetError.invalidNetworkList(text: text, reason: "unbalanced parentheses")
            }
        }
        guard depth == 0 else { throw LNetError.invalidNetworkList(text: text, reason: "unbalanced parentheses") }
        entries.append(current)
        guard !(entries.count == 1 && entries[0].trimmingSpaces().isEmpty) else {
            throw LNetError.invalidNetworkList(text: text, reason: "the list is empty")
        }
        var interfaces: [NetworkInterfaceConfiguration] = []
        for entry in entries {
            let parsed: NetworkInterfaceConfiguration
            do { parsed = try NetworkInterfaceConfiguration(parsing: entry) } catch {
                if case .invalidNetworkList(_, let reason) = error {
                    throw LNetError.invalidNetworkList(text: text, reason: "entry '\(entry.trimmingSpaces())': \(reason)")
                }
                throw error
            }
            guard !interfaces.contains(where: { $0.network == parsed.network }) else {
                throw LNetError.invalidNetworkList(text: text, reason: "network '\(parsed.network)' appears twice")
            }
            interfaces.append(parsed)
        }
        self.init(interfaces: interfaces)
    }

    /// Reads ``environmentVariable`` from `environment`, or from the process environment when `environment` is `nil`.
    /// Returns `nil` when the variable is unset or empty.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws(LNetError) -> NetworkConfiguration? {
        let value: String?
        if let environment {
            value = environment[environmentVariable]
        } else {
            value = getenv(environmentVariable).map { String(cString: $0) }
        }
        guard let value, !value.trimmingSpaces().isEmpty else { return nil }
        return try NetworkConfiguration(parsing: value)
    }

    public var description: String { interfaces.map(\.description).joined(separator: ",") }
}

extension String {
    func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice.removeFirst() }
        while let last = slice.last, last.isWhitespace { slice.removeLast() }
        return String(slice)
    }
}
