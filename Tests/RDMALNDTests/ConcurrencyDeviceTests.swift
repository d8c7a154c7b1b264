import LNet
import Testing
@testable import RDMALND

@Suite(.requiresDevice, .serialized) struct ConcurrencyDeviceTests {
    /// 1,000 operations from each side at once (half PUT, half GET, eager and RDMA sizes), far above the queue
    /// depth of 8. RNR retries are off (`LND_RNR_RETRY_COUNT=0`): one receiver-not-ready would fail the connection.
    @Test func thousandsOfConcurrentGetsAndPutsBothWays() async throws {
        let (server, client) = try LNDNode.pair { $0.rnrRetryCount = 0; $0.immediateSize = 2048; $0.timeout = 60 }
        defer { client.shutdown(); server.shutdown() }
        let perSide = 1000
        let slot = 8192
        func sizeOf(_ i: Int) -> Int { i % 3 == 0 ? 1000 : (i % 3 == 1 ? slot : 3000) }

        // Each node exposes a PUT sink and a GET source, one slot per operation.
        var sources: [LNetBuffer] = []
        var sinks: [LNetBuffer] = []
        let targetEQs = [EventQueue(capacity: 8192), EventQueue(capacity: 8192)]
        for (index, node) in [server, client].enumerated() {
            let sink = try LNetBuffer(count: perSide * slot)
            let source = try patterned(perSide * slot, seed: UInt64(index + 10))
            _ = try node.lnet.attach(MatchEntry(portal: 20, matchBits: 1),
                                     descriptor: MemoryDescriptor(storage: .buffer(sink), threshold: .infinite, options: [.put, .manageRemote],
                                                                  eventQueue: targetEQs[index]))
            _ = try node.lnet.attach(MatchEntry(portal: 21, matchBits: 1),
                                     descriptor: MemoryDescriptor(storage: .buffer(source), threshold: .infinite, options: [.get, .manageRemote],
                                                                  eventQueue: targetEQs[index]))
            sinks.append(sink)
            sources.append(source)
        }
        let initiatorEQs = [EventQueue(capacity: 8192), EventQueue(capacity: 8192)]
        var putData: [[LNetBuffer]] = [[], []]
        var getSinks: [[LNetBuffer]] = [[], []]
        for (index, node) in [server, client].enumerated() {
            let peer = index == 0 ? client.id : server.id
            for i in 0..<perSide {
                let size = sizeOf(i)
                if i % 2 == 0 {
                    let data = try patterned(size, seed: UInt64(index * 100_000 + i))
                    putData[index].append(data)
                    let md = try node.lnet.bind(MemoryDescriptor(storage: .buffer(data), threshold: .count(2), eventQueue: initiatorEQs[index]))
                    try node.lnet.put(md, to: peer, portal: 20, matchBits: 1, offset: i * slot, ackRequested: true)
                } else {
                    let sink = try LNetBuffer(count: size)
                    getSinks[index].append(sink)
                    let md = try node.lnet.bind(MemoryDescriptor(storage: .buffer(sink), threshold: .count(2), eventQueue: initiatorEQs[index]))
                    try node.lnet.get(md, from: peer, portal: 21, matchBits: 1, offset: i * slot)
                }
            }
        }
        // Every operation ends with an ACK or a REPLY; all must succeed.
        for index in 0..<2 {
            var finished = 0, failures = 0
            while finished < perSide {
                let event = try await initiatorEQs[index].next(timeout: .seconds(120))
                if event.status != .ok { failures += 1 }
                if event.kind == .ack || event.kind == .reply { finished += 1 }
            }
            #expect(failures == 0, "side \(index): \(failures) failed events")
        }
        // Contents: every PUT landed in its slot, every GET read its slot.
        for index in 0..<2 {
            let target = index == 0 ? 1 : 0
            var putIndex = 0, getIndex = 0
            for i in 0..<perSide {
                if i % 2 == 0 {
                    #expect(same(sinks[target], i * slot, putData[index][putIndex], 0, length: sizeOf(i)), "PUT \(i) from side \(index)")
                    putIndex += 1
                } else {
                    #expect(same(getSinks[index][getIndex], 0, sources[target], i * slot, length: sizeOf(i)), "GET \(i) from side \(index)")
                    getIndex += 1
                }
            }
        }
        #expect(server.ni.pendingMessageCount == 0 && client.ni.pendingMessageCount == 0)
        #expect(server.lnd.connectionCount == 1 && client.lnd.connectionCount == 1)
    }
}
