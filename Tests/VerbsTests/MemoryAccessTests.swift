import Testing
@testable import Verbs

@Suite struct MemoryAccessTests {
    @Test func describesFlags() {
        #expect(MemoryAccess([]).description == "local-read")
        #expect(MemoryAccess([.localWrite, .remoteRead]).description == "local-write,remote-read")
    }

    @Test func pathMTUFromBytes() {
        #expect(PathMTU(bytes: 1024) == .mtu1024)
        #expect(PathMTU(bytes: 1500) == nil)
        #expect(PathMTU.mtu256 < .mtu4096)
    }

    @Test func deviceListIsEmptyNotAnErrorWithoutDevices() throws {
        // Holds everywhere: without RDMA the list is empty; with it, every listed device opens.
        let devices = try Devices.list()
        #expect(devices.count == Devices.names().count)
    }
}
