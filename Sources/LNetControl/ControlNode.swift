import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import Logging
import RDMALND
import Synchronization

// The node a command runs: its options, logging, and the LNet instance with its interfaces.

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
        let lnet = LNet(configuration: LNet.Configuration(pid: options.pid, placement: try placementPolicy(environment),
                                                           ackTimeout: try transactionTimeout(environment),
                                                           placementCookies: try placementCookies(environment)), logger: lnetLogger)
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
        let ni = lnet.interfaces.first { $0.nid.network.type == .o2ib }
        let placement = ni.map { ni in
            PlacementReport(policy: ni.placement, receivedPerPartition: lnd?.receivedPerPartition ?? [],
                            statistics: ni.placementStatistics)
        }
        shutdown()
        return NodeReport(interfaces: lnet.counters().interfaces, lndCounters: lndCounters, registration: registration,
                          connectionsAtEnd: connections, placement: placement)
    }
}

/// `LNET_TRANSACTION_TIMEOUT`: seconds a PUT waits for its ACK (``LNet/Configuration/ackTimeout``; default 100, twice
/// LND_TIMEOUT's default, since the wait starts when the PUT is handed to the LND; 0: forever).
func transactionTimeout(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(CommandFailure) -> Duration? {
    guard let text = environment["LNET_TRANSACTION_TIMEOUT"] else { return .seconds(100) }
    guard let seconds = Int(text.trimmingCharacters(in: .whitespaces)), (0...3600).contains(seconds) else {
        throw CommandFailure("LNET_TRANSACTION_TIMEOUT=\(text) is not valid; allowed: 0...3600 seconds (0: wait forever)")
    }
    return seconds == 0 ? nil : .seconds(seconds)
}

/// `LNET_PLACEMENT`: where incoming messages are matched (``LNet/Configuration/placement``): `nid` (default: on the
/// scheduler thread of the peer, client affinity), `hint` (on the partition of the message's hints, object
/// affinity) or `none` (round robin).
func placementPolicy(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(CommandFailure) -> PlacementPolicy {
    guard let text = environment["LNET_PLACEMENT"] else { return .peerHash }
    guard let policy = PlacementPolicy(name: text) else {
        throw CommandFailure("LNET_PLACEMENT=\(text) is not valid; allowed: nid, hint, none")
    }
    return policy
}

/// `LNET_PLACEMENT_COOKIES`: `1` gives peers placement cookies in ACKs and REPLYs (``LNet/Configuration/placementCookies``).
func placementCookies(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(CommandFailure) -> Bool {
    guard let text = environment["LNET_PLACEMENT_COOKIES"] else { return false }
    switch text.trimmingCharacters(in: .whitespaces) {
    case "0": return false
    case "1": return true
    default: throw CommandFailure("LNET_PLACEMENT_COOKIES=\(text) is not valid; allowed: 0, 1")
    }
}
