import Foundation
import LNet
import Testing
import Verbs
@testable import RDMALND

/// A hand-driven peer on raw verbs that speaks the LND's wire protocol, or breaks it on purpose.
final class RawPeer {
    let nid: NID
    let victim: NID
    let channel: CMEventChannel
    let id: CMID
    let protectionDomain: ProtectionDomain
    let completionQueue: CompletionQueue
    let queuePair: QueuePair
    let sendBuffer: MemoryRegion
    let receiveBuffers: MemoryRegion
    let messageSize: Int
    var victimStamp: UInt64 = 0
    let stamp: UInt64 = 77
    private var nextID: UInt64 = 1000

    /// Connects from `address` to the victim's service port; `request` overrides the handshake. `retryCount` and
    /// `rnrRetryCount` are what the connection request asks for: the victim's queue pair (the passive side's)
    /// resends that many times when this peer does not acknowledge, or has no receive posted (7: forever; on rxe
    /// a retry count of 7 is unlimited too, and a send this peer answers "receiver not ready" also runs out the
    /// retry count).
    init(address: String, victim: LNDNode, request: ConnectRequest? = nil, expectReject: Bool = false,
         retryCount: UInt8 = 3, rnrRetryCount: UInt8 = 3) throws {
        nid = NID(address: parseIPv4(address)!, network: .o2ib)
        self.victim = victim.id.nid
        let limits = ConnectionLimits(queueDepth: 8, maxFragments: 256,
                                      maxMessageSize: UInt32(WireFormat.maxMessageSize(immediateSize: 4096, maxFragments: 256)))
        messageSize = Int(limits.maxMessageSize)
        channel = try CMEventChannel()
        id = try channel.createID()
        // As the LND does (LND_ACK_TIMEOUT): with rdma_cm's default a lost packet may not be resent for a long time.
        try id.setAckTimeout(17)
        try id.resolveAddress(from: IPv4Endpoint(address),
                              to: IPv4Endpoint(formatIPv4(victim.id.nid.address), port: UInt16(victim.lnd.tunables.servicePort)),
                              timeout: .seconds(5))
        _ = try Self.wait(.addressResolved, channel)
        try id.resolveRoute(timeout: .seconds(5))
        _ = try Self.wait(.routeResolved, channel)
        let context = id.deviceContext!
        protectionDomain = try ProtectionDomain(context: context)
        completionQueue = try CompletionQueue(context: context, capacity: 256)
        queuePair = try id.createQueuePair(protectionDomain: protectionDomain, sendQueue: completionQueue, receiveQueue: completionQueue,
                                           capabilities: QueuePairCapabilities(maxSendWorkRequests: 64, maxReceiveWorkRequests: 32,
                                                                               maxSendScatterGather: 2))
        sendBuffer = try MemoryRegion(protectionDomain: protectionDomain, length: 64 << 10, access: [.localWrite])
        receiveBuffers = try MemoryRegion(protectionDomain: protectionDomain, length: 24 * messageSize, access: [.localWrite])
        for slot in 0..<24 {
            try queuePair.post(ReceiveWorkRequest(id: UInt64(slot), scatterGather: [receiveBuffers.sge(offset: slot * messageSize, length: messageSize)]))
        }
        let handshake = request ?? ConnectRequest(source: nid.rawValue, sourceStamp: stamp, destination: victim.id.nid.rawValue, limits: limits)
        try id.connect(ConnectionParameters(privateData: handshake.encoded(), responderResources: 4, initiatorDepth: 4, retryCount: retryCount, rnrRetryCount: rnrRetryCount))
        if expectReject { return }
        let established = try Self.wait(.established, channel)
        victimStamp = try ConnectAccept.decode(established.privateData).sourceStamp
    }

    static func wait(_ kind: CMEvent.Kind, _ channel: CMEventChannel, timeout: Duration = .seconds(10)) throws -> CMEvent {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let event = try channel.waitForEvent(timeout: .milliseconds(100)) {
                guard event.kind == kind else { throw RawPeerError("expected \(kind), got \(event.kind) (status \(event.status))") }
                return event
            }
        }
        throw RawPeerError("timed out waiting for \(kind)")
    }

    /// Waits for the next rdma_cm event of any kind.
    func nextEvent(timeout: Duration = .seconds(10)) throws -> CMEvent? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let event = try channel.waitForEvent(timeout: .milliseconds(100)) { return event }
        }
        return nil
    }

    /// Sends raw bytes as one SEND.
    func sendRaw(_ bytes: [UInt8]) throws {
        sendBuffer.bytes.copyBytes(from: bytes)
        try post(.send, [sendBuffer.sge(length: bytes.count)])
    }

    /// Sends a well-formed message with `body`.
    func send(_ body: WireBody, credits: UInt8 = 0) throws {
        let length = WireMessage.encode(body, credits: credits,
                                        addressing: WireAddressing(source: nid.rawValue, sourceStamp: stamp, destination: victim.rawValue,
                                                                   destinationStamp: victimStamp),
                                        checksum: false, into: sendBuffer.bytes)
        try post(.send, [sendBuffer.sge(length: length)])
    }

    /// Posts one work request and waits for its completion; returns its status.
    @discardableResult
    func post(_ operation: SendWorkRequest.Operation, _ sges: [ScatterGatherElement]) throws -> WorkCompletionStatus {
        nextID += 1
        try queuePair.post(SendWorkRequest(id: nextID, operation: operation, scatterGather: sges))
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            // Keep every receive of the batch (one may complete together with our send), then answer.
            var status: WorkCompletionStatus?
            for completion in try completionQueue.poll(max: 16) {
                if completion.id == nextID { status = completion.status }
                if completion.id < 24 { pendingReceives.append(completion) }
            }
            if let status { return status }
            Thread.sleep(forTimeInterval: 0.001)
        }
        throw RawPeerError("no completion for work request \(nextID)")
    }

    private var pendingReceives: [WorkCompletion] = []

    /// The next message the victim sends us, decoded.
    func receive(timeout: Duration = .seconds(10)) throws -> WireMessage {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if pendingReceives.isEmpty {
                pendingReceives += try completionQueue.poll(max: 16).filter { $0.id < 24 }
            }
            if let completion = pendingReceives.first {
                pendingReceives.removeFirst()
                guard completion.status.isSuccess else { throw RawPeerError("receive failed: \(completion.status)") }
                let slot = Int(completion.id)
                let bytes = UnsafeRawBufferPointer(rebasing: receiveBuffers.bytes[slot * messageSize..<slot * messageSize + Int(completion.byteLength)])
                let message = try WireMessage.decode(bytes, maxFragments: 256)
                try queuePair.post(ReceiveWorkRequest(id: UInt64(slot), scatterGather: [receiveBuffers.sge(offset: slot * messageSize, length: messageSize)]))
                return message
            }
            Thread.sleep(forTimeInterval: 0.001)
        }
        throw RawPeerError("no message from the victim")
    }

    /// True once the victim has closed this connection (we see the disconnect).
    func waitForDisconnect(timeout: Duration = .seconds(15)) throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let event = try channel.waitForEvent(timeout: .milliseconds(100)), event.kind == .disconnected {
                try? id.disconnect()
                return true
            }
        }
        return false
    }

    /// An LNet header from this raw peer to the victim.
    func lnetHeader(_ type: LNetMessageType, portal: UInt32, matchBits: UInt64, length: Int, payload: Int = 0) -> LNetHeader {
        LNetHeader(type: type, source: ProcessID(nid: nid, pid: 1), destination: ProcessID(nid: victim, pid: 4242),
                   payloadLength: UInt32(payload), length: UInt32(length), portal: portal, matchBits: matchBits, mdCookie: 99)
    }
}

struct RawPeerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
