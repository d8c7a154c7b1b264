import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import Logging
import RDMALND
import Synchronization

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

/// Options every node-owning command takes.
struct NodeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("This node's NID, e.g. 192.0.2.2@o2ib or 0@lo (default: the first interface of LNET_NETWORKS).", valueName: "nid"))
    var nid: String?

    @Option(name: .long, help: "This node's LNet pid.")
    var pid: UInt32 = ProcessID.defaultPID

    @Option(name: .long, help: ArgumentHelp("Log level on stderr: trace, debug, info, notice, warning, error, critical (default: LNET_LOG_LEVEL or warning).", valueName: "level"))
    var logLevel: String?
}

/// Logging goes to stderr; bootstrapped once per process.
enum LogSetup {
    private static let done = Mutex(false)

    static func bootstrap(_ requested: String?) throws(CommandFailure) -> Logger {
        let text = requested ?? ProcessInfo.processInfo.environment["LNET_LOG_LEVEL"] ?? "warning"
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw CommandFailure("log level '\(text)' is not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        done.withLock { done in
            guard !done else { return }
            done = true
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .trace
                return handler
            }
        }
        var logger = Logger(label: "lnetctl")
        logger.logLevel = level
        return logger
    }
}

/// An LNet instance with this node's interface (o2ib through the RDMA LND, or loopback) and a loopback interface.
final class ControlNode: Sendable {
    let lnet: LNet
    let nid: NID
    /// The o2ib LND's tunables (nil on a loopback-only node).
    let tunables: LNDTunables?
    /// The o2ib LND (nil on a loopback-only node).
    let lnd: RDMALND?

    var processID: ProcessID { ProcessID(nid: nid, pid: lnet.pid) }

    /// Brings the node up. `overrides` are LND_* variables that win over the environment (e.g. from --mode).
    init(options: NodeOptions, logger: Logger, overrides: [String: String] = [:]) throws(CommandFailure) {
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in overrides { environment[key] = value }
        // Tunables are checked first, whatever the network: a bad LND_* value is an error on every node.
        let tunables: LNDTunables
        do { tunables = try LNDTunables.fromEnvironment(environment) } catch {
            throw CommandFailure(error.description)
        }
        let interface: NetworkInterfaceConfiguration
        if let text = options.nid {
            let nid: NID
            do { nid = try NID(parsing: text) } catch { throw CommandFailure(error.description) }
            guard !nid.isAny else { throw CommandFailure("--nid must name one NID, not '*'") }
            interface = NetworkInterfaceConfiguration(network: nid.network, address: nid.address)
        } else {
            let configured: NetworkConfiguration?
            do { configured = try NetworkConfiguration.fromEnvironment(environment) } catch {
                throw CommandFailure("\(NetworkConfiguration.environmentVariable): \(error.description)")
            }
            guard let configured else {
                throw CommandFailure("no --nid given and \(NetworkConfiguration.environmentVariable) is not set (e.g. --nid 192.0.2.2@o2ib)")
            }
            interface = configured.interfaces.first { $0.network.type != .loopback } ?? configured.interfaces[0]
        }
        var lnetLogger = logger
        lnetLogger[metadataKey: "component"] = "lnet"
        let lnet = LNet(configuration: LNet.Configuration(pid: options.pid), logger: lnetLogger)
        let nid: NID
        do {
            switch interface.network.type {
            case .loopback:
                nid = try lnet.addLoopback().nid
                self.tunables = nil
                self.lnd = nil
            case .o2ib:
                var lndLogger = logger
                lndLogger[metadataKey: "component"] = "o2ib"
                let lnd = RDMALND(tunables: tunables, logger: lndLogger)
                let ni = try lnet.addInterface(interface, lnd: lnd)
                nid = ni.nid
                self.tunables = tunables
                self.lnd = lnd
                // Messages to our own NID go through loopback.
                try lnet.addLoopback()
            default:
                let what = interface.nid.map { "\($0)" } ?? "\(interface)"
                throw CommandFailure("cannot bring up \(what): network '\(interface.network)' has no LND in lnetctl (use o2ib or lo)")
            }
        } catch let error as LNetError {
            lnet.shutdown()
            let what = interface.nid.map { "\($0)" } ?? "\(interface)"
            throw CommandFailure("cannot bring up \(what): \(error.description)")
        } catch let failure as CommandFailure {
            lnet.shutdown()
            throw failure
        } catch {
            lnet.shutdown()
            throw CommandFailure("\(error)")
        }
        self.lnet = lnet
        self.nid = nid
    }

    /// Whether `target` is this node (so a local server must answer it).
    func isLocal(_ target: ProcessID) -> Bool {
        target.pid == lnet.pid && (target.nid == nid || target.nid == .loopback)
    }

    /// Lets messages still in flight finish (up to `timeout`), then shuts LNet down. Idempotent.
    func shutdown(drainFor timeout: Duration = .seconds(2)) {
        let deadline = ContinuousClock.now + timeout
        while lnet.interfaces.contains(where: { $0.pendingMessageCount > 0 }), ContinuousClock.now < deadline {
            usleep(1000)
        }
        lnet.shutdown()
    }

    /// Shuts the node down (as ``shutdown(drainFor:)``) and reports what its LND did and whether every message
    /// handed to an LND was finalized exactly once. Call once, at the end of a command.
    /// `connections`: the LND's connections as taken earlier (default: just before shutdown).
    func shutdownAndReport(connections taken: [LNDConnectionInfo]? = nil) -> NodeReport {
        let connections = taken ?? lnd?.connections ?? []
        let lndCounters = lnd?.counters
        let registration = lnd?.registrationStatistics
        shutdown()
        return NodeReport(interfaces: lnet.counters().interfaces, lndCounters: lndCounters, registration: registration,
                          connectionsAtEnd: connections)
    }
}

/// Parses a target: `12345-192.0.2.1@o2ib`, or a bare NID (pid 12345).
func parseTarget(_ text: String) throws(CommandFailure) -> ProcessID {
    let target: ProcessID
    do { target = try ProcessID(parsing: text) } catch { throw CommandFailure(error.description) }
    guard !target.nid.isAny, target.pid != ProcessID.anyPID else { throw CommandFailure("target '\(text)' must name one process") }
    return target
}

/// A byte count: digits with an optional binary suffix (`4096`, `64K`, `64KiB`, `1M`, `1MiB`, `1G`); KB/MB/GB are read
/// as binary too, as perftest does.
struct ByteCount: ExpressibleByArgument, Sendable, Equatable, CustomStringConvertible {
    let value: Int

    init(_ value: Int) { self.value = value }

    init?(argument: String) {
        guard let value = parseSize(argument) else { return nil }
        self.value = value
    }

    var description: String { formatBytes(value) }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// One byte count (`1MiB`) or a range `MIN-MAX` (`1-64KiB`, `64KiB-16MiB`, `1B-1MiB`), each end a ``ByteCount``.
/// Whether the values are usable is ``problem``'s business, so a bad range gets its own message.
struct ByteCountRange: ExpressibleByArgument, Sendable, Equatable, CustomStringConvertible {
    let min: Int
    let max: Int

    init(_ value: Int) {
        min = value
        max = value
    }

    init(min: Int, max: Int) {
        self.min = min
        self.max = max
    }

    init?(argument: String) {
        let ends = argument.split(separator: "-", omittingEmptySubsequences: false)
        switch ends.count {
        case 1:
            guard let value = parseSize(argument) else { return nil }
            self.init(value)
        case 2:
            guard let low = parseSize(String(ends[0])), let high = parseSize(String(ends[1])) else { return nil }
            self.init(min: low, max: high)
        default:
            return nil
        }
    }

    var isRange: Bool { min != max }

    /// `1 MiB` for one size, `1B-64KiB` for a range.
    var description: String { isRange ? OperationSizes(minimum: min, maximum: max).description : formatBytes(max) }

    /// Why these sizes cannot be used for self-test operations (1 byte to 4 GiB - 2 each, MIN <= MAX), in words
    /// that follow the option's name; `nil` when they can.
    var problem: String? {
        let limit = Int(UInt32.max) - 1
        guard isRange else { return max >= 1 && max <= limit ? nil : "must be 1 byte to 4 GiB - 2" }
        let text = OperationSizes(minimum: min, maximum: max).description
        if min < 1 { return "\(text): the minimum must be at least 1 byte" }
        if min > max { return "\(text): the minimum is larger than the maximum" }
        if max > limit { return "\(text): the maximum must be at most 4 GiB - 2" }
        return nil
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A duration: `10s`, `500ms`, `2m`, `1.5` (seconds).
struct DurationArgument: ExpressibleByArgument, Sendable, Equatable {
    let duration: Duration

    init?(argument: String) {
        let text = argument.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000_001), ("s", 1), ("m", 60), ("h", 3600)]
        var scale = 1.0
        var number = text
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            scale = factor
            number = String(text.dropLast(suffix.count))
            break
        }
        guard let value = Double(number), value.isFinite, value > 0 else { return nil }
        duration = .nanoseconds(Int64((value * scale * 1e9).rounded()))
    }
}

extension BulkMode: ExpressibleByArgument {}
extension SelftestOp: ExpressibleByArgument {}

extension AdvertisedBulkMode {
    init(_ mode: BulkMode) { self = mode == .pull ? .pull : .push }
}

/// Waits for SIGINT or SIGTERM (their default actions are turned off so the process can shut down cleanly).
final class SignalWaiter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "lnetctl.signals")
    private var sources: [DispatchSourceSignal] = []
    private let state = Mutex<(received: Int32?, continuation: CheckedContinuation<Int32, Never>?)>((nil, nil))

    /// Starts listening now (so a signal during start-up is not lost).
    init(signals: [Int32] = [SIGINT, SIGTERM]) {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in
                let continuation = self?.state.withLock { state -> CheckedContinuation<Int32, Never>? in
                    if state.received == nil { state.received = number }
                    defer { state.continuation = nil }
                    return state.continuation
                }
                continuation?.resume(returning: number)
            }
            source.resume()
            sources.append(source)
        }
    }

    /// The first signal received (waits for one if none came yet).
    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            let already = state.withLock { state -> Int32? in
                if let received = state.received { return received }
                state.continuation = continuation
                return nil
            }
            if let already { continuation.resume(returning: already) }
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }
}

func micros(_ duration: Duration) -> Double { duration.inSeconds * 1e6 }

func format(_ value: Double, _ decimals: Int = 1) -> String {
    String(format: "%.\(decimals)f", value)
}
