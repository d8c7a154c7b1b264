import Testing

@testable import LNet

@Suite struct CPUPartitionTests {
    private func peer(_ index: Int) -> NID { NID(address: 0x0A00_0000 | UInt32(index), network: .o2ib) }

    @Test func splitsCPUsIntoPartitions() {
        let table = CPUPartitionTable(count: 2, cpuCount: 5)
        #expect(table.count == 2)
        #expect(table.cpus == [[0, 2, 4], [1, 3]])
        #expect(CPUPartitionTable().count == CPUPartitionTable.onlineCPUs)
        #expect(CPUPartitionTable(count: 0).count == 1)
    }

    @Test func peerHashIsDeterministicAndSpreadsPeers() {
        let table = CPUPartitionTable(count: 4)
        var load = [0, 0, 0, 0]
        for index in 0..<1000 {
            let partition = table.partition(forPeer: peer(index))
            #expect(partition == CPUPartitionTable(count: 4).partition(forPeer: peer(index)))
            load[partition] += 1
        }
        #expect(load.allSatisfy { (175...325).contains($0) }, "load \(load)")
    }

    @Test func hintsKeepOneObjectOnOnePartitionWhateverThePeer() {
        let table = CPUPartitionTable(count: 4)
        let hints = LNetHints(major: 0xF1D_0001, minor: 3)
        let byHint = Set((0..<200).map { table.partition(peer: peer($0), hints: hints, policy: .hints) })
        let byPeer = Set((0..<200).map { table.partition(peer: peer($0), hints: hints, policy: .peerHash) })
        #expect(byHint == [table.partition(forHints: hints)])
        #expect(byPeer.count == 4)
        // Without hints, .hints falls back to the peer.
        #expect(table.partition(peer: peer(7), hints: .none, policy: .hints) == table.partition(forPeer: peer(7)))
        // Minor hints (offset in GiB) spread one object's extents.
        let extents = Set((0..<64).map { table.partition(forHints: LNetHints(major: 1, minor: UInt64($0))) })
        #expect(extents.count == 4)
    }

    @Test func interfacePlacesIncomingHeaders() throws {
        let lnet = LNet(configuration: .init(partitions: CPUPartitionTable(count: 3), placement: .hints))
        defer { lnet.shutdown() }
        let ni = try lnet.addLoopback()
        let header = LNetHeader(type: .put, source: ProcessID(nid: peer(1), pid: 1), destination: ni.processID,
                                hints: LNetHints(major: 99, minor: 0))
        #expect(ni.partition(for: header) == ni.partitions.partition(forHints: LNetHints(major: 99, minor: 0)))
        var plain = header
        plain.hints = .none
        #expect(ni.partition(for: plain) == ni.partitions.partition(forPeer: peer(1)))
    }
}
