import Testing
import Verbs

@Suite(.requiresDevice, .serialized) struct DeviceDiscoveryDeviceTests {
    @Test func opensTheDeviceAndQueriesPortAndGIDs() throws {
        let context = try DeviceContext(deviceName: TestDevice.name)
        let info = try context.info()
        #expect(info.name == TestDevice.name)
        #expect(info.guid.count == 19)
        #expect(info.limits.maxResponderResources > 0)
        let port = try #require(info.ports.first)
        #expect(port.state == .active)
        #expect(port.activeMTU != nil)
        // The test bed puts two addresses on the netdev: each shows as an IPv4-mapped GID.
        #expect(port.gidIndex(forIPv4: TestDevice.serverAddress) != nil)
        #expect(port.gidIndex(forIPv4: TestDevice.clientAddress) != nil)
    }

    @Test func openingAMissingDeviceNamesIt() {
        #expect {
            _ = try DeviceContext(deviceName: "no-such-device")
        } throws: { error in
            (error as? VerbsError)?.description.contains("no-such-device") == true
        }
    }
}

@Suite(.requiresDevice, .serialized) struct MemoryRegionDeviceTests {
    @Test func registersOwnedAndBorrowedMemory() throws {
        let context = try DeviceContext(deviceName: TestDevice.name)
        let pd = try ProtectionDomain(context: context)
        let owned = try MemoryRegion(protectionDomain: pd, length: 1 << 20, access: [.localWrite, .remoteRead])
        #expect(owned.length == 1 << 20)
        #expect(owned.address % 4096 == 0)
        #expect(owned.bytes.allSatisfy { $0 == 0 })
        #expect(owned.access == [.localWrite, .remoteRead])

        let borrowed = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 64)
        defer { borrowed.deallocate() }
        do {
            let region = try MemoryRegion(protectionDomain: pd, bytes: borrowed, access: [.localWrite])
            #expect(region.address == UInt64(UInt(bitPattern: borrowed.baseAddress)))
            #expect(region.lkey != owned.lkey)
            let sge = region.sge(offset: 4096, length: 100)
            #expect(sge.address == region.address + 4096)
            #expect(sge.length == 100)
        }
    }

    @Test func emptyRegistrationIsAnError() throws {
        let pd = try ProtectionDomain(context: DeviceContext(deviceName: TestDevice.name))
        #expect(throws: VerbsError.self) { _ = try MemoryRegion(protectionDomain: pd, length: 0, access: []) }
    }
}
