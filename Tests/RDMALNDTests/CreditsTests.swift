import Testing
@testable import RDMALND

@Suite struct CreditsTests {
    @Test func lastCreditIsKeptForAMessageThatReturnsCredits() {
        var credits = Credits(queueDepth: 4)
        for _ in 0..<3 {
            #expect(credits.canSendCredited)
            #expect(credits.takeCredited() == 0)
        }
        #expect(credits.available == 1)
        #expect(!credits.canSendCredited)  // nothing owed: keep the last credit
        credits.reposted()
        #expect(credits.canSendCredited)   // now it would carry a credit back
        #expect(credits.takeCredited() == 1)
        #expect(credits.available == 0)
        #expect(credits.owed == 0)
    }

    @Test func controlRepliesTakeNoCreditButCarryWhatIsOwed() {
        var credits = Credits(queueDepth: 2)
        credits.reposted()
        credits.reposted()
        #expect(credits.takeOwed() == 2)
        #expect(credits.available == 2)
        #expect(credits.takeOwed() == 0)
    }

    @Test func noopAtTheHighWaterMark() {
        var credits = Credits(queueDepth: 8)
        #expect(credits.highWater == 4)
        for _ in 0..<3 { credits.reposted() }
        #expect(!credits.needsNoop)
        credits.reposted()
        #expect(credits.needsNoop)
        _ = credits.takeCredited()
        #expect(!credits.needsNoop)
    }

    @Test func returnedCreditsAreBoundedByTheQueueDepth() {
        var credits = Credits(queueDepth: 2)
        _ = credits.takeCredited()
        let first = credits.received(credits: 1)
        let second = credits.received(credits: 1)
        #expect(first)
        #expect(!second)  // more than the peer could owe: a protocol error
    }

    @Test func transactionsAreBoundedByTheQueueDepth() {
        var credits = Credits(queueDepth: 2)
        credits.startTransaction()
        credits.startTransaction()
        #expect(!credits.canStartTransaction)
        credits.finishTransaction()
        #expect(credits.canStartTransaction)
    }

    /// Two sides, each sending as fast as credits allow and returning credits only by the rules: they never
    /// both get stuck with traffic waiting.
    @Test func twoSidesNeverDeadlock() {
        var a = Credits(queueDepth: 3), b = Credits(queueDepth: 3)
        var inFlightToA: [UInt8] = [], inFlightToB: [UInt8] = []
        var sentByA = 0, sentByB = 0
        for _ in 0..<1000 {
            if a.canSendCredited { inFlightToB.append(a.takeCredited()); sentByA += 1 }
            else if a.needsNoop { inFlightToB.append(a.takeCredited()) }
            if b.canSendCredited { inFlightToA.append(b.takeCredited()); sentByB += 1 }
            else if b.needsNoop { inFlightToA.append(b.takeCredited()) }
            if let c = inFlightToA.first { inFlightToA.removeFirst(); let ok = a.received(credits: c); #expect(ok); a.reposted() }
            if let c = inFlightToB.first { inFlightToB.removeFirst(); let ok = b.received(credits: c); #expect(ok); b.reposted() }
        }
        #expect(sentByA > 300 && sentByB > 300)
    }
}
