import Testing
import Verbs

@Suite(.requiresDevice, .serialized) struct ConnectionDeviceTests {
    static let size = 1 << 20

    @Test func connectsThroughRDMACMWithPrivateData() throws {
        let pair = try ConnectedPair(clientPrivateData: Array("hello from client".utf8),
                                     serverPrivateData: Array("welcome".utf8))
        #expect(try pair.client.queuePair.state() == .readyToSend)
        #expect(try pair.server.queuePair.state() == .readyToSend)
        #expect(pair.client.id.remoteEndpoint?.address == TestDevice.serverAddress)
        #expect(pair.server.id.remoteEndpoint?.address == TestDevice.clientAddress)
    }

    @Test func sendAndReceive() throws {
        var receiveRegion: MemoryRegion?
        let pair = try ConnectedPair { server in
            let region = try MemoryRegion(protectionDomain: server.protectionDomain, length: 4096, access: [.localWrite])
            try server.queuePair.post(ReceiveWorkRequest(id: 7, scatterGather: [region.sge()]))
            receiveRegion = region
        }
        let message = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [])
        let text = Array("an eager message".utf8)
        message.bytes.copyBytes(from: text)
        try pair.client.queuePair.post(SendWorkRequest(id: 1, operation: .sendWithImmediate(0xC0FFEE),
                                                       scatterGather: [message.sge(length: text.count)]))
        let sent = try #require(waitForCompletions(pair.client.sendQueue).first)
        #expect(sent.status == .success)
        #expect(sent.opcode == .send)
        let received = try #require(waitForCompletions(pair.server.receiveQueue).first)
        #expect(received.status == .success)
        #expect(received.id == 7)
        #expect(received.byteLength == UInt32(text.count))
        #expect(received.immediateData == 0xC0FFEE)
        let region = try #require(receiveRegion)
        #expect(Array(region.bytes[0..<text.count]) == text)
    }

    @Test func rdmaWriteOfOneMebibyte() throws {
        let pair = try ConnectedPair()
        let sink = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: Self.size,
                                    access: [.localWrite, .remoteWrite])
        let source = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: Self.size, access: [])
        for i in 0..<Self.size { source.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        try pair.client.queuePair.post(SendWorkRequest(
            id: 2, operation: .rdmaWrite(remoteAddress: sink.address, rkey: sink.rkey), scatterGather: [source.sge()]))
        let done = try #require(waitForCompletions(pair.client.sendQueue).first)
        #expect(done.status == .success)
        #expect(done.opcode == .rdmaWrite)
        #expect(sink.bytes.elementsEqual(source.bytes))
    }

    @Test func rdmaWriteWithImmediateConsumesAReceive() throws {
        let pair = try ConnectedPair { server in
            try server.queuePair.post(ReceiveWorkRequest(id: 9, scatterGather: []))
        }
        let sink = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 4096, access: [.localWrite, .remoteWrite])
        let source = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [])
        source.bytes.copyBytes(from: Array(repeating: UInt8(0x5A), count: 4096))
        try pair.client.queuePair.post(SendWorkRequest(
            id: 3, operation: .rdmaWriteWithImmediate(remoteAddress: sink.address, rkey: sink.rkey, immediate: 42),
            scatterGather: [source.sge()]))
        #expect(try waitForCompletions(pair.client.sendQueue).first?.status == .success)
        let received = try #require(waitForCompletions(pair.server.receiveQueue).first)
        #expect(received.opcode == .receiveWithImmediate)
        #expect(received.immediateData == 42)
        #expect(sink.bytes.allSatisfy { $0 == 0x5A })
    }

    @Test func rdmaReadOfOneMebibyteIntoTwoFragments() throws {
        let pair = try ConnectedPair()
        let source = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: Self.size,
                                      access: [.remoteRead])
        for i in 0..<Self.size { source.bytes[i] = UInt8(truncatingIfNeeded: i &* 13 &+ 1) }
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: Self.size, access: [.localWrite])
        let half = Self.size / 2
        try pair.client.queuePair.post(SendWorkRequest(
            id: 4, operation: .rdmaRead(remoteAddress: source.address, rkey: source.rkey),
            scatterGather: [sink.sge(offset: half, length: half), sink.sge(offset: 0, length: half)]))
        let done = try #require(waitForCompletions(pair.client.sendQueue).first)
        #expect(done.status == .success)
        #expect(done.opcode == .rdmaRead)
        // Scattered: the first half of the source lands in the second half of the sink, and back.
        #expect(sink.bytes[half...].elementsEqual(source.bytes[..<half]))
        #expect(sink.bytes[..<half].elementsEqual(source.bytes[half...]))
    }

    @Test func rejectCarriesPrivateData() throws {
        let serverChannel = try CMEventChannel()
        let clientChannel = try CMEventChannel()
        let listener = try serverChannel.createID()
        try listener.bind(IPv4Endpoint(TestDevice.serverAddress))
        try listener.listen()
        let port = try #require(listener.localEndpoint?.port)
        let client = try clientChannel.createID()
        try client.resolveAddress(from: IPv4Endpoint(TestDevice.clientAddress), to: IPv4Endpoint(TestDevice.serverAddress, port: port),
                                  timeout: .seconds(5))
        _ = try expectEvent(.addressResolved, on: clientChannel)
        try client.resolveRoute(timeout: .seconds(5))
        _ = try expectEvent(.routeResolved, on: clientChannel)
        let context = try #require(client.deviceContext)
        let pd = try ProtectionDomain(context: context)
        let cq = try CompletionQueue(context: context, capacity: 16)
        let qp = try client.createQueuePair(protectionDomain: pd, sendQueue: cq, receiveQueue: cq,
                                            capabilities: QueuePairCapabilities(maxSendWorkRequests: 4, maxReceiveWorkRequests: 4))
        try client.connect(ConnectionParameters(privateData: [1, 2, 3]))
        let request = try expectEvent(.connectRequest, on: serverChannel)
        #expect(request.listener === listener)
        try request.id.reject(privateData: Array("queue depth too large".utf8))
        let rejected = try expectEvent(.rejected, on: clientChannel)
        #expect(rejected.privateData.starts(with: Array("queue depth too large".utf8)))
        _ = qp
    }

    @Test func disconnectReachesBothSidesAndFlushesReceives() throws {
        let pair = try ConnectedPair { server in
            try server.queuePair.post(ReceiveWorkRequest(id: 11, scatterGather: []))
        }
        try pair.client.id.disconnect()
        // The passive side answers the disconnect request with its own disconnect (the DREP); then the
        // active side sees its disconnect complete.
        _ = try expectEvent(.disconnected, on: pair.server.channel)
        try pair.server.id.disconnect()
        _ = try expectEvent(.disconnected, on: pair.client.channel)
        let flushed = try #require(waitForCompletions(pair.server.receiveQueue).first)
        #expect(flushed.id == 11)
        #expect(flushed.status == .flushed)
    }
}
