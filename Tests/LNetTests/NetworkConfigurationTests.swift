import Testing

@testable import LNet

@Suite struct NetworkConfigurationTests {
    @Test func parsesInterfaceEntries() throws {
        let plain = try NetworkInterfaceConfiguration(parsing: "o2ib(rxe0)")
        #expect(plain.network == .o2ib)
        #expect(plain.interfaceName == "rxe0")
        #expect(plain.address == nil)
        #expect(plain.nid == nil)

        let addressed = try NetworkInterfaceConfiguration(parsing: "o2ib(rxe0:192.0.2.1)")
        #expect(addressed.address == 0xC000_0201)
        #expect(addressed.nid == (try NID(parsing: "192.0.2.1@o2ib")))
        #expect(addressed.description == "o2ib(rxe0:192.0.2.1)")

        let lo = try NetworkInterfaceConfiguration(parsing: "lo")
        #expect(lo.nid == .loopback)
    }

    @Test func parsesLists() throws {
        let list = try NetworkConfiguration(parsing: " o2ib1(rxe0:192.0.2.1), tcp(eth0) ,lo")
        #expect(list.interfaces.map(\.network.description) == ["o2ib1", "tcp", "lo"])
        #expect(list.description == "o2ib1(rxe0:192.0.2.1),tcp(eth0),lo")
    }

    @Test(arguments: ["", "o2ib(", "o2ib)", "o2ib(rxe0", "o2ib()", "o2ib(rxe0:1.2.3)", "ib(rxe0)", "o2ib(rx e0)",
                      "o2ib(a:b:c)", "o2ib(rxe0),o2ib(rxe1)", "o2ib((rxe0))", "o2ib(rxe0)x", ",", "tcp(eth0),"])
    func rejectsBadLists(_ text: String) {
        #expect(throws: LNetError.self) { try NetworkConfiguration(parsing: text) }
    }

    @Test func readsTheEnvironment() throws {
        let config = try NetworkConfiguration.fromEnvironment(["LNET_NETWORKS": "o2ib(rxe0:192.0.2.1)"])
        #expect(config?.interfaces.first?.nid == (try NID(parsing: "192.0.2.1@o2ib")))
        #expect(try NetworkConfiguration.fromEnvironment(["OTHER": "x"]) == nil)
        #expect(throws: LNetError.self) { try NetworkConfiguration.fromEnvironment(["LNET_NETWORKS": "bogus(x)"]) }
    }

    @Test func bringsUpInterfacesFromAList() throws {
        let lnet = LNet()
        defer { lnet.shutdown() }
        try lnet.addInterfaces(try NetworkConfiguration(parsing: "lo")) { _ throws(LNetError) in LoopbackLND() }
        #expect(lnet.interfaces.map(\.nid) == [.loopback])
        #expect(throws: LNetError.duplicateNetwork(.loopback)) { try lnet.addLoopback() }
    }
}
