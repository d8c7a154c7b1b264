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
}
