import Foundation
import LNet
import Synchronization
import Testing
@testable import RDMALND

/// Nothing waits behind what cannot move (seed 002, the PVFS2 deadlock): a bulk request that waits for a
/// transaction slot holds back only the requests behind it, never the eager messages that would let it move.
@Suite(.requiresDevice, .serialized) struct HeadOfLineDeviceTests {
    /// Node A sends queue depth + 1 bulk PUTs to a lazy portal of node B, then a small eager "go" PUT. B attaches
    /// the bulk PUTs' match entry only when "go" arrives. The first queue-depth PUT_REQs hold every transaction
    /// slot of A's connection (B holds them, unmatched), the next one waits for a slot: "go" must pass it.
    @Test(arguments: BulkMode.allCases)
    func eagerGoMessagePassesBulkRequestsWaitingForASlot(mode: BulkMode) async throws {
        let depth = 4
        // The default LND_TIMEOUT: a "go" stuck behind the requests would wait for it (50 s) to close the connection.
        let (b, a) = try LNDNode.pair { $0.putMode = mode; $0.peerCredits = depth; $0.timeout = LNDTunables().timeout }
        defer { a.shutdown(); b.shutdown() }
        let bulk = 64 << 10
        let portal: UInt32 = 70
        b.lnet.setLazy(portal: portal, true)
        let sinks = try LNetBuffer(count: (depth + 1) * bulk)
        let sinkEvents = EventQueue(capacity: 64)
        // "go" lands on portal 71; its handler attaches the bulk entry on the lazy portal.
        let attached = Mutex<Result<Void, LNetError>?>(nil)
        let go = EventQueue(label: "go", delivery: .inline { event in
            guard event.kind == .put, event.status.isOK else { return }
            let result = Result<Void, LNetError> { () throws(LNetError) in
                _ = try b.lnet.attach(MatchEntry(portal: portal, matchBits: 1),
                                      descriptor: MemoryDescriptor(storage: .buffer(sinks), threshold: .count(depth + 1),
                                                                   options: [.put], eventQueue: sinkEvents))
            }
            attached.withLock { $0 = result }
        })
        _ = try b.lnet.attach(MatchEntry(portal: 71, matchBits: 2),
                              descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 8)), options: [.put], eventQueue: go))
        let started = ContinuousClock.now
        var queues: [EventQueue] = []
        for index in 0...depth {
            let eq = EventQueue()
            let md = try a.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(bulk, seed: UInt64(index))), threshold: .count(2),
                                                      eventQueue: eq))
            try a.lnet.put(md, to: b.id, portal: portal, matchBits: 1, offset: index * bulk, ackRequested: true)
            queues.append(eq)
        }
        let goEQ = EventQueue()
        let goMD = try a.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(8, seed: 99)), threshold: .count(2), eventQueue: goEQ))
        try a.lnet.put(goMD, to: b.id, portal: 71, matchBits: 2, ackRequested: true)
        #expect(try await expectEvent(.send, on: goEQ, timeout: .seconds(2)).status == .ok)
        #expect(try await expectEvent(.ack, on: goEQ, timeout: .seconds(2)).status == .ok)
        for (index, eq) in queues.enumerated() {
            let remaining = max(.milliseconds(1), .seconds(2) - (ContinuousClock.now - started))
            let first = try await eq.next(timeout: remaining)
            let second = try await eq.next(timeout: max(.milliseconds(1), .seconds(2) - (ContinuousClock.now - started)))
            #expect(Set([first.kind, second.kind]) == [.send, .ack] && first.status == .ok && second.status == .ok,
                    "PUT \(index): \(first), \(second)")
        }
        let took = ContinuousClock.now - started
        print("lazy portal, \(mode): \(depth + 1) bulk PUTs behind a go message in \(took)")
        #expect(took < .seconds(2), "the exchange took \(took)")
        #expect(attached.withLock { if case .success = $0 { true } else { false } }, "the go handler did not attach the entry")
        for index in 0...depth {
            #expect(same(sinks, index * bulk, try patterned(bulk, seed: UInt64(index)), 0, length: bulk), "PUT \(index) landed wrong")
        }
        // The bulk data moved the way the mode says (the sink READs, or the source WRITEs).
        switch mode {
        case .pull: #expect(b.lnd.counters?.rdmaReads == depth + 1 && a.lnd.counters?.rdmaWrites == 0)
        case .push: #expect(a.lnd.counters?.rdmaWrites == depth + 1 && b.lnd.counters?.rdmaReads == 0)
        }
    }

    /// Both nodes are client and server at once and run mixed-size (1 B - 4 MiB) verified PUTs and GETs at each
    /// other, at the smallest queue depth allowed: everything completes, nothing times out.
    @Test func mixedTrafficBothWaysAtTheSmallestQueueDepth() async throws {
        let depth = LNDTunables.minimumQueueDepth
        let (x, y) = try LNDNode.pair { $0.peerCredits = depth; $0.credits = 64 }
        defer { x.shutdown(); y.shutdown() }
        let slots = 4
        let maximum = 4 << 20
        let regions = try [x, y].map { node in try Exchange(node: node, slots: slots, maximum: maximum) }
        let started = ContinuousClock.now
        let failures = try await withThrowingTaskGroup(of: [String].self) { group in
            for (index, node) in [x, y].enumerated() {
                let peer = regions[1 - index]
                for slot in 0..<slots {
                    group.addTask { try await peer.drive(from: node, slot: slot, operations: 1000 / (2 * slots), seed: UInt64(index * 100 + slot)) }
                }
            }
            var all: [String] = []
            for try await failures in group { all += failures }
            return all
        }
        #expect(failures.isEmpty, "\(failures.count) operations failed: \(failures.prefix(5))")
        for region in regions { #expect(region.badPuts.load(ordering: .relaxed) == 0, "PUTs landed with wrong data") }
        #expect(x.lnd.counters?.timeouts == 0 && y.lnd.counters?.timeouts == 0)
        #expect(x.lnd.connections.allSatisfy { $0.queueDepth == depth })
        print("mixed traffic both ways at queue depth \(depth): 1000 operations in \(ContinuousClock.now - started)")
    }
}

/// One node's side of the mixed exchange: per slot a source region (a fixed pattern, GET from it) and a sink
/// region (PUTs land there, each checked against its pattern in the PUT event's handler).
final class Exchange: Sendable {
    let node: LNDNode
    let slots: Int
    let maximum: Int
    let sources: LNetBuffer
    let sinks: LNetBuffer
    let badPuts = Atomic<Int>(0)
    static let sourcePortal: UInt32 = 72
    static let sinkPortal: UInt32 = 73

    init(node: LNDNode, slots: Int, maximum: Int) throws {
        self.node = node
        self.slots = slots
        self.maximum = maximum
        sources = try patterned(slots * maximum, seed: UInt64(node.id.nid.address))
        sinks = try LNetBuffer(count: slots * maximum)
        _ = try node.lnet.attach(MatchEntry(portal: Self.sourcePortal, matchBits: 1, unlink: .retain),
                                 descriptor: MemoryDescriptor(storage: .buffer(sources), threshold: .infinite, options: [.get, .manageRemote]))
        let sinks = sinks
        let checks = EventQueue(label: "checks", delivery: .inline { [weak self] event in
            guard event.kind == .put, event.status.isOK, let self else { return }
            // headerData carries the pattern's seed: the landed bytes must be exactly that pattern.
            guard let expected = try? patterned(event.matchedLength, seed: event.headerData),
                  same(sinks, event.offset, expected, 0, length: event.matchedLength) else {
                self.badPuts.add(1, ordering: .relaxed)
                return
            }
        })
        _ = try node.lnet.attach(MatchEntry(portal: Self.sinkPortal, matchBits: 1, unlink: .retain),
                                 descriptor: MemoryDescriptor(storage: .buffer(sinks), threshold: .infinite,
                                                              options: [.put, .manageRemote], eventQueue: checks))
    }

    /// `operations` PUTs and GETs from `from` to this node's slot `slot`, alternating, log-uniform sizes.
    func drive(from: LNDNode, slot: Int, operations: Int, seed: UInt64) async throws -> [String] {
        var failures: [String] = []
        var state = seed | 1
        for operation in 0..<operations {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            // Log-uniform in 1...maximum: every factor of two as likely as any other.
            let exponent = Double(state >> 11) / Double(1 << 53) * log2(Double(maximum))
            let length = max(1, min(maximum, Int(pow(2.0, exponent))))
            let eq = EventQueue()
            if operation % 2 == 0 {
                let patternSeed = seed << 20 | UInt64(operation)
                let md = try from.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(length, seed: patternSeed)), threshold: .count(2),
                                                             eventQueue: eq))
                try from.lnet.put(md, to: node.id, portal: Self.sinkPortal, matchBits: 1, offset: slot * maximum, ackRequested: true,
                                  headerData: patternSeed)
                let events = [try await eq.next(timeout: .seconds(120)), try await eq.next(timeout: .seconds(120))]
                if !events.allSatisfy({ $0.status.isOK }) || events.last?.matchedLength != length {
                    failures.append("PUT \(length) B: \(events)")
                }
            } else {
                let sink = try LNetBuffer(count: length)
                let md = try from.lnet.bind(MemoryDescriptor(storage: .buffer(sink), threshold: .count(2), eventQueue: eq))
                try from.lnet.get(md, from: node.id, portal: Self.sourcePortal, matchBits: 1, offset: slot * maximum)
                let events = [try await eq.next(timeout: .seconds(120)), try await eq.next(timeout: .seconds(120))]
                if !events.allSatisfy({ $0.status.isOK }) || events.last?.matchedLength != length {
                    failures.append("GET \(length) B: \(events)")
                } else if !same(sink, 0, sources, slot * maximum, length: length) {
                    failures.append("GET \(length) B: wrong data")
                }
            }
        }
        return failures
    }
}
