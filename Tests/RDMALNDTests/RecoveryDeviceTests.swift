import Foundation
import LNet
import Synchronization
import Testing
@testable import RDMALND

@Suite(.requiresDevice, .serialized) struct RecoveryDeviceTests {
    func put(from node: LNDNode, to target: ProcessID, portal: UInt32 = 50) async throws -> LNetEvent {
        let eq = EventQueue()
        let md = try node.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(32 << 10, seed: 8)), threshold: .count(2), eventQueue: eq))
        try node.lnet.put(md, to: target, portal: portal, matchBits: 1, ackRequested: true)
        let send = try await eq.next(timeout: .seconds(30))
        guard send.status == .ok else { return send }
        return try await eq.next(timeout: .seconds(30))
    }

    func attachSink(_ node: LNDNode) throws {
        _ = try node.lnet.attach(MatchEntry(portal: 50, matchBits: 1),
                                 descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 1 << 20)), threshold: .infinite, options: [.put]))
    }

    /// A restarted peer (new incarnation, same NID) is reconnected on the next send.
    @Test func restartedPeerIsReconnected() async throws {
        var tunables = LNDTunables()
        tunables.servicePort = LNDTestDevice.port()
        tunables.timeout = 10
        let client = try LNDNode(address: LNDTestDevice.clientAddress, tunables: tunables)
        defer { client.shutdown() }
        let first = try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables)
        try attachSink(first)
        #expect(try await put(from: client, to: first.id).status == .ok)
        first.shutdown()

        // The client hears the disconnect and drops the connection.
        let deadline = ContinuousClock.now + .seconds(10)
        while client.lnd.connectionCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(client.lnd.connectionCount == 0)

        let second = try LNDNode(address: LNDTestDevice.serverAddress, tunables: tunables)
        defer { second.shutdown() }
        try attachSink(second)
        #expect(try await put(from: client, to: second.id).status == .ok)
        #expect(client.lnd.counters?.connectionsEstablished == 2)
    }

    /// Sending to a NID where no LND listens fails promptly with a clear status; nothing hangs.
    @Test func unreachablePeerFailsTheMessage() async throws {
        let (server, client) = try LNDNode.pair()
        server.shutdown()
        defer { client.shutdown() }
        let start = ContinuousClock.now
        let status = try await put(from: client, to: server.id).status
        #expect(status == .unreachable || status == .connectionClosed)
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    /// Shutting down with messages in flight: the LND itself finalizes every one of them (LNet's own clean-up,
    /// which would hide an LND that finalizes nothing, must find nothing left), and every GET's events come.
    @Test func shutdownFinalizesEverythingPending() async throws {
        let (server, client) = try LNDNode.pair()
        defer { server.shutdown() }
        // The server holds every GET on a lazy portal (no match entry comes): the first queue-depth ones are open
        // transactions, waiting for their REPLY, the rest wait in the connection's queue, when we stop.
        server.lnet.setLazy(portal: 51, true)
        let eq = EventQueue(capacity: 1024)
        var mds: Set<MDHandle> = []
        for _ in 0..<100 {
            let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 64 << 10)), threshold: .count(2), eventQueue: eq))
            mds.insert(md)
            try client.lnet.get(md, from: server.id, portal: 51, matchBits: 1)
        }
        // Stop once the server holds some of them (so some are open transactions, not only queued sends).
        let deadline = ContinuousClock.now + .seconds(20)
        while server.lnet.delayedCount(portal: 51) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(server.lnet.delayedCount(portal: 51) > 0)
        client.shutdown()
        let counters = try #require(client.lnet.counters().interface(client.ni.nid))
        #expect(counters.unfinalizedAtShutdown == 0, "the LND left \(counters.unfinalizedAtShutdown) messages for LNet to finalize")
        #expect(counters.finalizedExactlyOnce, "\(counters)")
        #expect(counters.messagesHandedToLND >= 100)
        // Every GET's SEND event came; a GET whose SEND went out also got its REPLY (ok, no match, or shutdown).
        var sends: [MDHandle: LNetEvent] = [:]
        var replies: [MDHandle: LNetEvent] = [:]
        while let event = try eq.poll() {
            switch event.kind {
            case .send: sends[event.md] = event
            case .reply: replies[event.md] = event
            default: Issue.record("unexpected \(event)")
            }
        }
        #expect(Set(sends.keys) == mds, "\(mds.count - sends.count) GETs had no SEND event")
        for (md, send) in sends where send.status.isOK {
            #expect(replies[md] != nil, "GET \(md) went out but got no REPLY event")
        }
    }

    /// `LNet.shutdown()` called from an inline handler, on the o2ib scheduler thread that delivered the event:
    /// it returns at once (the thread does not wait for itself), and everything is finalized once.
    @Test func shutdownFromAnInlineHandlerOnASchedulerThread() async throws {
        let (server, client) = try LNDNode.pair()
        defer { client.shutdown() }
        let took = Mutex<Duration?>(nil)
        let eq = EventQueue(label: "stop", delivery: .inline { event in
            guard event.kind == .put else { return }
            let started = ContinuousClock.now
            server.lnet.shutdown()
            took.withLock { $0 = ContinuousClock.now - started }
        })
        _ = try server.lnet.attach(MatchEntry(portal: 52, matchBits: 1),
                                   descriptor: MemoryDescriptor(storage: .buffer(try LNetBuffer(count: 1 << 20)), threshold: .infinite,
                                                                options: [.put], eventQueue: eq))
        // Several PUTs in flight, eager and bulk, when the first one lands and stops the server.
        let source = EventQueue(capacity: 256)
        for size in [100, 1 << 20, 4096, 1 << 20, 8] {
            let md = try client.lnet.bind(MemoryDescriptor(storage: .buffer(try patterned(size, seed: 1)), threshold: .count(2), eventQueue: source))
            try client.lnet.put(md, to: server.id, portal: 52, matchBits: 1)
        }
        let deadline = ContinuousClock.now + .seconds(20)
        while took.withLock({ $0 }) == nil && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let duration = try #require(took.withLock { $0 }, "the handler's shutdown did not return")
        #expect(duration < .seconds(2), "shutdown from the scheduler thread took \(duration)")
        let counters = try #require(server.lnet.counters().interface(server.ni.nid))
        #expect(counters.finalizedExactlyOnce && counters.unfinalizedAtShutdown == 0, "\(counters)")
        server.lnet.shutdown()
        #expect(server.lnet.counters().interface(server.ni.nid) == counters)
    }
}
