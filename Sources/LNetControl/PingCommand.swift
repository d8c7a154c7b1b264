import ArgumentParser
import Foundation
import LNet
import LNetSelftest

/// `lnetctl ping`: round trips to a node's ping service.
struct PingCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Ping a node (a small GET of its ping MD) and report round-trip times.",
        discussion: "The target needs `lnetctl serve` (or any ping service). Exits non-zero if any ping failed.")

    @Argument(help: ArgumentHelp("The node to ping: a NID (pid 12345) or PID-NID.", valueName: "target"))
    var target: String

    @OptionGroup var node: NodeOptions

    @Option(name: .shortAndLong, help: "How many pings.")
    var count = 5

    @Option(name: .long, help: ArgumentHelp("Pause between pings (e.g. 200ms; default none).", valueName: "duration"))
    var interval: DurationArgument?

    @Option(name: .long, help: ArgumentHelp("How long one ping may take.", valueName: "duration"))
    var timeout = DurationArgument(argument: "10s")!

    @OptionGroup var outputFormat: JSONOption

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
    }

    func report(on console: Console) async throws {
        let logger = try LogSetup.bootstrap(node.logLevel)
        let peer = try parseTarget(target)
        let control = try ControlNode(options: node, logger: logger)
        defer { control.shutdown() }
        var local: PingService?
        if control.isLocal(peer) {
            local = PingService(lnet: control.lnet, nid: control.nid)
            try local?.start()
        }
        defer { local?.stop() }
        var histogram = LatencyHistogram()
        var errors: [String: Int] = [:]
        var replies: [JSONValue] = []
        var answeredBy: NodeInfo?
        var firstError: String?
        // Without an interval the pings go back to back, each issued where the one before completed.
        var results: [Result<PingReply, PingError>] = []
        if let interval {
            for sequence in 1...count {
                if sequence > 1 { try? await Task.sleep(for: interval.duration) }
                do throws(PingError) {
                    results.append(.success(try await ping(control.lnet, target: peer, timeout: timeout.duration)))
                } catch {
                    results.append(.failure(error))
                }
            }
        } else {
            results = try await PingSeries(lnet: control.lnet, target: peer, count: count, timeout: timeout.duration).run()
        }
        for (index, result) in results.enumerated() {
            let sequence = index + 1
            do throws(PingError) {
                let reply = try result.get()
                histogram.record(UInt64(clamping: reply.roundTrip.inNanoseconds))
                answeredBy = reply.node
                replies.append(.object(["seq": .int(sequence), "rtt_us": .number(micros(reply.roundTrip), decimals: 1)]))
                if !json { console.out("reply from \(reply.node.processID): seq \(sequence) time \(format(micros(reply.roundTrip))) us") }
            } catch {
                let reason = error.status.map { "\($0)" } ?? error.reason
                errors[reason, default: 0] += 1
                if firstError == nil { firstError = error.description }
                replies.append(.object(["seq": .int(sequence), "error": .string(error.reason)]))
                if !json { console.out("no reply from \(peer): seq \(sequence): \(error.reason)") }
            }
        }
        let failed = errors.values.reduce(0, +)
        let rtt: (Double) -> JSONValue = { .number(Double(histogram.percentile($0)) / 1000, decimals: 1) }
        if json {
            console.emit(.object([
                "target": .string(peer.description),
                "from": .string(control.processID.description),
                "peer": answeredBy.map { .string($0.processID.description) } ?? .null,
                "count": .int(count),
                "received": .int(histogram.count),
                "errors": .int(failed),
                "error_kinds": .object(errors.mapValues { .int($0) }),
                "first_error": firstError.map { .string($0) } ?? .null,
                "rtt_us": .object([
                    "min": .number(Double(histogram.count > 0 ? histogram.minimum : 0) / 1000, decimals: 1),
                    "p50": rtt(50), "p99": rtt(99),
                    "max": .number(Double(histogram.maximum) / 1000, decimals: 1),
                    "mean": .number(histogram.mean / 1000, decimals: 1),
                ]),
                "replies": .array(replies),
            ]))
        } else {
            console.out("\(count) pings, \(histogram.count) replies, \(failed) errors; rtt min/p50/p99/max "
                        + "\(format(Double(histogram.count > 0 ? histogram.minimum : 0) / 1000))/\(format(Double(histogram.percentile(50)) / 1000))/"
                        + "\(format(Double(histogram.percentile(99)) / 1000))/\(format(Double(histogram.maximum) / 1000)) us")
        }
        if failed > 0 {
            console.err("lnetctl ping: \(failed) of \(count) pings failed: \(firstError ?? "")")
            throw ExitCode(1)
        }
    }
}
