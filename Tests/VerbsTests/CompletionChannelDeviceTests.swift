import Testing
import Verbs

@Suite(.requiresDevice, .serialized) struct CompletionChannelDeviceTests {
    @Test func armedQueueWakesItsChannel() throws {
        var receiveRegion: MemoryRegion?
        let pair = try ConnectedPair { server in
            let region = try MemoryRegion(protectionDomain: server.protectionDomain, length: 64, access: [.localWrite])
            try server.queuePair.post(ReceiveWorkRequest(id: 21, scatterGather: [region.sge()]))
            receiveRegion = region
        }
        // Nothing is pending: a short wait times out with no queue.
        try pair.server.receiveQueue.requestNotification()
        #expect(try pair.server.completionChannel.waitForEvent(timeout: .milliseconds(50)) == nil)

        let message = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 64, access: [])
        try pair.client.queuePair.post(SendWorkRequest(id: 1, operation: .send, scatterGather: [message.sge(length: 8)]))

        let woken = try pair.server.completionChannel.waitForEvent(timeout: .seconds(20))
        #expect(woken === pair.server.receiveQueue)
        // The usual pattern: re-arm, then poll empty.
        try pair.server.receiveQueue.requestNotification()
        let completions = try pair.server.receiveQueue.poll()
        #expect(completions.map(\.id) == [21])
        #expect(receiveRegion != nil)
    }
}

@Suite(.requiresDevice, .serialized) struct RemoteAccessDeviceTests {
    @Test func readWithoutRemoteReadRightFailsWithRemoteAccessError() throws {
        let pair = try ConnectedPair()
        // Registered for remote WRITE only: a READ through its rkey must be refused, not hang.
        let target = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 4096,
                                      access: [.localWrite, .remoteWrite])
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [.localWrite])
        try pair.client.queuePair.post(SendWorkRequest(
            id: 31, operation: .rdmaRead(remoteAddress: target.address, rkey: target.rkey), scatterGather: [sink.sge()]))
        let done = try #require(waitForCompletions(pair.client.sendQueue, timeout: .seconds(30)).first)
        #expect(done.id == 31)
        #expect(done.status == .remoteAccessError)
        // The QP is now in error: later work is flushed, never lost.
        try pair.client.queuePair.post(SendWorkRequest(id: 32, operation: .send, scatterGather: []))
        let flushed = try #require(waitForCompletions(pair.client.sendQueue).first)
        #expect(flushed.id == 32)
        #expect(flushed.status == .flushed)
    }

    @Test func staleKeyOfADeregisteredRegionIsRefused() throws {
        let pair = try ConnectedPair()
        var source: MemoryRegion? = try MemoryRegion(protectionDomain: pair.server.protectionDomain, length: 4096,
                                                     access: [.remoteRead])
        let address = source!.address
        let rkey = source!.rkey
        source = nil
        let sink = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [.localWrite])
        try pair.client.queuePair.post(SendWorkRequest(
            id: 33, operation: .rdmaRead(remoteAddress: address, rkey: rkey), scatterGather: [sink.sge()]))
        let done = try #require(waitForCompletions(pair.client.sendQueue, timeout: .seconds(30)).first)
        #expect(done.status == .remoteAccessError)
    }
}

@Suite(.requiresDevice, .serialized) struct TeardownDeviceTests {
    @Test func destroyWithPostedWorkOutstanding() throws {
        // Receives posted on both sides, sends in flight, then everything dropped at once with no disconnect:
        // every handle is released exactly once in a valid order (QP before CQ and PD, id before channel). A
        // release out of order, twice, or refused by the device shows in `Release`'s tallies.
        let before = Release.tallies
        for round in 0..<3 {
            var keep: [MemoryRegion] = []
            do {
                let pair = try ConnectedPair { server in
                    let region = try MemoryRegion(protectionDomain: server.protectionDomain, length: 4096, access: [.localWrite])
                    try server.queuePair.post((0..<16).map { ReceiveWorkRequest(id: UInt64($0), scatterGather: [region.sge()]) })
                    keep.append(region)
                }
                let source = try MemoryRegion(protectionDomain: pair.client.protectionDomain, length: 4096, access: [])
                try pair.client.queuePair.post((0..<8).map {
                    SendWorkRequest(id: UInt64(100 + $0), operation: .send, scatterGather: [source.sge(length: 512)])
                })
                try pair.client.queuePair.post(ReceiveWorkRequest(id: 999, scatterGather: [source.sge()]))
                _ = round
            }
            keep.removeAll()
        }
        let after = Release.tallies
        func released(_ call: String) -> Int { (after[call]?.calls ?? 0) - (before[call]?.calls ?? 0) }
        #expect(Release.failures == before.values.reduce(0) { $0 + $1.failures }, "releases failed: \(after)")
        // Three rounds of a connected pair (two ends, each with a PD, two CQs, a QP and an id; two regions): all
        // released (a handle that leaked would leave its count short).
        #expect(released("ibv_destroy_qp") + released("rdma_destroy_qp") >= 6)
        #expect(released("rdma_destroy_id") >= 6)
        #expect(released("ibv_dereg_mr") >= 6)
        #expect(released("ibv_destroy_cq") >= 12 && released("ibv_dealloc_pd") >= 6)
    }

    @Test func failedSetUpHalfWayReleasesWhatWasMade() throws {
        let context = try DeviceContext(deviceName: TestDevice.name)
        let pd = try ProtectionDomain(context: context)
        let cq = try CompletionQueue(context: context, capacity: 16)
        // A QP far beyond the device's limits fails; the PD and CQ made before it are still released cleanly.
        #expect(throws: VerbsError.self) {
            _ = try QueuePair(protectionDomain: pd, sendQueue: cq, receiveQueue: cq,
                              capabilities: QueuePairCapabilities(maxSendWorkRequests: Int(Int32.max), maxReceiveWorkRequests: 1))
        }
        #expect(throws: VerbsError.self) { _ = try CompletionQueue(context: context, capacity: 0) }
    }
}
