import Synchronization
import Testing

@testable import LNet

/// Event-queue guarantees: per-queue locks, no core lock held in callbacks, re-entry without deadlock, and slow
/// callbacks that delay only their own queue.
@Suite struct EventQueueTests {
    @Test func pollsWaitsAndTimesOut() async throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "polled")
        #expect(try eq.poll() == nil)
        await #expect(throws: LNetError.timeout) { try await eq.next(timeout: .milliseconds(20)) }
        let md = try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: eq))
        try lnet.unlink(md)
        let event = try await eq.next(timeout: .seconds(1))
        #expect(event.kind == .unlink && event.unlinked && event.md == md)
        #expect(eq.postedCount == 1)
    }

    @Test func fullPolledQueueDiscardsOldest() throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "small", capacity: 2)
        let mds = try (0..<3).map { _ in try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: eq)) }
        for md in mds { try lnet.unlink(md) }
        #expect(eq.overflowCount == 1)
        #expect(try eq.poll()?.md == mds[1])
        #expect(try eq.poll()?.md == mds[2])
    }

    /// A request object whose release (from a callback) unlinks its MD: the "free the request" re-entry.
    final class Request: Sendable {
        let lnet: LNet
        let md: MDHandle
        let released: Gate
        init(lnet: LNet, md: MDHandle, released: Gate) {
            self.lnet = lnet
            self.md = md
            self.released = released
        }
        deinit {
            try? lnet.unlink(md)
            released.open()
        }
    }

    enum Mode: String, CaseIterable, Sendable { case callback, inline }

    @Test(arguments: Mode.allCases)
    func callbacksReenterTheCoreWithoutDeadlock(_ mode: Mode) async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let otherEQ = EventQueue(label: "other")
        let other = try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: otherEQ))
        let requestEQ = EventQueue(label: "request")
        let released = Gate()
        let request = Mutex<Request?>(Request(lnet: lnet, md: try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: requestEQ)),
                                              released: released))
        let secondPut = Gate()
        let failures = Collector<String>()
        let handler: @Sendable (LNetEvent) -> Void = { event in
            guard event.kind == .put else { return }
            if event.matchBits == 1 {
                do {
                    try lnet.unlink(other)                                            // unlink an MD
                    let next = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [2])))
                    try lnet.put(next, to: me, portal: 5, matchBits: 2, ackRequested: false) // post a new Put
                    request.withLock { $0 = nil }                                     // free the request
                } catch {
                    failures.append("\(error)")
                }
            } else {
                secondPut.open()
            }
        }
        let eq = EventQueue(label: "reentrant", delivery: mode == .inline ? .inline(handler) : .callback(handler))
        _ = try lnet.attach(MatchEntry(portal: 5, matchBits: 0, ignoreBits: .max),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .infinite,
                                                         options: [.put, .manageRemote], eventQueue: eq))
        try lnet.put(try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1]))), to: me, portal: 5, matchBits: 1,
                     ackRequested: false)
        #expect(await eventually { secondPut.isOpen && released.isOpen })
        #expect(failures.items.isEmpty)
        #expect(try otherEQ.poll()?.kind == .unlink)
        #expect(try requestEQ.poll()?.kind == .unlink)
    }

    @Test func slowCallbackDelaysNeitherOtherQueuesNorMessageMovement() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let release = Gate()
        let fastSawEventWhileSlowBlocked = Gate()
        let slowEntered = Gate()
        let slow = EventQueue(label: "slow") { _ in
            slowEntered.open()
            release.wait(seconds: 5) // ties down only this queue's delivery
        }
        let fast = EventQueue(label: "fast") { _ in
            if slowEntered.isOpen && !release.isOpen { fastSawEventWhileSlowBlocked.open() }
        }
        _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .infinite,
                                                         options: [.put, .manageRemote], eventQueue: slow))
        _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 2),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .infinite,
                                                         options: [.put, .manageRemote], eventQueue: fast))
        let source = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .infinite))
        try lnet.put(source, to: me, portal: 1, matchBits: 1, ackRequested: false)
        #expect(slowEntered.wait(seconds: 5))
        // While the slow handler is blocked, more messages move and the other queue delivers.
        let polled = EventQueue(label: "polled")
        let counted = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .infinite, eventQueue: polled))
        for _ in 0..<50 { try lnet.put(counted, to: me, portal: 1, matchBits: 2, ackRequested: true) }
        #expect(await eventually { polled.postedCount == 100 })
        #expect(fastSawEventWhileSlowBlocked.wait(seconds: 5))
        release.open()
        #expect(await eventually { fast.postedCount == 50 })
    }

    @Test func manyQueuesDeliverConcurrently() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let queues = 4
        let inside = Atomic<Int>(0)
        let allInside = Gate()
        let overlapped = Collector<Bool>()
        var eqs: [EventQueue] = []
        for index in 0..<queues {
            let eq = EventQueue(label: "eq\(index)") { _ in
                if inside.add(1, ordering: .acquiringAndReleasing).newValue == queues { allInside.open() }
                // Every handler waits for all of them to be inside at once: only possible if no shared lock
                // serializes callbacks.
                overlapped.append(allInside.wait(seconds: 5))
            }
            eqs.append(eq)
            _ = try lnet.attach(MatchEntry(portal: 2, matchBits: UInt64(index)),
                                descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 1), options: [.put], eventQueue: eq))
        }
        let source = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 1), threshold: .infinite))
        for index in 0..<queues { try lnet.put(source, to: me, portal: 2, matchBits: UInt64(index), ackRequested: false) }
        #expect(await eventually { overlapped.count == queues })
        #expect(overlapped.items.allSatisfy { $0 })
    }

    @Test func eventsOfOneQueueAreDeliveredInOrder() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let seen = Collector<UInt64>()
        let eq = EventQueue(label: "ordered") { seen.append($0.headerData) }
        _ = try lnet.attach(MatchEntry(portal: 3, matchBits: 0),
                            descriptor: MemoryDescriptor(storage: .none, threshold: .infinite, options: [.put], eventQueue: eq))
        let source = try lnet.bind(MemoryDescriptor(storage: .none, threshold: .infinite))
        for index in 0..<200 { try lnet.put(source, to: me, portal: 3, matchBits: 0, ackRequested: false, headerData: UInt64(index)) }
        #expect(await eventually { seen.count == 200 })
        #expect(seen.items == (0..<200).map { UInt64($0) })
    }
}
