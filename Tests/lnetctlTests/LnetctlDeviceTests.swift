import DeviceTestSupport
import Foundation
import Testing

/// `lnetctl serve` and `lnetctl selftest`/`ping` as two processes over rxe.
@Suite(.needsBinary(unlessRequired: TestBed.required), .requiresDevice,
       .serialized, .timeLimit(.minutes(5)))
struct LnetctlDeviceTests {
    let port = String(19_000 + Int(getpid() % 900))

    func withServer(_ environment: [String: String] = [:], checkSummary: ([String: Any]) throws -> Void = { _ in },
                    _ body: ([String: String]) async throws -> Void) async throws {
        let env = environment.merging(["LND_SERVICE_PORT": port, "LND_TIMEOUT": "20"]) { a, _ in a }
        let readyFile = FileManager.default.temporaryDirectory.appendingPathComponent("lnetctl-serve-\(getpid())").path
        try? FileManager.default.removeItem(atPath: readyFile)
        let (server, out, err) = try LnetctlBinary.start(["serve", "--nid", "\(TestBed.serverAddress)@o2ib", "--ready-file", readyFile, "--json"],
                                                          environment: env)
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: readyFile), server.isRunning, Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(FileManager.default.fileExists(atPath: readyFile), "server did not come up")
        do {
            try await body(env)
        } catch {
            kill(server.processIdentifier, SIGTERM)
            _ = try await LnetctlBinary.finish(server, out, err, timeout: 60)
            throw error
        }
        kill(server.processIdentifier, SIGTERM)
        let outcome = try await LnetctlBinary.finish(server, out, err, timeout: 60)
        #expect(outcome.status == 0, "serve: \(outcome.stderr)")
        let summary = try outcome.json()
        #expect(summary["verification_failures"] as? Int == 0)
        #expect((summary["lnet"] as? [String: Any])?["exactly_once"] as? Bool == true, "\(outcome.stdout)")
        try checkSummary(summary)
    }

    var client: [String] { ["--nid", "\(TestBed.clientAddress)@o2ib"] }
    var server: String { "\(TestBed.serverAddress)@o2ib" }

    @Test func pingAndVerifiedSessions() async throws {
        try await withServer { env in
            let ping = try await LnetctlBinary.run(["ping"] + client + [server, "--count", "20", "--json"], environment: env)
            #expect(ping.status == 0, "\(ping.stderr)")
            #expect(try ping.json()["received"] as? Int == 20)

            for (op, size, mode) in [("read", "1MiB", "pull"), ("write", "1MiB", "pull"), ("write", "64KiB", "push"), ("read", "4KiB", "pull")] {
                let run = try await LnetctlBinary.run(["selftest"] + client + ["--to", server, "--op", op, "--size", size,
                                                                               "--concurrency", "4", "--count", "16", "--verify",
                                                                               "--mode", mode, "--json"], environment: env)
                #expect(run.status == 0, "\(op) \(size) \(mode): \(run.stderr)")
                let object = try run.json()
                #expect(object["verified"] as? Bool == true && object["errors"] as? Int == 0 && object["count"] as? Int == 16,
                        "\(op) \(size) \(mode): \(run.stdout)")
                #expect(object["mode"] as? String == mode)
                #expect((object["mb_per_s"] as? Double ?? 0) > 0)
                let lnet = try #require(object["lnet"] as? [String: Any])
                #expect(lnet["exactly_once"] as? Bool == true && lnet["finalized_error"] as? Int == 0, "\(lnet)")
                let lnd = try #require(object["lnd"] as? [String: Any])
                #expect(lnd["connections_established"] as? Int == 1 && lnd["protocol_errors"] as? Int == 0, "\(lnd)")
            }
        }
    }

    @Test func readModeMustMatchTheServer() async throws {
        try await withServer(["LND_GET_MODE": "pull"]) { env in
            let run = try await LnetctlBinary.run(["selftest"] + client + ["--to", server, "--op", "read", "--size", "64KiB",
                                                                           "--count", "2", "--mode", "push"], environment: env)
            #expect(run.status != 0)
            #expect(run.stderr.contains("LND_GET_MODE=push"), "\(run.stderr)")
        }
    }

    /// `LNET_PLACEMENT=hint` on the server and `selftest --hint`: verified sessions, and the server's report says
    /// where it matched what (every operation matched on some partition, hand-offs counted).
    @Test func hintPlacementSessionsAreVerifiedAndReported() async throws {
        try await withServer(["LNET_PLACEMENT": "hint"], checkSummary: { summary in
            let placement = try #require(summary["placement"] as? [String: Any], "\(summary)")
            #expect(placement["policy"] as? String == "hint")
            let matched = try #require(placement["matched_per_partition"] as? [Int])
            let received = try #require(placement["received_per_partition"] as? [Int])
            // Two sessions of 200 operations (plus control messages), each matched once.
            #expect(matched.reduce(0, +) == received.reduce(0, +) && matched.reduce(0, +) >= 400, "\(placement)")
            if matched.count > 1 { #expect(placement["cross_partition"] as? Int ?? 0 > 0, "\(placement)") }
        }) { env in
            for (op, size, hint) in [("write", "1-64KiB", "offset"), ("read", "1-64KiB", "object")] {
                let run = try await LnetctlBinary.run(["selftest"] + client + ["--to", server, "--op", op, "--size", size,
                                                                               "--concurrency", "4", "--count", "200", "--verify",
                                                                               "--hint", hint, "--json"], environment: env)
                #expect(run.status == 0, "\(op) \(hint): \(run.stderr)")
                let object = try run.json()
                #expect(object["verified"] as? Bool == true && object["errors"] as? Int == 0, "\(op) \(hint): \(run.stdout)")
            }
        }
    }

    @Test func badPlacementStopsStartUpNamingTheVariable() async throws {
        let run = try await LnetctlBinary.run(["ping"] + client + [server, "--count", "1"], environment: ["LNET_PLACEMENT": "object"])
        #expect(run.status != 0)
        #expect(run.stderr.contains("LNET_PLACEMENT=object") && run.stderr.contains("nid, hint, none"), "\(run.stderr)")
    }
}
