import Foundation
import Testing

/// Device tests run where an RDMA device is present; inside the SoftRoCE VM `RDMA_REQUIRE_DEVICE=1` makes a missing
/// device, or a missing lnetctl binary, a failure instead of a skip.
enum RxeTestBed {
    static let required = ProcessInfo.processInfo.environment["RDMA_REQUIRE_DEVICE"] == "1"
    static var haveActivePort: Bool {
        let root = "/sys/class/infiniband"
        guard let devices = try? FileManager.default.contentsOfDirectory(atPath: root) else { return false }
        for device in devices {
            guard let ports = try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(device)/ports") else { continue }
            for port in ports {
                if let state = try? String(contentsOfFile: "\(root)/\(device)/ports/\(port)/state", encoding: .utf8), state.contains("ACTIVE") {
                    return true
                }
            }
        }
        return false
    }
    static let shouldRun = haveActivePort || required
    static let server = ProcessInfo.processInfo.environment["RDMA_TEST_SERVER_ADDR"] ?? "192.0.2.1"
    static let client = ProcessInfo.processInfo.environment["RDMA_TEST_CLIENT_ADDR"] ?? "192.0.2.2"
}

/// `lnetctl serve` and `lnetctl selftest`/`ping` as two processes over rxe.
@Suite(.needsBinary(unlessRequired: RxeTestBed.required), .enabled(if: RxeTestBed.shouldRun, "no RDMA device with an active port (run inside scripts/softroce-vm.sh)"),
       .serialized, .timeLimit(.minutes(5)))
struct LnetctlDeviceTests {
    let port = String(19_000 + Int(getpid() % 900))

    func withServer(_ environment: [String: String] = [:], _ body: ([String: String]) async throws -> Void) async throws {
        let env = environment.merging(["LND_SERVICE_PORT": port, "LND_TIMEOUT": "20"]) { a, _ in a }
        let readyFile = FileManager.default.temporaryDirectory.appendingPathComponent("lnetctl-serve-\(getpid())").path
        try? FileManager.default.removeItem(atPath: readyFile)
        let (server, out, err) = try LnetctlBinary.start(["serve", "--nid", "\(RxeTestBed.server)@o2ib", "--ready-file", readyFile, "--json"],
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
    }

    var client: [String] { ["--nid", "\(RxeTestBed.client)@o2ib"] }
    var server: String { "\(RxeTestBed.server)@o2ib" }

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
}
