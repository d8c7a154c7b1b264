import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import RDMALND

/// `lnetctl serve`: answers pings and self-test sessions until SIGINT or SIGTERM.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve pings and self-test sessions until SIGINT/SIGTERM, then shut LNet down and exit 0.",
        discussion: """
            A read's data moves the way this server's LND decides (the GET's target): start it with LND_GET_MODE=pull \
            or push to choose. A write's mode is the client's (LND_PUT_MODE, or `selftest --mode`). The server tells \
            clients its modes when a session starts. With --control-socket PATH (or LNET_CONTROL_SOCKET) the node \
            answers `lnetctl net show`, `peer show`, `conns show` and `stats show`/`reset` on a Unix socket there \
            (mode 0600), removed when the server stops.
            """)

    @OptionGroup var node: NodeOptions

    @Option(name: .long, help: ArgumentHelp("The most memory one session may take.", valueName: "bytes"))
    var maxSessionMemory = ByteCount(SelftestServer.Configuration().maxSessionMemory)

    @Option(name: .long, help: ArgumentHelp("The most memory all sessions together may take.", valueName: "bytes"))
    var maxMemory = ByteCount(SelftestServer.Configuration().maxTotalMemory)

    @Option(name: .long, help: "The most sessions at once.")
    var maxSessions = 64

    @Option(name: .long, help: ArgumentHelp("Write this process's pid to the file once serving (for scripts).", valueName: "path"))
    var readyFile: String?

    @Option(name: .long, help: ArgumentHelp("Serve the node's status on a Unix socket here (default: LNET_CONTROL_SOCKET; none if unset).", valueName: "path"))
    var controlSocket: String?

    @Flag(name: .long, help: "Print one JSON object (the server's figures) when stopped.")
    var json = false

    func validate() throws {
        guard maxSessionMemory.value > 0, maxMemory.value > 0 else { throw ValidationError("memory limits must be positive") }
        guard maxSessions > 0 else { throw ValidationError("--max-sessions must be positive") }
    }

    func run() async throws {
        try await runReporting("serve", json: json) { console in
            let signals = SignalWaiter()
            let logger = try LogSetup.bootstrap(node.logLevel)
            let control = try ControlNode(options: node, logger: logger)
            defer { control.shutdown() }
            let tunables = control.tunables
            let configuration = SelftestServer.Configuration(
                maxSessionMemory: maxSessionMemory.value, maxTotalMemory: maxMemory.value, maxSessions: maxSessions,
                getMode: tunables.map { AdvertisedBulkMode($0.getMode) } ?? .unknown,
                putMode: tunables.map { AdvertisedBulkMode($0.putMode) } ?? .unknown)
            let server = SelftestServer(lnet: control.lnet, nid: control.nid, configuration: configuration, logger: logger)
            do { try server.start() } catch { throw CommandFailure("cannot start the self-test server: \(error)") }
            let controlServer: LNetControlServer?
            do {
                if let controlSocket {
                    controlServer = try control.lnet.startControlServer(path: controlSocket)
                } else {
                    controlServer = try control.lnet.startControlServerFromEnvironment()
                }
            } catch {
                server.stop()
                throw CommandFailure("cannot serve the control socket: \(error)")
            }
            defer { controlServer?.stop() }
            let started = ContinuousClock.now
            let modes = tunables.map { "GET mode \($0.getMode.rawValue), PUT mode \($0.putMode.rawValue)" } ?? "loopback"
            let socketNote = controlServer.map { "; control socket \($0.path)" } ?? ""
            console.err("lnetctl serve: serving ping and self-test on \(control.processID) (\(modes)); pid \(getpid())\(socketNote); stop with SIGINT or SIGTERM")
            if let readyFile {
                do { try "\(getpid())\n".write(toFile: readyFile, atomically: true, encoding: .utf8) } catch {
                    server.stop()
                    throw CommandFailure("cannot write --ready-file \(readyFile): \(error.localizedDescription)")
                }
            }
            let signal = await signals.wait()
            let stats = server.statistics
            controlServer?.stop()
            server.stop()
            let report = control.shutdownAndReport()
            let usage = ResourceUsage.current()
            let uptime = ContinuousClock.now - started
            console.err("lnetctl serve: \(signal == SIGINT ? "SIGINT" : "SIGTERM"), shut down")
            if json {
                console.emit(.object([
                    "nid": .string(control.nid.description),
                    "pid": .int(Int(control.lnet.pid)),
                    "signal": .string(signal == SIGINT ? "SIGINT" : "SIGTERM"),
                    "uptime_s": .number(uptime.inSeconds),
                    "get_mode": .string(configuration.getMode.rawValue),
                    "put_mode": .string(configuration.putMode.rawValue),
                    "sessions_opened": .int(stats.sessionsOpened),
                    "sessions_refused": .int(stats.sessionsRefused),
                    "sessions_active_at_stop": .int(stats.sessionsActive),
                    "bad_requests": .int(stats.badRequests),
                    "operations": .int(stats.operationsServed),
                    "bytes": .int(stats.bytesServed),
                    "verification_failures": .int(stats.verificationFailures),
                    "pings": .int(stats.pingsServed),
                    "cpu_s": .number(Double(usage.cpuNanoseconds) / 1e9, decimals: 6),
                    "max_rss_kib": .uint(usage.maxRSSKiB),
                    "lnet": report.lnetJSON,
                    "lnd": report.lndJSON,
                    "placement": report.placementJSON,
                    "control_socket": controlServer.map { .string($0.path) } ?? .null,
                ]))
            } else {
                console.out("served \(stats.sessionsOpened) sessions (\(stats.sessionsRefused) refused), \(stats.operationsServed) operations, "
                            + "\(formatBytes(stats.bytesServed)), \(stats.pingsServed) pings, \(stats.verificationFailures) verification failures; "
                            + "cpu \(format(Double(usage.cpuNanoseconds) / 1e9, 2)) s, peak RSS \(formatBytes(Int(usage.maxRSSKiB) * 1024))")
                console.out(report.summaryLine)
                if let placement = report.placement { console.out(placement.line) }
            }
            if let readyFile { try? FileManager.default.removeItem(atPath: readyFile) }
            if let problem = report.accountingProblem {
                console.err("lnetctl serve: \(problem)")
                throw ExitCode(1)
            }
        }
    }
}
