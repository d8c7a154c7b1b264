import Foundation
import Testing

/// The built binary, run as a user would (no device needed: loopback and error paths).
@Suite(.needsBinary, .timeLimit(.minutes(2))) struct CommandTests {
    @Test func tunablesJSON() async throws {
        let outcome = try await LnetctlBinary.run(["tunables", "--json"], environment: ["LND_PEER_CREDITS": "16"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let object = try outcome.json()
        let tunables = try #require(object["tunables"] as? [[String: Any]])
        #expect(tunables.count >= 18)
        let credits = try #require(tunables.first { $0["variable"] as? String == "LND_PEER_CREDITS" })
        #expect(credits["value"] as? String == "16" && credits["source"] as? String == "environment")
        #expect(credits["default"] as? String == "8")
        for entry in tunables {
            for key in ["key", "variable", "value", "default", "allowed", "source", "summary"] { #expect(entry[key] != nil, "\(key)") }
        }
    }

    @Test func tunablesText() async throws {
        let outcome = try await LnetctlBinary.run(["tunables"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("LND_GET_MODE") && outcome.stdout.contains("pull"))
    }

    @Test(arguments: [["tunables"], ["tunables", "--json"], ["selftest", "--nid", "0@lo", "--to", "0@lo"], ["ping", "--nid", "0@lo", "0@lo"]])
    func badTunableIsOneLineAndNonZero(arguments: [String]) async throws {
        let outcome = try await LnetctlBinary.run(arguments, environment: ["LND_GET_MODE": "sideways"])
        #expect(outcome.status != 0)
        #expect(outcome.stderrLines.count == 1, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("LND_GET_MODE=sideways") && outcome.stderr.contains("pull, push"))
        #expect(!outcome.stderr.contains("Fatal error") && !outcome.stderr.contains("backtrace"))
        if arguments.contains("--json") {
            let object = try outcome.json()
            #expect((object["error"] as? String)?.contains("LND_GET_MODE") == true && object["ok"] as? Bool == false)
        } else {
            #expect(outcome.stdout.isEmpty)
        }
    }

    @Test(arguments: ["10.255.0.1@o2ib", "not-a-nid", "1.2.3.4@tcp", "5@lo"])
    func unusableNIDIsOneLineAndNonZero(nid: String) async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", nid, "--to", "0@lo", "--json"])
        #expect(outcome.status != 0)
        #expect(outcome.stderrLines.count == 1, "\(outcome.stderr)")
        #expect(outcome.stderr.contains(nid), "\(outcome.stderr)")
        #expect(try outcome.json()["error"] is String)
    }

    @Test func missingNIDNamesLNET_NETWORKS() async throws {
        let outcome = try await LnetctlBinary.run(["ping", "0@lo"])
        #expect(outcome.status != 0 && outcome.stderrLines.count == 1)
        #expect(outcome.stderr.contains("LNET_NETWORKS"))
    }

    @Test func nidFromLNET_NETWORKS() async throws {
        let outcome = try await LnetctlBinary.run(["ping", "0@lo", "--count", "2", "--json"], environment: ["LNET_NETWORKS": "lo"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(try outcome.json()["received"] as? Int == 2)
    }

    @Test func argumentErrorExitsNonZero() async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--to", "0@lo", "--size", "huge"])
        #expect(outcome.status != 0)
        #expect(outcome.stderr.contains("--size"))
    }

    @Test func devicesJSON() async throws {
        let outcome = try await LnetctlBinary.run(["devices", "--json"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let devices = try #require(try outcome.json()["devices"] as? [[String: Any]])
        for device in devices {
            #expect(device["name"] is String && device["ports"] is [[String: Any]] && device["limits"] is [String: Any])
        }
    }

    @Test(arguments: ["read", "write", "ping"])
    func selftestJSONOverLoopback(op: String) async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", op, "--size", "16KiB",
                                                   "--concurrency", "3", "--count", "25", "--verify", "--json"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stderr.isEmpty, "no progress line when stderr is not a terminal: \(outcome.stderr)")
        let object = try outcome.json()
        for key in ["op", "mode", "size", "concurrency", "count", "errors", "verified", "mb_per_s", "msgs_per_s", "latency_us", "cpu_s",
                    "max_rss_kib", "attempted", "succeeded", "failed"] {
            #expect(object[key] != nil, "missing \(key)")
        }
        #expect(object["op"] as? String == op && object["count"] as? Int == 25 && object["concurrency"] as? Int == 3)
        #expect(object["errors"] as? Int == 0 && object["verified"] as? Bool == true)
        #expect(object["size"] as? Int == (op == "ping" ? 40 : 16384))
        let latency = try #require(object["latency_us"] as? [String: Any])
        for key in ["p50", "p99", "max"] { #expect(latency[key] is NSNumber, "latency \(key)") }
        // Message accounting after shutdown: everything handed to the (loopback) LND finalized exactly once.
        let lnet = try #require(object["lnet"] as? [String: Any])
        #expect(lnet["exactly_once"] as? Bool == true && lnet["pending"] as? Int == 0 && lnet["finalized_twice"] as? Int == 0)
        #expect((lnet["handed_to_lnd"] as? Int ?? 0) >= 25 && lnet["finalized_error"] as? Int == 0)
        #expect(object["lnd"] is NSNull, "no o2ib LND on a loopback node")
    }

    @Test func selftestStartFileAndServeOptions() async throws {
        let startFile = FileManager.default.temporaryDirectory.appendingPathComponent("lnetctl-start-\(getpid())").path
        try? FileManager.default.removeItem(atPath: startFile)
        let waiting = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--count", "1", "--serve",
                                                   "--start-file", startFile, "--timeout", "300ms"])
        #expect(waiting.status != 0 && waiting.stderr.contains(startFile), "\(waiting.stderr)")
        _ = FileManager.default.createFile(atPath: startFile, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: startFile) }
        let started = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--count", "3", "--serve",
                                                   "--start-file", startFile, "--verify", "--json"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try started.json()["verified"] as? Bool == true)
        let bad = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--await-sessions", "1"])
        #expect(bad.status != 0 && bad.stderr.contains("--serve"), "\(bad.stderr)")
    }

    /// --rounds runs sessions one after the other in one process; --round-files lets a script act between them.
    @Test func roundsWithRoundFiles() async throws {
        let prefix = FileManager.default.temporaryDirectory.appendingPathComponent("lnetctl-rounds-\(getpid())").path
        defer { for suffix in ["done-1", "go-1"] { try? FileManager.default.removeItem(atPath: "\(prefix).\(suffix)") } }
        let (process, out, err) = try LnetctlBinary.start(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", "write", "--count", "5",
                                                           "--verify", "--rounds", "2", "--round-files", prefix, "--json"])
        let deadline = Date().addingTimeInterval(30)
        while !FileManager.default.fileExists(atPath: "\(prefix).done-1"), process.isRunning, Date() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(FileManager.default.fileExists(atPath: "\(prefix).done-1"))
        try await Task.sleep(for: .milliseconds(200))
        #expect(process.isRunning, "waits for the go file")
        _ = FileManager.default.createFile(atPath: "\(prefix).go-1", contents: nil)
        let outcome = try await LnetctlBinary.finish(process, out, err, timeout: 30)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let object = try outcome.json()
        #expect((object["rounds"] as? [Any])?.count == 2 && object["attempted"] as? Int == 10 && object["verified"] as? Bool == true)
        let bad = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--round-files", prefix])
        #expect(bad.status != 0 && bad.stderr.contains("--rounds"), "\(bad.stderr)")
    }

    @Test func selftestTextSummary() async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", "write", "--size", "4096",
                                                   "--count", "10", "--verify"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        for word in ["MB/s", "msgs/s", "p50", "p99", "max", "errors    0", "verified  yes"] {
            #expect(outcome.stdout.contains(word), "\(word) in \(outcome.stdout)")
        }
    }

    @Test(arguments: ["read", "write"])
    func selftestMixedSizes(op: String) async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", op, "--size", "1-64KiB",
                                                   "--concurrency", "3", "--count", "40", "--verify", "--json"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let object = try outcome.json()
        #expect(object["size"] as? Int == 65536 && object["size_min"] as? Int == 1 && object["size_max"] as? Int == 65536)
        #expect(object["verified"] as? Bool == true && object["succeeded"] as? Int == 40)
        let bytes = try #require(object["bytes"] as? Int)
        #expect(bytes >= 40 && bytes < 40 * 65536)
        let server = try #require(object["server"] as? [String: Any])
        #expect(server["bytes"] as? Int == bytes)
        let text = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", op, "--size", "1B-64KiB",
                                                "--count", "10", "--verify"])
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("selftest \(op) 1B-64KiB x8"), "\(text.stdout)")
        let inverted = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--size", "64KiB-1KiB"])
        #expect(inverted.status != 0 && inverted.stderr.contains("--size 64KiB-1KiB: the minimum is larger than the maximum"),
                "\(inverted.stderr)")
    }

    @Test func selftestWithDuration() async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "0@lo", "--op", "read", "--size", "4096",
                                                   "--duration", "300ms", "--json"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let object = try outcome.json()
        #expect((object["count"] as? Int ?? 0) > 0 && object["requested_count"] is NSNull)
        #expect((object["elapsed_s"] as? Double ?? 0) >= 0.25)
    }

    @Test func selftestWithoutServerFailsClearly() async throws {
        let outcome = try await LnetctlBinary.run(["selftest", "--nid", "0@lo", "--to", "999-0@lo", "--count", "1"])
        #expect(outcome.status != 0)
        #expect(outcome.stderrLines.count == 1, "\(outcome.stderr)")
    }

    @Test func pingWithoutServerExitsNonZeroWithJSON() async throws {
        let outcome = try await LnetctlBinary.run(["ping", "--nid", "0@lo", "777-0@lo", "--count", "2", "--timeout", "2s", "--json"])
        #expect(outcome.status != 0)
        let object = try outcome.json()
        #expect(object["errors"] as? Int == 2 && object["received"] as? Int == 0)
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func serveStopsCleanlyOnSignal(signal: Int32) async throws {
        let readyFile = FileManager.default.temporaryDirectory.appendingPathComponent("lnetctl-ready-\(getpid())-\(signal)").path
        try? FileManager.default.removeItem(atPath: readyFile)
        let (process, out, err) = try LnetctlBinary.start(["serve", "--nid", "0@lo", "--ready-file", readyFile, "--json"])
        let deadline = Date().addingTimeInterval(30)
        while !FileManager.default.fileExists(atPath: readyFile), process.isRunning, Date() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(FileManager.default.fileExists(atPath: readyFile))
        let written = try? String(contentsOfFile: readyFile, encoding: .utf8)
        #expect(written?.trimmingCharacters(in: .whitespacesAndNewlines) == String(process.processIdentifier))
        kill(process.processIdentifier, signal)
        let outcome = try await LnetctlBinary.finish(process, out, err, timeout: 30)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let object = try outcome.json()
        #expect(object["signal"] as? String == (signal == SIGTERM ? "SIGTERM" : "SIGINT"))
        #expect(object["nid"] as? String == "0@lo" && object["operations"] as? Int == 0 && object["cpu_s"] is NSNumber)
        #expect((object["lnet"] as? [String: Any])?["exactly_once"] as? Bool == true)
        #expect(!FileManager.default.fileExists(atPath: readyFile))
    }
}
