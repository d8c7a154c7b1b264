import CShims
import Synchronization

/// An open verbs device (`ibv_context`): the root that protection domains, completion queues and channels hang from.
///
/// A context opened by name is closed exactly once, when the last reference goes away. A context that rdma_cm
/// opened (see `CMID.deviceContext`) is borrowed: rdma_cm owns it and keeps it open for the life of the process.
public final class DeviceContext: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_context>
    private let owned: Bool
    /// The device's name, e.g. `rxe0`.
    public let name: String

    /// Opens the device with this name.
    public init(deviceName: String) throws(VerbsError) {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else {
            throw VerbsError(call: "ibv_get_device_list", errno: VerbsError.current)
        }
        defer { ibv_free_device_list(list) }
        var found: UnsafeMutablePointer<ibv_device>?
        for i in 0..<Int(count) {
            if let device = list[i], String(cString: ibv_get_device_name(device)) == deviceName { found = device }
        }
        guard let found else {
            throw VerbsError(call: "ibv_get_device_list", errno: ENODEV, detail: "no device named \(deviceName)")
        }
        self.pointer = try VerbsError.unwrap("ibv_open_device", ibv_open_device(found), detail: deviceName)
        self.owned = true
        self.name = deviceName
    }

    /// Wraps a context rdma_cm opened; never closed by us.
    init(borrowing pointer: UnsafeMutablePointer<ibv_context>) {
        self.pointer = pointer
        self.owned = false
        self.name = String(cString: ibv_get_device_name(pointer.pointee.device))
    }

    deinit {
        if owned { Release.record("ibv_close_device", ibv_close_device(pointer)) }
    }

    /// Completion vectors (interrupt lines) the device offers; a CQ is created on one of them.
    public var completionVectorCount: Int { Int(pointer.pointee.num_comp_vectors) }

    /// The device's limits.
    public func limits() throws(VerbsError) -> DeviceLimits {
        var attr = ibv_device_attr()
        try VerbsError.check("ibv_query_device", ibv_query_device(pointer, &attr), detail: name)
        return DeviceLimits(
            maxQueuePairWorkRequests: Int(attr.max_qp_wr),
            maxScatterGather: Int(attr.max_sge),
            maxCompletionQueueEntries: Int(attr.max_cqe),
            maxMemoryRegionSize: attr.max_mr_size,
            maxResponderResources: Int(attr.max_qp_rd_atom),
            maxInitiatorDepth: Int(attr.max_qp_init_rd_atom),
            maxMemoryWindows: Int(attr.max_mw),
            physicalPorts: Int(attr.phys_port_cnt)
        )
    }

    /// One port's attributes and its GID table.
    public func port(_ number: UInt8) throws(VerbsError) -> PortInfo {
        var attr = ibv_port_attr()
        try VerbsError.check("ibv_query_port", CShims_ibv_query_port(pointer, number, &attr), detail: "\(name) port \(number)")
        var gids: [GIDEntry] = []
        for index in 0..<max(0, Int(attr.gid_tbl_len)) {
            // Unpopulated entries fail or read as zero on RoCE; both mean "unused".
            guard let gid = try? gid(port: number, index: index), !gid.isZero else { continue }
            gids.append(GIDEntry(index: index, gid: gid))
        }
        return PortInfo(
            number: number, state: PortState(attr.state), activeMTU: PathMTU(attr.active_mtu),
            maxMTU: PathMTU(attr.max_mtu), linkLayer: LinkLayer(attr.link_layer), lid: attr.lid, gids: gids
        )
    }

    /// One GID table entry.
    public func gid(port: UInt8, index: Int) throws(VerbsError) -> GID {
        var raw = ibv_gid()
        try VerbsError.check("ibv_query_gid", ibv_query_gid(pointer, port, Int32(index), &raw), detail: "\(name) port \(port) index \(index)")
        return GID(raw)
    }

    /// The whole description: name, GUID, limits, ports.
    public func info() throws(VerbsError) -> DeviceInfo {
        let limits = try limits()
        var ports: [PortInfo] = []
        for number in 1...max(1, limits.physicalPorts) {
            ports.append(try port(UInt8(number)))
        }
        let guid = UInt64(bigEndian: ibv_get_device_guid(pointer.pointee.device))
        let hex = String(guid, radix: 16)
        let padded = String(repeating: "0", count: max(0, 16 - hex.count)) + hex
        let grouped = stride(from: 0, to: 16, by: 4).map { i in
            String(padded[padded.index(padded.startIndex, offsetBy: i)..<padded.index(padded.startIndex, offsetBy: i + 4)])
        }.joined(separator: ":")
        return DeviceInfo(name: name, guid: grouped, limits: limits, ports: ports)
    }
}

/// rdma_cm's device contexts, pinned for the life of the process.
///
/// `rdma_get_devices` opens every device once and keeps each context open until the process ends; holding the
/// list means a borrowed `DeviceContext` (and every PD or CQ made on it) stays valid however many CM ids come
/// and go. One wrapper object per device, so identity comparisons work.
enum CMDeviceContexts {
    private static let table = Mutex<[UInt: DeviceContext]>([:])

    static func context(for pointer: UnsafeMutablePointer<ibv_context>) -> DeviceContext {
        table.withLock { table in
            if table.isEmpty {
                var count: Int32 = 0
                // Pins every device's context; the list itself is never freed on purpose (process lifetime).
                _ = rdma_get_devices(&count)
            }
            let key = UInt(bitPattern: pointer)
            if let context = table[key] { return context }
            let context = DeviceContext(borrowing: pointer)
            table[key] = context
            return context
        }
    }
}
