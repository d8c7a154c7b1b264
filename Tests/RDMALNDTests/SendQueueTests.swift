import LNet
import Testing
@testable import RDMALND

/// The send queue's wake-up rule: the scheduler arms a connection's send CQ only while posted work's completion
/// matters (`awaitsCompletions`), so every completion something waits for must count.
@Suite struct SendQueueTests {
    /// A NOOP that returned credits gates the next one until its completion is seen. Its completion must wake the
    /// scheduler: a peer left with no credits sends nothing more, so no receive would ever bring the scheduler back
    /// and the credits owed since would never go (10,000 eager PUTs stalled this way under load in the VM).
    @Test func aNoopInFlightIsAwaited() throws {
        var queue = SendQueue(queueDepth: 8, limits: .init(sends: 16, rdma: 16))
        for _ in 0..<queue.credits.highWater { queue.credits.reposted() }
        var slots = 0
        let work = try #require(queue.next { _ in slots += 1; return slots })
        guard case .send(let outgoing, _, let credits, let sequence, _) = work, case .noop = outgoing.body else {
            Issue.record("expected a NOOP, got \(work)")
            return
        }
        #expect(credits == UInt8(queue.credits.highWater))
        #expect(queue.awaitsCompletions, "a NOOP in flight must arm the send queue's completions")
        // Owed credits pile up meanwhile, but no second NOOP goes while the first is in flight.
        for _ in 0..<queue.credits.highWater { queue.credits.reposted() }
        #expect(queue.next { _ in slots += 1; return slots } == nil)
        _ = queue.completed(through: sequence) { _ in }
        #expect(!queue.awaitsCompletions)
        let next = try #require(queue.next { _ in slots += 1; return slots })
        guard case .send(let second, _, _, _, _) = next, case .noop = second.body else {
            Issue.record("expected the second NOOP, got \(next)")
            return
        }
    }

    /// A burst longer than the link carries within the timeout is not a timeout while its queue moves: a queued
    /// message's wait counts from when its queue last moved. A queue that stands still for the timeout expires.
    @Test func aMovingQueueDoesNotExpireAStandingOneDoes() throws {
        let timeout = 10
        let start = Tick(nanoseconds: 1_000_000_000_000)
        var eager = SendQueue(queueDepth: 2, limits: .init(sends: 16, rdma: 16), timeoutSeconds: timeout)
        for _ in 0..<6 { eager.enqueue(Outgoing(body: .immediate(lnet: LNetHeader(type: .put, source: ProcessID(nid: .loopback, pid: 1), destination: ProcessID(nid: .loopback, pid: 1)), payloadOffset: 0, payloadLength: 0), deadline: start + timeout)) }
        #expect(eager.oldestQueuedDeadline == start + timeout)
        var slots = 0
        // Two go (two credits); the rest wait for credits.
        for _ in 0..<2 { #expect(eager.next(now: start, slot: { _ in slots += 1; return slots }) != nil) }
        #expect(eager.next(now: start, slot: { _ in slots += 1; return slots }) == nil)
        // Credits come back at 9 s: the queue moves, and its new head's wait counts from then.
        let later = start + 9
        _ = eager.credits.received(credits: 2)
        for _ in 0..<2 { #expect(eager.next(now: later, slot: { _ in slots += 1; return slots }) != nil) }
        #expect(eager.oldestQueuedDeadline == later + timeout, "a queue that moved at 9 s is due 10 s later")
        // Nothing moves after that: due at 19 s, past the first messages' own deadline.
        #expect(eager.oldestQueuedDeadline.map { $0 < start + 20 } == true)
        #expect(eager.oldestQueuedDeadline.map { $0 > start + timeout } == true)
    }
}
