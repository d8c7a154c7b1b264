import Foundation
import Testing

/// A built Examples/ binary (next to the test bundle, where `swift build` puts executables), run as a child
/// process whose output goes to a file, so a test can wait for a line while it runs.
struct ExampleProcess {
    static let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()

    static func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    let process = Process()
    let output: URL

    /// Starts `name` with `arguments`; the environment is this process's without LND_/LNET_ variables, plus `extra`.
    init(_ name: String, _ arguments: [String], environment extra: [String: String] = [:]) throws {
        let binary = Self.url(name)
        try #require(FileManager.default.isExecutableFile(atPath: binary.path),
                     "no \(name) at \(binary.path) (swift build --build-tests builds the examples)")
        output = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(getpid())-\(UUID().uuidString).out")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LND_") && !$0.key.hasPrefix("LNET_") }
        environment.merge(extra) { _, new in new }
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var text: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

    /// Waits until the output has a line containing `needle` (or the process ended, or `timeout` passed).
    func waitForLine(containing needle: String, timeout: Duration = .seconds(60)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if text.contains(needle) { return true }
            if !process.isRunning { return text.contains(needle) }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Waits for the process to exit (killing it after `timeout`); returns its status and output.
    func finish(timeout: Duration = .seconds(60)) async throws -> (status: Int32, output: String) {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline {
                Issue.record("\(process.executableURL?.lastPathComponent ?? "?") \(process.arguments ?? []) did not exit in \(timeout)")
                kill(process.processIdentifier, SIGKILL)
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.waitUntilExit()
        defer { try? FileManager.default.removeItem(at: output) }
        return (process.terminationStatus, text)
    }

    /// Runs to completion.
    static func run(_ name: String, _ arguments: [String], environment: [String: String] = [:],
                    timeout: Duration = .seconds(60)) async throws -> (status: Int32, output: String) {
        try await ExampleProcess(name, arguments, environment: environment).finish(timeout: timeout)
    }
}
