import Testing
@testable import RDMALND

@Suite struct CreditsTests {
    @Test func everyCreditCanBeUsed() {
        var credits = Credits(queueDepth: 4)
        for _ in 0..<4 {
            #expect(credits.canSendCredited)
            #expect(credits.takeCredited() == 0)
        }
        #expect(!credits.canSendCredited)
        #expect(Credits.receiveBuffers(queueDepth: 4) == 14)
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
        #expect(credits.takeOwed() == 4)  // the NOOP carries them, taking no credit
        #expect(!credits.needsNoop)
        #expect(credits.available == 8)
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
        let first = credits.finishTransaction()
        #expect(first)
        #expect(credits.canStartTransaction)
        let second = credits.finishTransaction()
        let third = credits.finishTransaction()  // nothing open: refused, not a trap
        #expect(second && !third)
    }

    /// Two sides, each sending as fast as credits allow and returning credits only by the rules (NOOPs take no
    /// credit, and a NOOP's buffer owes nothing back): they never get stuck, and NOOPs never answer NOOPs.
    @Test(arguments: [2, 3, 8])
    func twoSidesNeverDeadlockNorPingPong(depth: Int) {
        struct Message { let credits: UInt8; let noop: Bool }
        var a = Credits(queueDepth: depth), b = Credits(queueDepth: depth)
        var toB: [Message] = [], toA: [Message] = []
        var sentByA = 0, sentByB = 0, noops = 0
        func step(_ me: inout Credits, _ out: inout [Message], _ sent: inout Int, wantsToSend: Bool) {
            if wantsToSend && me.canSendCredited { out.append(Message(credits: me.takeCredited(), noop: false)); sent += 1 }
            else if me.needsNoop { out.append(Message(credits: me.takeOwed(), noop: true)); noops += 1 }
        }
        func deliver(_ me: inout Credits, _ queue: inout [Message]) {
            guard let message = queue.first else { return }
            queue.removeFirst()
            let ok = me.received(credits: message.credits)
            #expect(ok)
            if !message.noop { me.reposted() }
        }
        for round in 0..<1000 {
            step(&a, &toB, &sentByA, wantsToSend: true)
            step(&b, &toA, &sentByB, wantsToSend: true)
            deliver(&a, &toA)
            deliver(&b, &toB)
            _ = round
        }
        #expect(sentByA > 300 && sentByB > 300)
        // Now both go quiet: the NOOPs stop once what is owed has gone back.
        let before = noops
        for _ in 0..<100 {
            step(&a, &toB, &sentByA, wantsToSend: false)
            step(&b, &toA, &sentByB, wantsToSend: false)
            deliver(&a, &toA)
            deliver(&b, &toB)
        }
        #expect(noops - before <= 4)
        #expect(toA.isEmpty && toB.isEmpty)
    }
}
