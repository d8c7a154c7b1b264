import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import RDMALND

/// `lnetctl selftest`: a self-test session against a node running `lnetctl serve`.
struct SelftestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Run a self-test session (bulk reads, writes or pings) against a node running `lnetctl serve`.",
        discussion: """
            --concurrency operations stay in flight; each slot issues its next operation as soon as its last one \
            completed, until --count operations were issued or --duration is over. Reads are GETs from the server, \
            writes are PUTs to it (ACK requested). With --verify every byte is checked (reads by this process, writes \
            by the server, which answers each write with a verdict) and `verified` is true only if every operation \
            checked out. MB/s counts 2^20 bytes per MB, as perftest does.

            --mode sets LND_GET_MODE and LND_PUT_MODE for this process. A write's data moves as the client (the PUT's \
            source) decides, so --mode applies to writes. A read's data moves as the server (the GET's target) \
            decides, so for reads the server must have been started with LND_GET_MODE=<mode>; the server reports its \
            mode when the session starts and the run fails if it differs from --mode. Payloads up to LND_IMMEDIATE_SIZE \
            (4 KiB by default) go eagerly in either mode. Exit status: 0 when every operation succeeded (and, with \
            --verify, verified), 1 otherwise.
            """)

    @Option(name: .long, help: ArgumentHelp("The server: a NID (pid 12345) or PID-NID. This node's own NID runs an in-process server.", valueName: "target"))
    var to: String

    @OptionGroup var node: NodeOptions

    @Option(name: .long, help: "read (GET), write (PUT) or ping (small GETs).")
    var op: SelftestOp = .read

    @Option(name: .long, help: ArgumentHelp("Bytes per operation (4096, 64KiB, 1MiB, ...).", valueName: "bytes"))
    var size = ByteCount(1 << 20)

    @Option(name: .long, help: "Operations in flight.")
    var concurrency = 8

    @Option(name: .long, help: "Operations to run (default 100 unless --duration is given).")
    var count: Int?

    @Option(name: .long, help: ArgumentHelp("Run this long (e.g. 10s); with --count, whichever ends first.", valueName: "duration"))
    var duration: DurationArgument?

    @Flag(name: .long, help: "Check every byte (see above).")
    var verify = false

    @Option(name: .long, help: "Bulk mode: pull or push (sets LND_GET_MODE and LND_PUT_MODE for this process).")
    var mode: BulkMode?

    @Option(name: .long, help: ArgumentHelp("How long one operation may take.", valueName: "duration"))
    var timeout = DurationArgument(argument: "60s")!

    @Option(name: .long, help: "Stop issuing after this many failed operations (0: never).")
    var maxErrors = 100

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        guard op == .ping || (size.value >= 1 && size.value < Int(UInt32.max)) else {
            throw ValidationError("--size must be 1 byte to 4 GiB - 2")
        }
        guard maxErrors >= 0 else { throw ValidationError("--max-errors must not be negative") }
    }

    func run() async throws {
        try await runReporting("selftest", json: json) { console in
            let logger = try LogSetup.bootstrap(node.logLevel)
            let target = try parseTarget(to)
            var overrides: [String: String] = [:]
            if let mode {
                overrides["LND_GET_MODE"] = mode.rawValue
                overrides["LND_PUT_MODE"] = mode.rawValue
            }
            let control = try ControlNode(options: node, logger: logger, overrides: overrides)
            defer { control.shutdown() }
            var localServer: SelftestServer?
            if control.isLocal(target) {
                let tunables = control.tunables
                localServer = SelftestServer(lnet: control.lnet, nid: control.nid, configuration: .init(
                    maxSessionMemory: Int.max, maxTotalMemory: Int.max,
                    getMode: tunables.map { AdvertisedBulkMode($0.getMode) } ?? .unknown,
                    putMode: tunables.map { AdvertisedBulkMode($0.putMode) } ?? .unknown), logger: logger)
                try localServer?.start()
            }
            defer { localServer?.stop() }

            var configuration = SelftestConfiguration(
                op: op, size: size.value, concurrency: concurrency,
                count: count ?? (duration == nil ? 100 : nil), duration: duration?.duration, verify: verify,
                operationTimeout: timeout.duration, maxErrors: maxErrors == 0 ? nil : maxErrors)
            if let mode { configuration.requiredServerGetMode = AdvertisedBulkMode(mode) }
            let showProgress = Console.stderrIsTerminal
            if showProgress {
                let total = configuration.count
                configuration.progress = { progress in
                    let seconds = progress.elapsed.seconds
                    let rate = seconds > 0 ? Double(progress.bytes) / 1_048_576 / seconds : 0
                    let done = total.map { "\(progress.attempted)/\($0)" } ?? "\(progress.attempted)"
                    FileHandle.standardError.write(Data("\r\u{1B}[K  \(done) ops  \(format(rate)) MB/s  \(progress.failed) errors  \(format(seconds, 1)) s".utf8))
                }
            }
            let result: SelftestResult
            do throws(SelftestError) {
                result = try await SelftestClient(lnet: control.lnet, logger: logger).run(configuration, target: target)
            } catch {
                if showProgress { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
                throw CommandFailure(error.description)
            }
            if showProgress { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }

            // How the data moved: reads as the server's LND decides, writes as ours; pings are always eager.
            let effectiveMode: String
            switch op {
            case .read:
                let serverMode = result.ready?.getMode ?? .unknown
                effectiveMode = serverMode != .unknown ? serverMode.rawValue : (localServer == nil ? "unknown" : control.tunables?.getMode.rawValue ?? "loopback")
            case .write:
                effectiveMode = control.tunables?.putMode.rawValue ?? "loopback"
            case .ping:
                effectiveMode = "eager"
            }
            let gib = Double(result.bytes) / Double(1 << 30)
            let clientCPU = Double(result.clientUsage.cpuNanoseconds) / 1e9
            let serverCPU = result.closed.map { Double($0.serverCPUNanoseconds) / 1e9 }
            var extra: [String: JSONValue] = [
                "from": .string(control.processID.description),
                "client_cpu_s_per_gib": gib > 0 ? .number(clientCPU / gib, decimals: 4) : .null,
                "in_process_server": .bool(localServer != nil),
            ]
            if let serverCPU, localServer == nil {
                extra["total_cpu_s_per_gib"] = gib > 0 ? .number((clientCPU + serverCPU) / gib, decimals: 4) : .null
            }
            if json {
                console.emit(result.json(mode: effectiveMode, extra: extra))
            } else {
                for line in summaryLines(result, mode: effectiveMode, from: control.processID, serverCPU: serverCPU,
                                         inProcess: localServer != nil) {
                    console.out(line)
                }
            }
            let passed = result.attempted > 0 && result.failed == 0 && (!verify || result.verified) && result.teardownError == nil
            if !passed {
                let reason = result.firstError ?? result.teardownError ?? (result.attempted == 0 ? "no operation ran" : "not verified")
                console.err("lnetctl selftest: \(result.failed) of \(result.attempted) operations failed\(verify && !result.verified ? ", not verified" : ""): \(reason)")
                throw ExitCode(1)
            }
        }
    }

    func summaryLines(_ result: SelftestResult, mode: String, from: ProcessID, serverCPU: Double?, inProcess: Bool) -> [String] {
        let gib = Double(result.bytes) / Double(1 << 30)
        let clientCPU = Double(result.clientUsage.cpuNanoseconds) / 1e9
        var lines = [
            "selftest \(result.op) \(formatBytes(result.size)) x\(result.concurrency) \(from) -> \(result.target) (mode \(mode)\(verify ? ", verify" : ""))",
            "  ops       \(result.attempted) attempted, \(result.succeeded) ok, \(result.failed) failed in \(format(result.elapsedSeconds, 3)) s",
            "  rate      \(format(result.megabytesPerSecond)) MB/s, \(format(result.messagesPerSecond)) msgs/s",
            "  latency   p50 \(format(Double(result.latency.percentile(50)) / 1000)) us, p99 \(format(Double(result.latency.percentile(99)) / 1000)) us, "
                + "max \(format(Double(result.latency.maximum) / 1000)) us",
            "  errors    \(result.failed)" + (result.errors.isEmpty ? "" : " " + result.errors.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")),
            "  verified  \(result.verified ? "yes" : verify ? "NO" : "no (run with --verify)")",
        ]
        var cpu = "  cpu       client \(format(clientCPU, 3)) s"
        if gib > 0 { cpu += " (\(format(clientCPU / gib, 3)) s/GiB)" }
        if let serverCPU, !inProcess { cpu += ", server \(format(serverCPU, 3)) s" }
        lines.append(cpu)
        var memory = "  peak RSS  client \(formatBytes(Int(result.clientUsage.maxRSSKiB) * 1024))"
        if let closed = result.closed, !inProcess { memory += ", server \(formatBytes(Int(closed.serverMaxRSSKiB) * 1024))" }
        lines.append(memory)
        if let first = result.firstError { lines.append("  first error: \(first)") }
        if let teardown = result.teardownError { lines.append("  teardown: \(teardown)") }
        return lines
    }
}
