import ArgumentParser
import Foundation
import LNetSelftest
import RDMALND

/// `lnetctl tunables`: every LND tunable with its value, where the value came from, its variable and range.
struct TunablesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunables",
        abstract: "Show the o2ib LND tunables as this process's environment (LND_*) sets them; a bad value is an error.")

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    func run() async throws {
        try await runReporting("tunables", json: json) { console in
            let environment = ProcessInfo.processInfo.environment
            let tunables: LNDTunables
            do throws(TunableError) { tunables = try LNDTunables.fromEnvironment(environment) } catch { throw CommandFailure(error.description) }
            let report = tunables.report(environment: environment)
            if json {
                console.emit(.object(["tunables": .array(report.map { line in
                    .object([
                        "key": .string(line.key),
                        "variable": .string(line.variable),
                        "value": .string(line.value),
                        "default": .string(line.defaultValue),
                        "allowed": .string(line.allowed),
                        "source": .string(line.source.rawValue),
                        "summary": .string(line.summary),
                    ])
                })]))
                return
            }
            let width = report.map(\.variable.count).max() ?? 0
            let valueWidth = max(8, report.map(\.value.count).max() ?? 0)
            for line in report {
                let variable = line.variable.padding(toLength: width, withPad: " ", startingAt: 0)
                let value = (line.value.isEmpty ? "\"\"" : line.value).padding(toLength: valueWidth, withPad: " ", startingAt: 0)
                let source = line.source == .environment ? "env" : "default"
                console.out("\(variable)  \(value)  \(source.padding(toLength: 7, withPad: " ", startingAt: 0))  \(line.summary) [\(line.allowed)]")
            }
        }
    }
}
