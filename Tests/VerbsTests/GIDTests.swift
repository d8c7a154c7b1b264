import Testing
@testable import Verbs

@Suite struct GIDTests {
    @Test func ipv4MappedGIDShowsTheAddress() {
        let gid = GID(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1])
        #expect(gid.ipv4Address == "192.0.2.1")
        #expect(gid.description == "::ffff:192.0.2.1")
        #expect(!gid.isZero)
    }

    @Test func linkLocalGIDPrintsAsIPv6Groups() {
        let gid = GID(bytes: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55])
        #expect(gid.ipv4Address == nil)
        #expect(gid.description == "fe80:0:0:0:211:22ff:fe33:4455")
    }

    @Test func roundTripsThroughTheCType() {
        let gid = GID(bytes: Array(1...16))
        #expect(GID(gid.raw) == gid)
    }

    @Test func portInfoFindsTheGIDOfAnAddress() {
        let mapped = GID(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 2])
        let port = PortInfo(number: 1, state: .active, activeMTU: .mtu1024, maxMTU: .mtu4096, linkLayer: .ethernet,
                            lid: 0, gids: [GIDEntry(index: 0, gid: GID(bytes: [0xfe, 0x80] + Array(repeating: 0, count: 14))),
                                           GIDEntry(index: 2, gid: mapped)])
        #expect(port.gidIndex(forIPv4: "192.0.2.2") == 2)
        #expect(port.gidIndex(forIPv4: "192.0.2.9") == nil)
    }
}
