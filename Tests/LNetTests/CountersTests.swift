import Metrics
import Synchronization
import Testing

@testable import LNet

/// A metrics factory that records counter totals (so the test does not bootstrap the global MetricsSystem).
final class RecordingMetrics: MetricsFactory, Sendable {
    final class Handler: CounterHandler, Sendable {
        let total = Atomic<Int64>(0)
        func increment(by amount: Int64) { total.add(amount, ordering: .relaxed) }
        func reset() { total.store(0, ordering: .relaxed) }
    }
    private let counters = Mutex<[String: Handler]>([:])

    func value(_ label: String, _ dimensions: [(String, String)]) -> Int64 {
        counters.withLock { $0[key(label, dimensions)]?.total.load(ordering: .relaxed) ?? 0 }
    }
    private func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
    }
    func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler {
        counters.withLock { table in
            let key = key(label, dimensions)
            if let existing = table[key] { return existing }
            let made = Handler()
            table[key] = made
            return made
        }
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler { NOOPMetricsHandler.instance }
    func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler { NOOPMetricsHandler.instance }
    func destroyCounter(_ handler: CounterHandler) {}
    func destroyRecorder(_ handler: RecorderHandler) {}
    func destroyTimer(_ handler: TimerHandler) {}
}

@Suite struct CountersTests {
    @Test func countsPerInterfaceAndPeerAndEmitsMetrics() async throws {
        let metrics = RecordingMetrics()
        let lnet = LNet(configuration: .init(partitions: CPUPartitionTable(count: 2), perPeerMetrics: true, metricsFactory: metrics))
        defer { lnet.shutdown() }
        let me = try lnet.addLoopback().processID
        _ = try lnet.attach(MatchEntry(portal: 1, matchBits: 1),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 100), threshold: .infinite,
                                                         options: [.put, .manageRemote]))
        let eq = EventQueue()
        let source = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 100), threshold: .infinite, eventQueue: eq))
        for _ in 0..<5 { try lnet.put(source, to: me, portal: 1, matchBits: 1) }
        try lnet.put(source, to: me, portal: 1, matchBits: 2) // no match
        #expect(await eventually { eq.postedCount == 12 })
        let lo = try #require(lnet.counters().interface(.loopback))
        // 6 PUTs + 6 ACKs (one negative) sent; 5 PUTs + 6 ACKs received; one drop; the failed PUT's send is an error.
        #expect(lo.totals.messagesSent == 11 && lo.totals.bytesSent == 500)
        #expect(lo.totals.messagesReceived == 11 && lo.totals.bytesReceived == 500)
        #expect(lo.totals.drops == 1 && lo.totals.droppedBytes == 100 && lo.totals.errors == 1)
        #expect(lo.peers[.loopback] == lo.totals)
        #expect(lo.pendingMessages == 0 && lo.doubleFinalizations == 0)
        // 6 PUT sends + 5 PUT receives + 6 ACK sends + 6 ACK receives handed over; one PUT send failed.
        #expect(lo.messagesHandedToLND == 23 && lo.finalizedOK == 22 && lo.finalizedWithError == 1)
        #expect(lo.unfinalizedAtShutdown == 0 && lo.finalizedExactlyOnce)
        #expect(lnet.counters().totals == lo.totals)
        #expect(lnet.counters().description.contains("ni 0@lo"))
        #expect(metrics.value("lnet_messages_sent_total", [("ni", "0@lo")]) == 11)
        #expect(metrics.value("lnet_bytes_received_total", [("ni", "0@lo")]) == 500)
        #expect(metrics.value("lnet_drops_total", [("ni", "0@lo"), ("peer", "0@lo")]) == 1)
        #expect(metrics.value("lnet_errors_total", [("ni", "0@lo")]) == 1)
    }
}
