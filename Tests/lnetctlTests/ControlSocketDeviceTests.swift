import DeviceTestSupport
import Foundation
import Testing

/// `lnetctl peer show` and `stats show` read a running `serve` over rxe while a self-test writes to it: the numbers
/// move as the traffic does, and stop when it stops.
@Suite(.needsBinary(unlessRequired: TestBed.required), .requiresDevice,
       .serialized, .timeLimit(.minutes(5)))
struct ControlSocketDeviceTests {
    let port = String(19_900 + Int(getpid() % 90))
    var server: String { "\(TestBed.serverAddress)@o2ib" }
    var client: String { "\(TestBed.clientAddress)@o2ib" }

    /// One `stats show --json` and `peer show --json`, as the figures the test follows.
    struct Sample {
        var putsReceived: Int
        var bytesReceived: Int
        var rdmaReads: Int
        var cacheLookups: Int
        var registeredBytes: Int
        var connections: Int
        var accounting: [String: Any]
        /// The client peer's connection, if any.
        var connection: [String: Any]?
        var peerMessagesReceived: Int

        var counters: [Int] { [putsReceived, bytesReceived, rdmaReads, cacheLookups, registeredBytes, peerMessagesReceived] }
    }

    func sample(_ socket: String) async throws -> Sample {
        // Both at once (each is a process start, seconds under emulation with the traffic running).
        async let statsRun = LnetctlBinary.run(["stats", "show", "--socket", socket, "--json"], timeout: 30)
        async let peersRun = LnetctlBinary.run(["peer", "show", "--socket", socket, "--json"], timeout: 30)
        let (stats, peers) = try await (statsRun, peersRun)
        #expect(stats.status == 0, "\(stats.stderr)")
        let interfaces = try #require(try stats.json()["interfaces"] as? [[String: Any]])
        let ni = try #require(interfaces.first { $0["nid"] as? String == server }, "\(interfaces)")
        let received = try #require(ni["received_by_type"] as? [String: Int])
        let traffic = try #require(ni["traffic"] as? [String: Int])
        let metrics = try #require(ni["lnd_metrics"] as? [[String: Any]])
        func metric(_ name: String) throws -> Int {
            try #require(metrics.first { $0["name"] as? String == name && ($0["labels"] as? [String: String] ?? [:]).isEmpty }?["value"] as? Int, "\(name)")
        }
        #expect(peers.status == 0, "\(peers.stderr)")
        let list = try #require(try peers.json()["peers"] as? [[String: Any]])
        let peer = list.first { $0["nid"] as? String == client }
        return Sample(putsReceived: try #require(received["put"]), bytesReceived: try #require(traffic["bytes_received"]),
                      rdmaReads: try metric("rdma_reads"),
                      cacheLookups: try metric("registration_cache_hits") + (try metric("registration_cache_misses")),
                      registeredBytes: try metric("registered_bytes"), connections: try metric("connections"),
                      accounting: try #require(ni["accounting"] as? [String: Any]),
                      connection: (peer?["connections"] as? [[String: Any]])?.first { $0["state"] as? String == "established" },
                      peerMessagesReceived: (peer?["traffic"] as? [String: Int])?["messages_received"] ?? 0)
    }

    @Test func peerAndStatsShowFollowASelftest() async throws {
        let socket = FileManager.default.temporaryDirectory.appendingPathComponent("lnet-control-\(getpid()).sock").path
        let ready = FileManager.default.temporaryDirectory.appendingPathComponent("lnet-control-\(getpid()).ready").path
        try? FileManager.default.removeItem(atPath: ready)
        let env = ["LND_SERVICE_PORT": port, "LND_TIMEOUT": "20"]
        let (serve, serveOut, serveErr) = try LnetctlBinary.start(["serve", "--nid", server, "--control-socket", socket, "--ready-file", ready, "--json"],
                                                                   environment: env)
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: ready), serve.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        try #require(FileManager.default.fileExists(atPath: ready), "serve did not come up")
        var info = stat()
        #expect(lstat(socket, &info) == 0 && info.st_mode & 0o777 == 0o600)

        let net = try await LnetctlBinary.run(["net", "show", "--socket", socket, "--json"])
        let interfaces = try #require(try net.json()["interfaces"] as? [[String: Any]])
        let o2ib = try #require(interfaces.first { $0["nid"] as? String == server })
        #expect(o2ib["state"] as? String == "up" && (o2ib["properties"] as? [String: String])?["device"] == "rxe0", "\(o2ib)")

        let before = try await sample(socket)
        #expect(before.connection == nil && before.connections == 0)

        // Two rounds of verified 64 KiB writes in pull mode (the server READs each one from the client, an RDMA READ
        // through its registration cache), 15 s each, with a pause between them in which the connection stays up
        // and idle. Each look runs `stats show` and `peer show` (processes that take seconds to start under emulation).
        let rounds = FileManager.default.temporaryDirectory.appendingPathComponent("lnet-control-\(getpid())-round").path
        for name in ["\(rounds).done-1", "\(rounds).go-1"] { try? FileManager.default.removeItem(atPath: name) }
        let (selftest, out, err) = try LnetctlBinary.start(["selftest", "--nid", client, "--to", server, "--op", "write", "--size", "64KiB",
                                                             "--concurrency", "4", "--duration", "15s", "--rounds", "2", "--round-files", rounds,
                                                             "--verify", "--mode", "pull", "--json"],
                                                            environment: env)
        func looks(until done: () -> Bool) async throws -> [Sample] {
            var taken: [Sample] = []
            while selftest.isRunning, !done() {
                let look = try await sample(socket)
                if selftest.isRunning, !done(), look.connection != nil { taken.append(look) }
                try await Task.sleep(for: .milliseconds(200))
            }
            return taken
        }
        let first = try await looks { FileManager.default.fileExists(atPath: "\(rounds).done-1") }
        try #require(FileManager.default.fileExists(atPath: "\(rounds).done-1"), "the first round did not end")
        // Paused: the numbers stand still, the connection is up and idle, and its last activity recedes.
        try await Task.sleep(for: .milliseconds(500))
        let pausedA = try await sample(socket)
        try await Task.sleep(for: .milliseconds(1200))
        let pausedB = try await sample(socket)
        _ = FileManager.default.createFile(atPath: "\(rounds).go-1", contents: Data())
        let second = try await looks { false }
        let run = try await LnetctlBinary.finish(selftest, out, err, timeout: 60)
        #expect(run.status == 0, "\(run.stderr)")
        let report = try run.json()
        let operations = try #require(report["count"] as? Int)
        let bytes = try #require(report["bytes"] as? Int)
        #expect(operations > 0 && report["verified"] as? Bool == true, "\(run.stdout)")

        // While the first round ran, every counter grew from one look to a later one.
        try #require(first.count >= 2 && !second.isEmpty, "\(first.count) looks during the first round, \(second.count) during the second")
        func grew(_ a: Sample, _ b: Sample, _ when: String) {
            for (index, name) in ["PUTs received", "bytes received", "RDMA reads", "registration cache lookups", "bytes registered",
                                  "messages from the peer"].enumerated() where name != "bytes registered" || when == "first round" {
                #expect(b.counters[index] > a.counters[index], "\(name) did not move \(when): \(a.counters[index]) then \(b.counters[index])")
            }
        }
        grew(first[0], first[first.count - 1], "during the first round")
        #expect(pausedA.counters == pausedB.counters, "counters moved in the pause: \(pausedA.counters) then \(pausedB.counters)")
        grew(pausedB, second[second.count - 1], "from the pause into the second round")
        for taken in first + second {
            let connection = try #require(taken.connection)
            let depth = try #require(connection["queue_depth"] as? Int)
            #expect(depth == 8 && (connection["credits"] as? Int).map { (0...depth).contains($0) } == true, "\(connection)")
            #expect((connection["ms_since_receive"] as? Int ?? .max) < 2000, "a connection carrying traffic was silent: \(connection)")
            for key in ["credits_owed", "waiting", "queued_control", "queued_eager", "queued_requests", "queued_rdma", "posted",
                        "transactions", "transactions_initiated", "ms_since_send"] {
                #expect(connection[key] is Int, "\(key) missing: \(connection)")
            }
        }
        let idle = try #require(pausedB.connection, "the connection closed in the pause")
        #expect(pausedA.connections == 1 && pausedB.connections == 1)
        #expect((idle["ms_since_receive"] as? Int ?? 0) >= 1000, "the peer has been silent for over a second: \(idle)")
        #expect((idle["ms_since_receive"] as? Int ?? 0) > (pausedA.connection?["ms_since_receive"] as? Int ?? .max), "last activity did not recede")
        // Nothing open or queued. (Its credits need not be all 8: the peer returns them in its next message, or a NOOP
        // once it owes half.)
        for key in ["transactions", "transactions_initiated", "posted", "waiting", "queued_control", "queued_eager", "queued_requests", "queued_rdma"] {
            #expect(idle[key] as? Int == 0, "\(key): \(idle)")
        }

        // Once it is over, the counters account for all the traffic and stand still.
        try await Task.sleep(for: .milliseconds(1000))
        let after = try await sample(socket)
        let later = try await sample(socket)
        #expect(after.counters == later.counters, "counters moved with no traffic: \(after.counters) then \(later.counters)")
        #expect(after.putsReceived - before.putsReceived >= operations, "every write is a PUT")
        #expect(after.bytesReceived - before.bytesReceived >= bytes, "\(after.bytesReceived - before.bytesReceived) bytes received, the client wrote \(bytes)")
        #expect(after.rdmaReads - before.rdmaReads >= operations, "every 64 KiB write is pulled by at least one READ")
        #expect(after.peerMessagesReceived >= operations)
        #expect(after.accounting["exactly_once"] as? Bool == true && after.accounting["pending"] as? Int == 0, "\(after.accounting)")
        print("control socket over rxe: \(first.count) + \(second.count) looks during the rounds; \(operations) writes, "
              + "\(after.putsReceived - before.putsReceived) PUTs and \(after.rdmaReads - before.rdmaReads) READs counted by the server, "
              + "\(after.bytesReceived - before.bytesReceived) bytes received for \(bytes) written")

        // The Prometheus text carries the same numbers as the JSON (the node is idle, so nothing moves in between).
        let prometheus = try await LnetctlBinary.run(["stats", "show", "--socket", socket, "--prometheus"])
        let series = try parsePrometheus(prometheus.stdout)
        #expect(series["lnet_o2ib_rdma_reads_total{ni=\"\(server)\"}"] == Double(later.rdmaReads))
        #expect(series["lnet_bytes_received_total{ni=\"\(server)\"}"] == Double(later.bytesReceived))
        #expect(series["lnet_messages_received_by_type_total{ni=\"\(server)\",type=\"put\"}"] == Double(later.putsReceived))
        if let directory = ProcessInfo.processInfo.environment["LNET_PROMETHEUS_SAMPLE_DIR"] {
            try? prometheus.stdout.write(toFile: "\(directory)/lnet-device.prom", atomically: true, encoding: .utf8)
        }

        // stats reset: counters from zero, the connection gauge stays.
        let reset = try await LnetctlBinary.run(["stats", "reset", "--socket", socket])
        #expect(reset.status == 0, "\(reset.stderr)")
        let zeroed = try await sample(socket)
        #expect(zeroed.putsReceived == 0 && zeroed.rdmaReads == 0 && zeroed.bytesReceived == 0 && zeroed.cacheLookups == 0, "\(zeroed.counters)")
        #expect(zeroed.accounting["handed_to_lnd"] as? Int == later.accounting["handed_to_lnd"] as? Int, "the accounting is not reset")

        kill(serve.processIdentifier, SIGTERM)
        let served = try await LnetctlBinary.finish(serve, serveOut, serveErr, timeout: 60)
        #expect(served.status == 0, "\(served.stderr)")
        #expect((try served.json()["lnet"] as? [String: Any])?["exactly_once"] as? Bool == true)
        #expect(!FileManager.default.fileExists(atPath: socket), "serve left its control socket behind")
    }
}
