import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import Logging
import RDMALND
import Synchronization

// How a command talks: its failures, its output (one JSON object or text lines), and number formatting.

/// A failure a command reports as one line on stderr (and, with --json, as `{"error": ...}` on stdout).
struct CommandFailure: Error, CustomStringConvertible {
    let message: String
    /// The exit status (1 unless said otherwise).
    var status: Int32 = 1

    init(_ message: String, status: Int32 = 1) {
        // One line, whatever the underlying error's text looks like.
        self.message = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
        self.status = status
    }

    var description: String { message }
}

/// Output of a command: one JSON object with --json, text otherwise; errors as one line on stderr.
struct Console: Sendable {
    let json: Bool

    func out(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    func err(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    func emit(_ value: JSONValue) { out(value.description) }

    /// Reports `failure` and returns the exit code to throw.
    func fail(_ failure: CommandFailure, command: String) -> ExitCode {
        err("lnetctl \(command): \(failure.message)")
        if json { emit(.object(["error": .string(failure.message), "ok": .bool(false)])) }
        return ExitCode(failure.status)
    }

    /// Whether stderr is a terminal (progress lines go there only then).
    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }
}

/// Runs a command body, turning every failure into one stderr line and an exit status.
func runReporting(_ command: String, json: Bool, _ body: (Console) async throws -> Void) async throws {
    let console = Console(json: json)
    do {
        try await body(console)
    } catch let failure as CommandFailure {
        throw console.fail(failure, command: command)
    } catch let exit as ExitCode {
        throw exit
    } catch {
        throw console.fail(CommandFailure("\(error)"), command: command)
    }
}

func micros(_ duration: Duration) -> Double { duration.inSeconds * 1e6 }

func format(_ value: Double, _ decimals: Int = 1) -> String {
    String(format: "%.\(decimals)f", value)
}

/// `--json`, as every command that prints but `serve` takes it (`@OptionGroup var outputFormat: JSONOption`).
struct JSONOption: ParsableArguments {
    @Flag(name: .long, help: "Print one JSON object.") var json = false
}

/// A command that prints text or, with --json, one JSON object, and reports a failure the same way
/// (``runReporting(_:json:_:)``): it writes ``report(on:)``, and `run()` is written once here.
protocol ReportingCommand: AsyncParsableCommand {
    var outputFormat: JSONOption { get }
    /// The name a failure is reported under: the command's name unless it says otherwise (`net show`).
    static var reportName: String { get }
    func report(on console: Console) async throws
}

extension ReportingCommand {
    static var reportName: String { configuration.commandName ?? "lnetctl" }

    /// --json was given.
    var json: Bool { outputFormat.json }

    func run() async throws {
        try await runReporting(Self.reportName, json: json) { console in try await report(on: console) }
    }
}
