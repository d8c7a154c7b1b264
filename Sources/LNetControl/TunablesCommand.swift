import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import RDMALND

/// `lnetctl tunables`: every LND tunable with its value, where the value came from, its variable and range.
struct TunablesCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunables",
        abstract: "Show the o2ib LND tunables as this process's environment (LND_*) sets them; a bad value is an error.")

    @OptionGroup var outputFormat: JSONOption

    func report(on console: Console) async throws {
        let environment = ProcessInfo.processInfo.environment
        let tunables: LNDTunables
        do throws(TunableError) { tunables = try LNDTunables.fromEnvironment(environment) } catch { throw CommandFailure(error.description) }
        let report = tunables.report(environment: environment)
        let memlock = MemoryLockBudget.current(tunables: tunables)
        if json {
            console.emit(.object(["memlock": memoryLockJSON(memlock), "tunables": .array(report.map { line in
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
            if line.variable == "LND_REGISTRATION_CACHE_SIZE" {
                console.out("\("".padding(toLength: width + 2, withPad: " ", startingAt: 0))\(memoryLockLine(memlock))")
            }
        }
    }
}

/// The memlock limit beside what the LND pins, under LND_REGISTRATION_CACHE_SIZE in `lnetctl tunables`.
func memoryLockLine(_ budget: MemoryLockBudget) -> String {
    let pins = "pins \(formatBytes(budget.need)) with one connection (transmit buffers \(formatBytes(budget.transmitBuffers)), "
        + "receive buffers \(formatBytes(budget.receiveBuffersPerConnection)) per connection, cache \(formatBytes(budget.registrationCache)))"
    guard let connections = budget.connectionsThatFit else { return "memlock limit (ulimit -l): \(budget.limitText); the LND \(pins)" }
    guard budget.suffices else { return "memlock limit (ulimit -l): \(budget.limitText), too low: the LND \(pins); start-up refuses" }
    return "memlock limit (ulimit -l): \(budget.limitText); the LND \(pins): room for \(connections) connections"
}

func memoryLockJSON(_ budget: MemoryLockBudget) -> JSONValue {
    .object([
        "limit_bytes": budget.limit.map { .int($0) } ?? .null,
        "unlimited_because": budget.unlimitedBecause.map { .string($0) } ?? .null,
        "need_bytes": .int(budget.need),
        "transmit_buffers_bytes": .int(budget.transmitBuffers),
        "receive_buffers_per_connection_bytes": .int(budget.receiveBuffersPerConnection),
        "registration_cache_bytes": .int(budget.registrationCache),
        "connections_that_fit": budget.connectionsThatFit.map { .int($0) } ?? .null,
        "suffices": .bool(budget.suffices),
    ])
}
