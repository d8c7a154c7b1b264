import CShims

/// The state of a port (`ibv_port_state`).
public enum PortState: String, Sendable {
    case down, initializing = "init", armed, active, activeDeferred = "active_defer", unknown

    init(_ raw: ibv_port_state) {
        switch raw {
        case IBV_PORT_DOWN: self = .down
        case IBV_PORT_INIT: self = .initializing
        case IBV_PORT_ARMED: self = .armed
        case IBV_PORT_ACTIVE: self = .active
        case IBV_PORT_ACTIVE_DEFER: self = .activeDeferred
        default: self = .unknown
        }
    }
}

/// The link layer under a port.
public enum LinkLayer: String, Sendable {
    case infiniband = "InfiniBand", ethernet = "Ethernet", unspecified = "unspecified"

    init(_ raw: UInt8) {
        switch Int(raw) {
        case Int(IBV_LINK_LAYER_INFINIBAND): self = .infiniband
        case Int(IBV_LINK_LAYER_ETHERNET): self = .ethernet
        default: self = .unspecified
        }
    }
}

/// A path MTU (`ibv_mtu`), 256 to 4096 bytes.
public enum PathMTU: Int, Sendable, CaseIterable, Comparable {
    case mtu256 = 256, mtu512 = 512, mtu1024 = 1024, mtu2048 = 2048, mtu4096 = 4096

    init?(_ raw: ibv_mtu) {
        switch raw {
        case IBV_MTU_256: self = .mtu256
        case IBV_MTU_512: self = .mtu512
        case IBV_MTU_1024: self = .mtu1024
        case IBV_MTU_2048: self = .mtu2048
        case IBV_MTU_4096: self = .mtu4096
        default: return nil
        }
    }

    /// From a byte count (256 ... 4096, a power of two).
    public init?(bytes: Int) { self.init(rawValue: bytes) }

    var raw: ibv_mtu {
        switch self {
        case .mtu256: IBV_MTU_256
        case .mtu512: IBV_MTU_512
        case .mtu1024: IBV_MTU_1024
        case .mtu2048: IBV_MTU_2048
        case .mtu4096: IBV_MTU_4096
        }
    }

    public static func < (a: PathMTU, b: PathMTU) -> Bool { a.rawValue < b.rawValue }
}

/// What a port says of itself, with its GID table (unused, all-zero entries left out).
public struct PortInfo: Sendable {
    public let number: UInt8
    public let state: PortState
    public let activeMTU: PathMTU?
    public let maxMTU: PathMTU?
    public let linkLayer: LinkLayer
    public let lid: UInt16
    public let gids: [GIDEntry]

    /// The first GID carrying this IPv4 address (RoCEv2 over IPv4), if any.
    public func gidIndex(forIPv4 address: String) -> Int? {
        gids.first { $0.gid.ipv4Address == address }?.index
    }
}

/// Device-wide limits that the upper layers size their queues from.
public struct DeviceLimits: Sendable {
    public let maxQueuePairWorkRequests: Int
    public let maxScatterGather: Int
    public let maxCompletionQueueEntries: Int
    public let maxMemoryRegionSize: UInt64
    /// Outstanding RDMA READs a QP may have as the target (responder resources).
    public let maxResponderResources: Int
    /// Outstanding RDMA READs a QP may issue (initiator depth).
    public let maxInitiatorDepth: Int
    public let maxMemoryWindows: Int
    public let physicalPorts: Int
}

/// A verbs device as the device list shows it: name, GUID, limits and ports.
public struct DeviceInfo: Sendable {
    public let name: String
    /// The node GUID, as the 16 hex digits `ibv_devinfo` prints (grouped by four).
    public let guid: String
    public let limits: DeviceLimits
    public let ports: [PortInfo]
}

/// The verbs devices of this machine.
public enum Devices {
    /// The names of the devices `ibv_get_device_list` sees; empty (not an error) when there are none.
    public static func names() -> [String] {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else { return [] }
        defer { ibv_free_device_list(list) }
        return (0..<Int(count)).compactMap { i in list[i].map { String(cString: ibv_get_device_name($0)) } }
    }

    /// Opens every device and describes it.
    public static func list() throws(VerbsError) -> [DeviceInfo] {
        var result: [DeviceInfo] = []
        for name in names() {
            result.append(try DeviceContext(deviceName: name).info())
        }
        return result
    }

    /// True when at least one device has a port in the active state. Tests use it to skip cleanly.
    public static var haveActivePort: Bool {
        guard let devices = try? list() else { return false }
        return devices.contains { $0.ports.contains { $0.state == .active } }
    }
}
