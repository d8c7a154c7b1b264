import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@testable import LNet

/// An LND that completes what the core hands it at once: a received PUT is finalized (its event follows), a sent
/// ACK or REPLY is finalized. It records which messages it received, answered (a GET's REPLY) or dropped, by the
/// index their hints carry (major + 7 x minor). With `holdFirstReceive` the first receive waits until the interface
/// is stopping.
final class FinalizingLND: LNetLND {
    let networkType = LNetNetworkType.tcp
    let received = Collector<UInt64>()
    let dropped = Collector<UInt64>()
    let replies = Collector<UInt64>()
    /// The headers of the ACKs and REPLYs it was given to send.
    let answers = Collector<LNetHeader>()
    let holdFirstReceive: Bool
    private let first = Atomic<Bool>(true)

    init(holdFirstReceive: Bool = false) { self.holdFirstReceive = holdFirstReceive }

    static func index(_ header: LNetHeader) -> UInt64 { header.hints.major &+ 7 &* header.hints.minor }

    func startup(ni: LNetNI) throws(LNetError) {}
    func shutdown(ni: LNetNI) {}

    func send(ni: LNetNI, message: LNetMessage) {
        if message.type == .reply { replies.append(Self.index(message.header)) }
        if message.type == .reply || message.type == .ack { answers.append(message.header) }
        ni.finalize(message, status: .ok)
    }

    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        if holdFirstReceive, first.exchange(false, ordering: .relaxed) {
            let deadline = ContinuousClock.now + .seconds(10)
            while !ni.isStopping, ContinuousClock.now < deadline { usleep(1000) }
        }
        received.append(Self.index(message.header))
        ni.finalize(message, status: .ok)
    }

    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        dropped.append(Self.index(header))
    }
}

/// Early placement (`LNET_PLACEMENT` hint and none): messages are matched on the partition the policy names, and
/// one peer's messages are matched in arrival order whatever partition handles each.
@Suite struct IncomingPlacementTests {
    let local = ProcessID(nid: NID(address: 0xC000_0201, network: LNetNetwork(type: .tcp)), pid: 12345)
    let remote = ProcessID(nid: NID(address: 0xC000_0202, network: LNetNetwork(type: .tcp)), pid: 12345)

    private func node(_ policy: PlacementPolicy, partitions: Int = 4, cookies: Bool = false,
                      lnd: FinalizingLND = FinalizingLND()) throws -> (LNet, LNetNI) {
        let lnet = LNet(configuration: .init(partitions: CPUPartitionTable(count: partitions, cpuCount: partitions), placement: policy,
                                             placementCookies: cookies))
        let ni = try lnet.addInterface(NetworkInterfaceConfiguration(network: LNetNetwork(type: .tcp), interfaceName: "eth0",
                                                                     address: local.nid.address), lnd: lnd)
        return (lnet, ni)
    }

    /// `count` PUTs and GETs from one peer on one portal, message `k` carrying header data `k` and hints that
    /// change with every message (so consecutive messages go to different partitions). Entry `k` (use once) is
    /// matched by message `k` only if messages are matched in arrival order.
    private func sendInOrder(_ ni: LNetNI, _ lnet: LNet, count: Int, receivingPartition: Int? = 0) throws -> EventQueue {
        let eq = EventQueue()
        for k in 0..<count {
            _ = try lnet.attach(MatchEntry(portal: 7, matchBits: 1),
                                descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(1),
                                                             options: [.put, .get], eventQueue: eq, userInfo: UInt64(k)))
        }
        let producer = try #require(ni.makePlacementProducer(partition: receivingPartition))
        let order = producer.makeOrder()
        for k in 0..<count {
            let isGet = k % 3 == 2
            let header = LNetHeader(type: isGet ? .get : .put, source: remote, destination: local, payloadLength: isGet ? 0 : 8,
                                    length: isGet ? 8 : 0, portal: 7, matchBits: 1, headerData: UInt64(k),
                                    hints: LNetHints(major: UInt64(k % 7), minor: UInt64(k / 7)))
            ni.parse(header: header, from: remote.nid, context: nil, wantsRDMA: false, order: order)
            if k % 50 == 49 { producer.flush() }
        }
        producer.flush()
        return eq
    }

    @Test(arguments: [PlacementPolicy.hints, .roundRobin])
    func onePeersMessagesAreMatchedInArrivalOrderAcrossPartitions(_ policy: PlacementPolicy) async throws {
        let (lnet, ni) = try node(policy)
        defer { lnet.shutdown() }
        let count = 2000
        let eq = try sendInOrder(ni, lnet, count: count)
        var seen = 0
        var outOfOrder: [String] = []
        while seen < count {
            let event = try await eq.next(timeout: .seconds(10))
            guard event.kind == .put || event.kind == .get else { continue }
            seen += 1
            let entry = try #require(event.userInfo as? UInt64)
            let message = event.hints.major + 7 * event.hints.minor
            if message != entry { outOfOrder.append("message \(message) matched entry \(entry)") }
        }
        #expect(outOfOrder.count == 0, "\(outOfOrder.count) out of order, first: \(outOfOrder.prefix(5))")
        guard outOfOrder.isEmpty else { return }
        // A queuelet's handled count is added once its last item's handler returned, just after that event.
        _ = await eventually { ni.placementStatistics.map { $0.inline + $0.queuelets.handled >= count } ?? false }
        let statistics = try #require(ni.placementStatistics)
        #expect(statistics.policy == policy)
        #expect(statistics.matchedPerPartition.reduce(0, +) == count)
        // Every partition matched some, and most of them not on the receiving thread's partition.
        #expect(statistics.matchedPerPartition.allSatisfy { $0 > 0 }, "\(statistics.matchedPerPartition)")
        #expect(statistics.crossPartition > count / 2 && statistics.heldForOrder > 0)
        #expect(statistics.inline + statistics.queuelets.handled == count)
    }

    @Test func hintsPlaceOneObjectOnOnePartitionWhateverThePeer() async throws {
        let (lnet, ni) = try node(.hints)
        defer { lnet.shutdown() }
        let threads = Collector<Int>()
        // Inline: the handler runs on the thread that matched the message.
        let eq = EventQueue(delivery: .inline { _ in threads.append(Self.partitionOfCurrentThread()) })
        _ = try lnet.attach(MatchEntry(portal: 8, matchBits: 2),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .infinite, options: [.put, .manageRemote], eventQueue: eq))
        let hints = LNetHints(major: 42, minor: 0)
        let expected = ni.partitions.partition(forHints: hints)
        for peer in 0..<20 {
            let source = ProcessID(nid: NID(address: 0xC000_0210 + UInt32(peer), network: LNetNetwork(type: .tcp)), pid: 12345)
            // A receiving thread of another partition: the message must be handed to the object's partition.
            let producer = try #require(ni.makePlacementProducer(partition: (expected + 1) % 4))
            let header = LNetHeader(type: .put, source: source, destination: local, payloadLength: 8, portal: 8, matchBits: 2, hints: hints)
            ni.parse(header: header, from: source.nid, context: nil, wantsRDMA: false, order: producer.makeOrder())
            producer.flush()
        }
        _ = await eventually(timeout: .seconds(10)) { threads.count >= 20 }
        #expect(threads.items == Array(repeating: expected, count: 20))
        let statistics = try #require(ni.placementStatistics)
        #expect(statistics.matchedPerPartition[expected] == 20 && statistics.crossPartition == 20)
    }

    /// The partition of the placement thread running the caller, or -1 (not a partition's thread).
    static func partitionOfCurrentThread() -> Int { CPUPartitionTable.servedByCurrentThread ?? -1 }

    @Test func shutdownFinalizesEveryMessageWaitingForItsPartitionOnce() async throws {
        let lnd = FinalizingLND(holdFirstReceive: true)
        let (lnet, ni) = try node(.roundRobin, lnd: lnd)
        let count = 500
        // No receiving partition: nothing is matched on this thread, which the held receive would block.
        let eq = try sendInOrder(ni, lnet, count: count, receivingPartition: nil)
        // The first message holds its partition's thread until shutdown; the rest wait behind it (round robin:
        // each on the next partition, so held for order).
        #expect(ni.placementStatistics?.heldForOrder ?? 0 > count / 2)
        lnet.shutdown()
        let handled = lnd.received.items + lnd.replies.items + lnd.dropped.items
        // Every message was matched (received, or answered with a REPLY) or dropped, exactly once.
        #expect(handled.count == count && Set(handled) == Set((0..<count).map(UInt64.init)),
                "\(lnd.received.count) received, \(lnd.replies.count) answered, \(lnd.dropped.count) dropped")
        // Only message 0 can have been matched (unless its thread got to it after shutdown began: then it too
        // was dropped); everything behind it was dropped.
        #expect(lnd.received.items.allSatisfy { $0 == 0 } && lnd.dropped.count >= count - 1,
                "received \(lnd.received.items.prefix(10)), answered \(lnd.replies.items.prefix(10))")
        _ = eq
    }

    /// Shutdown from a handler on a partition's thread returns, and by then every message handed in was matched
    /// or dropped: the rest of that thread's queuelet, the other partitions' and those held for order included.
    @Test func aHandlerOnAPartitionThreadMayShutLNetDown() async throws {
        let lnd = FinalizingLND()
        let (lnet, ni) = try node(.hints, lnd: lnd)
        let done = Gate()
        let accounted = Atomic<Int>(-1)
        let eq = EventQueue(delivery: .inline { event in
            guard event.kind == .put, accounted.load(ordering: .relaxed) < 0 else { return }
            lnet.shutdown()
            accounted.store(lnd.received.count + lnd.dropped.count, ordering: .relaxed)
            done.open()
        })
        _ = try lnet.attach(MatchEntry(portal: 9, matchBits: 3),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .infinite,
                                                         options: [.put, .manageRemote], eventQueue: eq))
        let producer = try #require(ni.makePlacementProducer(partition: nil))
        let order = producer.makeOrder()
        for k in 0..<50 {
            let header = LNetHeader(type: .put, source: remote, destination: local, payloadLength: 8, portal: 9, matchBits: 3,
                                    hints: LNetHints(major: UInt64(k), minor: 0))
            ni.parse(header: header, from: remote.nid, context: nil, wantsRDMA: false, order: order)
        }
        producer.flush()
        #expect(done.wait(seconds: 10), "shutdown from a partition thread's handler did not return")
        #expect(lnet.interfaces.isEmpty)
        #expect(accounted.load(ordering: .relaxed) == 50, "\(lnd.received.count) received, \(lnd.dropped.count) dropped")
    }

    /// Waits until `collector` holds `count` items (a handler on another thread adds them).
    private func await<T>(_ collector: Collector<T>, count: Int) async throws {
        _ = await eventually(timeout: .seconds(10)) { collector.count >= count }
    }

    @Test func serverCookiesNameThePartitionThatMatchedAndPlaceTheMessagesThatEchoThem() async throws {
        let lnd = FinalizingLND()
        let (lnet, ni) = try node(.hints, cookies: true, lnd: lnd)
        defer { lnet.shutdown() }
        let matchedOn = Collector<Int>()
        let eq = EventQueue(delivery: .inline { event in
            if event.kind == .put || event.kind == .get { matchedOn.append(Self.partitionOfCurrentThread()) }
        })
        _ = try lnet.attach(MatchEntry(portal: 10, matchBits: 4),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .infinite,
                                                         options: [.put, .get, .manageRemote], eventQueue: eq))
        let producer = try #require(ni.makePlacementProducer(partition: nil))
        let order = producer.makeOrder()
        func send(_ type: LNetMessageType, _ hints: LNetHints) {
            let header = LNetHeader(type: type, source: remote, destination: local, payloadLength: type == .put ? 8 : 0,
                                    length: type == .get ? 8 : 0, portal: 10, matchBits: 4, ackRequested: type == .put, hints: hints)
            ni.parse(header: header, from: remote.nid, context: nil, wantsRDMA: false, order: order)
            producer.flush()
        }
        // A PUT and a GET placed by their hints: the ACK and the REPLY name the partition that matched them.
        let put = LNetHints(major: 5, minor: 0), get = LNetHints(major: 6, minor: 1)
        send(.put, put)
        send(.get, get)
        try await self.await(lnd.answers, count: 2)
        let answers = lnd.answers.items
        #expect(answers.map(\.type) == [.ack, .reply])
        #expect(answers.map { $0.givenCookie?.partition } == [ni.partitions.partition(forHints: put), ni.partitions.partition(forHints: get)])
        // They keep the request's hints; the cookie travels in flag bit 1 and the header data's place.
        #expect(answers.map(\.hints) == [put, get])
        #expect(try answers.map { try LNetHeader(decoding: $0.encoded()) } == answers)
        // Echoed cookies place messages on the partition they name, whatever the hints would say; one naming no
        // partition of ours is ignored (no hints: by the peer's NID).
        let named = (ni.partitions.partition(forHints: put) + 1) % 4
        send(.put, LNetHints(cookie: LNetPlacementCookie(partition: named)))
        send(.put, LNetHints(cookie: LNetPlacementCookie(partition: 99)))
        try await self.await(matchedOn, count: 4)
        #expect(matchedOn.items == [ni.partitions.partition(forHints: put), ni.partitions.partition(forHints: get), named,
                                    ni.partitions.partition(forPeer: remote.nid)])
    }

    @Test func ackAndReplyAreHandledOnThePartitionThatSentTheRequest() async throws {
        let lnd = FinalizingLND()
        let (lnet, ni) = try node(.hints, lnd: lnd)
        defer { lnet.shutdown() }
        let handledOn = Collector<String>()
        let eq = EventQueue(delivery: .inline { event in
            if event.kind == .ack || event.kind == .reply { handledOn.append("\(event.kind) \(Self.partitionOfCurrentThread())") }
        })
        // The PUT and the GET are sent from a thread of partition 2.
        CPUPartitionTable.setServedByCurrentThread(2)
        let putMD = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(2), eventQueue: eq))
        let getMD = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(2), eventQueue: eq))
        CPUPartitionTable.setServedByCurrentThread(nil)
        try lnet.put(putMD, to: remote, portal: 11, matchBits: 1)
        try lnet.get(getMD, from: remote, portal: 11, matchBits: 1)
        // The answers arrive on a receiving thread of partition 0, hints saying otherwise.
        let producer = try #require(ni.makePlacementProducer(partition: 0))
        let order = producer.makeOrder()
        for (type, cookie) in [(LNetMessageType.ack, putMD.cookie), (.reply, getMD.cookie)] {
            let header = LNetHeader(type: type, source: remote, destination: local, payloadLength: type == .reply ? 8 : 0,
                                    length: 8, portal: 11, matchBits: 1, mdCookie: cookie, hints: LNetHints(major: 77, minor: 0))
            ni.parse(header: header, from: remote.nid, context: nil, wantsRDMA: false, order: order)
        }
        producer.flush()
        // A completion the LND finishes itself (a GET's REPLY by RDMA) runs there too.
        ni.run(onPartitionOf: getMD.cookie) { handledOn.append("task \(Self.partitionOfCurrentThread())") }
        try await self.await(handledOn, count: 3)
        #expect(Set(handledOn.items) == ["ACK 2", "REPLY 2", "task 2"])
    }

    @Test func policyNames() {
        #expect(PlacementPolicy(name: "nid") == .peerHash)
        #expect(PlacementPolicy(name: " Hint ") == .hints)
        #expect(PlacementPolicy(name: "none") == .roundRobin)
        #expect(PlacementPolicy(name: "object") == nil)
        #expect(PlacementPolicy.allCases.map(\.description) == ["nid", "hint", "none"])
    }

    @Test func peerHashMatchesWhereReceived() throws {
        let (lnet, ni) = try node(.peerHash)
        defer { lnet.shutdown() }
        #expect(ni.makePlacementProducer(partition: 0) == nil)
        #expect(ni.placementStatistics == nil)
    }
}
