import LNet
import Synchronization
import Testing
@testable import RDMALND

/// Where connections and threads go (seed 001): a connection is placed on a scheduler by the hash of its peer NID
/// (its CPU partition, then one of that partition's schedulers), and each scheduler thread is bound to its
/// partition's CPUs.
@Suite(.requiresDevice, .serialized) struct PlacementDeviceTests {
    @Test func connectionsGoBySchedulerOfTheirPeerNIDAndThreadsAreBound() async throws {
        let (server, client) = try LNDNode.pair { $0.schedulers = 4 }
        var tunables = server.lnd.tunables
        tunables.schedulers = 4
        let third = try LNDNode(address: MalformedMessageDeviceTests.rawAddress, tunables: tunables)
        defer { third.shutdown(); client.shutdown(); server.shutdown() }
        _ = try server.lnet.attach(MatchEntry(portal: 30, matchBits: 1),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite, options: [.put]))
        for node in [client, third] {
            let eq = EventQueue()
            let md = try node.lnet.bind(MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 8)), threshold: .count(2), eventQueue: eq))
            try node.lnet.put(md, to: server.id, portal: 30, matchBits: 1)
            #expect(try await expectEvent(.send, on: eq).status == .ok)
            #expect(try await expectEvent(.ack, on: eq).status == .ok)
        }
        let partitions = server.ni.partitions
        // Threads: each scheduler bound to its partition's CPUs (scheduler i serves partition i mod count).
        let cpus = server.lnd.schedulerCPUs
        #expect(cpus.count == 4)
        for (index, bound) in cpus.enumerated() {
            #expect(bound == partitions.cpus[index % partitions.count], "scheduler \(index) runs on \(bound)")
        }
        // Connections: on the scheduler of their peer's partition, picked by the NID hash.
        let connections = server.lnd.connections
        #expect(Set(connections.map(\.peer)) == [client.id.nid, third.id.nid])
        for connection in connections {
            let partition = partitions.partition(forPeer: connection.peer)
            let candidates = (0..<4).filter { $0 % partitions.count == partition }
            let expected = candidates[Int(CPUPartitionTable.mix(connection.peer.rawValue) % UInt64(candidates.count))]
            #expect(connection.scheduler == expected, "\(connection.peer) is on scheduler \(connection.scheduler), not \(expected)")
        }
        // The client places its one connection the same way.
        let toServer = try #require(client.lnd.connections.first)
        #expect(client.ni.partitions.partition(forPeer: server.id.nid) == toServer.scheduler % client.ni.partitions.count)
    }

    /// Early placement over rxe (`LNET_PLACEMENT`): 1,000 PUTs and GETs from one peer on one portal, eager and
    /// bulk, each with hints that change from one message to the next (so under `hint` and `none` consecutive
    /// messages are matched on different partitions). Use-once entry `k` is matched by message `k` only if the
    /// server matches them in arrival order (which the client's LND need not keep: a bulk message can overtake an
    /// eager one, so arrival is recorded as the server's LND decodes); every operation completes on the client.
    @Test(arguments: [PlacementPolicy.peerHash, .hints, .roundRobin])
    func onePeersMessagesAreMatchedInArrivalOrderWhateverPartitionMatchesThem(_ policy: PlacementPolicy) async throws {
        let (server, client) = try LNDNode.pair(placement: policy, recordArrivals: true)
        defer { client.shutdown(); server.shutdown() }
        let count = 1000
        let bulk = 32 << 10
        let serverEQ = EventQueue(capacity: 4 * count)
        for k in 0..<count {
            _ = try server.lnet.attach(MatchEntry(portal: 31, matchBits: 7),
                                       descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: bulk), threshold: .count(1),
                                                                    options: [.put, .get], eventQueue: serverEQ, userInfo: k))
        }
        let clientEQ = EventQueue(capacity: 4 * count)
        for k in 0..<count {
            // Eager PUT, bulk PUT, eager GET, bulk GET, in turn.
            let size = k % 2 == 0 ? 256 : bulk
            let md = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: size), threshold: .count(2), eventQueue: clientEQ))
            let hints = LNetHints(major: UInt64(k % 7), minor: UInt64(k / 7))
            if k % 4 < 2 {
                try client.lnet.put(md, to: server.id, portal: 31, matchBits: 7, hints: hints)
            } else {
                try client.lnet.get(md, from: server.id, portal: 31, matchBits: 7, hints: hints)
            }
        }
        var outOfOrder: [String] = []
        var matched = 0
        var events: [(entry: Int, message: Int)] = []
        while matched < count {
            let event = try await serverEQ.next(timeout: .seconds(30))
            guard event.kind == .put || event.kind == .get else { continue }
            #expect(event.status == .ok)
            matched += 1
            events.append((try #require(event.userInfo as? Int), Int(event.hints.major) + 7 * Int(event.hints.minor)))
        }
        // Entry k must have been matched by the k-th message to arrive.
        let arrived = server.arrivals.headers.withLock { $0 }.map { Int($0.hints.major) + 7 * Int($0.hints.minor) }
        #expect(arrived.count == count)
        for (entry, message) in events where entry >= arrived.count || arrived[entry] != message {
            outOfOrder.append("message \(message) matched entry \(entry)")
        }
        #expect(outOfOrder.count == 0, "\(outOfOrder.count) out of order under \(policy), first: \(outOfOrder.prefix(5))")
        var completed = 0
        while completed < count {
            let event = try await clientEQ.next(timeout: .seconds(30))
            guard event.kind == .ack || event.kind == .reply else { continue }
            #expect(event.status == .ok, "\(event)")
            completed += 1
        }
        if policy == .peerHash {
            #expect(server.ni.placementStatistics == nil)
        } else {
            let statistics = try #require(server.ni.placementStatistics)
            #expect(statistics.matchedPerPartition.reduce(0, +) == count)
            if server.ni.partitions.count > 1 {
                #expect(statistics.matchedPerPartition.allSatisfy { $0 > 0 }, "\(statistics.matchedPerPartition)")
                #expect(statistics.crossPartition > 0)
            }
        }
    }

    /// Cookies and answers over rxe, with early placement on both nodes. The client binds its MDs as a thread of
    /// a partition other than its connection's scheduler's: the ACK of its PUT and the REPLYs of an eager and a bulk
    /// GET must be handled there, not on the scheduler thread that received them. The server (cookies on) names
    /// in the ACK the partition that matched the PUT; a PUT echoing a cookie is matched on the partition it names.
    @Test func answersGoToTheSendingPartitionAndEchoedCookiesToTheirs() async throws {
        let (server, client) = try LNDNode.pair(placement: .hints, placementCookies: true)
        defer { client.shutdown(); server.shutdown() }
        let partitions = client.ni.partitions
        try #require(partitions.count > 1, "placement needs two CPUs or more")
        let serverSide = Mutex<[(LNetEventKind, Int)]>([])
        let serverEQ = EventQueue(delivery: .inline { event in
            serverSide.withLock { $0.append((event.kind, CPUPartitionTable.servedByCurrentThread ?? -1)) }
        })
        _ = try server.lnet.attach(MatchEntry(portal: 32, matchBits: 9),
                                   descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 64 << 10), threshold: .infinite,
                                                                options: [.put, .get, .manageRemote], eventQueue: serverEQ))
        let clientSide = Mutex<[(LNetEventKind, Int, LNetPlacementCookie?)]>([])
        let clientEQ = EventQueue(delivery: .inline { event in
            clientSide.withLock { $0.append((event.kind, CPUPartitionTable.servedByCurrentThread ?? -1, event.placementCookie)) }
        })
        let home = (partitions.partition(forPeer: server.id.nid) + 1) % partitions.count
        CPUPartitionTable.setServedByCurrentThread(home)
        let putMD = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 256), threshold: .count(2), eventQueue: clientEQ))
        let eagerGet = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 256), threshold: .count(2), eventQueue: clientEQ))
        let bulkGet = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 32 << 10), threshold: .count(2), eventQueue: clientEQ))
        CPUPartitionTable.setServedByCurrentThread(nil)
        let hints = LNetHints(major: 5, minor: 0)
        try client.lnet.put(putMD, to: server.id, portal: 32, matchBits: 9, hints: hints)
        try client.lnet.get(eagerGet, from: server.id, portal: 32, matchBits: 9, hints: hints)
        try client.lnet.get(bulkGet, from: server.id, portal: 32, matchBits: 9, hints: hints)
        let deadline = ContinuousClock.now + .seconds(20)
        _ = await eventually(timeout: deadline - .now) { clientSide.withLock { $0.filter { $0.0 == .ack || $0.0 == .reply }.count } >= 3 }
        let answers = clientSide.withLock { $0.filter { $0.0 == .ack || $0.0 == .reply } }
        #expect(answers.map(\.0).sorted { $0.description < $1.description } == [.ack, .reply, .reply])
        #expect(answers.allSatisfy { $0.1 == home }, "answers handled on \(answers.map { "\($0.0) on \($0.1)" }), sent from \(home)")
        // The ACK names the partition the server matched the PUT on (its hints' partition).
        let cookie = try #require(answers.first { $0.0 == .ack }?.2)
        #expect(cookie.partition == server.ni.partitions.partition(forHints: hints))
        // Echoed, a cookie naming another partition places the PUT there.
        let named = (cookie.partition + 1) % server.ni.partitions.count
        let echo = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 256), threshold: .count(2), eventQueue: clientEQ))
        try client.lnet.put(echo, to: server.id, portal: 32, matchBits: 9, hints: LNetHints(cookie: LNetPlacementCookie(partition: named)))
        _ = await eventually(timeout: deadline - .now) { serverSide.withLock { $0.filter { $0.0 == .put }.count } >= 2 }
        let puts = serverSide.withLock { $0.filter { $0.0 == .put }.map(\.1) }
        #expect(puts == [cookie.partition, named])
    }
}
