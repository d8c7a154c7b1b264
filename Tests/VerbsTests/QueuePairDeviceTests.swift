import Testing
import Verbs

/// A QP pair connected without rdma_cm: the explicit RESET -> INIT -> RTR -> RTS walk.
@Suite(.requiresDevice, .serialized) struct QueuePairDeviceTests {
    @Test func explicitTransitionsConnectTwoQueuePairs() throws {
        let context = try DeviceContext(deviceName: TestDevice.name)
        let port = try context.port(1)
        let gidIndex = try #require(port.gidIndex(forIPv4: TestDevice.serverAddress))
        let gid = try context.gid(port: 1, index: gidIndex)
        let pd = try ProtectionDomain(context: context)
        let cqA = try CompletionQueue(context: context, capacity: 32)
        let cqB = try CompletionQueue(context: context, capacity: 32)
        let caps = QueuePairCapabilities(maxSendWorkRequests: 8, maxReceiveWorkRequests: 8)
        let a = try QueuePair(protectionDomain: pd, sendQueue: cqA, receiveQueue: cqA, capabilities: caps)
        let b = try QueuePair(protectionDomain: pd, sendQueue: cqB, receiveQueue: cqB, capabilities: caps)
        #expect(try a.state() == .reset)

        let mtu = try #require(port.activeMTU)
        for (qp, peer, psn) in [(a, b, UInt32(100)), (b, a, UInt32(200))] {
            try qp.moveToInit(port: 1, remoteAccess: [.remoteRead, .remoteWrite])
            #expect(try qp.state() == .initialized)
            try qp.moveToReadyToReceive(remote: RemoteQueuePair(number: peer.number, packetSequenceNumber: psn == 100 ? 200 : 100, gid: gid),
                                        port: 1, sourceGIDIndex: gidIndex, mtu: mtu, maxDestinationReads: 4)
            #expect(try qp.state() == .readyToReceive)
            try qp.moveToReadyToSend(packetSequenceNumber: psn, maxReads: 4)
            #expect(try qp.state() == .readyToSend)
        }

        let buffer = try MemoryRegion(protectionDomain: pd, length: 4096, access: [.localWrite])
        try b.post(ReceiveWorkRequest(id: 1, scatterGather: [buffer.sge(offset: 2048, length: 2048)]))
        buffer.bytes.copyBytes(from: Array("explicit".utf8))
        try a.post(SendWorkRequest(id: 2, operation: .send, scatterGather: [buffer.sge(length: 8)]))
        #expect(try waitForCompletions(cqA).first?.status == .success)
        let received = try #require(waitForCompletions(cqB).first)
        #expect(received.status == .success)
        #expect(Array(buffer.bytes[2048..<2056]) == Array("explicit".utf8))

        try a.moveToError()
        #expect(try a.state() == .error)
    }
}
