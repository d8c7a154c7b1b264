import ArgumentParser
import LNetSelftest
import Verbs

/// `lnetctl devices`: the verbs devices, their ports and GID tables.
struct DevicesCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List RDMA devices with their ports, states, MTUs and GIDs (IPv4-mapped GIDs name the NIDs they carry).")

    @OptionGroup var outputFormat: JSONOption

    func report(on console: Console) async throws {
        let devices: [DeviceInfo]
        do { devices = try Devices.list() } catch { throw CommandFailure("cannot list RDMA devices: \(error)") }
        if json {
            console.emit(.object(["devices": .array(devices.map(Self.json))]))
            return
        }
        guard !devices.isEmpty else {
            console.out("no RDMA devices (run inside scripts/softroce-vm.sh for a SoftRoCE device)")
            return
        }
        for device in devices {
            console.out("\(device.name)  guid \(device.guid)  ports \(device.ports.count)  "
                        + "max_qp_wr \(device.limits.maxQueuePairWorkRequests)  max_sge \(device.limits.maxScatterGather)  "
                        + "max_qp_rd_atom \(device.limits.maxResponderResources)")
            for port in device.ports {
                console.out("  port \(port.number): \(port.state.rawValue)  \(port.linkLayer.rawValue)  "
                            + "mtu \(port.activeMTU.map { String($0.rawValue) } ?? "?")/\(port.maxMTU.map { String($0.rawValue) } ?? "?")  lid \(port.lid)")
                for entry in port.gids {
                    let nid = entry.gid.ipv4Address.map { "  (NID \($0)@o2ib)" } ?? ""
                    console.out("    gid[\(entry.index)] \(entry.gid)\(nid)")
                }
            }
        }
    }

    static func json(_ device: DeviceInfo) -> JSONValue {
        .object([
            "name": .string(device.name),
            "guid": .string(device.guid),
            "limits": .object([
                "max_qp_wr": .int(device.limits.maxQueuePairWorkRequests),
                "max_sge": .int(device.limits.maxScatterGather),
                "max_cqe": .int(device.limits.maxCompletionQueueEntries),
                "max_mr_size": .uint(device.limits.maxMemoryRegionSize),
                "max_qp_rd_atom": .int(device.limits.maxResponderResources),
                "max_qp_init_rd_atom": .int(device.limits.maxInitiatorDepth),
                "max_mw": .int(device.limits.maxMemoryWindows),
                "phys_port_cnt": .int(device.limits.physicalPorts),
            ]),
            "ports": .array(device.ports.map { port in
                .object([
                    "port": .int(Int(port.number)),
                    "state": .string(port.state.rawValue),
                    "link_layer": .string(port.linkLayer.rawValue),
                    "active_mtu": port.activeMTU.map { .int($0.rawValue) } ?? .null,
                    "max_mtu": port.maxMTU.map { .int($0.rawValue) } ?? .null,
                    "lid": .int(Int(port.lid)),
                    "gids": .array(port.gids.map { entry in
                        .object([
                            "index": .int(entry.index),
                            "gid": .string(entry.gid.description),
                            "ipv4": entry.gid.ipv4Address.map { .string($0) } ?? .null,
                        ])
                    }),
                ])
            }),
        ])
    }
}
