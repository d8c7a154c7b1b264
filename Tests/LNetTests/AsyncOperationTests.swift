import Foundation
import Testing

@testable import LNet

/// Awaitable PUT and GET (`LNet+Async.swift`) over the loopback LND: figures, typed failures, deadlines,
/// cancellation, shutdown, and exactly-once finalization whichever comes first.
@Suite(.timeLimit(.minutes(1))) struct AsyncOperationTests {
    /// A loopback node with a target MD on portal 7 that takes PUTs and serves GETs at offset 0.
    func makeTarget(size: Int = 64 * 1024, delivery: LoopbackLND.Delivery = .queued)
        throws -> (lnet: LNet, me: ProcessID, sink: LNetBuffer, events: EventQueue) {
        let lnet = LNet(configuration: .init(pid: 12345))
        let ni = try lnet.addInterface(.loopback, lnd: LoopbackLND(delivery: delivery))
        let sink = try LNetBuffer(count: size)
        let events = EventQueue(label: "target")
        _ = try lnet.attach(MatchEntry(portal: 7, matchBits: 0xAB, unlink: .retain),
                            descriptor: MemoryDescriptor(buffer: sink, threshold: .infinite,
                                                         options: [.put, .get, .manageRemote], eventQueue: events))
        return (lnet, ni.processID, sink, events)
    }

    /// Lets what is still in flight (an ACK to an MD that a cancelled call unlinked) finish, shuts down, and
    /// checks that every message handed to the LND was finalized exactly once.
    func expectExactlyOnce(_ lnet: LNet, sourceLocation: SourceLocation = #_sourceLocation) async {
        _ = await eventually { lnet.interfaces.allSatisfy { $0.pendingMessageCount == 0 } }
        lnet.shutdown()
        for interface in lnet.counters().interfaces {
            #expect(interface.finalizedExactlyOnce, "\(interface)", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: [LoopbackLND.Delivery.queued, .inline])
    func putThenGetReturnTheCompletionsFigures(_ delivery: LoopbackLND.Delivery) async throws {
        let (lnet, me, sink, _) = try makeTarget(delivery: delivery)
        let payload = bytes(40_000, seed: 5)
        let put = try await lnet.put(.buffer(try LNetBuffer(copying: payload)), to: me, portal: 7, matchBits: 0xAB,
                                     headerData: 9)
        #expect(put.status == .ok && put.requestedLength == 40_000 && put.matchedLength == 40_000 && put.offset == 0)
        #expect(put.events.map(\.kind) == [.send, .ack])
        #expect(put.events.last?.unlinked == true && put.events.dropLast().allSatisfy { !$0.unlinked })
        #expect(!lnet.isLinked(put.md))
        #expect(sink.read(length: 40_000) == payload)

        let back = try LNetBuffer(count: 40_000)
        let get = try await lnet.get(into: .buffer(back), from: me, portal: 7, matchBits: 0xAB)
        #expect(get.status == .ok && get.requestedLength == 40_000 && get.matchedLength == 40_000)
        // The loopback's inline delivery answers the GET before its own SEND completes: the order is the LND's,
        // and only the last event is the unlinked one.
        #expect(get.events.map(\.kind) == (delivery == .inline ? [.reply, .send] : [.send, .reply]))
        #expect(get.events.last?.unlinked == true && get.events.dropLast().allSatisfy { !$0.unlinked })
        #expect(back.read() == payload)
        #expect(!lnet.isLinked(get.md))
        await expectExactlyOnce(lnet)
    }

    @Test func aPutWithoutAckReturnsAfterItsSend() async throws {
        let (lnet, me, sink, events) = try makeTarget()
        let put = try await lnet.put(.buffer(try LNetBuffer(copying: [1, 2, 3])), to: me, portal: 7, matchBits: 0xAB,
                                     ackRequested: false)
        #expect(put.events.map(\.kind) == [.send] && put.events[0].unlinked && put.matchedLength == 3)
        let arrived = try await events.next(timeout: .seconds(5))
        #expect(arrived.kind == .put && sink.read(length: 3) == [1, 2, 3])
        await expectExactlyOnce(lnet)
    }

    @Test func failuresThrowTheStatusAndTheEventThatReportedIt() async throws {
        let (lnet, me, _, _) = try makeTarget(size: 16)
        // Nothing on portal 8: the REPLY says so.
        await #expect(throws: LNetError.operationFailed(status: .noMatch, event: .reply)) {
            _ = try await lnet.get(into: .buffer(try LNetBuffer(count: 8)), from: me, portal: 8, matchBits: 1)
        }
        // Bigger than the target's MD (no truncation): the loopback reports the drop on the SEND.
        await #expect(throws: LNetError.operationFailed(status: .tooLarge, event: .send)) {
            _ = try await lnet.put(.buffer(try LNetBuffer(count: 64)), to: me, portal: 7, matchBits: 0xAB)
        }
        // Errors of put/get themselves come through as they are.
        let elsewhere = ProcessID(nid: NID(address: 1, network: .o2ib), pid: 1)
        await #expect(throws: LNetError.networkUnreachable(destination: elsewhere.nid)) {
            _ = try await lnet.put(.none, to: elsewhere, portal: 7, matchBits: 0xAB)
        }
        await expectExactlyOnce(lnet)
    }

    @Test func aDeadlineUnlinksTheMDAndThrowsTimeout() async throws {
        let (lnet, me, _, _) = try makeTarget()
        lnet.setLazy(portal: 9, true) // the GET is held there: no REPLY until an ME is attached
        // The call's MD gets the next handle: a thread of its own (off the cooperative pool, which other suites
        // may keep busy) notes when the deadline unlinks it.
        let probe = try lnet.bind(MemoryDescriptor(storage: .none))
        try lnet.unlink(probe)
        let unlinkedAt = UnlinkWatch(lnet, MDHandle(cookie: probe.cookie + 1))
        let deadline = ContinuousClock.now + .milliseconds(100)
        await #expect(throws: LNetError.timeout) {
            _ = try await lnet.get(into: .buffer(try LNetBuffer(count: 32)), from: me, portal: 9, matchBits: 1,
                                   deadline: deadline)
        }
        // Promptly: well before the once-a-second shutdown check would have noticed the deadline.
        let late = try #require(unlinkedAt.wait()) - deadline
        #expect(late >= .zero && late < .milliseconds(800), "unlinked \(late) after the deadline")
        // The held GET is answered now; its REPLY finds the requester's MD gone, so the target's GET event fails.
        let served = EventQueue(label: "late")
        _ = try lnet.attach(MatchEntry(portal: 9, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 32), options: [.get], eventQueue: served))
        let answered = try await served.next(timeout: .seconds(5))
        #expect(answered.kind == .get && answered.status == .noMatch)
        await expectExactlyOnce(lnet)
    }

    @Test func cancellingTheTaskUnlinksTheMDAndThrowsCancelled() async throws {
        let (lnet, me, _, _) = try makeTarget()
        lnet.setLazy(portal: 9, true)
        let task = Task { () async throws(LNetError) -> LNetCompletion in
            try await lnet.get(into: .buffer(try LNetBuffer(count: 32)), from: me, portal: 9, matchBits: 1)
        }
        #expect(await eventually { lnet.delayedCount(portal: 9) == 1 })
        task.cancel()
        let result = await task.result
        #expect(throws: LNetError.cancelled) { try result.get() }
        let served = EventQueue(label: "late")
        _ = try lnet.attach(MatchEntry(portal: 9, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 32), options: [.get], eventQueue: served))
        #expect(try await served.next(timeout: .seconds(5)).status == .noMatch)
        await expectExactlyOnce(lnet)
    }

    @Test func aTaskCancelledBeforeTheCallStartsNothing() async throws {
        let (lnet, me, _, events) = try makeTarget()
        let task = Task { () async throws(LNetError) -> LNetCompletion in
            withUnsafeCurrentTask { $0?.cancel() }
            return try await lnet.put(.buffer(try LNetBuffer(count: 8)), to: me, portal: 7, matchBits: 0xAB)
        }
        await #expect(throws: LNetError.cancelled) { try await task.value }
        #expect(events.postedCount == 0)
        await expectExactlyOnce(lnet)
    }

    /// Cancellation racing completion: each call ends exactly once, with its completion or `cancelled`, and
    /// every message is finalized exactly once.
    @Test func cancellationRacingCompletionFinalizesExactlyOnce() async throws {
        let (lnet, me, _, _) = try makeTarget()
        let outcomes = Collector<String>()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<300 {
                let task = Task { () async throws(LNetError) -> LNetCompletion in
                    try await lnet.put(.buffer(try LNetBuffer(count: 64)), to: me, portal: 7, matchBits: 0xAB)
                }
                group.addTask {
                    if index % 3 != 0 { await Task.yield() }
                    task.cancel()
                    switch await task.result {
                    case .success(let completion):
                        let valid = completion.events.map(\.kind) == [.send, .ack] && completion.events.last?.unlinked == true
                        outcomes.append(valid ? "completed" : "\(completion.events)")
                    case .failure(let error as LNetError) where error == .cancelled:
                        outcomes.append("cancelled")
                    case .failure(let error):
                        outcomes.append("\(error)")
                    }
                }
            }
        }
        let other = outcomes.items.filter { $0 != "completed" && $0 != "cancelled" }
        #expect(other.isEmpty, "\(other)")
        #expect(outcomes.count == 300)
        await expectExactlyOnce(lnet)
    }

    @Test func shutdownEndsAWaitingCall() async throws {
        let (lnet, me, _, _) = try makeTarget()
        lnet.setLazy(portal: 9, true)
        let task = Task { () async throws(LNetError) -> LNetCompletion in
            try await lnet.get(into: .buffer(try LNetBuffer(count: 32)), from: me, portal: 9, matchBits: 1)
        }
        #expect(await eventually { lnet.delayedCount(portal: 9) == 1 })
        let started = ContinuousClock.now
        lnet.shutdown()
        await #expect(throws: LNetError.shutdown) { try await task.value }
        #expect(ContinuousClock.now - started < .seconds(15)) // the once-a-second check, and a cooperative pool other suites may keep busy
        #expect(lnet.counters().interfaces.allSatisfy { $0.finalizedExactlyOnce })
    }

    /// Many calls waiting at once, each with its own deadline, are timed by the one shared timer (a `Task` or a
    /// sleep per wait would leave the shared timer without their entries), and each ends on time.
    @Test func overlappingWaitsShareOneTimer() async throws {
        let (lnet, me) = try makeLoopbackNode()
        lnet.setLazy(portal: 9, true)
        let count = 200
        // Far deadlines: every call is waiting, with its entry in the shared timer, until the held GETs are dropped.
        let failures = Collector<String>()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                group.addTask {
                    do throws(LNetError) {
                        _ = try await lnet.get(into: .buffer(try LNetBuffer(count: 8)), from: me, portal: 9, matchBits: 1,
                                               deadline: .now + .seconds(60))
                        failures.append("completed")
                    } catch {
                        failures.append("\(error)")
                    }
                }
            }
            #expect(await eventually { lnet.delayedCount(portal: 9) == count })
            #expect(DeadlineTimer.shared.pendingCount >= count)
            lnet.setLazy(portal: 9, false) // the target now refuses them: each call ends with the REPLY's noMatch
            try await group.waitForAll()
        }
        let refused = "\(LNetError.operationFailed(status: .noMatch, event: .reply))"
        #expect(failures.count == count && failures.items.allSatisfy { $0 == refused }, "\(Set(failures.items))")

        // Near deadlines: all of them pass together, and every call ends with a timeout soon after.
        lnet.setLazy(portal: 9, true)
        let deadline = ContinuousClock.now + .milliseconds(500)
        let timedOut = Collector<Int>()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                group.addTask {
                    do throws(LNetError) {
                        _ = try await lnet.get(into: .buffer(try LNetBuffer(count: 8)), from: me, portal: 9, matchBits: 1,
                                               deadline: deadline)
                    } catch .timeout {
                        timedOut.append(1)
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(timedOut.count == count)
        #expect(ContinuousClock.now - deadline < .seconds(15))
        lnet.setLazy(portal: 9, false)
        await expectExactlyOnce(lnet)
    }
}

/// Watches, on a thread of its own, for an MD to be linked and then unlinked, and notes when it went.
final class UnlinkWatch: Sendable {
    private let done = Gate()
    private let at = Collector<ContinuousClock.Instant>()

    init(_ lnet: LNet, _ md: MDHandle) {
        let thread = Thread { [done, at] in
            let giveUp = ContinuousClock.now + .seconds(30)
            while !lnet.isLinked(md), ContinuousClock.now < giveUp { usleep(100) }
            while lnet.isLinked(md), ContinuousClock.now < giveUp { usleep(100) }
            at.append(ContinuousClock.now)
            done.open()
        }
        thread.start()
    }

    /// When the MD was seen unlinked (nil if the watch gave up).
    func wait() -> ContinuousClock.Instant? {
        done.wait(seconds: 35)
        return at.items.first
    }
}
