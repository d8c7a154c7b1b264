import DeviceTestSupport
import Foundation
import LNet
import Logging
import Synchronization
import Testing
import Verbs
@testable import RDMALND

/// The LND tests' view of the test bed (``TestBed``: whether device tests run, the addresses), and their ports.
enum LNDTestDevice {
    static var required: Bool { TestBed.required }
    static var shouldRun: Bool { TestBed.shouldRun }
    static var serverAddress: String { TestBed.serverAddress }
    static var clientAddress: String { TestBed.clientAddress }

    /// A fresh service port per node pair, so suites running side by side never collide.
    private static let nextPort = Atomic<Int>(20_000 + Int(getpid() % 500) * 40)
    static func port() -> Int { nextPort.add(1, ordering: .relaxed).newValue }
}

/// Incoming LNet headers in the order the LND decoded them.
final class ArrivalLog: Sendable {
    let headers = Mutex<[LNetHeader]>([])
}

/// One LNet node with an o2ib interface on one of the test bed's addresses.
final class LNDNode: Sendable {
    let lnet: LNet
    let lnd: RDMALND
    let id: ProcessID
    let ni: LNetNI

    /// The LNet headers of PUTs and GETs as they arrived, when made with `recordArrivals`.
    let arrivals = ArrivalLog()

    init(address: String, tunables: LNDTunables, pid: UInt32 = 4242, placement: PlacementPolicy = .peerHash,
         placementCookies: Bool = false, recordArrivals: Bool = false, logLevel: Logger.Level = .warning) throws {
        var logger = Logger(label: "test.o2ib.\(address)")
        logger.logLevel = ProcessInfo.processInfo.environment["LND_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? logLevel
        let arrivals = self.arrivals
        lnd = recordArrivals ? RDMALND(tunables: tunables, logger: logger, observeArrival: { _, header in arrivals.headers.withLock { $0.append(header) } })
            : RDMALND(tunables: tunables, logger: logger)
        lnet = LNet(configuration: LNet.Configuration(pid: pid, placement: placement, placementCookies: placementCookies),
                    logger: logger)
        ni = try lnet.addInterface(NetworkInterfaceConfiguration(parsing: "o2ib(rxe0:\(address))"), lnd: lnd)
        id = ProcessID(nid: ni.nid, pid: pid)
    }

    /// Two nodes, server on 192.0.2.1 and client on 192.0.2.2, on a fresh service port.
    static func pair(placement: PlacementPolicy = .peerHash, placementCookies: Bool = false, recordArrivals: Bool = false,
                     _ configure: (inout LNDTunables) -> Void = { _ in }) throws
        -> (server: LNDNode, client: LNDNode) {
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        tunables.schedulers = 2
        tunables.timeout = 10
        configure(&tunables)
        return (try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables, placement: placement,
                            placementCookies: placementCookies, recordArrivals: recordArrivals),
                try LNDNode(address: LNDTestDevice.clientAddress, tunables: tunables, placement: placement))
    }

    func shutdown() { lnet.shutdown() }
}

/// A buffer filled with a pattern that depends on `seed` (8 bytes at a time: fast even in debug builds).
func patterned(_ count: Int, seed: UInt64) throws -> LNetBuffer {
    let buffer = try LNetBuffer(count: count)
    buffer.bytes.withMemoryRebound(to: UInt8.self) { bytes in
        var value = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var i = 0
        while i + 8 <= count {
            value = value &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            UnsafeMutableRawPointer(bytes.baseAddress! + i).storeBytes(of: value, as: UInt64.self)
            i += 8
        }
        while i < count { bytes[i] = UInt8(truncatingIfNeeded: seed &+ UInt64(i)); i += 1 }
    }
    return buffer
}

/// Whether `a[aOffset...]` and `b[bOffset...]` agree for `length` bytes.
func same(_ a: LNetBuffer, _ aOffset: Int = 0, _ b: LNetBuffer, _ bOffset: Int = 0, length: Int) -> Bool {
    memcmp(a.baseAddress + aOffset, b.baseAddress + bOffset, length) == 0
}

/// Waits for the next event of `kind` on `eq`, failing on any other kind.
func expectEvent(_ kind: LNetEventKind, on eq: EventQueue, timeout: Duration = .seconds(30)) async throws -> LNetEvent {
    let event = try await eq.next(timeout: timeout)
    #expect(event.kind == kind, "expected \(kind), got \(event.kind) status \(event.status)")
    return event
}
