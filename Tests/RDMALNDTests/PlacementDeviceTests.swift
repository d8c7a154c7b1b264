import LNet
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
}
