import Dispatch
import Foundation
import LNet
import Synchronization
import Testing
@testable import LNetSelftest

/// One LNet instance with `0@lo`: server and client in the same node.
func loopbackNode(pid: UInt32 = 12345) throws -> (LNet, ProcessID) {
    let lnet = LNet(configuration: .init(pid: pid))
    let ni = try lnet.addLoopback()
    return (lnet, ni.processID)
}

/// An in-process LND joining two LNet instances on `tcp` (10.0.0.1@tcp and 10.0.0.2@tcp).
final class TestPairLND: LNetLND {
    final class Context: Sendable {
        let sent: LNetMessage
        init(sent: LNetMessage) { self.sent = sent }
    }

    let networkType = LNetNetworkType.tcp
    private let peer = Mutex<TestPairLND?>(nil)
    private let myNI = Mutex<LNetNI?>(nil)
    private let wire = DispatchQueue(label: "test-pair")

    static func connect(_ a: TestPairLND, _ b: TestPairLND) {
        a.peer.withLock { $0 = b }
        b.peer.withLock { $0 = a }
    }

    func startup(ni: LNetNI) throws(LNetError) { myNI.withLock { $0 = ni } }
    func shutdown(ni: LNetNI) { myNI.withLock { $0 = nil } }

    func send(ni: LNetNI, message: LNetMessage) {
        wire.async { [self] in
            guard let peer = peer.withLock({ $0 }), let peerNI = peer.myNI.withLock({ $0 }) else {
                ni.finalize(message, status: .unreachable)
                return
            }
            peerNI.parse(header: message.header, from: ni.nid, context: Context(sent: message), wantsRDMA: false)
            if message.type == .get { ni.finalize(message, status: .ok) }
        }
    }

    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        guard let context = context as? Context else { return ni.finalize(message, status: .protocolError) }
        window.copy(from: context.sent.payload)
        ni.finalize(message, status: .ok)
        context.sent.ni.finalize(context.sent, status: .ok)
    }

    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        if let context = context as? Context { context.sent.ni.finalize(context.sent, status: status) }
    }
}

func pairOfNodes() throws -> (server: LNet, client: LNet, serverID: ProcessID) {
    let server = LNet(configuration: .init(pid: 12345))
    let client = LNet(configuration: .init(pid: 777))
    let a = TestPairLND()
    let b = TestPairLND()
    TestPairLND.connect(a, b)
    let ni = try server.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth0:10.0.0.1)"), lnd: a)
    try client.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth0:10.0.0.2)"), lnd: b)
    return (server, client, ni.processID)
}

@Suite(.timeLimit(.minutes(1))) struct SessionTests {
    @Test func pingOverLoopback() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback)
        try server.start()
        for _ in 0..<5 {
            let reply = try await ping(lnet, target: me)
            #expect(reply.node.processID == me)
            #expect(reply.roundTrip > .zero && reply.roundTrip < .seconds(5))
        }
        #expect(server.statistics.pingsServed == 5)
    }

    @Test func pingWithoutServiceFailsWithNoMatch() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        await #expect(throws: PingError.self) { try await ping(lnet, target: me, timeout: .seconds(5)) }
        do {
            _ = try await ping(lnet, target: me, timeout: .seconds(5))
        } catch {
            #expect(error.status == .noMatch)
        }
    }

    @Test func pingBetweenTwoInstances() async throws {
        let (serverNode, clientNode, serverID) = try pairOfNodes()
        defer { clientNode.shutdown(); serverNode.shutdown() }
        let server = SelftestServer(lnet: serverNode, nid: serverID.nid)
        try server.start()
        let reply = try await ping(clientNode, target: serverID)
        #expect(reply.node.processID == serverID)
    }

    static let opsAndSizes: [(SelftestOp, Int)] = [(.read, 1), (.read, 4096), (.read, 64 << 10), (.write, 3), (.write, 4096), (.write, 100_000)]

    @Test(arguments: opsAndSizes)
    func verifiedSessionOverLoopback(op: SelftestOp, size: Int) async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(getMode: .pull, putMode: .push))
        try server.start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: op, size: size, concurrency: 4, count: 40, verify: true), target: me)
        #expect(result.attempted == 40 && result.succeeded == 40 && result.failed == 0, "\(result.errors)")
        #expect(result.verified)
        #expect(result.verifiedOperations == 40)
        #expect(result.bytes == 40 * size)
        #expect(result.latency.count == 40)
        #expect(result.peakInFlight <= 4 && result.peakInFlight >= 1)
        #expect(result.ready?.getMode == .pull && result.ready?.putMode == .push)
        #expect(result.closed?.operationsServed == 40)
        #expect(result.closed?.verificationFailures == 0)
        #expect(server.statistics.sessionsActive == 0 && server.statistics.memoryInUse == 0)
    }

    @Test(arguments: [SelftestOp.read, .write, .ping])
    func sessionBetweenTwoInstances(op: SelftestOp) async throws {
        let (serverNode, clientNode, serverID) = try pairOfNodes()
        defer { clientNode.shutdown(); serverNode.shutdown() }
        let server = SelftestServer(lnet: serverNode, nid: serverID.nid)
        try server.start()
        let result = try await SelftestClient(lnet: clientNode).run(
            SelftestConfiguration(op: op, size: 8192, concurrency: 3, count: 30, verify: true), target: serverID)
        #expect(result.succeeded == 30 && result.failed == 0, "\(result.errors)")
        #expect(result.verified)
    }

    @Test func unverifiedRunIsNotVerified() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 4096, concurrency: 2, count: 10), target: me)
        #expect(result.succeeded == 10 && !result.verified && result.verifiedOperations == 0)
    }

    @Test func corruptedWriteIsDetected() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let hooks = SelftestServer.TestHooks(corruptWrite: { $0 == 7 })
        let server = SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(testHooks: hooks))
        try server.start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 32 << 10, concurrency: 4, count: 20, verify: true), target: me)
        #expect(result.attempted == 20)
        #expect(result.succeeded + result.failed == result.attempted)
        #expect(result.failed == 1 && result.verificationFailures == 1)
        #expect(!result.verified)
        #expect(result.firstError?.contains("op 7") == true)
        #expect(result.firstError?.contains("pattern mismatch at byte \(16 << 10)") == true, "\(result.firstError ?? "")")
        #expect(result.closed?.verificationFailures == 1)
        #expect(server.statistics.verificationFailures == 1)
    }

    @Test func corruptedReadIsDetected() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        var configuration = SelftestConfiguration(op: .read, size: 4096, concurrency: 2, count: 10, verify: true)
        configuration.testHooks.corruptRead = { $0 == 2 || $0 == 5 }
        let result = try await SelftestClient(lnet: lnet).run(configuration, target: me)
        #expect(result.attempted == 10 && result.failed == 2 && result.verificationFailures == 2)
        #expect(!result.verified)
        #expect(result.errors["verification: read data differs at byte 2048"] == 2, "\(result.errors)")
    }

    @Test(arguments: [1, 3, 16])
    func concurrencyAndCountAreHonoured(concurrency: Int) async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback)
        try server.start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .read, size: 1024, concurrency: concurrency, count: 37), target: me)
        #expect(result.attempted == 37 && result.succeeded == 37)
        #expect(result.peakInFlight <= concurrency && result.peakInFlight >= 1)
        #expect(result.closed?.operationsServed == 37)
    }

    @Test(arguments: [1, 5])
    func everySlotIsInFlightWhileTheTargetHoldsOperations(concurrency: Int) async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        // Pings to a lazy portal with nothing attached wait there: the run must fill exactly `concurrency` slots.
        lnet.setLazy(portal: SelftestProtocol.pingPortal, true)
        let seen = Mutex<[Int]>([])
        var configuration = SelftestConfiguration(op: .ping, size: 0, concurrency: concurrency, count: 4 * concurrency, verify: true)
        configuration.progressInterval = .milliseconds(10)
        configuration.progress = { progress in seen.withLock { $0.append(progress.attempted) } }
        let run = Task { try await SelftestClient(lnet: lnet).run(configuration, target: me) }
        let deadline = ContinuousClock.now + .seconds(10)
        while lnet.delayedCount(portal: SelftestProtocol.pingPortal) < concurrency, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(lnet.delayedCount(portal: SelftestProtocol.pingPortal) == concurrency)
        #expect(seen.withLock { $0 }.allSatisfy { $0 <= concurrency })
        try PingService(lnet: lnet, nid: .loopback).start()
        let result = try await run.value
        #expect(result.peakInFlight == concurrency)
        #expect(result.attempted == 4 * concurrency && result.succeeded == result.attempted && result.verified)
    }

    @Test func countSmallerThanConcurrency() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .ping, size: 0, concurrency: 8, count: 3, verify: true), target: me)
        #expect(result.attempted == 3 && result.succeeded == 3 && result.verified)
    }

    @Test func durationBoundsTheRun() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let started = ContinuousClock.now
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 4096, concurrency: 2, duration: .milliseconds(300)), target: me)
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(result.attempted > 0 && result.succeeded == result.attempted)
        #expect(result.elapsedSeconds >= 0.25 && result.elapsedSeconds < 3)
    }

    @Test func sessionMemoryIsBounded() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(maxSessionMemory: 1 << 20))
        try server.start()
        do {
            _ = try await SelftestClient(lnet: lnet).run(
                SelftestConfiguration(op: .write, size: 1 << 20, concurrency: 4, count: 1), target: me)
            Issue.record("the session should have been refused")
        } catch {
            guard case .sessionRefused(let status, let message) = error else { Issue.record("\(error)"); return }
            #expect(status == .tooMuchMemory)
            #expect(message.contains("4 MiB") && message.contains("1 MiB per session"), "\(message)")
        }
        #expect(server.statistics.sessionsRefused == 1 && server.statistics.memoryInUse == 0)
        // A session within the limit still works.
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 256 << 10, concurrency: 4, count: 4), target: me)
        #expect(result.succeeded == 4)
    }

    @Test func totalMemoryIsBounded() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(maxSessionMemory: 1 << 20, maxTotalMemory: 1 << 20))
        try server.start()
        // A second session while one holds all the memory: set one up by hand.
        let client = SelftestClient(lnet: lnet)
        let first = try await client.exchange(SessionRequest(kind: .setup, session: 11, op: .read, size: 1 << 20, concurrency: 1, verify: false),
                                              target: me, timeout: .seconds(5))
        #expect(first.status == .ok)
        let second = try await client.exchange(SessionRequest(kind: .setup, session: 12, op: .read, size: 4096, concurrency: 1, verify: false),
                                               target: me, timeout: .seconds(5))
        #expect(second.status == .tooMuchMemory && second.message.contains("in use"))
        let closed = try await client.exchange(SessionRequest(kind: .teardown, session: 11, op: .read, size: 1 << 20, concurrency: 1, verify: false),
                                               target: me, timeout: .seconds(5))
        #expect(closed.kind == .closed && closed.status == .ok)
        let unknown = try await client.exchange(SessionRequest(kind: .teardown, session: 11, op: .read, size: 1 << 20, concurrency: 1, verify: false),
                                                target: me, timeout: .seconds(5))
        #expect(unknown.status == .unknownSession)
        #expect(server.statistics.memoryInUse == 0)
    }

    @Test func badRequestsAreRefused() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(maxConcurrency: 4)).start()
        let client = SelftestClient(lnet: lnet)
        let tooMany = try await client.exchange(SessionRequest(kind: .setup, session: 1, op: .read, size: 1, concurrency: 5, verify: false),
                                                target: me, timeout: .seconds(5))
        #expect(tooMany.status == .badRequest && tooMany.message.contains("concurrency 5"))
        let empty = try await client.exchange(SessionRequest(kind: .setup, session: 2, op: .write, size: 0, concurrency: 1, verify: false),
                                              target: me, timeout: .seconds(5))
        #expect(empty.status == .badRequest)
    }

    @Test func garbageControlMessageIsIgnoredAndServerKeepsServing() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback)
        try server.start()
        for _ in 0..<(SelftestProtocol.controlBufferCount + 2) {
            let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(copying: [1, 2, 3, 4, 5]), threshold: .count(1)))
            try lnet.put(md, to: me, portal: SelftestProtocol.controlPortal, matchBits: SelftestProtocol.controlMatchBits,
                         ackRequested: false)
        }
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .read, size: 4096, concurrency: 1, count: 2, verify: true), target: me)
        #expect(result.verified)
        #expect(server.statistics.badRequests == SelftestProtocol.controlBufferCount + 2)
    }

    @Test func noServerIsAClearError() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        do {
            _ = try await SelftestClient(lnet: lnet).run(
                SelftestConfiguration(op: .read, size: 4096, concurrency: 1, count: 1, controlTimeout: .seconds(5)), target: me)
            Issue.record("expected an error")
        } catch {
            #expect(error == .noServer(target: me, status: .noMatch))
            #expect(error.description.contains("lnetctl serve"))
        }
    }

    @Test func pingRunToNodeWithoutServerCountsEveryFailure() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .ping, size: 0, concurrency: 2, count: 10, verify: true), target: me)
        #expect(result.attempted == 10 && result.failed == 10 && result.succeeded == 0)
        #expect(!result.verified)
        #expect(result.errors.values.reduce(0, +) == 10)
    }

    @Test func maxErrorsStopsIssuing() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .ping, size: 0, concurrency: 1, count: 1000, maxErrors: 5), target: me)
        #expect(result.aborted && result.failed == 5 && result.attempted == 5)
    }

    @Test func invalidConfigurationsAreRejected() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let client = SelftestClient(lnet: lnet)
        for configuration in [SelftestConfiguration(op: .read, size: 0, count: 1),
                              SelftestConfiguration(op: .read, size: 10, concurrency: 0, count: 1),
                              SelftestConfiguration(op: .read, size: 10),
                              SelftestConfiguration(op: .read, size: 10, count: 0)] {
            await #expect(throws: SelftestError.self) { try await client.run(configuration, target: me) }
        }
    }

    @Test func summaryJSONShape() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 4096, concurrency: 2, count: 8, verify: true), target: me)
        let text = result.json(mode: "push", extra: ["from": .string("0@lo")]).description
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        for key in ["op", "mode", "size", "concurrency", "count", "errors", "verified", "mb_per_s", "msgs_per_s", "latency_us",
                    "cpu_s", "max_rss_kib", "attempted", "succeeded", "failed", "server", "from"] {
            #expect(object[key] != nil, "missing \(key)")
        }
        #expect(object["op"] as? String == "write" && object["mode"] as? String == "push")
        #expect(object["count"] as? Int == 8 && object["errors"] as? Int == 0 && object["verified"] as? Bool == true)
        let latency = try #require(object["latency_us"] as? [String: Any])
        #expect(latency["p50"] is NSNumber && latency["p99"] is NSNumber && latency["max"] is NSNumber)
        let server = try #require(object["server"] as? [String: Any])
        #expect(server["operations"] as? Int == 8)
        #expect((object["mb_per_s"] as? NSNumber)?.doubleValue ?? 0 > 0)
    }
}

/// Sessions whose operations have mixed lengths (`minSize...size`).
@Suite(.timeLimit(.minutes(1))) struct MixedSizeSessionTests {
    /// The bytes a run with `sizes` moved in its operations 1...count.
    static func expectedBytes(_ sizes: OperationSizes, session: UInt64, count: Int) -> Int {
        (1...count).reduce(0) { $0 + sizes.length(session: session, sequence: UInt64($1)) }
    }

    @Test(arguments: [SelftestOp.read, .write])
    func verifiedMixedSessionOverLoopback(op: SelftestOp) async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback)
        try server.start()
        let configuration = SelftestConfiguration(op: op, size: 70_000, minSize: 1, concurrency: 4, count: 200, verify: true)
        let result = try await SelftestClient(lnet: lnet).run(configuration, target: me)
        #expect(result.attempted == 200 && result.succeeded == 200 && result.failed == 0, "\(result.errors)")
        #expect(result.verified && result.verifiedOperations == 200)
        let sizes = OperationSizes(minimum: 1, maximum: 70_000)
        let lengths = (1...200).map { sizes.length(session: result.session, sequence: UInt64($0)) }
        #expect(Set(lengths).count > 100 && lengths.contains { $0 <= 100 } && lengths.contains { $0 >= 10_000 })
        #expect(result.bytes == lengths.reduce(0, +))
        #expect(result.bytes == Self.expectedBytes(sizes, session: result.session, count: 200))
        #expect(result.closed?.operationsServed == 200 && result.closed?.bytesServed == UInt64(result.bytes))
        #expect(result.closed?.verificationFailures == 0)
        #expect(result.size == 70_000 && result.minSize == 1 && result.sizes == sizes)
        #expect(server.statistics.sessionsActive == 0 && server.statistics.memoryInUse == 0)
    }

    @Test(arguments: [SelftestOp.read, .write])
    func mixedSessionBetweenTwoInstances(op: SelftestOp) async throws {
        let (serverNode, clientNode, serverID) = try pairOfNodes()
        defer { clientNode.shutdown(); serverNode.shutdown() }
        try SelftestServer(lnet: serverNode, nid: serverID.nid).start()
        let result = try await SelftestClient(lnet: clientNode).run(
            SelftestConfiguration(op: op, size: 64 << 10, minSize: 1, concurrency: 3, count: 60, verify: true), target: serverID)
        #expect(result.succeeded == 60 && result.failed == 0 && result.verified, "\(result.errors)")
        #expect(result.bytes == Self.expectedBytes(OperationSizes(minimum: 1, maximum: 64 << 10), session: result.session, count: 60))
    }

    @Test func corruptedMixedWriteIsDetected() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback, configuration: .init(testHooks: .init(corruptWrite: { $0 == 5 })))
        try server.start()
        let result = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 70_000, minSize: 1, concurrency: 2, count: 20, verify: true), target: me)
        #expect(result.failed == 1 && result.verificationFailures == 1 && !result.verified)
        #expect(result.firstError?.contains("op 5") == true, "\(result.firstError ?? "")")
    }

    @Test func corruptedMixedReadIsDetected() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        var configuration = SelftestConfiguration(op: .read, size: 70_000, minSize: 1, concurrency: 2, count: 20, verify: true)
        configuration.testHooks.corruptRead = { $0 == 3 }
        let result = try await SelftestClient(lnet: lnet).run(configuration, target: me)
        #expect(result.failed == 1 && result.verificationFailures == 1 && !result.verified)
        let length = OperationSizes(minimum: 1, maximum: 70_000).length(session: result.session, sequence: 3)
        #expect(result.errors["verification: read data differs at byte \(length / 2)"] == 1, "\(result.errors)")
    }

    @Test func serverRefusesWritesOutsideTheSessionSizes() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        let server = SelftestServer(lnet: lnet, nid: .loopback)
        try server.start()
        let client = SelftestClient(lnet: lnet)
        let ready = try await client.exchange(SessionRequest(kind: .setup, session: 21, op: .write, size: 1000, minSize: 100,
                                                             concurrency: 1, verify: true), target: me, timeout: .seconds(5))
        #expect(ready.status == .ok)
        // A 50-byte write into a 100...1000-byte session: it lands, but fails the check.
        let md = try lnet.bind(MemoryDescriptor(buffer: try LNetBuffer(count: 50), threshold: .count(1)))
        try lnet.put(md, to: me, portal: SelftestProtocol.dataPortal, matchBits: SelftestProtocol.matchBits(.data, session: 21),
                     ackRequested: false, headerData: 1)
        let deadline = ContinuousClock.now + .seconds(5)
        while server.statistics.verificationFailures == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(server.statistics.verificationFailures == 1)
        let closed = try await client.exchange(SessionRequest(kind: .teardown, session: 21, op: .write, size: 1000, minSize: 100,
                                                              concurrency: 1, verify: true), target: me, timeout: .seconds(5))
        #expect(closed.status == .ok && closed.verificationFailures == 1 && closed.operationsServed == 1)
    }

    @Test func badRangesAreRefused() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let client = SelftestClient(lnet: lnet)
        let inverted = try await client.exchange(SessionRequest(kind: .setup, session: 3, op: .read, size: 100, minSize: 200,
                                                                concurrency: 1, verify: false), target: me, timeout: .seconds(5))
        #expect(inverted.status == .badRequest && inverted.message.contains("minimum size 200"), "\(inverted.message)")
        for configuration in [SelftestConfiguration(op: .read, size: 100, minSize: 200, count: 1),
                              SelftestConfiguration(op: .write, size: 100, minSize: 0, count: 1)] {
            await #expect(throws: SelftestError.self) { try await client.run(configuration, target: me) }
        }
    }

    @Test func mixedSummaryJSON() async throws {
        let (lnet, me) = try loopbackNode()
        defer { lnet.shutdown() }
        try SelftestServer(lnet: lnet, nid: .loopback).start()
        let mixed = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .write, size: 64 << 10, minSize: 1, concurrency: 2, count: 8, verify: true), target: me)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(mixed.json(mode: "loopback").description.utf8)) as? [String: Any])
        #expect(object["size"] as? Int == 64 << 10 && object["size_min"] as? Int == 1 && object["size_max"] as? Int == 64 << 10)
        #expect(object["bytes"] as? Int == mixed.bytes)
        let fixed = try await SelftestClient(lnet: lnet).run(
            SelftestConfiguration(op: .read, size: 4096, concurrency: 2, count: 4), target: me)
        let fixedObject = try #require(try JSONSerialization.jsonObject(with: Data(fixed.json(mode: "loopback").description.utf8)) as? [String: Any])
        #expect(fixedObject["size"] as? Int == 4096 && fixedObject["size_min"] as? Int == 4096 && fixedObject["size_max"] as? Int == 4096)
        #expect(fixed.bytes == 4 * 4096)
    }
}
