import Verbs

/// Two RC queue pairs on one device connected through rdma_cm, as two endpoints in one process:
/// a server listening on 192.0.2.1 and a client connecting from 192.0.2.2.
final class ConnectedPair {
    struct Side {
        let channel: CMEventChannel
        let id: CMID
        let protectionDomain: ProtectionDomain
        let completionChannel: CompletionChannel
        let sendQueue: CompletionQueue
        let receiveQueue: CompletionQueue
        let queuePair: QueuePair
    }

    let listener: CMID
    let server: Side
    let client: Side

    static let capabilities = QueuePairCapabilities(maxSendWorkRequests: 64, maxReceiveWorkRequests: 64,
                                                    maxSendScatterGather: 2, maxReceiveScatterGather: 2, maxInlineData: 64)

    private static func side(channel: CMEventChannel, id: CMID) throws -> Side {
        guard let context = id.deviceContext else { throw VerbsError(call: "CMID.deviceContext", errno: 19) }
        let pd = try ProtectionDomain(context: context)
        let completionChannel = try CompletionChannel(context: context)
        let sendQueue = try CompletionQueue(context: context, capacity: 128, channel: completionChannel)
        let receiveQueue = try CompletionQueue(context: context, capacity: 128, channel: completionChannel)
        let qp = try id.createQueuePair(protectionDomain: pd, sendQueue: sendQueue, receiveQueue: receiveQueue,
                                        capabilities: capabilities)
        return Side(channel: channel, id: id, protectionDomain: pd, completionChannel: completionChannel,
                    sendQueue: sendQueue, receiveQueue: receiveQueue, queuePair: qp)
    }

    /// Connects; `serverPrivateData` goes back in the accept, `clientPrivateData` in the request.
    init(clientPrivateData: [UInt8] = [], serverPrivateData: [UInt8] = [], reads: UInt8 = 4,
         beforeAccept: (Side) throws -> Void = { _ in }) throws {
        let serverChannel = try CMEventChannel()
        let clientChannel = try CMEventChannel()
        listener = try serverChannel.createID()
        try listener.bind(IPv4Endpoint(TestDevice.serverAddress, port: 0))
        try listener.listen()
        guard let port = listener.localEndpoint?.port else { throw TestTimeout(what: "listener port") }

        let clientID = try clientChannel.createID()
        try clientID.resolveAddress(from: IPv4Endpoint(TestDevice.clientAddress), to: IPv4Endpoint(TestDevice.serverAddress, port: port),
                                    timeout: .seconds(5))
        _ = try expectEvent(.addressResolved, on: clientChannel)
        try clientID.resolveRoute(timeout: .seconds(5))
        _ = try expectEvent(.routeResolved, on: clientChannel)
        client = try Self.side(channel: clientChannel, id: clientID)
        try clientID.connect(ConnectionParameters(privateData: clientPrivateData, responderResources: reads, initiatorDepth: reads))

        let request = try expectEvent(.connectRequest, on: serverChannel)
        guard request.privateData.starts(with: clientPrivateData) else { throw TestTimeout(what: "client private data") }
        server = try Self.side(channel: serverChannel, id: request.id)
        try beforeAccept(server)
        try request.id.accept(ConnectionParameters(privateData: serverPrivateData, responderResources: reads, initiatorDepth: reads))

        let established = try expectEvent(.established, on: clientChannel)
        guard established.privateData.starts(with: serverPrivateData) else { throw TestTimeout(what: "server private data") }
        _ = try expectEvent(.established, on: serverChannel)
    }
}
