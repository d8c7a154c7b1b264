import Foundation
import MetricsTestKit
import Synchronization
import Testing

@testable import LNet

/// A short socket path of its own (sun_path holds 107 bytes).
func controlSocketPath(_ name: String) -> String {
    let path = "/tmp/lnet-ctl-\(getpid())-\(name).sock"
    unlink(path)
    return path
}

/// A loopback node with a control server, and some traffic helpers.
struct ControlledNode {
    let lnet: LNet
    let me: ProcessID
    let server: LNetControlServer

    init(_ name: String, limits: LNetControlServer.Limits = .init(), configuration: LNet.Configuration = .init(partitions: CPUPartitionTable(count: 2)),
         extra: ((LNet) throws -> Void)? = nil) throws {
        lnet = LNet(configuration: configuration)
        me = try lnet.addLoopback().processID
        try extra?(lnet)
        _ = try lnet.attach(MatchEntry(portal: 42, matchBits: 7, unlink: .retain),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 4096), threshold: .infinite,
                                                         options: [.put, .get, .manageRemote]))
        server = try lnet.startControlServer(path: controlSocketPath(name), limits: limits)
    }

    /// `puts` PUTs (with ACKs) and `gets` GETs of `size` bytes to ourselves over 0@lo.
    func traffic(puts: Int, gets: Int, size: Int = 100) async throws {
        let buffer = try LNetBuffer(count: size)
        for _ in 0..<puts {
            _ = try await lnet.put(.buffer(buffer), to: me, portal: 42, matchBits: 7, deadline: .now + .seconds(10))
        }
        for _ in 0..<gets {
            _ = try await lnet.get(into: .buffer(buffer), from: me, portal: 42, matchBits: 7, deadline: .now + .seconds(10))
        }
    }

    func stop() {
        server.stop()
        lnet.shutdown()
    }
}

/// A raw client socket, for clients that misbehave.
final class RawClient {
    let fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw LNetControlError("connect: \(String(cString: strerror(errno)))")
        }
    }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads until EOF, an error, or `timeout`: what arrived, and whether the connection ended.
    func readAll(timeout: Duration = .seconds(5)) -> (bytes: [UInt8], ended: Bool) {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 50) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return (out, true) }
            out.append(contentsOf: chunk[0..<n])
        }
        return (out, false)
    }

    deinit { close(fd) }
}

func decodeResponse(_ bytes: [UInt8]) throws -> LNetControlResponse {
    #expect(bytes.last == UInt8(ascii: "\n"), "an answer is one line")
    #expect(bytes.dropLast().firstIndex(of: UInt8(ascii: "\n")) == nil, "an answer is one line")
    return try JSONDecoder().decode(LNetControlResponse.self, from: Data(bytes))
}

/// An LND on `tcp` that does nothing but report `count` connections (a large status).
final class ManyConnectionsLND: LNetLNDStatusReporting {
    let networkType = LNetNetworkType.tcp
    let count: Int
    init(count: Int) { self.count = count }
    func startup(ni: LNetNI) throws(LNetError) {}
    func shutdown(ni: LNetNI) {}
    func send(ni: LNetNI, message: LNetMessage) { ni.finalize(message, status: .unreachable) }
    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) { ni.finalize(message, status: .protocolError) }
    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {}
    func controlStatus(ni: LNetNI) -> LNDStatus {
        LNDStatus(properties: ["device": "none"], metrics: [LNDMetric("widgets", .counter, 3, help: "Widgets.")],
                  connections: (0..<count).map { LNDConnectionStatus(peer: "10.1.\($0 / 256).\($0 % 256)@tcp", state: "established", credits: 8) })
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct ControlServerTests {
    @Test func socketIsOwnerOnlyAndRemovedOnStop() throws {
        let node = try ControlledNode("mode")
        let path = node.server.path
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK, "not a socket")
        #expect(info.st_mode & 0o7777 == 0o600, "mode \(String(info.st_mode & 0o7777, radix: 8))")
        #expect(info.st_uid == geteuid())
        // Nothing else is left in the directory (the temporary directory it was bound in is gone).
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: "/tmp").filter { $0.hasPrefix(".lnet-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        node.stop()
        #expect(lstat(path, &info) != 0 && errno == ENOENT, "the socket file must be removed on stop")
        node.server.stop()  // idempotent
    }

    @Test func stopRemovesOnlyItsOwnSocket() throws {
        let first = try ControlledNode("own")
        let path = first.server.path
        unlink(path)  // someone removed it and started another server there
        let lnet = LNet()
        _ = try lnet.addLoopback()
        let second = try lnet.startControlServer(path: path)
        first.stop()
        #expect(FileManager.default.fileExists(atPath: path), "stopping the first server removed the second's socket")
        _ = try LNetControlClient.status(socket: path)
        second.stop()
        lnet.shutdown()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func staleSocketIsReplacedLiveOneAndOtherFilesRefused() throws {
        let path = controlSocketPath("stale")
        // A socket file nothing listens on, as a crashed node leaves it.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = UnixSocket.address(path)!
        #expect(UnixSocket.withSockaddr(&address) { bind(fd, $0, $1) } == 0)
        close(fd)
        #expect(FileManager.default.fileExists(atPath: path))
        let lnet = LNet()
        _ = try lnet.addLoopback()
        let server = try lnet.startControlServer(path: path)
        _ = try LNetControlClient.status(socket: path)
        // A second server on a live socket is refused, and the first keeps serving.
        #expect {
            _ = try lnet.startControlServer(path: path)
        } throws: { ($0 as? LNetControlError)?.message.contains("in use") == true }
        _ = try LNetControlClient.status(socket: path)
        server.stop()
        // A file that is not a socket is not replaced.
        _ = FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8))
        #expect {
            _ = try lnet.startControlServer(path: path)
        } throws: { ($0 as? LNetControlError)?.message.contains("not a socket") == true }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
        unlink(path)
        lnet.shutdown()
    }

    @Test func statusCountsMessagesByTypeAndTheAccounting() async throws {
        let node = try ControlledNode("types")
        defer { node.stop() }
        try await node.traffic(puts: 5, gets: 3, size: 100)
        let status = try LNetControlClient.status(socket: node.server.path)
        #expect(status.version == LNetNodeStatus.currentVersion && status.processId == getpid() && status.lnetPid == node.lnet.pid)
        let ni = try #require(status.interfaces.first { $0.nid == "0@lo" })
        #expect(ni.state == "up" && ni.lnd == "lo")
        // Over 0@lo both ends are this node: each PUT is a PUT and an ACK each way, each GET a GET and a REPLY.
        let expected = LNetTypeCountStatus(LNetMessageTypeCounts(put: 5, get: 3, ack: 5, reply: 3))
        #expect(ni.sentByType == expected, "\(ni.sentByType)")
        #expect(ni.receivedByType == expected, "\(ni.receivedByType)")
        #expect(ni.traffic.bytesSent == 5 * 100 + 3 * 100, "PUT payloads and REPLY payloads: \(ni.traffic)")
        #expect(ni.traffic.errors == 0 && ni.traffic.drops == 0)
        #expect(ni.accounting.exactlyOnce && ni.accounting.pending == 0)
        #expect(ni.accounting.handedToLnd == ni.accounting.finalizedOk && ni.accounting.handedToLnd > 0)
        #expect(ni.peers.map(\.nid) == ["0@lo"])
    }

    @Test func theNumbersAreTheSwiftMetricsValues() async throws {
        let metrics = TestMetrics()
        let node = try ControlledNode("metrics", configuration: .init(partitions: CPUPartitionTable(count: 2), metricsFactory: metrics))
        defer { node.stop() }
        try await node.traffic(puts: 4, gets: 2, size: 64)
        let ni = try #require(try LNetControlClient.status(socket: node.server.path).interfaces.first)
        let dims = [("ni", "0@lo")]
        func value(_ label: String, _ extra: [(String, String)] = []) -> Int { Int(metrics.counterTotal(label: label, dimensions: dims + extra)) }
        #expect(ni.traffic.messagesSent == value("lnet_messages_sent_total"))
        #expect(ni.traffic.bytesSent == value("lnet_bytes_sent_total"))
        #expect(ni.traffic.messagesReceived == value("lnet_messages_received_total"))
        #expect(ni.traffic.bytesReceived == value("lnet_bytes_received_total"))
        #expect(ni.traffic.drops == value("lnet_drops_total"))
        #expect(ni.traffic.errors == value("lnet_errors_total"))
        for (type, sent, received) in [("put", ni.sentByType.put, ni.receivedByType.put), ("get", ni.sentByType.get, ni.receivedByType.get),
                                       ("ack", ni.sentByType.ack, ni.receivedByType.ack), ("reply", ni.sentByType.reply, ni.receivedByType.reply)] {
            #expect(sent == value("lnet_messages_sent_by_type_total", [("type", type)]), "\(type)")
            #expect(received == value("lnet_messages_received_by_type_total", [("type", type)]), "\(type)")
        }
        #expect(ni.traffic.messagesSent > 0 && ni.sentByType.put == 4)
    }

    @Test func resetZeroesCountersButNotTheAccounting() async throws {
        let node = try ControlledNode("reset")
        defer { node.stop() }
        try await node.traffic(puts: 3, gets: 0)
        let before = try #require(try LNetControlClient.status(socket: node.server.path).interfaces.first)
        #expect(before.traffic.messagesSent > 0)
        try LNetControlClient.reset(socket: node.server.path)
        let after = try LNetControlClient.status(socket: node.server.path)
        let ni = try #require(after.interfaces.first)
        #expect(after.secondsSinceReset != nil)
        #expect(ni.traffic == LNetTrafficStatus(LNetCounterSet()), "\(ni.traffic)")
        #expect(ni.sentByType.total == 0 && ni.receivedByType.total == 0)
        #expect(ni.peers.allSatisfy { $0.traffic == LNetTrafficStatus(LNetCounterSet()) })
        #expect(ni.accounting == before.accounting, "the exactly-once accounting is not reset")
        // The node's own counters are untouched.
        #expect(node.lnet.counters().interfaces.first?.totals.messagesSent == before.traffic.messagesSent)
        try await node.traffic(puts: 2, gets: 0)
        let later = try #require(try LNetControlClient.status(socket: node.server.path).interfaces.first)
        #expect(later.sentByType.put == 2 && later.sentByType.ack == 2, "\(later.sentByType)")
    }

    @Test func garbageGetsAnErrorAndTheNodeGoesOn() async throws {
        let node = try ControlledNode("garbage")
        defer { node.stop() }
        let path = node.server.path
        for request in ["hello", "STATUS", "status please", "{\"request\":\"status\"}", ""] {
            let response = try decodeResponse(try LNetControlClient.exchange(Array((request + "\n").utf8), socket: path))
            #expect(!response.ok && response.status == nil)
            #expect(response.error?.contains("unknown request") == true && response.error?.contains("status, reset") == true,
                    "\(request): \(response.error ?? "")")
        }
        // Binary garbage, NULs and invalid UTF-8 included.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            var bytes = (0..<Int.random(in: 1...900, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            bytes.removeAll { $0 == UInt8(ascii: "\n") }
            bytes.append(UInt8(ascii: "\n"))
            let response = try decodeResponse(try LNetControlClient.exchange(bytes, socket: path))
            #expect(!response.ok && response.error?.contains("unknown request") == true)
        }
        // A client that connects and closes at once, and one that half-closes with nothing sent.
        for _ in 0..<10 { _ = try RawClient(path) }
        let silent = try RawClient(path)
        shutdown(silent.fd, Int32(SHUT_WR))
        #expect(silent.readAll().ended)
        // A request without its newline, ended by the client's half-close, is still a request.
        let unterminated = try RawClient(path)
        unterminated.send("status")
        shutdown(unterminated.fd, Int32(SHUT_WR))
        #expect(try decodeResponse(unterminated.readAll().bytes).ok)
        // The node and its control socket carry on.
        try await node.traffic(puts: 1, gets: 1)
        #expect(try LNetControlClient.status(socket: path).interfaces.first?.sentByType.put == 1)
        #expect(node.server.statistics.badRequests == 25, "\(node.server.statistics)")
    }

    @Test func overLongRequestIsRefusedAndClosed() throws {
        let node = try ControlledNode("long", limits: .init(maxRequestBytes: 1024))
        defer { node.stop() }
        let path = node.server.path
        // 1 MiB with no newline: the server reads past 1024 bytes, answers, and closes (the client's later writes fail).
        let response = try decodeResponse(try LNetControlClient.exchange([UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20), socket: path))
        #expect(!response.ok && response.error == "request longer than 1024 bytes", "\(response)")
        // A newline only after the limit is too long as well; exactly at the limit is fine (and unknown).
        let late = try decodeResponse(try LNetControlClient.exchange(Array((String(repeating: "b", count: 1025) + "\n").utf8), socket: path))
        #expect(late.error == "request longer than 1024 bytes")
        let atLimit = try decodeResponse(try LNetControlClient.exchange(Array((String(repeating: "c", count: 1024) + "\n").utf8), socket: path))
        #expect(atLimit.error?.contains("unknown request") == true)
        #expect(try LNetControlClient.status(socket: path).interfaces.count == 1)
    }

    @Test func manyClientsAreBoundedAndSilentOnesTimedOut() throws {
        let node = try ControlledNode("many", limits: .init(maxClients: 4, requestTimeout: .milliseconds(400)))
        defer { node.stop() }
        let path = node.server.path
        let idle = try (0..<4).map { _ in try RawClient(path) }
        let deadline = ContinuousClock.now + .seconds(2)
        while node.server.statistics.connected < 4, ContinuousClock.now < deadline { usleep(1000) }
        #expect(node.server.statistics.connected == 4)
        // A fifth client is told the server is busy, at once.
        let started = ContinuousClock.now
        let busy = try decodeResponse(try LNetControlClient.exchange(Array("status\n".utf8), socket: path))
        #expect(!busy.ok && busy.error?.hasPrefix("busy") == true, "\(busy)")
        #expect(ContinuousClock.now - started < .milliseconds(300))
        // The silent ones are told why and closed when their time is up; then the socket serves again.
        for client in idle {
            let (bytes, ended) = client.readAll(timeout: .seconds(3))
            #expect(ended)
            #expect(try decodeResponse(bytes).error == "no request within 0.4 s")
        }
        #expect(node.server.statistics.requestTimeouts == 4 && node.server.statistics.refusedBusy == 1, "\(node.server.statistics)")
        #expect(try LNetControlClient.status(socket: path).interfaces.count == 1)
        // Many clients one after another (more than the listen backlog) are all answered.
        for _ in 0..<200 { _ = try LNetControlClient.status(socket: path) }
    }

    @Test func aClientThatNeverReadsIsClosedAndOthersAreServed() async throws {
        let node = try ControlledNode("noread", limits: .init(responseTimeout: .milliseconds(600))) { lnet in
            _ = try lnet.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth9:10.9.9.9)"), lnd: ManyConnectionsLND(count: 20_000))
        }
        defer { node.stop() }
        let path = node.server.path
        let full = try LNetControlClient.exchange(Array("status\n".utf8), socket: path)
        #expect(full.count > 2 << 20, "the status must be larger than the socket buffers: \(full.count) bytes")
        let stuck = try RawClient(path)
        stuck.send("status\n")
        // While it does not read, the server answers others, and the node carries traffic.
        try await Task.sleep(for: .milliseconds(100))
        #expect(node.server.statistics.connected == 1)
        let started = ContinuousClock.now
        let other = try LNetControlClient.status(socket: path)
        #expect(other.interfaces.count == 2 && ContinuousClock.now - started < .seconds(5))
        try await node.traffic(puts: 2, gets: 2)
        // Its time is up: closed without the rest of the answer.
        let deadline = ContinuousClock.now + .seconds(5)
        while node.server.statistics.responseTimeouts == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(node.server.statistics.responseTimeouts == 1, "\(node.server.statistics)")
        let (bytes, ended) = stuck.readAll(timeout: .seconds(5))
        #expect(ended && bytes.count < full.count, "got \(bytes.count) of \(full.count) bytes")
        #expect(node.server.statistics.connected == 0)
    }

    @Test func clientErrorsSayWhatIsWrong() throws {
        #expect {
            _ = try LNetControlClient.status(socket: "/tmp/lnet-ctl-\(getpid())-missing.sock")
        } throws: { ($0 as? LNetControlError)?.message.contains("no control socket at") == true }
        let path = controlSocketPath("notsocket")
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        defer { unlink(path) }
        #expect(throws: LNetControlError.self) { _ = try LNetControlClient.status(socket: path) }
        #expect {
            _ = try LNetControlClient.status(socket: "/tmp/" + String(repeating: "x", count: 200))
        } throws: { ($0 as? LNetControlError)?.message.contains("107 bytes") == true }
    }
}
