import Foundation
import LNet
import Synchronization
import Testing
@testable import RDMALND

/// Order and independence over o2ib (seed 003): one peer's messages are matched in the order sent, and a slow
/// consumer delays only itself.
@Suite(.requiresDevice, .serialized) struct OrderDeviceTests {
    /// 10,000 eager PUTs from one peer arrive, and are matched, in the order they were sent.
    @Test func tenThousandEagerPutsArriveInOrder() async throws {
        let (server, client) = try LNDNode.pair()
        defer { client.shutdown(); server.shutdown() }
        let count = 10_000
        let seen = Mutex<(next: UInt64, outOfOrder: Int, total: Int)>((0, 0, 0))
        let arrivals = EventQueue(label: "order", delivery: .inline { event in
            guard event.kind == .put, event.status.isOK else { return }
            seen.withLock { seen in
                if event.headerData != seen.next { seen.outOfOrder += 1 }
                seen.next = event.headerData + 1
                seen.total += 1
            }
        })
        _ = try server.lnet.attach(MatchEntry(portal: 80, matchBits: 1, unlink: .retain),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite,
                                                                options: [.put, .manageRemote], eventQueue: arrivals))
        let sent = EventQueue(capacity: 2 * count)
        let payload = try LNetBuffer(count: 8)
        for sequence in 0..<count {
            let md = try client.lnet.bind(MemoryDescriptor(buffer: payload, eventQueue: sent))
            try client.lnet.put(md, to: server.id, portal: 80, matchBits: 1, ackRequested: false, headerData: UInt64(sequence))
        }
        let deadline = ContinuousClock.now + .seconds(120)
        // A stall (no PUT arrives for 3 s, before the LND's 10 s timeout closes the connection) is reported with
        // both sides' send state, taken while it lasts.
        var lastProgress = (total: 0, at: ContinuousClock.now)
        var stall: [String] = []
        while seen.withLock({ $0.total }) < count && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            let total = seen.withLock { $0.total }
            if total != lastProgress.total {
                lastProgress = (total, ContinuousClock.now)
            } else if stall.isEmpty, ContinuousClock.now - lastProgress.at > .seconds(3) {
                stall = ["at \(total): server"] + server.lnd.connectionSendStates + ["client"] + client.lnd.connectionSendStates
            }
        }
        let result = seen.withLock { $0 }
        #expect(result.total == count, "\(result.total) of \(count) PUTs arrived; stalled: \(stall.joined(separator: " | "))")
        #expect(result.outOfOrder == 0, "\(result.outOfOrder) PUTs arrived out of order")
    }

    /// A callback handler that blocks for 2 s delays only its own queue: another queue's events, on the same
    /// connection and the same scheduler thread, keep coming.
    @Test func aBlockedHandlerDelaysOnlyItsOwnQueue() async throws {
        let (server, client) = try LNDNode.pair { $0.schedulers = 1 }
        defer { client.shutdown(); server.shutdown() }
        let blocked = Mutex<Int>(0)
        let slow = EventQueue(label: "slow") { event in
            guard event.kind == .put else { return }
            blocked.withLock { $0 += 1 }
            Thread.sleep(forTimeInterval: 2)
        }
        let fast = EventQueue(capacity: 256)
        _ = try server.lnet.attach(MatchEntry(portal: 81, matchBits: 1, unlink: .retain),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite,
                                                                options: [.put, .manageRemote], eventQueue: slow))
        _ = try server.lnet.attach(MatchEntry(portal: 82, matchBits: 1, unlink: .retain),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64)), threshold: .infinite,
                                                                options: [.put, .manageRemote], eventQueue: fast))
        func put(_ portal: UInt32) throws {
            let md = try client.lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 8), threshold: .count(2)))
            try client.lnet.put(md, to: server.id, portal: portal, matchBits: 1)
        }
        try put(81)
        #expect(await eventually(timeout: .seconds(10)) { blocked.withLock { $0 } == 1 })
        // While the slow handler sleeps, ten PUTs to the other queue come through, each well within its 2 s.
        let started = ContinuousClock.now
        for _ in 0..<10 { try put(82) }
        for _ in 0..<10 {
            let event = try await fast.next(timeout: .seconds(10))
            #expect(event.kind == .put && event.status.isOK)
        }
        let took = ContinuousClock.now - started
        #expect(took < .seconds(1), "the other queue's events took \(took) while a handler blocked")
    }
}

/// Waits until `condition` holds (checking every 10 ms) for at most `timeout`.
func eventually(timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return true
}
