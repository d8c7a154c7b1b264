import Testing

@testable import LNet

/// Matching rules, first on the portal alone and then end to end through the loopback LND.
@Suite struct MatchingTests {
    private let alice = ProcessID(nid: NID(address: 0x0A00_0001, network: .o2ib), pid: 1)
    private let bob = ProcessID(nid: NID(address: 0x0A00_0002, network: .o2ib), pid: 1)

    private func record(_ cookie: UInt64, length: Int = 64, threshold: MDThreshold = .infinite,
                        options: MemoryDescriptor.Options = [.put, .get]) throws -> MDRecord {
        let buffer = try LNetBuffer(count: length)
        return MDRecord(handle: MDHandle(cookie: cookie), storage: try MemoryDescriptor(buffer: buffer).makeStorage(),
                        descriptor: MemoryDescriptor(buffer: buffer, threshold: threshold, options: options),
                        unlinkPolicy: .unlink)
    }

    private func matchedCookie(_ portal: Portal, bits: UInt64, from: ProcessID, type: LNetMessageType = .put,
                               length: Int = 8) -> UInt64? {
        if case .matched(let md, _, _) = portal.match(type: type, initiator: from, matchBits: bits, offset: 0, length: length) {
            return md.handle.cookie
        }
        return nil
    }

    @Test func matchAndIgnoreBits() throws {
        var portal = Portal()
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 1), entry: MatchEntry(portal: 0, matchBits: 0xAB00, ignoreBits: 0x00FF),
                                      md: try record(1)), at: .tail)
        #expect(matchedCookie(portal, bits: 0xAB00, from: alice) == 1)
        #expect(matchedCookie(portal, bits: 0xAB7F, from: alice) == 1)
        #expect(matchedCookie(portal, bits: 0xAC00, from: alice) == nil)
        #expect(matchedCookie(portal, bits: 0x1AB00, from: alice) == nil)
    }

    @Test func sourceFilter() throws {
        var portal = Portal()
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 1), entry: MatchEntry(portal: 0, matchBits: 5, source: alice),
                                      md: try record(1)), at: .tail)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 2),
                                      entry: MatchEntry(portal: 0, matchBits: 5, source: ProcessID(nid: .any, pid: 1)),
                                      md: try record(2)), at: .tail)
        #expect(matchedCookie(portal, bits: 5, from: alice) == 1)
        #expect(matchedCookie(portal, bits: 5, from: bob) == 2)
        #expect(matchedCookie(portal, bits: 5, from: ProcessID(nid: bob.nid, pid: 2)) == nil)
    }

    @Test func firstMatchWinsAndPositionsOrderTheList() throws {
        var portal = Portal()
        let entry = MatchEntry(portal: 0, matchBits: 0, ignoreBits: .max)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 1), entry: entry, md: try record(1)), at: .tail)
        #expect(matchedCookie(portal, bits: 9, from: alice) == 1)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 2), entry: entry, md: try record(2)), at: .head)
        #expect(matchedCookie(portal, bits: 9, from: alice) == 2)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 3), entry: entry, md: try record(3)), at: .before(MEHandle(cookie: 2)))
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 4), entry: entry, md: try record(4)), at: .after(MEHandle(cookie: 3)))
        #expect(portal.entries.map(\.handle.cookie) == [3, 4, 2, 1])
        #expect(matchedCookie(portal, bits: 9, from: alice) == 3)
        #expect(throws: LNetError.self) {
            try portal.insert(PortalEntry(handle: MEHandle(cookie: 5), entry: entry, md: try record(5)), at: .after(MEHandle(cookie: 99)))
        }
        portal.remove(MEHandle(cookie: 3))
        #expect(matchedCookie(portal, bits: 9, from: alice) == 4)
    }

    @Test func skipsExhaustedAndWrongOperationMDs() throws {
        var portal = Portal()
        let entry = MatchEntry(portal: 0, matchBits: 1)
        let exhausted = try record(1, threshold: .count(1))
        exhausted.attach()
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 1), entry: entry, md: exhausted), at: .tail)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 2), entry: entry, md: try record(2, options: [.get])), at: .tail)
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 3), entry: entry, md: try record(3, options: [.put])), at: .tail)
        #expect(matchedCookie(portal, bits: 1, from: alice, type: .put) == 3)
        #expect(matchedCookie(portal, bits: 1, from: alice, type: .get) == 2)
    }

    @Test func offsetsTruncationAndTooLarge() throws {
        var portal = Portal()
        let remote = try record(1, length: 100, options: [.put, .manageRemote])
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 1), entry: MatchEntry(portal: 0, matchBits: 1), md: remote), at: .tail)
        guard case .matched(_, let offset, let length) = portal.match(type: .put, initiator: alice, matchBits: 1, offset: 40, length: 60) else {
            Issue.record("expected a match"); return
        }
        #expect(offset == 40 && length == 60)
        guard case .rejected(.tooLarge) = portal.match(type: .put, initiator: alice, matchBits: 1, offset: 41, length: 60) else {
            Issue.record("expected tooLarge"); return
        }
        let truncating = try record(2, length: 10, options: [.put, .truncate])
        try portal.insert(PortalEntry(handle: MEHandle(cookie: 2), entry: MatchEntry(portal: 0, matchBits: 2), md: truncating), at: .tail)
        guard case .matched(_, _, let cut) = portal.match(type: .put, initiator: alice, matchBits: 2, offset: 0, length: 60) else {
            Issue.record("expected a truncated match"); return
        }
        #expect(cut == 10)
    }

    // MARK: End to end

    @Test func unlinkAfterThresholdThroughLoopback() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let targetEQ = EventQueue(label: "target")
        let sink = try LNetBuffer(count: 16)
        let (meHandle, mdHandle) = try lnet.attach(MatchEntry(portal: 4, matchBits: 7),
                                                   descriptor: MemoryDescriptor(buffer: sink, threshold: .count(2),
                                                                                options: [.put], eventQueue: targetEQ))
        let eq = EventQueue(label: "source")
        for round in 0..<3 {
            let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [UInt8(round)]), threshold: .count(2), eventQueue: eq))
            try lnet.put(md, to: me, portal: 4, matchBits: 7)
            _ = try await eq.next(timeout: .seconds(5)) // SEND
            let ack = try await eq.next(timeout: .seconds(5))
            #expect(ack.kind == .ack)
            #expect(ack.status == (round < 2 ? .ok : .noMatch))
        }
        let first = try await targetEQ.next(timeout: .seconds(5))
        let second = try await targetEQ.next(timeout: .seconds(5))
        #expect(first.kind == .put && !first.unlinked && first.offset == 0)
        #expect(second.kind == .put && second.unlinked && second.offset == 1) // running local offset
        #expect(sink.read(length: 2) == [0, 1])
        #expect(!lnet.isLinked(mdHandle))
        #expect(throws: LNetError.self) { try lnet.unlink(meHandle) }
    }

    @Test func retainedMDStaysUntilUnlinked() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let targetEQ = EventQueue(label: "target")
        let (meHandle, mdHandle) = try lnet.attach(MatchEntry(portal: 4, matchBits: 7, unlink: .retain),
                                                   descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 4), threshold: .count(1),
                                                                                options: [.put], eventQueue: targetEQ))
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 4), threshold: .count(1)))
        try lnet.put(md, to: me, portal: 4, matchBits: 7, ackRequested: false)
        let put = try await targetEQ.next(timeout: .seconds(5))
        #expect(put.kind == .put && !put.unlinked)
        #expect(lnet.isLinked(mdHandle))
        try lnet.unlink(meHandle)
        let unlink = try await targetEQ.next(timeout: .seconds(5))
        #expect(unlink.kind == .unlink && unlink.unlinked && unlink.md == mdHandle)
        #expect(!lnet.isLinked(mdHandle))
    }
}
