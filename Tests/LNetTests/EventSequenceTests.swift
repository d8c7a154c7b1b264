import Dispatch
import Testing

@testable import LNet

/// `EventQueue.events` (an AsyncSequence), its overflow policy and cancellation, `next(timeout:)` on the shared
/// timer, and the refusal to poll a queue that delivers to a handler.
@Suite(.timeLimit(.minutes(1))) struct EventSequenceTests {
    /// Posts one `unlink` event on `eq` per MD (in order) and returns the MDs.
    func unlinkEvents(_ count: Int, on eq: EventQueue, _ lnet: LNet) throws -> [MDHandle] {
        let mds = try (0..<count).map { _ in try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: eq)) }
        for md in mds { try lnet.unlink(md) }
        return mds
    }

    @Test func aLoopTakesEventsInOrderAsTheyArePosted() async throws {
        let (lnet, me) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "seq")
        let early = try unlinkEvents(2, on: eq, lnet)
        let consumer = Task { () async throws -> [MDHandle] in
            var seen: [MDHandle] = []
            for try await event in eq.events {
                seen.append(event.md)
                if seen.count == 5 { break }
            }
            return seen
        }
        #expect(await eventually { eq.pendingCount == 0 && eq.waiterCount == 1 })
        // A parked loop is handed each event as it is posted (and a PUT's events come in their order).
        let late = try unlinkEvents(2, on: eq, lnet)
        let md = try lnet.bind(MemoryDescriptor(storage: .none, eventQueue: eq))
        try lnet.put(md, to: me, portal: 1, matchBits: 1, ackRequested: false)
        #expect(try await consumer.value == early + late + [md])
        #expect(eq.waiterCount == 0)
    }

    @Test func aFullQueueDropsTheOldestAndTheLoopIsTold() async throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "small", capacity: 2)
        var iterator = eq.events.makeAsyncIterator()
        let mds = try unlinkEvents(5, on: eq, lnet)
        await #expect(throws: LNetError.eventsDropped(count: 3)) { _ = try await iterator.next() }
        // Then the events that were kept, the newest ones.
        #expect(try await iterator.next()?.md == mds[3])
        #expect(try await iterator.next()?.md == mds[4])
        #expect(eq.overflowCount == 3)
        // Drops before a loop starts are not its business; later ones are.
        var fresh = eq.events.makeAsyncIterator()
        let more = try unlinkEvents(3, on: eq, lnet)
        await #expect(throws: LNetError.eventsDropped(count: 1)) { _ = try await fresh.next() }
        #expect(try await fresh.next()?.md == more[1])
    }

    @Test func cancellingTheTaskEndsTheLoopAndLeavesLaterEventsQueued() async throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "cancel")
        let consumer = Task { () async throws -> Int in
            var count = 0
            for try await _ in eq.events { count += 1 }
            return count
        }
        #expect(await eventually { eq.waiterCount == 1 })
        consumer.cancel()
        #expect(try await consumer.value == 0)
        #expect(eq.waiterCount == 0)
        _ = try unlinkEvents(1, on: eq, lnet)
        #expect(eq.pendingCount == 1) // not handed to the cancelled loop
    }

    @Test func nextIsCancellableAndTimedByTheSharedTimer() async throws {
        let eq = EventQueue(label: "next")
        let waiter = Task { () async throws -> LNetEvent in try await eq.next(timeout: .seconds(60)) }
        #expect(await eventually { eq.waiterCount == 1 })
        #expect(DeadlineTimer.shared.pendingCount >= 1)
        let cancelled = ContinuousClock.now
        waiter.cancel()
        await #expect(throws: LNetError.cancelled) { try await waiter.value }
        #expect(ContinuousClock.now - cancelled < .seconds(15))
        #expect(eq.waiterCount == 0)

        // Many overlapping bounded waits: each is an entry of the one timer; each is handed one event.
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let count = 100
        let taken = Collector<MDHandle>()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                group.addTask { taken.append(try await eq.next(timeout: .seconds(60)).md) }
            }
            // A wait parks on the queue, then takes its timer entry: both steps must be done for each.
            #expect(await eventually { eq.waiterCount == count })
            #expect(await eventually { DeadlineTimer.shared.pendingCount >= count })
            let mds = try unlinkEvents(count, on: eq, lnet)
            try await group.waitForAll()
            #expect(Set(taken.items) == Set(mds))
        }
        // And all of them time out on time.
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                group.addTask {
                    await #expect(throws: LNetError.timeout) { try await eq.next(timeout: .milliseconds(400)) }
                }
            }
            try await group.waitForAll()
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(400) && waited < .seconds(15), "\(waited)")
        #expect(eq.waiterCount == 0)
    }

    @Test func twoWaitersEachTakeOneEventInArrivalOrder() async throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let eq = EventQueue(label: "fifo")
        let first = Task { try await eq.next(timeout: .seconds(10)).md }
        #expect(await eventually { eq.waiterCount == 1 })
        let second = Task { try await eq.next(timeout: .seconds(10)).md }
        #expect(await eventually { eq.waiterCount == 2 })
        let mds = try unlinkEvents(2, on: eq, lnet)
        #expect(try await first.value == mds[0])
        #expect(try await second.value == mds[1])
    }

    enum HandlerKind: String, CaseIterable, Sendable { case callback, inline, scheduler }

    /// `poll`, `next` and `events` refuse a queue that hands its events to a handler: its handler still gets
    /// every event.
    @Test(arguments: HandlerKind.allCases)
    func aHandlerQueueCannotBePolled(_ kind: HandlerKind) async throws {
        let (lnet, _) = try makeLoopbackNode()
        defer { lnet.shutdown() }
        let handled = Collector<MDHandle>()
        let release = Gate()
        let eq: EventQueue
        var scheduler: QueueletScheduler<LNetEvent>?
        switch kind {
        case .callback:
            // The handler holds its first event, so the rest sit in the queue where a poll could take them.
            eq = EventQueue(label: "cb") { event in
                release.wait(seconds: 10)
                handled.append(event.md)
            }
        case .inline:
            eq = EventQueue(label: "inline", delivery: .inline { handled.append($0.md) })
        case .scheduler:
            let made = try QueueletScheduler(events: QueueletConfiguration(partitions: CPUPartitionTable(count: 1))) { event, _ in
                handled.append(event.md)
            }
            scheduler = made
            eq = EventQueue(label: "sched", delivery: .scheduler(made))
        }
        defer { scheduler?.shutdown() }
        let mds = try unlinkEvents(3, on: eq, lnet)
        let refusal = LNetError.eventQueueNotPolled(label: eq.label, delivery: kind.rawValue)
        #expect(throws: refusal) { _ = try eq.poll() }
        await #expect(throws: refusal) { _ = try await eq.next(timeout: .milliseconds(10)) }
        await #expect(throws: refusal) { for try await _ in eq.events {} }
        release.open()
        eq.flush()
        #expect(await eventually { handled.count == 3 })
        #expect(Set(handled.items) == Set(mds))
    }

    @Test func theTimerFiresDueEntriesInOrderAndForgetsCancelledOnes() async throws {
        let timer = DeadlineTimer(name: "test-timer")
        let fired = Collector<Int>()
        // The timer's thread is held in a first entry's action while the others are scheduled and some cancelled:
        // on a slow machine an entry could otherwise come due, and fire, before an earlier-deadline one was even
        // scheduled (as CI once saw: 153 fired before 154 was scheduled), which says nothing about the order the
        // timer keeps. Once released it finds them all due or pending, and must fire them in deadline order.
        let holding = Gate(), release = Gate()
        _ = timer.schedule(at: .now) {
            holding.open()
            release.wait(seconds: 30)
        }
        #expect(holding.wait(seconds: 10))
        let base = ContinuousClock.now + .milliseconds(50)
        var tokens: [DeadlineTimer.Token] = []
        for index in 0..<300 {
            // Scheduled in reverse deadline order: the timer must re-arm for each earlier one.
            tokens.append(timer.schedule(at: base + .milliseconds(300 - index)) { fired.append(index) })
        }
        // An entry whose cancel succeeded never fires, every other entry fires once, and they fire in deadline order.
        var cancelled = Set<Int>()
        for index in stride(from: 0, to: 300, by: 2) where timer.cancel(tokens[index]) { cancelled.insert(index) }
        release.open()
        #expect(cancelled.count == 150)
        let expected = (0..<300).reversed().filter { !cancelled.contains($0) }
        #expect(await eventually { fired.count == expected.count })
        #expect(fired.items == expected)
        #expect(timer.pendingCount == 0 && timer.firedCount == expected.count + 1)  // and the holding entry
        #expect(!timer.cancel(tokens[1])) // already fired
        // An earlier deadline scheduled after a later one re-arms the timer: it fires on time, not with the later.
        let late = timer.schedule(at: .now + .seconds(30)) { fired.append(-1) }
        let early = Gate()
        let scheduled = ContinuousClock.now
        _ = timer.schedule(at: .now + .milliseconds(50)) { early.open() }
        #expect(early.wait(seconds: 5) && ContinuousClock.now - scheduled < .seconds(2))
        #expect(timer.cancel(late))
        // A deadline in the past fires at once.
        let now = Gate()
        _ = timer.schedule(at: .now - .seconds(1)) { now.open() }
        #expect(now.wait(seconds: 5))
    }
}
