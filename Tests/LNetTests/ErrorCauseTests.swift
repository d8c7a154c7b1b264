import Testing

@testable import LNet

/// Errors keep their cause: an LND factory's own error reaches the caller of `addInterfaces` as the cause of an
/// `LNetError`, typed, without hand conversion.
@Suite struct ErrorCauseTests {
    struct DriverError: Error, Equatable, CustomStringConvertible {
        var code: Int32
        var description: String { "driver failed with \(code)" }
    }

    final class FailingLND: LNetLND {
        let networkType = LNetNetworkType.tcp
        let error: DriverError
        init(_ error: DriverError) { self.error = error }
        func startup(ni: LNetNI) throws(LNetError) {
            throw LNetError.lndStartupFailed(network: ni.network, reason: "\(error)", cause: .init(error))
        }
        func shutdown(ni: LNetNI) {}
        func send(ni: LNetNI, message: LNetMessage) { ni.finalize(message, status: .shutdown) }
        func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {}
        func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {}
    }

    @Test func aFactorysOwnErrorBecomesTheCause() throws {
        let lnet = LNet()
        defer { lnet.shutdown() }
        let networks = try NetworkConfiguration(parsing: "lo,tcp(eth9:192.0.2.50)")
        do {
            // The closure throws DriverError, not LNetError: it composes as it is.
            try lnet.addInterfaces(networks) { interface in
                if interface.network.type == .loopback { return LoopbackLND() }
                throw DriverError(code: 7)
            }
            Issue.record("addInterfaces did not throw")
        } catch {
            #expect(error == .lndStartupFailed(network: LNetNetwork(type: .tcp), reason: "driver failed with 7",
                                               cause: .init(DriverError(code: 7))))
            #expect(error.cause(as: DriverError.self) == DriverError(code: 7))
            #expect(error.description == "LND for 'tcp' failed to start: driver failed with 7")
        }
        // The interface before the failing one is up, as with the throws(LNetError) form.
        #expect(lnet.interfaces.map(\.nid) == [.loopback])
    }

    @Test func anLNetErrorFromTheFactoryOrTheLNDPassesUnchanged() throws {
        let lnet = LNet()
        defer { lnet.shutdown() }
        #expect(throws: LNetError.invalidArgument("no")) {
            try lnet.addInterfaces(try NetworkConfiguration(parsing: "lo")) { _ in throw LNetError.invalidArgument("no") }
        }
        // An LND's start-up error keeps its cause through addInterface.
        do {
            try lnet.addInterfaces(try NetworkConfiguration(parsing: "tcp(eth9:192.0.2.50)")) { _ in FailingLND(DriverError(code: 3)) }
            Issue.record("addInterfaces did not throw")
        } catch {
            #expect(error.cause(as: DriverError.self)?.code == 3)
        }
    }

    @Test func causesAreFoundAlongTheChain() {
        let inner = LNetError.lndStartupFailed(network: .o2ib, reason: "inner", cause: .init(DriverError(code: 1)))
        let outer = LNetError.lndStartupFailed(network: .o2ib, reason: "outer", cause: .init(inner))
        #expect(outer.cause(as: DriverError.self)?.code == 1)
        #expect(outer.cause(as: LNetError.self) == inner)
        #expect(LNetError.timeout.cause == nil && LNetError.timeout.cause(as: DriverError.self) == nil)
        // Causes of different types never compare equal, even when they describe themselves alike.
        struct Other: Error, CustomStringConvertible { var description: String { "driver failed with 1" } }
        #expect(LNetError.Cause(DriverError(code: 1)) != LNetError.Cause(Other()))
    }
}
