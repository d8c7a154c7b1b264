import Foundation
import Testing

/// The SoftRoCE test bed as every test target sees it (one target for what the tests share, as swift-nio has
/// NIOTestUtils): whether an RDMA device with an active port is here, whether the device tests must run anyway,
/// and the test bed's addresses.
///
/// Device tests run where a device with an active port is visible. Inside the SoftRoCE VM `scripts/test.sh` sets
/// `RDMA_REQUIRE_DEVICE=1`: then they run (and fail loudly) even if no device shows up, so a broken test bed never
/// passes as "all skipped".
public enum TestBed {
    public static let required = ProcessInfo.processInfo.environment["RDMA_REQUIRE_DEVICE"] == "1"

    /// Whether sysfs shows an RDMA port in the ACTIVE state (no verbs call: usable from every test target).
    public static var haveActivePort: Bool {
        let root = "/sys/class/infiniband"
        guard let devices = try? FileManager.default.contentsOfDirectory(atPath: root) else { return false }
        return devices.contains { device in
            let ports = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(device)/ports")) ?? []
            return ports.contains { port in
                ((try? String(contentsOfFile: "\(root)/\(device)/ports/\(port)/state", encoding: .utf8)) ?? "").contains("ACTIVE")
            }
        }
    }

    public static let shouldRun = haveActivePort || required

    /// The two addresses the test bed puts on the rxe netdev (a third, 192.0.2.3, is for hand-driven peers).
    public static let serverAddress = ProcessInfo.processInfo.environment["RDMA_TEST_SERVER_ADDR"] ?? "192.0.2.1"
    public static let clientAddress = ProcessInfo.processInfo.environment["RDMA_TEST_CLIENT_ADDR"] ?? "192.0.2.2"

    public static let skipReason: Comment = "no RDMA device with an active port (run inside scripts/softroce-vm.sh)"
}

extension Trait where Self == ConditionTrait {
    /// Runs the suite or test only where an RDMA device is present, or where one is required (then its absence fails).
    public static var requiresDevice: Self {
        .enabled(if: TestBed.shouldRun, TestBed.skipReason)
    }
}
