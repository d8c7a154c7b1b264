import Foundation
import Testing

/// Runs the built `lnetctl` binary (next to the test bundle, or `LNETCTL_BINARY`).
enum LnetctlBinary {
    static let url: URL = {
        if let path = ProcessInfo.processInfo.environment["LNETCTL_BINARY"] { return URL(fileURLWithPath: path) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("lnetctl")
    }()

    static var exists: Bool { FileManager.default.isExecutableFile(atPath: url.path) }

    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String

        var stderrLines: [Substring] { stderr.split(separator: "\n") }

        /// stdout parsed as exactly one JSON object.
        func json() throws -> [String: Any] {
            let trimmed = stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!trimmed.contains("\n"), "more than one line on stdout: \(stdout)")
            let value = try JSONSerialization.jsonObject(with: Data(trimmed.utf8))
            return try #require(value as? [String: Any], "not a JSON object: \(stdout)")
        }
    }

    /// The environment for a child: this process's, without LND_/LNET_ variables unless given.
    static func environment(_ extra: [String: String]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LND_") && !$0.key.hasPrefix("LNET_") }
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    /// Another user, with a memlock limit (bytes; nil: unlimited): run through prlimit and setpriv (as root).
    struct OrdinaryUser {
        var uid = 65534
        var memlock: Int?
    }

    static func start(_ arguments: [String], environment extra: [String: String] = [:], as user: OrdinaryUser? = nil) throws -> (Process, Pipe, Pipe) {
        try #require(exists, "no lnetctl at \(url.path) (swift build builds it; LNETCTL_BINARY names another)")
        let process = Process()
        if let user {
            let limit = user.memlock.map(String.init) ?? "unlimited"
            process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
            process.arguments = ["--memlock=\(limit):\(limit)", "--", "/usr/bin/setpriv", "--reuid=\(user.uid)", "--regid=\(user.uid)",
                                 "--clear-groups", "--inh-caps=-all", "--", url.path] + arguments
        } else {
            process.executableURL = url
            process.arguments = arguments
        }
        process.environment = environment(extra)
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return (process, out, err)
    }

    /// Runs to completion (killing it after `timeout` seconds).
    static func run(_ arguments: [String], environment extra: [String: String] = [:], as user: OrdinaryUser? = nil,
                    timeout: Double = 120) async throws -> Outcome {
        let (process, out, err) = try start(arguments, environment: extra, as: user)
        return try await finish(process, out, err, timeout: timeout)
    }

    static func finish(_ process: Process, _ out: Pipe, _ err: Pipe, timeout: Double = 120) async throws -> Outcome {
        // Read both pipes while the child runs, so a full pipe never blocks it.
        async let stdout = Task.detached { out.fileHandleForReading.readDataToEndOfFile() }.value
        async let stderr = Task.detached { err.fileHandleForReading.readDataToEndOfFile() }.value
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                process.terminate()
                Issue.record("lnetctl \(process.arguments ?? []) did not finish in \(timeout) s")
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, stdout: String(decoding: await stdout, as: UTF8.self),
                       stderr: String(decoding: await stderr, as: UTF8.self))
    }
}

extension Trait where Self == ConditionTrait {
    /// Skips the suite when lnetctl is not built - unless `required`: the device suites inside the SoftRoCE VM
    /// (`RDMA_REQUIRE_DEVICE=1`) must fail then, not skip.
    static func needsBinary(unlessRequired required: Bool) -> Self {
        .enabled(if: LnetctlBinary.exists || required, "lnetctl is not built next to the test bundle (swift build builds it)")
    }

    static var needsBinary: Self { needsBinary(unlessRequired: false) }
}
