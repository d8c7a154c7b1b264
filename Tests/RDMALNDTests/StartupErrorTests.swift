import LNet
import Testing
import Verbs
@testable import RDMALND

/// The RDMA LND's start-up failures reach the user typed: a verbs failure as its call and errno, a bad tunable
/// as a `TunableError`, both as the cause of an `LNetError`, through `addInterfaces` without hand conversion.
/// No device is needed: each fails before one is used.
@Suite struct StartupErrorTests {
    @Test func aBadTunableIsTheCauseOfTheStartupError() throws {
        let lnet = LNet()
        defer { lnet.shutdown() }
        do {
            try lnet.addInterfaces(try NetworkConfiguration(parsing: "o2ib(rxe0:192.0.2.9)")) { _ in
                try RDMALND(environment: ["LND_PEER_CREDITS": "0"])
            }
            Issue.record("a bad tunable did not stop start-up")
        } catch {
            let tunable = try #require(error.cause(as: TunableError.self), "\(error)")
            #expect(tunable.variable == "LND_PEER_CREDITS" && tunable.value == "0")
            #expect(error.description.contains("LND_PEER_CREDITS=0"))
        }
        #expect(lnet.interfaces.isEmpty)
    }

    /// An address no device carries (TEST-NET-3, on no interface here or in the VM): rdma_cm fails (here, without
    /// RDMA: `rdma_create_event_channel`, ENODEV; next to rxe: `rdma_bind_addr`), and the failed call and its
    /// errno come through as a `VerbsError`.
    @Test func aVerbsFailureKeepsItsCallAndErrno() throws {
        let lnet = LNet()
        defer { lnet.shutdown() }
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        do {
            try lnet.addInterface(NetworkInterfaceConfiguration(parsing: "o2ib(rxe0:203.0.113.77)"), lnd: RDMALND(tunables: tunables))
            Issue.record("start-up on an address nobody has succeeded")
        } catch {
            guard case .lndStartupFailed(let network, _, _) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(network == .o2ib)
            let verbs = try #require(error.cause(as: VerbsError.self), "no VerbsError behind \(error)")
            #expect(verbs.call.hasPrefix("rdma_") || verbs.call.hasPrefix("ibv_"), "\(verbs)")
            #expect(verbs.errno > 0, "\(verbs)")
            #expect(error.description.contains(verbs.call), "\(error)")
        }
    }
}
