import Foundation
import LNet
import Testing
@testable import RDMALND

@Suite(.requiresDevice, .serialized) struct HandshakeDeviceTests {
    func putAndAck(_ client: LNDNode, _ server: LNDNode, size: Int = 64 << 10) async throws -> Bool {
        let sink = try LNetBuffer(count: size)
        let bits = UInt64(size)
        _ = try server.lnet.attach(MatchEntry(portal: 60, matchBits: bits),
                                   descriptor: MemoryDescriptor(storage: .buffer(sink), threshold: .infinite, options: [.put, .manageRemote]))
        let source = try patterned(size, seed: 12)
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(source), threshold: .count(2), eventQueue: eq))
        try client.lnet.put(md, to: server.id, portal: 60, matchBits: bits, ackRequested: true)
        let send = try await eq.next(timeout: .seconds(30))
        guard send.status == .ok else { return false }
        let ack = try await eq.next(timeout: .seconds(30))
        return ack.status == .ok && same(sink, 0, source, 0, length: size)
    }

    /// The client proposes a deeper queue than the server takes: the server rejects with its limits and the
    /// client retries with them.
    @Test func rejectedLimitsAreRetriedWithThePeersValues() async throws {
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        tunables.peerCredits = 8
        let server = try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables)
        defer { server.shutdown() }
        tunables.peerCredits = 32
        tunables.credits = 256
        let client = try LNDNode(address: LNDTestDevice.clientAddress, tunables: tunables)
        defer { client.shutdown() }
        #expect(try await putAndAck(client, server))
        #expect(server.lnd.counters?.rejectsSent == 1)
        #expect(client.lnd.counters?.reconnects == 1)
    }

    /// LND_IB_MTU lowers the path MTU of the connection's queue pair; 0 keeps the port's (1024 on rxe over a
    /// 1500-byte netdev).
    @Test(arguments: [0, 512, 256])
    func pathMTUFollowsTheTunable(mtu: Int) async throws {
        let (server, client) = try LNDNode.pair { $0.ibMTU = mtu }
        defer { client.shutdown(); server.shutdown() }
        #expect(try await putAndAck(client, server, size: 256 << 10))
        for node in [client, server] {
            let info = try #require(node.lnd.connections.first)
            #expect(info.pathMTU == (mtu == 0 ? 1024 : mtu), "\(info)")
        }
    }

    /// Both sides' QPs get LND_ACK_TIMEOUT and LND_RETRY_COUNT (with rdma_cm's own default, lost packets stalled
    /// connections until LND_TIMEOUT in the fault suite).
    @Test(arguments: [(17, 5), (12, 7)])
    func retransmissionFollowsTheTunables(ackTimeout: Int, retryCount: Int) async throws {
        let (server, client) = try LNDNode.pair { $0.ackTimeout = ackTimeout; $0.retryCount = retryCount }
        defer { client.shutdown(); server.shutdown() }
        #expect(try await putAndAck(client, server, size: 4096))
        for node in [client, server] {
            let info = try #require(node.lnd.connections.first)
            #expect(info.ackTimeout == ackTimeout && info.retryCount == retryCount, "\(info)")
        }
    }

    /// The smallest queue depth works, and NOOPs never answer NOOPs (no endless exchange once traffic stops).
    @Test func queueDepthTwoCarriesTrafficWithoutANoopStorm() async throws {
        let (server, client) = try LNDNode.pair { $0.peerCredits = 2; $0.credits = 2; $0.ntx = 16 }
        defer { client.shutdown(); server.shutdown() }
        for size in [100, 3000, 100_000, 200, 50] { #expect(try await putAndAck(client, server, size: size)) }
        let settled = (client.lnd.counters?.noops ?? 0) + (server.lnd.counters?.noops ?? 0)
        try await Task.sleep(for: .seconds(1))
        let later = (client.lnd.counters?.noops ?? 0) + (server.lnd.counters?.noops ?? 0)
        #expect(later - settled <= 2, "NOOPs kept flowing: \(settled) -> \(later)")
    }

    @Test func checksummedTrafficFlows() async throws {
        let (server, client) = try LNDNode.pair { $0.checksum = true; $0.immediateSize = 4096 }
        defer { client.shutdown(); server.shutdown() }
        #expect(try await putAndAck(client, server, size: 3000))
        #expect(try await putAndAck(client, server, size: 1 << 20))
    }

    @Test func anotherProtocolVersionIsRejectedByName() async throws {
        let (victim, other) = try LNDNode.pair()
        defer { other.shutdown(); victim.shutdown() }
        let limits = ConnectionLimits(queueDepth: 8, maxFragments: 256,
                                      maxMessageSize: UInt32(WireFormat.maxMessageSize(immediateSize: 4096, maxFragments: 256)))
        var request = ConnectRequest(source: NID(address: parseIPv4(MalformedMessageDeviceTests.rawAddress)!, network: .o2ib).rawValue,
                                     sourceStamp: 1, destination: victim.id.nid.rawValue, limits: limits)
        request.version = Handshake.version + 1
        let raw = try RawPeer(address: MalformedMessageDeviceTests.rawAddress, victim: victim, request: request, expectReject: true)
        let event = try #require(try raw.nextEvent())
        #expect(event.kind == .rejected)
        #expect(ConnectReject.decode(event.privateData)?.reason == .versionMismatch)
    }

    /// Both nodes send to each other at the same moment: the two connection requests cross, the higher NID (b)
    /// rejects the lower's request as a race and keeps its own connection, the lower NID (a) accepts it, and
    /// exactly one connection survives on each side. Whether the requests cross is up to timing, so fresh pairs
    /// are tried until one races (at most 5); every attempt must end with one connection each way, and one must
    /// have raced.
    @Test func simultaneousConnectsEndWithOneConnection() async throws {
        var raced = 0
        var attempts = 0
        while raced == 0 && attempts < 5 {
            attempts += 1
            let (a, b) = try LNDNode.pair()
            defer { b.shutdown(); a.shutdown() }
            #expect(b.id.nid > a.id.nid)
            for node in [a, b] {
                _ = try node.lnet.attach(MatchEntry(portal: 61, matchBits: 1),
                                         descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite, options: [.put]))
            }
            let eqs = [EventQueue(), EventQueue()]
            let mds = [try a.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(8, seed: 1)), eventQueue: eqs[0])),
                       try b.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(8, seed: 2)), eventQueue: eqs[1]))]
            try a.lnet.put(mds[0], to: b.id, portal: 61, matchBits: 1, ackRequested: false)
            try b.lnet.put(mds[1], to: a.id, portal: 61, matchBits: 1, ackRequested: false)
            #expect(try await eqs[0].next(timeout: .seconds(30)).status == .ok)
            #expect(try await eqs[1].next(timeout: .seconds(30)).status == .ok)
            try await Task.sleep(for: .milliseconds(500))
            #expect(a.lnd.connectionCount == 1 && b.lnd.connectionCount == 1, "attempt \(attempts)")
            // Both sides agree on the one connection: traffic still flows both ways.
            #expect(try await putAndAck(a, b, size: 4096))
            #expect(try await putAndAck(b, a, size: 8192))
            let rejectedByA = try #require(a.lnd.counters?.rejectsSent)
            let rejectedByB = try #require(b.lnd.counters?.rejectsSent)
            #expect(rejectedByA == 0, "attempt \(attempts): the lower NID rejected \(rejectedByA) connection requests")
            if rejectedByB > 0 { raced += 1 }
        }
        #expect(raced == 1, "no connection race in \(attempts) attempts: b never rejected a's request")
    }
}

@Suite(.requiresDevice, .serialized) struct PeerFailureDeviceTests {
    /// A peer that stops answering (a hung or dead node that sends no disconnect): the pending GET fails with a
    /// timeout within LND_TIMEOUT, and the connection is closed.
    @Test func silentPeerTimesOutPendingMessages() async throws {
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        tunables.timeout = 3
        let victim = try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables)
        defer { victim.shutdown() }
        let raw = try RawPeer(address: MalformedMessageDeviceTests.rawAddress, victim: victim)
        let eq = EventQueue()
        let md = try victim.lnet.bind(MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64 << 10)), threshold: .count(2), eventQueue: eq))
        let start = ContinuousClock.now
        try victim.lnet.get(md, from: ProcessID(nid: raw.nid, pid: 1), portal: 1, matchBits: 1)
        // The raw peer takes the GET_REQ and never answers.
        let request = try raw.receive()
        #expect(request.body.type == .getRequest)
        let send = try await eq.next(timeout: .seconds(20))
        let failed = send.status != .ok ? send : try await eq.next(timeout: .seconds(20))
        #expect(failed.status == .timeout, "\(failed)")
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .seconds(3) && elapsed < .seconds(8), "\(elapsed)")
        let deadline = ContinuousClock.now + .seconds(5)
        while victim.ni.pendingMessageCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(victim.ni.pendingMessageCount == 0)
        #expect(try raw.waitForDisconnect())
    }

    /// An idle connection exchanges keepalive NOOPs.
    @Test func idleConnectionsKeepAlive() async throws {
        let (server, client) = try LNDNode.pair { $0.keepalive = 1 }
        defer { client.shutdown(); server.shutdown() }
        _ = try server.lnet.attach(MatchEntry(portal: 62, matchBits: 1),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite, options: [.put]))
        let eq = EventQueue()
        let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(8, seed: 1)), eventQueue: eq))
        try client.lnet.put(md, to: server.id, portal: 62, matchBits: 1, ackRequested: false)
        #expect(try await eq.next(timeout: .seconds(30)).status == .ok)
        try await Task.sleep(for: .seconds(4))
        #expect((client.lnd.counters?.noops ?? 0) >= 1 && (server.lnd.counters?.noops ?? 0) >= 1)
        #expect(client.lnd.connectionCount == 1 && server.lnd.connectionCount == 1)
    }
}
