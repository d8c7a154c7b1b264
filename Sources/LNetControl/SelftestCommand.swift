import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import RDMALND

/// `lnetctl selftest`: a self-test session against a node running `lnetctl serve`.
struct SelftestCommand: ReportingCommand {
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

    @Option(name: .long, help: ArgumentHelp("Bytes per operation (4096, 64KiB, 1MiB, ...), or a range MIN-MAX (1-64KiB, 64KiB-16MiB): each operation then moves a length drawn log-uniformly from it.", valueName: "bytes"))
    var size = ByteCountRange(1 << 20)

    @Option(name: .long, help: ArgumentHelp("Placement hints each operation carries, for a server with LNET_PLACEMENT=hint: object (each slot in flight is one object, major = slot + 1), offset (one object, minor = the operation's sequence number) or none.", valueName: "hint"))
    var hint: SelftestHint = .none

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

    @Flag(name: .long, help: "Also serve pings and self-test sessions from other nodes while running (as `serve` does).")
    var serve = false

    @Option(name: .long, help: ArgumentHelp("With --serve: after this run, keep serving until this many sessions from other nodes were served and none is active (at most --timeout).", valueName: "n"))
    var awaitSessions = 0

    @Option(name: .long, help: ArgumentHelp("Start the traffic only once this file exists (polled every millisecond, at most --timeout): lets scripts start several nodes at one moment.", valueName: "path"))
    var startFile: String?

    @Option(name: .long, help: ArgumentHelp("Run this many sessions one after the other in this process (a later one retries its set-up until --timeout, e.g. while a restarted server comes back).", valueName: "n"))
    var rounds = 1

    @Option(name: .long, help: ArgumentHelp("With --rounds: after round N (but the last) create PREFIX.done-N, then wait for PREFIX.go-N before the next round (at most --timeout): lets a script change something between rounds.", valueName: "prefix"))
    var roundFiles: String?

    @Option(name: .long, help: ArgumentHelp("Write this process's pid to the file once the node is up (before --start-file is awaited); removed at exit.", valueName: "path"))
    var readyFile: String?

    @OptionGroup var outputFormat: JSONOption

    func validate() throws {
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if op != .ping, let problem = size.problem { throw ValidationError("--size \(problem)") }
        guard maxErrors >= 0 else { throw ValidationError("--max-errors must not be negative") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard roundFiles == nil || rounds > 1 else { throw ValidationError("--round-files needs --rounds 2 or more") }
        guard awaitSessions >= 0 else { throw ValidationError("--await-sessions must not be negative") }
        guard awaitSessions == 0 || serve else { throw ValidationError("--await-sessions needs --serve") }
    }

    func report(on console: Console) async throws {
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
        if control.isLocal(target) || serve {
            let tunables = control.tunables
            // Serving other nodes: the server's usual memory bounds; only our own session may take what it asks.
            var configuration = SelftestServer.Configuration(
                getMode: tunables.map { AdvertisedBulkMode($0.getMode) } ?? .unknown,
                putMode: tunables.map { AdvertisedBulkMode($0.putMode) } ?? .unknown)
            if control.isLocal(target) {
                configuration.maxSessionMemory = Int.max
                configuration.maxTotalMemory = Int.max
            }
            localServer = SelftestServer(lnet: control.lnet, nid: control.nid, configuration: configuration, logger: logger)
            try localServer?.start()
        }
        defer { localServer?.stop() }

        var configuration = SelftestConfiguration(
            op: op, size: size.max, minSize: size.isRange ? size.min : nil, concurrency: concurrency,
            count: count ?? (duration == nil ? 100 : nil), duration: duration?.duration, verify: verify,
            operationTimeout: timeout.duration, maxErrors: maxErrors == 0 ? nil : maxErrors)
        configuration.hint = hint
        if let mode { configuration.requiredServerGetMode = AdvertisedBulkMode(mode) }
        let showProgress = Console.stderrIsTerminal
        if showProgress {
            let total = configuration.count
            configuration.progress = { progress in
                let seconds = progress.elapsed.inSeconds
                let rate = seconds > 0 ? Double(progress.bytes) / 1_048_576 / seconds : 0
                let done = total.map { "\(progress.attempted)/\($0)" } ?? "\(progress.attempted)"
                FileHandle.standardError.write(Data("\r\u{1B}[K  \(done) ops  \(format(rate)) MB/s  \(progress.failed) errors  \(format(seconds, 1)) s".utf8))
            }
        }
        if let readyFile {
            do { try "\(getpid())\n".write(toFile: readyFile, atomically: true, encoding: .utf8) } catch {
                throw CommandFailure("cannot write --ready-file \(readyFile): \(error.localizedDescription)")
            }
        }
        if let startFile { try await waitForFile(startFile, timeout: timeout.duration) }
        // Each round is its own session; a later round retries its set-up (e.g. while a restarted server comes
        // back) until --timeout.
        var results: [SelftestResult] = []
        var setupFailure: String?
        let client = SelftestClient(lnet: control.lnet, logger: logger)
        for round in 1...rounds {
            if round > 1, let roundFiles {
                let done = "\(roundFiles).done-\(round - 1)"
                guard FileManager.default.createFile(atPath: done, contents: nil) else {
                    throw CommandFailure("cannot create \(done)")
                }
                try await waitForFile("\(roundFiles).go-\(round - 1)", timeout: timeout.duration)
            }
            let deadline = ContinuousClock.now + timeout.duration
            while true {
                do throws(SelftestError) {
                    results.append(try await client.run(configuration, target: target))
                    break
                } catch {
                    let retriable: Bool
                    switch error {
                    case .noServer, .controlFailed, .timeout, .lnet: retriable = round > 1
                    default: retriable = false
                    }
                    if retriable, ContinuousClock.now < deadline {
                        logger.info("round \(round): session set-up failed, retrying", metadata: ["error": "\(error)"])
                        try? await Task.sleep(for: .milliseconds(500))
                        continue
                    }
                    setupFailure = "round \(round): \(error.description)"
                    break
                }
            }
            if setupFailure != nil { break }
        }
        if showProgress { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        if let localServer, awaitSessions > 0 {
            let deadline = ContinuousClock.now + timeout.duration
            while ContinuousClock.now < deadline {
                let stats = localServer.statistics
                if stats.sessionsOpened >= awaitSessions && stats.sessionsActive == 0 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        // The connections while every party is still up: with --await-sessions the other nodes are done too,
        // and lingering a second lets them take theirs before this node disconnects.
        let connections = control.lnd?.connections
        if awaitSessions > 0 { try? await Task.sleep(for: .seconds(1)) }
        let served = localServer?.statistics
        localServer?.stop()
        let report = control.shutdownAndReport(connections: connections)
        if let readyFile { try? FileManager.default.removeItem(atPath: readyFile) }
        guard let last = results.last else {
            throw CommandFailure((setupFailure ?? "no session ran") + (report.accountingProblem.map { "; \($0)" } ?? ""))
        }

        // How the data moved: reads as the server's LND decides, writes as ours; pings are always eager.
        let effectiveMode: String
        switch op {
        case .read:
            let serverMode = last.ready?.getMode ?? .unknown
            effectiveMode = serverMode != .unknown ? serverMode.rawValue : (localServer == nil ? "unknown" : control.tunables?.getMode.rawValue ?? "loopback")
        case .write:
            effectiveMode = control.tunables?.putMode.rawValue ?? "loopback"
        case .ping:
            effectiveMode = "eager"
        }
        let inProcess = localServer != nil && control.isLocal(target)
        let servedCleanly = (served?.verificationFailures ?? 0) == 0
        func roundPassed(_ result: SelftestResult) -> Bool {
            result.attempted > 0 && result.failed == 0 && (!verify || result.verified) && result.teardownError == nil
        }
        let passed = results.count == rounds && results.allSatisfy(roundPassed) && report.finalizedExactlyOnce && servedCleanly

        var extra: [String: JSONValue] = [
            "from": .string(control.processID.description),
            "in_process_server": .bool(inProcess),
            "lnet": report.lnetJSON,
            "lnd": report.lndJSON,
            "placement": report.placementJSON,
            "passed": .bool(passed),
        ]
        if serve, let served {
            extra["served"] = .object([
                "sessions_opened": .int(served.sessionsOpened), "operations": .int(served.operationsServed),
                "bytes": .int(served.bytesServed), "verification_failures": .int(served.verificationFailures),
                "pings": .int(served.pingsServed),
            ])
        }
        func cpuFigures(_ result: SelftestResult) -> [String: JSONValue] {
            let gib = Double(result.bytes) / Double(1 << 30)
            let clientCPU = Double(result.clientUsage.cpuNanoseconds) / 1e9
            var figures: [String: JSONValue] = ["client_cpu_s_per_gib": gib > 0 ? .number(clientCPU / gib, decimals: 4) : .null]
            if let closed = result.closed, !inProcess {
                let serverCPU = Double(closed.serverCPUNanoseconds) / 1e9
                figures["total_cpu_s_per_gib"] = gib > 0 ? .number((clientCPU + serverCPU) / gib, decimals: 4) : .null
            }
            return figures
        }
        if rounds > 1 {
            // Top level: the last round's figures with counts summed over rounds; each round in "rounds".
            let roundObjects = results.map { result in result.json(mode: effectiveMode, extra: cpuFigures(result)) }
            extra["rounds"] = .array(roundObjects)
            for key in ["attempted", "succeeded", "failed", "errors", "count", "bytes", "verified_ops", "verification_failures"] {
                extra[key] = .int(roundObjects.reduce(0) { sum, object in
                    if case .object(let members) = object, case .int(let value)? = members[key] { return sum + Int(value) }
                    return sum
                })
            }
            extra["verified"] = .bool(verify && results.count == rounds && results.allSatisfy(\.verified))
            extra["setup_error"] = setupFailure.map { .string($0) } ?? .null
        }
        if json {
            console.emit(last.json(mode: effectiveMode, extra: cpuFigures(last).merging(extra) { _, new in new }))
        } else {
            for (index, result) in results.enumerated() {
                if rounds > 1 { console.out("round \(index + 1) of \(rounds)") }
                let serverCPU = result.closed.map { Double($0.serverCPUNanoseconds) / 1e9 }
                for line in summaryLines(result, mode: effectiveMode, from: control.processID, serverCPU: serverCPU, inProcess: inProcess) {
                    console.out(line)
                }
            }
            if let setupFailure { console.out("  set-up    \(setupFailure)") }
            console.out(report.summaryLine)
            if let placement = report.placement { console.out(placement.line) }
            if let served {
                console.out("  served    \(served.sessionsOpened) sessions, \(served.operationsServed) operations, \(formatBytes(served.bytesServed)), \(served.verificationFailures) verification failures")
            }
        }
        if !passed {
            let failedRound = results.first { !roundPassed($0) }
            let attempted = results.reduce(0) { $0 + $1.attempted }, failed = results.reduce(0) { $0 + $1.failed }
            let reason = setupFailure ?? failedRound.flatMap { $0.firstError ?? $0.teardownError } ?? report.accountingProblem
                ?? (servedCleanly ? nil : "writes served to other nodes failed verification")
                ?? (attempted == 0 ? "no operation ran" : "not verified")
            console.err("lnetctl selftest: \(failed) of \(attempted) operations failed\(verify && !results.allSatisfy(\.verified) ? ", not verified" : ""): \(reason)")
            throw ExitCode(1)
        }
    }

    func summaryLines(_ result: SelftestResult, mode: String, from: ProcessID, serverCPU: Double?, inProcess: Bool) -> [String] {
        let gib = Double(result.bytes) / Double(1 << 30)
        let clientCPU = Double(result.clientUsage.cpuNanoseconds) / 1e9
        var lines = [
            "selftest \(result.op) \(result.minSize == result.size ? formatBytes(result.size) : result.sizes.description) x\(result.concurrency) \(from) -> \(result.target) (mode \(mode)\(verify ? ", verify" : ""))",
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

/// Waits until `path` exists (polling every millisecond), for `--start-file`.
func waitForFile(_ path: String, timeout: Duration) async throws(CommandFailure) {
    let deadline = ContinuousClock.now + timeout
    while access(path, F_OK) != 0 {
        guard ContinuousClock.now < deadline else { throw CommandFailure("\(path) did not appear within \(timeout)") }
        do { try await Task.sleep(for: .milliseconds(1)) } catch { throw CommandFailure("cancelled while waiting for \(path)") }
    }
}
