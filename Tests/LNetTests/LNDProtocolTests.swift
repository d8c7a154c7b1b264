import Synchronization
import Testing

@testable import LNet

/// A named receive context (an LND's private context is an object).
final class Named: Sendable {
    let name: String
    init(_ name: String) { self.name = name }
}

/// An LND the test drives by hand: it records every call and finalizes nothing on its own.
final class ManualLND: LNetLND {
    struct Received: Sendable {
        let message: LNetMessage
        let window: LNetMDWindow
        let context: String?
    }
    struct Dropped: Sendable {
        let header: LNetHeader
        let status: LNetStatus
        let context: String?
    }

    let networkType = LNetNetworkType.tcp
    let sent = Collector<LNetMessage>()
    let received = Collector<Received>()
    let dropped = Collector<Dropped>()
    let eagerCalls = Collector<String?>()
    /// How many pending sends the LND finalizes itself at shutdown (the rest are left for the core to sweep).
    let finalizeAtShutdown: Int

    init(finalizeAtShutdown: Int = .max) { self.finalizeAtShutdown = finalizeAtShutdown }

    func startup(ni: LNetNI) throws(LNetError) {}

    func shutdown(ni: LNetNI) {
        for message in sent.items.filter({ !$0.isFinalized }).prefix(finalizeAtShutdown) {
            ni.finalize(message, status: .shutdown)
        }
    }

    func send(ni: LNetNI, message: LNetMessage) { sent.append(message) }

    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        received.append(Received(message: message, window: window, context: (context as? Named)?.name))
    }

    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        dropped.append(Dropped(header: header, status: status, context: (context as? Named)?.name))
    }

    func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)? {
        eagerCalls.append((context as? Named)?.name)
        return Named("copied")
    }
}

@Suite struct LNDProtocolTests {
    let local = ProcessID(nid: NID(address: 0x0A00_0001, network: LNetNetwork(type: .tcp)), pid: 12345)
    let remote = ProcessID(nid: NID(address: 0x0A00_0002, network: LNetNetwork(type: .tcp)), pid: 777)

    private func node(_ lnd: ManualLND = ManualLND()) throws -> (LNet, LNetNI, ManualLND) {
        let lnet = LNet(configuration: .init(partitions: CPUPartitionTable(count: 2)))
        let ni = try lnet.addInterface(NetworkInterfaceConfiguration(network: LNetNetwork(type: .tcp), interfaceName: "eth0",
                                                                     address: 0x0A00_0001), lnd: lnd)
        return (lnet, ni, lnd)
    }

    @Test func sendIsFinalizedOnceAndASecondFinalizeIsCountedNotFatal() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1, 2, 3]), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: remote, portal: 4, matchBits: 9, headerData: 5)
        let message = try #require(lnd.sent.items.first)
        #expect(message.type == .put && message.direction == .outgoing && message.payload.bytes() == [1, 2, 3])
        #expect(message.header.source == local && message.header.destination == remote)
        #expect(message.header.mdCookie == md.cookie && message.header.ackRequested && message.header.payloadLength == 3)
        #expect(ni.pendingMessageCount == 1)
        ni.finalize(message, status: .ok)
        ni.finalize(message, status: .ok)
        #expect(eq.postedCount == 1)
        #expect(try eq.poll()?.kind == .send)
        let counters = try #require(lnet.counters().interface(ni.nid))
        #expect(counters.doubleFinalizations == 1 && counters.pendingMessages == 0)
        #expect(counters.totals.messagesSent == 1 && counters.totals.bytesSent == 3)
        #expect(counters.messagesHandedToLND == 1 && counters.finalizedOK == 1 && !counters.finalizedExactlyOnce)
    }

    @Test func incomingPutIsReceivedIntoTheMatchedWindowAndAcked() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let sink = try LNetBuffer(count: 100)
        _ = try lnet.attach(MatchEntry(portal: 4, matchBits: 9, source: remote),
                            descriptor: MemoryDescriptor(buffer: sink, options: [.put, .manageRemote, .truncate], eventQueue: eq))
        let header = LNetHeader(type: .put, source: remote, destination: local, payloadLength: 50, portal: 4, matchBits: 9,
                                offset: 70, headerData: 11, mdCookie: 555, ackRequested: true)
        #expect(ni.parse(header: header, from: remote.nid, context: Named("rx-1"), wantsRDMA: true) == .receiving)
        let received = try #require(lnd.received.items.first)
        #expect(received.context == "rx-1" && received.message.lndWantsRDMA)
        #expect(received.window.offset == 70 && received.window.length == 30 && received.message.requestedLength == 50)
        #expect(received.window.fragments.first?.baseAddress == sink.baseAddress)
        _ = [UInt8](repeating: 0xEE, count: 30).withUnsafeBytes { received.window.copy(from: $0) }
        ni.finalize(received.message, status: .ok)
        let put = try #require(try eq.poll())
        #expect(put.kind == .put && put.matchedLength == 30 && put.requestedLength == 50 && put.offset == 70 && put.headerData == 11)
        #expect(sink.read(offset: 70, length: 30) == [UInt8](repeating: 0xEE, count: 30))
        let ack = try #require(lnd.sent.items.first)
        #expect(ack.type == .ack && ack.header.destination == remote && ack.header.mdCookie == 555)
        #expect(ack.header.length == 30 && ack.header.status == .ok)
        ni.finalize(ack, status: .ok)
        #expect(ni.pendingMessageCount == 0)
    }

    @Test func unmatchedIncomingPutIsDroppedAndNacked() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let header = LNetHeader(type: .put, source: remote, destination: local, payloadLength: 10, portal: 4, matchBits: 9,
                                mdCookie: 7, ackRequested: true)
        #expect(ni.parse(header: header, from: remote.nid, context: Named("rx"), wantsRDMA: false) == .dropped(.noMatch))
        #expect(lnd.dropped.items.map(\.status) == [.noMatch])
        #expect(lnd.dropped.items.first?.context == "rx")
        let nak = try #require(lnd.sent.items.first)
        #expect(nak.type == .ack && nak.header.status == .noMatch && nak.header.mdCookie == 7)
        ni.finalize(nak, status: .ok)
        #expect(lnet.counters().interface(ni.nid)?.peers[remote.nid]?.drops == 1)
    }

    @Test func incomingGetIsAnsweredWithAReplyCarryingTheContext() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 6, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(copying: bytes(64)), options: [.get, .manageRemote],
                                                         eventQueue: eq))
        let get = LNetHeader(type: .get, source: remote, destination: local, length: 16, portal: 6, matchBits: 1, offset: 8,
                             mdCookie: 99)
        #expect(ni.parse(header: get, from: remote.nid, context: Named("conn-3"), wantsRDMA: true) == .replying)
        let reply = try #require(lnd.sent.items.first)
        #expect(reply.type == .reply && (reply.privateContext as? Named)?.name == "conn-3" && reply.lndWantsRDMA)
        #expect(reply.payload.bytes() == Array(bytes(64)[8..<24]))
        #expect(reply.header.destination == remote && reply.header.mdCookie == 99 && reply.header.payloadLength == 16)
        #expect(try eq.poll() == nil) // the GET event comes when the REPLY is done
        ni.finalize(reply, status: .ok)
        let event = try #require(try eq.poll())
        #expect(event.kind == .get && event.offset == 8 && event.matchedLength == 16 && event.unlinked)

        let miss = LNetHeader(type: .get, source: remote, destination: local, length: 16, portal: 6, matchBits: 1, mdCookie: 100)
        #expect(ni.parse(header: miss, from: remote.nid, context: Named("conn-4"), wantsRDMA: true) == .replying)
        let failed = try #require(lnd.sent.items.last)
        #expect(failed.type == .reply && failed.header.status == .noMatch && (failed.privateContext as? Named)?.name == "conn-4")
        #expect(failed.payload.length == 0)
        ni.finalize(failed, status: .ok)
    }

    @Test func getExposesItsSinkAndTheLNDCanCompleteTheReplyItself() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let sink = try LNetBuffer(count: 32)
        let md = try lnet.bind(MemoryDescriptor(buffer: sink, threshold: .count(2), eventQueue: eq))
        try lnet.get(md, from: remote, portal: 6, matchBits: 1)
        let get = try #require(lnd.sent.items.first)
        #expect(get.type == .get && get.header.length == 32)
        let window = try #require(get.sink)
        #expect(window.fragments.first?.baseAddress == sink.baseAddress && window.length == 32)
        // "RDMA" lands 20 bytes, then the LND reports it (lnet_create_reply_msg + lnet_set_reply_msg_len).
        _ = bytes(20).withUnsafeBytes { window.copy(from: $0) }
        let reply = try #require(ni.createReply(for: get))
        ni.setReplyLength(reply, 20)
        ni.finalize(get, status: .ok)
        ni.finalize(reply, status: .ok)
        let send = try #require(try eq.poll())
        let replied = try #require(try eq.poll())
        #expect(send.kind == .send && replied.kind == .reply && replied.matchedLength == 20 && replied.unlinked)
        #expect(sink.read(length: 20) == bytes(20))
        #expect(ni.createReply(for: get) == nil) // the MD is gone

        // The target had no match: the REPLY reports it.
        let md2 = try lnet.bind(MemoryDescriptor(buffer: sink, threshold: .count(2), eventQueue: eq))
        try lnet.get(md2, from: remote, portal: 6, matchBits: 1)
        let get2 = try #require(lnd.sent.items.last)
        let reply2 = try #require(ni.createReply(for: get2))
        ni.setReplyLength(reply2, 0)
        ni.finalize(get2, status: .ok)
        ni.finalize(reply2, status: .noMatch)
        _ = try eq.poll()
        #expect(try eq.poll()?.status == .noMatch)
        #expect(ni.pendingMessageCount == 0)
    }

    /// The peer could not send the ACK (its connection failed after the data was in): the PUT's MD gets an ACK
    /// event with status `.timeout` after the transaction timeout, and the ACK, if it comes after all, is dropped.
    @Test func anAckThatNeverComesTimesOut() async throws {
        let lnet = LNet(configuration: .init(ackTimeout: .milliseconds(200)))
        defer { lnet.shutdown() }
        let lnd = ManualLND()
        let ni = try lnet.addInterface(NetworkInterfaceConfiguration(network: LNetNetwork(type: .tcp), interfaceName: "eth0",
                                                                     address: 0x0A00_0001), lnd: lnd)
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1, 2, 3]), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: remote, portal: 4, matchBits: 9)
        ni.finalize(try #require(lnd.sent.items.first), status: .ok)
        #expect(try await eq.next(timeout: .seconds(5)).kind == .send)
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(ack.kind == .ack && ack.status == .timeout && ack.unlinked && ack.target == remote && ack.matchBits == 9, "\(ack)")
        let late = LNetHeader(type: .ack, source: remote, destination: local, length: 3, portal: 4, matchBits: 9, mdCookie: md.cookie)
        #expect(ni.parse(header: late, from: remote.nid, context: nil, wantsRDMA: false) == .dropped(.noMatch))
        // An ACK in time ends the wait: no timeout event follows it.
        let md2 = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1]), threshold: .count(2), eventQueue: eq))
        try lnet.put(md2, to: remote, portal: 4, matchBits: 10)
        ni.finalize(try #require(lnd.sent.items.last), status: .ok)
        let onTime = LNetHeader(type: .ack, source: remote, destination: local, length: 1, portal: 4, matchBits: 10, mdCookie: md2.cookie)
        #expect(ni.parse(header: onTime, from: remote.nid, context: nil, wantsRDMA: false) == .receiving)
        ni.finalize(try #require(lnd.received.items.last).message, status: .ok)
        #expect(try await eq.next(timeout: .seconds(5)).kind == .send)
        #expect(try await eq.next(timeout: .seconds(5)).status == .ok)
        try await Task.sleep(for: .milliseconds(400))
        #expect(try eq.poll() == nil, "a timeout event after the ACK came")
    }

    @Test func acksAndRepliesAreRoutedByCookie() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .infinite, eventQueue: eq))
        let ack = LNetHeader(type: .ack, source: remote, destination: local, length: 8, portal: 4, matchBits: 3,
                             mdCookie: md.cookie, status: .tooLarge)
        #expect(ni.parse(header: ack, from: remote.nid, context: nil, wantsRDMA: false) == .receiving)
        let received = try #require(lnd.received.items.first)
        #expect(received.window.length == 0 && received.message.type == .ack)
        ni.finalize(received.message, status: .ok)
        let event = try #require(try eq.poll())
        #expect(event.kind == .ack && event.status == .tooLarge && event.matchedLength == 8 && event.target == remote)

        let reply = LNetHeader(type: .reply, source: remote, destination: local, payloadLength: 4, mdCookie: md.cookie)
        #expect(ni.parse(header: reply, from: remote.nid, context: nil, wantsRDMA: false) == .receiving)
        ni.finalize(try #require(lnd.received.items.last).message, status: .ok)
        #expect(try eq.poll()?.matchedLength == 4)

        let stale = LNetHeader(type: .reply, source: remote, destination: local, payloadLength: 4, mdCookie: 4242)
        #expect(ni.parse(header: stale, from: remote.nid, context: nil, wantsRDMA: false) == .dropped(.noMatch))
        let tooBig = LNetHeader(type: .reply, source: remote, destination: local, payloadLength: 9, mdCookie: md.cookie)
        #expect(ni.parse(header: tooBig, from: remote.nid, context: nil, wantsRDMA: false) == .dropped(.tooLarge))
    }

    @Test func messagesForAnotherNodeAreDropped() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let other = ProcessID(nid: NID(address: 0x0A00_0009, network: LNetNetwork(type: .tcp)), pid: 12345)
        let header = LNetHeader(type: .put, source: remote, destination: other, portal: 1)
        #expect(ni.parse(header: header, from: remote.nid, context: nil, wantsRDMA: false) == .dropped(.unreachable))
        let wrongPID = LNetHeader(type: .put, source: remote, destination: ProcessID(nid: local.nid, pid: 1), portal: 1)
        #expect(ni.parse(header: wrongPID, from: remote.nid, context: nil, wantsRDMA: false) == .dropped(.noMatch))
        #expect(lnd.dropped.count == 2)
    }

    @Test func unlinkWhileInFlightMarksTheLastEvent() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 4), threshold: .infinite, eventQueue: eq))
        try lnet.put(md, to: remote, portal: 1, matchBits: 1, ackRequested: false)
        try lnet.unlink(md)
        #expect(try eq.poll() == nil && lnet.isLinked(md))
        #expect(throws: LNetError.self) { try lnet.put(md, to: remote, portal: 1, matchBits: 1) }
        ni.finalize(try #require(lnd.sent.items.first), status: .ok)
        let event = try #require(try eq.poll())
        #expect(event.kind == .send && event.unlinked)
        #expect(!lnet.isLinked(md))
    }

    @Test func shutdownFinalizesEverythingPending() throws {
        let (lnet, ni, lnd) = try node(ManualLND(finalizeAtShutdown: 1))
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 4), threshold: .infinite, eventQueue: eq))
        for _ in 0..<3 { try lnet.put(md, to: remote, portal: 1, matchBits: 1, ackRequested: false) }
        #expect(ni.pendingMessageCount == 3)
        lnet.shutdown()
        #expect(lnd.sent.items.allSatisfy { $0.isFinalized })
        var events: [LNetEvent] = []
        while let event = try eq.poll() { events.append(event) }
        // Three failed SENDs, then the MD's last event: LNet took it down with the interface.
        #expect(events.map(\.status) == [.shutdown, .shutdown, .shutdown, .shutdown])
        #expect(events.map(\.kind) == [.send, .send, .send, .unlink] && events.last?.unlinked == true)
        #expect(lnet.counters().interface(ni.nid)?.pendingMessages == 0)
        #expect(lnet.counters().interface(ni.nid)?.totals.errors == 3)
        // The LND finalized one of the three itself; LNet had to finalize the other two.
        #expect(lnet.counters().interface(ni.nid)?.unfinalizedAtShutdown == 2)
        #expect(lnet.counters().interface(ni.nid)?.finalizedExactlyOnce == false)
        #expect(throws: LNetError.shutdown) { try lnet.put(md, to: remote, portal: 1, matchBits: 1) }
    }

    @Test func lazyPortalHoldsMessagesUntilAMatchEntryArrives() throws {
        let (lnet, ni, lnd) = try node()
        defer { lnet.shutdown() }
        lnet.setLazy(portal: 8, true)
        let header = LNetHeader(type: .put, source: remote, destination: local, payloadLength: 4, portal: 8, matchBits: 2,
                                mdCookie: 1, ackRequested: true)
        #expect(ni.parse(header: header, from: remote.nid, context: Named("rx-buffer"), wantsRDMA: false) == .delayed)
        #expect(lnd.eagerCalls.items == ["rx-buffer"])
        #expect(lnet.delayedCount(portal: 8) == 1 && lnd.received.count == 0)
        _ = try lnet.attach(MatchEntry(portal: 8, matchBits: 2),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 4), options: [.put]))
        #expect(lnet.delayedCount(portal: 8) == 0)
        let received = try #require(lnd.received.items.first)
        #expect(received.context == "copied")
        ni.finalize(received.message, status: .ok)

        ni.parse(header: header, from: remote.nid, context: Named("rx-2"), wantsRDMA: false)
        #expect(lnet.delayedCount(portal: 8) == 1)
        lnet.setLazy(portal: 8, false)
        #expect(lnd.dropped.items.map(\.context) == ["copied"])
        #expect(lnd.sent.items.last?.header.status == .noMatch)
    }

    @Test func lazyPortalThroughLoopbackCompletesTheSenderEarly() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        lnet.setLazy(portal: 8, true)
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [4, 5, 6]), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 8, matchBits: 1)
        let send = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.status == .ok) // copied out eagerly
        let target = try LNetBuffer(count: 3)
        _ = try lnet.attach(MatchEntry(portal: 8, matchBits: 1), descriptor: MemoryDescriptor(buffer: target, options: [.put]))
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(ack.kind == .ack && ack.status == .ok)
        #expect(target.read() == [4, 5, 6])
    }

    @Test func interfacesAreChosenByDestinationNetwork() async throws {
        let (a, b, aID, bID) = try makePair()
        defer { a.shutdown(); b.shutdown() }
        let lo = try a.addLoopback()
        let eqA = EventQueue()
        let eqB = EventQueue()
        let sinkA = try LNetBuffer(count: 4)
        let sinkB = try LNetBuffer(count: 4)
        _ = try a.attach(MatchEntry(portal: 1, matchBits: 0, ignoreBits: .max),
                         descriptor: MemoryDescriptor(buffer: sinkA, threshold: .infinite, options: [.put, .manageRemote],
                                                      eventQueue: eqA))
        _ = try b.attach(MatchEntry(portal: 1, matchBits: 0, ignoreBits: .max),
                         descriptor: MemoryDescriptor(buffer: sinkB, threshold: .infinite, options: [.put], eventQueue: eqB))
        let source = try a.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1, 2, 3, 4]), threshold: .infinite))
        try a.put(source, to: bID, portal: 1, matchBits: 1, ackRequested: false)   // over tcp
        try a.put(source, to: lo.processID, portal: 1, matchBits: 2, ackRequested: false) // 0@lo
        try a.put(source, to: aID, portal: 1, matchBits: 3, ackRequested: false)   // own tcp NID: via loopback
        let remote = try await eqB.next(timeout: .seconds(5))
        #expect(remote.matchBits == 1 && remote.initiator == aID)
        let local1 = try await eqA.next(timeout: .seconds(5))
        let local2 = try await eqA.next(timeout: .seconds(5))
        #expect(Set([local1.matchBits, local2.matchBits]) == [2, 3])
        #expect(sinkB.read() == [1, 2, 3, 4])
        let counters = a.counters()
        #expect(counters.interface(.loopback)?.totals.messagesSent == 2)
        #expect(counters.interface(aID.nid)?.peers[bID.nid]?.messagesSent == 1)
        let o2ib = ProcessID(nid: try NID(parsing: "192.0.2.1@o2ib"), pid: 1)
        #expect(throws: LNetError.networkUnreachable(destination: o2ib.nid)) {
            try a.put(source, to: o2ib, portal: 1, matchBits: 1)
        }
    }

    @Test(arguments: [false, true])
    func twoNodesPutAndGet(rdmaGet: Bool) async throws {
        let (a, b, _, bID) = try makePair(rdmaGet: rdmaGet)
        defer { a.shutdown(); b.shutdown() }
        let data = bytes(5000, seed: 17)
        let served = EventQueue()
        _ = try b.attach(MatchEntry(portal: 2, matchBits: 8),
                         descriptor: MemoryDescriptor(buffer: try LNetBuffer(copying: data), options: [.get, .truncate],
                                                      eventQueue: served))
        let eq = EventQueue()
        let sink = try LNetBuffer(count: 6000)
        let md = try a.bind(MemoryDescriptor(buffer: sink, threshold: .count(2), eventQueue: eq))
        try a.get(md, from: bID, portal: 2, matchBits: 8)
        var kinds: [LNetEventKind] = []
        var reply: LNetEvent?
        for _ in 0..<2 {
            let event = try await eq.next(timeout: .seconds(5))
            kinds.append(event.kind)
            if event.kind == .reply { reply = event }
        }
        #expect(Set(kinds) == [.send, .reply])
        #expect(reply?.status == .ok && reply?.matchedLength == 5000)
        #expect(sink.read(length: 5000) == data)
        let get = try await served.next(timeout: .seconds(5))
        #expect(get.kind == .get && get.matchedLength == 5000)

        // A GET that matches nothing fails its REPLY, on both paths.
        let md2 = try a.bind(MemoryDescriptor(buffer: sink, threshold: .count(2), eventQueue: eq))
        try a.get(md2, from: bID, portal: 2, matchBits: 99)
        var statuses: [LNetEventKind: LNetStatus] = [:]
        for _ in 0..<2 {
            let event = try await eq.next(timeout: .seconds(5))
            statuses[event.kind] = event.status
        }
        #expect(statuses[.reply] == .noMatch)
    }
}
