import Foundation
import LNet
import Testing
import Verbs
@testable import RDMALND

/// A hand-crafted bad message closes only the connection that carried it, with a logged reason; the victim
/// keeps serving its other peers. The raw peer uses a third address of the test bed (192.0.2.3).
@Suite(.requiresDevice, .serialized) struct MalformedMessageDeviceTests {
    static let rawAddress = ProcessInfo.processInfo.environment["RDMA_TEST_THIRD_ADDR"] ?? "192.0.2.3"

    enum Damage: String, CaseIterable, Sendable {
        case badMagic, truncatedHeader, lengthBeyondBuffer, unknownType, unknownVersion, tooManyFragments, doneForUnknownTransfer,
             descriptorOutsidePeerMemory, sinkShorterThanRequest, wrongStamp
    }

    /// The victim on 192.0.2.1 with a PUT and a GET entry; a healthy peer on 192.0.2.2 already talking to it.
    /// `rawConnects`: whether the raw peer's connection is accepted (then the victim made two connections, and
    /// closed exactly one: the raw peer's).
    func withVictim(rawConnects: Bool = true, _ body: (LNDNode, LNDNode) async throws -> Void) async throws {
        let (victim, healthy) = try LNDNode.pair { $0.immediateSize = 1024 }
        defer { healthy.shutdown(); victim.shutdown() }
        _ = try victim.lnet.attach(MatchEntry(portal: 40, matchBits: 1),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 1 << 20)), threshold: .infinite,
                                                                options: [.put, .get, .truncate]))
        try await healthyPut(from: healthy, to: victim)
        try await body(victim, healthy)
        // The victim still serves the healthy peer, on the same connection.
        try await healthyPut(from: healthy, to: victim)
        let counters = try #require(victim.lnd.counters)
        #expect(counters.connectionsEstablished == (rawConnects ? 2 : 1))
        #expect(counters.connectionsClosed == (rawConnects ? 1 : 0))
        #expect(healthy.lnd.counters?.connectionsEstablished == 1 && healthy.lnd.counters?.connectionsClosed == 0)
    }

    /// The protocol violation the victim must report for each damage (it closes the connection itself).
    static func violation(for damage: Damage) -> ProtocolViolation {
        switch damage {
        case .badMagic, .truncatedHeader, .lengthBeyondBuffer, .unknownType, .unknownVersion, .tooManyFragments, .wrongStamp:
            .malformedMessage
        case .doneForUnknownTransfer: .unknownTransfer
        case .descriptorOutsidePeerMemory, .sinkShorterThanRequest: .badDescriptor
        }
    }

    func healthyPut(from node: LNDNode, to victim: LNDNode) async throws {
        let eq = EventQueue()
        let md = try node.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(8192, seed: 3)), threshold: .count(2), eventQueue: eq))
        try node.lnet.put(md, to: victim.id, portal: 40, matchBits: 1, ackRequested: true)
        #expect(try await expectEvent(.send, on: eq).status == .ok)
        #expect(try await expectEvent(.ack, on: eq).status == .ok)
    }

    @Test(arguments: Damage.allCases)
    func badMessageClosesOnlyItsConnection(_ damage: Damage) async throws {
        try await withVictim { victim, _ in
            let before = try #require(victim.lnd.counters)
            let raw = try RawPeer(address: Self.rawAddress, victim: victim)
            let header = WireAddressing(source: raw.nid.rawValue, sourceStamp: raw.stamp, destination: raw.victim.rawValue,
                                        destinationStamp: raw.victimStamp)
            func encoded(_ body: WireBody, _ addressing: WireAddressing = header) -> [UInt8] {
                var bytes = [UInt8](repeating: 0, count: 8192)
                let length = bytes.withUnsafeMutableBytes { WireMessage.encode(body, credits: 0, addressing: addressing, checksum: false, into: $0) }
                return Array(bytes[0..<length])
            }
            switch damage {
            case .badMagic:
                var bytes = encoded(.noop)
                bytes[0] ^= 0x55
                try raw.sendRaw(bytes)
            case .truncatedHeader:
                try raw.sendRaw(Array(encoded(.noop)[0..<10]))
            case .lengthBeyondBuffer:
                var bytes = encoded(.noop)
                bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(4000).littleEndian, toByteOffset: 8, as: UInt32.self) }
                try raw.sendRaw(bytes)
            case .unknownType:
                var bytes = encoded(.noop)
                bytes[6] = 99
                try raw.sendRaw(bytes)
            case .unknownVersion:
                var bytes = encoded(.noop)
                bytes[4] = 7
                try raw.sendRaw(bytes)
            case .tooManyFragments:
                var bytes = encoded(.getRequest(lnet: raw.lnetHeader(.get, portal: 40, matchBits: 1, length: 4096), cookie: 1,
                                                sink: RDMADescriptor(fragments: [RDMAFragment(address: 1, length: 4096, rkey: 1)])))
                let countOffset = WireFormat.headerSize + WireFormat.lnetHeaderSize + 8
                bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt16(300).littleEndian, toByteOffset: countOffset, as: UInt16.self) }
                try raw.sendRaw(bytes)
            case .doneForUnknownTransfer:
                try raw.send(.getDone(cookie: 123_456, status: 0, length: 0))
            case .descriptorOutsidePeerMemory:
                // A pull PUT of 64 KiB whose source exposes only 4 KiB: READing the PUT would run 60 KiB past what
                // the raw peer registered. (The rkey is real, so only the victim's own check stops it.)
                let source = try MemoryRegion(protectionDomain: raw.protectionDomain, length: 4096, access: [.remoteRead])
                try raw.send(.putRequest(lnet: raw.lnetHeader(.put, portal: 40, matchBits: 1, length: 0, payload: 65536), cookie: 1,
                                         source: RDMADescriptor(fragments: [RDMAFragment(address: source.address, length: 4096, rkey: source.rkey)])),
                             credits: 0)
                _ = source
            case .sinkShorterThanRequest:
                // The GET asks for 64 KiB but its sink descriptor covers 100 bytes.
                let sink = try MemoryRegion(protectionDomain: raw.protectionDomain, length: 4096, access: [.localWrite, .remoteWrite])
                try raw.send(.getRequest(lnet: raw.lnetHeader(.get, portal: 40, matchBits: 1, length: 65536), cookie: 2,
                                         sink: RDMADescriptor(fragments: [RDMAFragment(address: sink.address, length: 100, rkey: sink.rkey)])))
                _ = sink
            case .wrongStamp:
                try raw.sendRaw(encoded(.noop, WireAddressing(source: raw.nid.rawValue, sourceStamp: raw.stamp + 1,
                                                              destination: raw.victim.rawValue, destinationStamp: raw.victimStamp)))
            }
            #expect(try raw.waitForDisconnect(), "the victim did not close the connection for \(damage)")
            // The victim's own check closed it (not the NIC refusing an RDMA): one violation of the right kind,
            // and no RDMA posted for the bad message.
            let after = try #require(victim.lnd.counters)
            let kind = Self.violation(for: damage).rawValue
            #expect(after.protocolErrorsByKind == [kind: (before.protocolErrorsByKind[kind] ?? 0) + 1], "\(after.protocolErrorsByKind)")
            #expect(after.protocolErrors == before.protocolErrors + 1)
            #expect(after.rdmaReads == before.rdmaReads && after.rdmaWrites == before.rdmaWrites)
        }
    }

    @Test func connectionRequestClaimingAnotherNodesNIDIsRejected() async throws {
        try await withVictim(rawConnects: false) { victim, healthy in
            let limits = ConnectionLimits(queueDepth: 8, maxFragments: 256,
                                          maxMessageSize: UInt32(WireFormat.maxMessageSize(immediateSize: 4096, maxFragments: 256)))
            // From 192.0.2.3, claiming to be the healthy node (192.0.2.2).
            let lie = ConnectRequest(source: healthy.id.nid.rawValue, sourceStamp: 1, destination: victim.id.nid.rawValue, limits: limits)
            let raw = try RawPeer(address: Self.rawAddress, victim: victim, request: lie, expectReject: true)
            let event = try #require(try raw.nextEvent())
            #expect(event.kind == .rejected)
            #expect(ConnectReject.decode(event.privateData)?.reason == .wrongDestination)
        }
    }
}

/// After a transfer completes, the key that exposed its memory is dead.
@Suite(.requiresDevice, .serialized) struct StaleKeyDeviceTests {
    @Test func pullSourceKeyIsRefusedAfterGetDone() async throws {
        let (victim, other) = try LNDNode.pair { $0.getMode = .pull; $0.immediateSize = 1024 }
        defer { other.shutdown(); victim.shutdown() }
        let source = try patterned(65536, seed: 5)
        _ = try victim.lnet.attach(MatchEntry(portal: 41, matchBits: 7),
                                   descriptor: MemoryDescriptor(storage: .buffer(source), threshold: .infinite, options: [.get]))
        let raw = try RawPeer(address: MalformedMessageDeviceTests.rawAddress, victim: victim)
        let sink = try MemoryRegion(protectionDomain: raw.protectionDomain, length: 65536, access: [.localWrite, .remoteWrite])
        try raw.send(.getRequest(lnet: raw.lnetHeader(.get, portal: 41, matchBits: 7, length: 65536), cookie: 9,
                                 sink: RDMADescriptor(fragments: [RDMAFragment(address: sink.address, length: 65536, rkey: sink.rkey)])))
        let pull = try raw.receive()
        guard case .pull(let requesterCookie, let targetCookie, let status, let length, let descriptor) = pull.body else {
            Issue.record("expected PULL, got \(pull.body.type)")
            return
        }
        #expect(requesterCookie == 9 && status == 0 && length == 65536)
        let fragment = try #require(descriptor.fragments.first)
        // While the transfer is in flight the key works.
        #expect(try raw.post(.rdmaRead(remoteAddress: fragment.address, rkey: fragment.rkey), [sink.sge()]) == .success)
        #expect(memcmp(sink.bytes.baseAddress!, source.baseAddress, 65536) == 0)
        try raw.send(.getDone(cookie: targetCookie, status: 0, length: length))
        try await Task.sleep(for: .milliseconds(300))
        // After GET_DONE the victim revoked it: the same key is refused.
        #expect(try raw.post(.rdmaRead(remoteAddress: fragment.address, rkey: fragment.rkey), [sink.sge()]) == .remoteAccessError)
    }
}
