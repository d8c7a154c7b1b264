import Testing

@testable import LNet

/// Put and Get through the loopback LND with the data checked.
@Suite struct LoopbackLNDTests {
    @Test func putWithAckDeliversDataAndEvents() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let payload = bytes(70_000, seed: 3)
        let targetEQ = EventQueue(label: "target")
        let sinks = [try LNetBuffer(count: 30_000), try LNetBuffer(count: 50_000)] // two fragments
        _ = try lnet.attach(MatchEntry(portal: 9, matchBits: 0x77),
                            descriptor: MemoryDescriptor(storage: .buffers(sinks), options: [.put], eventQueue: targetEQ,
                                                         userInfo: "sink"))
        let eq = EventQueue(label: "source")
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: payload), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 9, matchBits: 0x77, headerData: 0xABCD, hints: LNetHints(major: 5, minor: 1))

        let send = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.status == .ok && send.matchedLength == 70_000 && !send.unlinked)
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(ack.kind == .ack && ack.status == .ok && ack.matchedLength == 70_000 && ack.unlinked)
        #expect(ack.initiator == me && ack.target == me && ack.matchBits == 0x77 && ack.md == md)

        let put = try await targetEQ.next(timeout: .seconds(5))
        #expect(put.kind == .put && put.status == .ok)
        #expect(put.requestedLength == 70_000 && put.matchedLength == 70_000 && put.offset == 0)
        #expect(put.headerData == 0xABCD && put.hints == LNetHints(major: 5, minor: 1) && put.initiator == me)
        #expect(put.userInfo as? String == "sink")
        #expect(sinks[0].read() + sinks[1].read(length: 40_000) == payload)
        #expect(!lnet.isLinked(md))
    }

    @Test func putWithoutAckGivesOnlySend() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let target = try LNetBuffer(count: 8)
        let targetEQ = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: target, options: [.put], eventQueue: targetEQ))
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1, 2, 3]), eventQueue: eq))
        try lnet.put(md, to: me, portal: 1, matchBits: 1, ackRequested: false)
        let send = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.unlinked)
        _ = try await targetEQ.next(timeout: .seconds(5))
        #expect(target.read(length: 3) == [1, 2, 3])
        #expect(try eq.poll() == nil)
    }

    @Test func getWithReplyAndRemoteOffset() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let source = bytes(10_000, seed: 9)
        let targetEQ = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 3, matchBits: 42),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(copying: source), threshold: .infinite,
                                                         options: [.get, .manageRemote], eventQueue: targetEQ))
        let eq = EventQueue()
        let sink = try LNetBuffer(count: 1000)
        let md = try lnet.bind(MemoryDescriptor(buffer: sink, threshold: .count(2), eventQueue: eq))
        try lnet.get(md, from: me, portal: 3, matchBits: 42, offset: 2500)

        let send = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.status == .ok)
        let reply = try await eq.next(timeout: .seconds(5))
        #expect(reply.kind == .reply && reply.status == .ok && reply.matchedLength == 1000 && reply.unlinked)
        #expect(sink.read() == Array(source[2500..<3500]))
        let get = try await targetEQ.next(timeout: .seconds(5))
        #expect(get.kind == .get && get.offset == 2500 && get.matchedLength == 1000 && get.initiator == me && !get.unlinked)
    }

    @Test func truncatesIntoASmallerMD() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let target = try LNetBuffer(count: 10)
        let targetEQ = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 2, matchBits: 0),
                            descriptor: MemoryDescriptor(buffer: target, options: [.put, .truncate], eventQueue: targetEQ))
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: bytes(25)), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 2, matchBits: 0)
        let put = try await targetEQ.next(timeout: .seconds(5))
        #expect(put.requestedLength == 25 && put.matchedLength == 10)
        #expect(target.read() == Array(bytes(25).prefix(10)))
        _ = try await eq.next(timeout: .seconds(5))
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(ack.kind == .ack && ack.matchedLength == 10 && ack.status == .ok)
    }

    @Test func tooLargeWithoutTruncateFailsTheSender() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let target = try LNetBuffer(count: 4)
        _ = try lnet.attach(MatchEntry(portal: 2, matchBits: 0), descriptor: MemoryDescriptor(buffer: target, options: [.put]))
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: bytes(8)), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 2, matchBits: 0)
        let send = try await eq.next(timeout: .seconds(5))
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(send.status == .tooLarge && ack.status == .tooLarge)
        #expect(target.read() == [0, 0, 0, 0])
    }

    @Test func unmatchedPutFailsItsSender() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 100), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 30, matchBits: 1)
        let send = try await eq.next(timeout: .seconds(5))
        let ack = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.status == .noMatch)
        #expect(ack.kind == .ack && ack.status == .noMatch && ack.unlinked)
        let counters = lnet.counters().interface(.loopback)
        #expect(counters?.totals.drops == 1 && counters?.totals.droppedBytes == 100)
    }

    @Test func unmatchedGetFailsItsSender() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue()
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 100), threshold: .count(2), eventQueue: eq))
        try lnet.get(md, from: me, portal: 30, matchBits: 1)
        let send = try await eq.next(timeout: .seconds(5))
        let reply = try await eq.next(timeout: .seconds(5))
        #expect(send.kind == .send && send.status == .ok)
        #expect(reply.kind == .reply && reply.status == .noMatch && reply.matchedLength == 0 && reply.unlinked)
    }

    @Test func callerMemoryAsSource() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 6, alignment: 8)
        defer { raw.deallocate() }
        raw.copyBytes(from: [1, 2, 3, 4, 5, 6] as [UInt8])
        let target = try LNetBuffer(count: 6)
        let targetEQ = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 1), descriptor: MemoryDescriptor(buffer: target, options: [.put], eventQueue: targetEQ))
        let eq = EventQueue()
        let pieces = [UnsafeMutableRawBufferPointer(rebasing: raw[0..<2]), UnsafeMutableRawBufferPointer(rebasing: raw[2..<6])]
        let md = try lnet.bind(MemoryDescriptor(storage: .unsafeFragments(pieces), eventQueue: eq))
        try lnet.put(md, to: me, portal: 1, matchBits: 1, ackRequested: false)
        _ = try await targetEQ.next(timeout: .seconds(5))
        let send = try await eq.next(timeout: .seconds(5))
        #expect(send.unlinked) // after this event LNet no longer touches the caller's memory
        #expect(target.read() == [1, 2, 3, 4, 5, 6])
    }

    @Test func badCallsFailClearly() throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 4), threshold: .count(1)))
        let elsewhere = ProcessID(nid: try NID(parsing: "192.0.2.9@o2ib"), pid: 1)
        #expect(throws: LNetError.networkUnreachable(destination: elsewhere.nid)) {
            try lnet.put(md, to: elsewhere, portal: 1, matchBits: 1)
        }
        // The failed put did not use the MD's threshold.
        try lnet.put(md, to: me, portal: 1, matchBits: 1, ackRequested: false)
        #expect(throws: LNetError.self) { try lnet.put(md, to: me, portal: 1, matchBits: 1) }
        #expect(throws: LNetError.invalidHandle("md#999 does not exist")) {
            try lnet.put(MDHandle(cookie: 999), to: me, portal: 1, matchBits: 1)
        }
        #expect(throws: LNetError.self) { try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .count(0))) }
        #expect(throws: LNetError.self) { try lnet.get(md, from: me, portal: 1, matchBits: 1, offset: -1) }
        #expect(LNetError.networkUnreachable(destination: elsewhere.nid).description.contains("o2ib"))
    }
}
