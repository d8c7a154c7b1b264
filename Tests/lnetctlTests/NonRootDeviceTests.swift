import DeviceTestSupport
import Foundation
import LNet
import Testing

/// `lnetctl` as an ordinary user (uid 65534, no capabilities) with a memlock limit, over rxe: a privileged port
/// and a low `ulimit -l` each stop start-up saying what to change, and a limit that covers what the LND pins is
/// enough for verified bulk traffic, the registration cache making room when the limit is reached.
@Suite(.needsBinary(unlessRequired: TestBed.required), .requiresDevice,
       .serialized, .timeLimit(.minutes(5)))
struct NonRootDeviceTests {
    let port = String(20_000 + Int(getpid() % 900))
    var server: String { "\(TestBed.serverAddress)@o2ib" }

    init() throws {
        try #require(geteuid() == 0, "switching to another user needs root (inside scripts/softroce-vm.sh tests run as root)")
    }

    @Test func aPrivilegedPortIsRefusedNamingTheTunable() async throws {
        let serve = try await LnetctlBinary.run(["serve", "--nid", server], environment: ["LND_SERVICE_PORT": "987"],
                                                as: .init(memlock: nil), timeout: 60)
        #expect(serve.status != 0)
        #expect(serve.stderr.contains("rdma_bind_addr") && serve.stderr.contains("987") && serve.stderr.contains("privileged")
                && serve.stderr.contains("LND_SERVICE_PORT"), "\(serve.stderr)")
        #expect(!serve.stderr.contains("Fatal error"), "\(serve.stderr)")
    }

    /// `ulimit -l 64` (a common default): start-up stops before registering anything, naming the limit, the need
    /// and the fixes; `lnetctl tunables` shows the same limit beside the cache size.
    @Test func aLowMemlockLimitIsRefusedNamingTheLimitAndTheFix() async throws {
        let user = LnetctlBinary.OrdinaryUser(memlock: 64 << 10)
        let serve = try await LnetctlBinary.run(["serve", "--nid", server], environment: ["LND_SERVICE_PORT": port], as: user, timeout: 60)
        #expect(serve.status != 0)
        for needle in ["RLIMIT_MEMLOCK", "64 KiB", "ulimit -l", "limits.conf", "LND_REGISTRATION_CACHE_SIZE"] {
            #expect(serve.stderr.contains(needle), "\(needle) not in: \(serve.stderr)")
        }
        #expect(!serve.stderr.contains("ibv_reg_mr"), "start-up registered before checking: \(serve.stderr)")
        let tunables = try await LnetctlBinary.run(["tunables", "--json"], as: user, timeout: 60)
        #expect(tunables.status == 0, "\(tunables.stderr)")
        let memlock = try #require(try tunables.json()["memlock"] as? [String: Any])
        #expect(memlock["limit_bytes"] as? Int == 64 << 10 && memlock["suffices"] as? Bool == false, "\(memlock)")
        let text = try await LnetctlBinary.run(["tunables"], as: user, timeout: 60)
        #expect(text.stdout.contains("memlock limit (ulimit -l): 64 KiB, too low"), "\(text.stdout)")
    }

    /// The need `lnetctl tunables` states is what start-up checks: a page less is refused; with 512 KiB more than
    /// the need (its transmit buffers, one connection and a 4 MiB cache), verified 1 MiB writes (the server READs
    /// into sinks it caches) and then reads (it grants the client remote access to each 1 MiB source) all
    /// succeed, run by an ordinary user on both sides, and the cache stays within its bound.
    @Test func verifiedBulkTrafficWithinTheLimit() async throws {
        let environment = ["LND_SERVICE_PORT": port, "LND_REGISTRATION_CACHE_SIZE": "4M", "LND_TIMEOUT": "20"]
        let budget = try await LnetctlBinary.run(["tunables", "--json"], environment: environment, as: .init(memlock: nil), timeout: 60)
        let memlock = try #require(try budget.json()["memlock"] as? [String: Any])
        let need = try #require(memlock["need_bytes"] as? Int)
        let refused = try await LnetctlBinary.run(["serve", "--nid", server], environment: environment, as: .init(memlock: need - 4096), timeout: 60)
        #expect(refused.status != 0 && refused.stderr.contains("RLIMIT_MEMLOCK") && refused.stderr.contains(formatBytes(need)), "\(refused.stderr)")
        let limit = need + (512 << 10)
        let readyFile = FileManager.default.temporaryDirectory.appendingPathComponent("nonroot-serve-\(getpid())").path
        try? FileManager.default.removeItem(atPath: readyFile)
        let (serve, out, err) = try LnetctlBinary.start(["serve", "--nid", server, "--ready-file", readyFile, "--json"],
                                                        environment: environment, as: .init(memlock: limit))
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: readyFile), serve.isRunning, Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(FileManager.default.fileExists(atPath: readyFile), "serve did not come up under a \(limit)-byte memlock limit")
        let client = LnetctlBinary.OrdinaryUser(memlock: 64 << 20)
        for op in ["write", "read"] {
            let run = try await LnetctlBinary.run(["selftest", "--nid", "\(TestBed.clientAddress)@o2ib", "--to", server, "--op", op,
                                                   "--size", "1MiB", "--concurrency", "4", "--count", "24", "--verify", "--mode", "pull",
                                                   "--json"], environment: environment, as: client)
            #expect(run.status == 0, "\(op): \(run.stderr)")
            let object = try run.json()
            #expect(object["verified"] as? Bool == true && object["errors"] as? Int == 0 && object["count"] as? Int == 24, "\(op): \(run.stdout)")
        }
        kill(serve.processIdentifier, SIGTERM)
        let outcome = try await LnetctlBinary.finish(serve, out, err, timeout: 60)
        #expect(outcome.status == 0, "serve: \(outcome.stderr)")
        let summary = try outcome.json()
        #expect((summary["lnet"] as? [String: Any])?["exactly_once"] as? Bool == true, "\(outcome.stdout)")
        let registration = try #require((summary["lnd"] as? [String: Any])?["registration"] as? [String: Any], "\(outcome.stdout)")
        print("non-root serve under a \(limit)-byte memlock limit (need \(need)): registration \(registration)")
        #expect((registration["cached_bytes"] as? Int ?? .max) <= 4 << 20, "\(registration)")
    }
}

