import Synchronization
import Testing

@testable import LNet

/// What `put`/`get` refuse at once rather than lose later, and shutting down from anywhere.
@Suite struct OperationLimitsTests {
    /// A PUT that asks for an ACK on an MD with room for one event: the ACK would be dropped, so the call fails.
    @Test func putWithAnAckOnAThresholdOneMDFailsAtOnce() throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8)))  // threshold 1: the default
        #expect {
            try lnet.put(md, to: me, portal: 1, matchBits: 1)
        } throws: { error in
            guard case LNetError.invalidMemoryDescriptor(let reason) = error else { return false }
            return reason.contains("ACK") && reason.contains("ackRequested: false")
        }
        // Nothing was sent, and the MD is untouched: the same MD still takes a PUT without an ACK.
        #expect(lnet.counters().totals.messagesSent == 0)
        try lnet.put(md, to: me, portal: 1, matchBits: 1, ackRequested: false)
    }

    /// A GET on an MD with room for one event: the REPLY would be dropped, so the call fails.
    @Test func getOnAThresholdOneMDFailsAtOnce() throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8)))
        #expect {
            try lnet.get(md, from: me, portal: 1, matchBits: 1)
        } throws: { error in
            guard case LNetError.invalidMemoryDescriptor(let reason) = error else { return false }
            return reason.contains("REPLY")
        }
        #expect(lnet.isLinked(md))
    }

    /// A destination on a network this node has no interface on: routing is not part of rev 1, and the error
    /// says so.
    @Test func aDestinationOnAnotherNetworkSaysRoutingIsNotSupported() throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(2)))
        let elsewhere = ProcessID(nid: try NID(parsing: "192.0.2.9@o2ib"), pid: 12345)
        #expect {
            try lnet.put(md, to: elsewhere, portal: 1, matchBits: 1)
        } throws: { error in
            guard case LNetError.networkUnreachable = error else { return false }
            return "\(error)".contains("routing is not supported")
        }
    }

    /// A second shutdown has nothing to stop and keeps the counters the first one retired.
    @Test func aSecondShutdownKeepsTheCounters() async throws {
        let (lnet, me) = try makeLoopbackNode()
        let eq = EventQueue()
        _ = try lnet.attach(MatchEntry(portal: 2, matchBits: 2), descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), options: [.put]))
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(2), eventQueue: eq))
        try lnet.put(md, to: me, portal: 2, matchBits: 2)
        _ = try await eq.next(timeout: .seconds(5))
        _ = try await eq.next(timeout: .seconds(5))
        lnet.shutdown()
        let first = lnet.counters()
        #expect(first.totals.messagesSent == 2)  // the PUT and its ACK
        lnet.shutdown()
        #expect(lnet.counters() == first)
    }

    /// `LNet.shutdown()` from inside a callback handler and from inside an inline handler (on the thread that
    /// completed the operation) returns, finalizes every message once, and a later shutdown is a no-op.
    @Test(arguments: [false, true])
    func shutdownFromInsideAHandler(inline: Bool) async throws {
        let (lnet, me) = try makeLoopbackNode()
        let returned = Gate()
        let handler: @Sendable (LNetEvent) -> Void = { event in
            guard event.kind == .put else { return }
            lnet.shutdown()  // a handler that recurses into a full clean-up (seed 000)
            returned.open()
        }
        let eq = inline ? EventQueue(label: "inline", delivery: .inline(handler)) : EventQueue(label: "callback", handler: handler)
        _ = try lnet.attach(MatchEntry(portal: 3, matchBits: 3),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 64), threshold: .infinite, options: [.put], eventQueue: eq))
        let source = EventQueue(capacity: 64)
        // The handler may shut LNet down while these are still being issued: then the rest fail at once.
        for _ in 0..<8 {
            guard let md = try? lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 64), threshold: .count(2), eventQueue: source)) else { break }
            try? lnet.put(md, to: me, portal: 3, matchBits: 3)
        }
        #expect(returned.wait(seconds: 5), "shutdown inside the handler did not return")
        lnet.shutdown()
        let counters = try #require(lnet.counters().interfaces.first)
        #expect(counters.finalizedExactlyOnce, "\(counters)")
        #expect(counters.unfinalizedAtShutdown == 0)
    }
}
