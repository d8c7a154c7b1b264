import ArgumentParser
import Foundation
import LNet
import LNetSelftest

/// How the show commands reach a running node: `--socket PATH`, else `LNET_CONTROL_SOCKET`.
struct SocketOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The node's control socket (default: LNET_CONTROL_SOCKET).", valueName: "path"))
    var socket: String?

    @Option(name: .long, help: ArgumentHelp("How long to wait for the node's answer (e.g. 10s).", valueName: "duration"))
    var timeout: DurationArgument?

    func path() throws(CommandFailure) -> String {
        if let socket, !socket.isEmpty { return socket }
        if let value = ProcessInfo.processInfo.environment[LNetControlServer.environmentVariable], !value.isEmpty { return value }
        throw CommandFailure("no control socket: give --socket PATH or set \(LNetControlServer.environmentVariable) "
                             + "(a node serves one with `lnetctl serve --control-socket PATH`)")
    }

    func status() throws(CommandFailure) -> LNetNodeStatus {
        let path = try path()
        do { return try LNetControlClient.status(socket: path, timeout: timeout?.duration ?? .seconds(10)) } catch {
            throw CommandFailure(error.message)
        }
    }
}

/// Output: one JSON object (keys sorted), as every lnetctl command prints with --json.
func jsonLine<T: Encodable>(_ value: T) throws(CommandFailure) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    do { return String(decoding: try encoder.encode(value), as: UTF8.self) } catch {
        throw CommandFailure("cannot encode the output: \(error)")
    }
}

extension CommandConfiguration {
    /// `lnetctl net`, `peer`, `conns`, `stats`: commands on a running node's control socket, the first (`show`) by default.
    static func controlSocketGroup(_ name: String, abstract: String, _ subcommands: [any ParsableCommand.Type]) -> CommandConfiguration {
        CommandConfiguration(commandName: name, abstract: abstract, subcommands: subcommands, defaultSubcommand: subcommands.first)
    }
}

/// `lnetctl net show`: the node's interfaces.
struct NetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration.controlSocketGroup(
        "net", abstract: "A running node's interfaces (through its control socket).", [NetShowCommand.self])
}

struct NetShowCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Interfaces: NID, LND, state, device, pending messages, the LND's settings.")

    static let reportName = "net show"
    @OptionGroup var socket: SocketOptions
    @OptionGroup var outputFormat: JSONOption

    struct Output: Encodable {
        struct Interface: Encodable {
            var nid: String
            var lnd: String
            var state: String
            var interface: String?
            var pending: Int
            var peers: Int
            var connections: Int
            var properties: [String: String]
        }
        var processId: Int32
        var lnetPid: UInt32
        var uptimeSeconds: Double
        var interfaces: [Interface]

        enum CodingKeys: String, CodingKey {
            case processId = "process_id", lnetPid = "lnet_pid", uptimeSeconds = "uptime_seconds", interfaces
        }
    }

    func report(on console: Console) async throws {
        let status = try socket.status()
        let output = Output(processId: status.processId, lnetPid: status.lnetPid, uptimeSeconds: status.uptimeSeconds,
                            interfaces: status.interfaces.map { ni in
            Output.Interface(nid: ni.nid, lnd: ni.lnd, state: ni.state, interface: ni.interfaceName, pending: ni.accounting.pending,
                             peers: ni.peers.count, connections: ni.peers.reduce(0) { $0 + $1.connections.count },
                             properties: ni.lndStatus?.properties ?? [:])
        })
        if json { return console.out(try jsonLine(output)) }
        var lines = ["net:  # process \(status.processId), LNet pid \(status.lnetPid), control socket up \(format(status.uptimeSeconds, 1)) s"]
        for ni in output.interfaces {
            lines.append("    - nid: \(ni.nid)")
            lines.append("      lnd: \(ni.lnd)")
            lines.append("      state: \(ni.state)")
            if let interface = ni.interface { lines.append("      interface: \(interface)") }
            lines.append("      pending messages: \(ni.pending)")
            lines.append("      peers: \(ni.peers)")
            lines.append("      connections: \(ni.connections)")
            let tunables = ni.properties.filter { $0.key.hasPrefix("LND_") }
            for (key, value) in ni.properties.filter({ !$0.key.hasPrefix("LND_") }).sorted(by: { $0.key < $1.key }) {
                lines.append("      \(key): \(value.isEmpty ? "\"\"" : value)")
            }
            if !tunables.isEmpty {
                lines.append("      tunables:")
                for (key, value) in tunables.sorted(by: { $0.key < $1.key }) { lines.append("          \(key): \(value.isEmpty ? "\"\"" : value)") }
            }
        }
        console.out(lines.joined(separator: "\n"))
    }
}

/// `lnetctl peer show`: peers, their traffic and connections.
struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration.controlSocketGroup(
        "peer", abstract: "A running node's peers (through its control socket).", [PeerShowCommand.self])
}

struct PeerShowCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Peers: traffic, and each connection's state, credits, queue lengths, open transactions and last activity.")

    static let reportName = "peer show"
    @OptionGroup var socket: SocketOptions
    @OptionGroup var outputFormat: JSONOption
    @Option(name: .long, help: ArgumentHelp("Only this peer.", valueName: "nid")) var nid: String?

    struct Output: Encodable {
        struct Peer: Encodable {
            var nid: String
            var ni: String
            var traffic: LNetTrafficStatus
            var connections: [LNDConnectionStatus]
        }
        var peers: [Peer]
    }

    func report(on console: Console) async throws {
        let status = try socket.status()
        let peers = status.interfaces.flatMap { ni in ni.peers.map { Output.Peer(nid: $0.nid, ni: ni.nid, traffic: $0.traffic, connections: $0.connections) } }
            .filter { nid == nil || $0.nid == nid }
        if json { return console.out(try jsonLine(Output(peers: peers))) }
        var lines = ["peer:"]
        for peer in peers {
            lines.append("    - nid: \(peer.nid)")
            lines.append("      ni: \(peer.ni)")
            let t = peer.traffic
            lines.append("      sent: \(t.messagesSent) messages, \(formatBytes(t.bytesSent))")
            lines.append("      received: \(t.messagesReceived) messages, \(formatBytes(t.bytesReceived))")
            lines.append("      drops: \(t.drops) (\(formatBytes(t.droppedBytes))), errors: \(t.errors)")
            if peer.connections.isEmpty { lines.append("      connections: none") } else { lines.append("      connections:") }
            for connection in peer.connections {
                lines.append("        - state: \(connection.state)\(connection.role.map { " (\($0))" } ?? "")")
                if let credits = connection.credits {
                    lines.append("          credits: \(credits) of \(connection.queueDepth ?? 0), owed \(connection.creditsOwed ?? 0)")
                }
                lines.append("          queued: \(connection.queued) (waiting \(connection.waiting ?? 0), control \(connection.queuedControl ?? 0), "
                             + "eager \(connection.queuedEager ?? 0), bulk requests \(connection.queuedRequests ?? 0), rdma \(connection.queuedRdma ?? 0)); "
                             + "posted \(connection.posted ?? 0)")
                lines.append("          open transactions: \(connection.transactions ?? 0) (\(connection.transactionsInitiated ?? 0) ours)")
                lines.append("          last activity: received \(ago(connection.msSinceReceive)), sent \(ago(connection.msSinceSend))")
            }
        }
        console.out(lines.joined(separator: "\n"))
    }
}

func ago(_ milliseconds: Int?) -> String {
    guard let milliseconds else { return "-" }
    return milliseconds < 10_000 ? "\(milliseconds) ms ago" : "\(format(Double(milliseconds) / 1000, 1)) s ago"
}

/// `lnetctl conns show`: one line per connection.
struct ConnsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration.controlSocketGroup(
        "conns", abstract: "A running node's LND connections (through its control socket).", [ConnsShowCommand.self])
}

struct ConnsShowCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Connections: peer, role, state, queue depth, credits, queues, transactions, QP settings.")

    static let reportName = "conns show"
    @OptionGroup var socket: SocketOptions
    @OptionGroup var outputFormat: JSONOption

    struct Output: Encodable {
        struct Connection: Encodable {
            var ni: String
            var connection: LNDConnectionStatus

            func encode(to encoder: any Encoder) throws {
                // The connection's fields, with the interface beside them.
                try connection.encode(to: encoder)
                var container = encoder.container(keyedBy: Key.self)
                try container.encode(ni, forKey: Key(stringValue: "ni"))
            }
        }
        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        var connections: [Connection]
    }

    func report(on console: Console) async throws {
        let status = try socket.status()
        let connections = status.interfaces.flatMap { ni in ni.peers.flatMap { $0.connections.map { Output.Connection(ni: ni.nid, connection: $0) } } }
        if json { return console.out(try jsonLine(Output(connections: connections))) }
        let header = ["peer", "ni", "role", "state", "depth", "credits", "owed", "queued", "posted", "tx", "rx ago", "tx ago", "sched", "mtu", "ack_to", "retry"]
        let rows = connections.map { entry -> [String] in
            let c = entry.connection
            func n(_ value: Int?) -> String { value.map(String.init) ?? "-" }
            return [c.peer, entry.ni, c.role ?? "-", c.state, n(c.queueDepth), n(c.credits), n(c.creditsOwed), String(c.queued), n(c.posted),
                    n(c.transactions), c.msSinceReceive.map { "\($0) ms" } ?? "-", c.msSinceSend.map { "\($0) ms" } ?? "-",
                    n(c.details["scheduler"]), n(c.details["path_mtu"]), n(c.details["ack_timeout"]), n(c.details["retry_count"])]
        }
        console.out(table([header] + rows))
        if rows.isEmpty { console.out("(no connections)") }
    }
}

/// Columns padded to their widest cell.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// `lnetctl stats show` / `stats reset`.
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration.controlSocketGroup(
        "stats", abstract: "A running node's counters (through its control socket).", [StatsShowCommand.self, StatsResetCommand.self])
}

struct StatsShowCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Counters: messages by type, bytes, drops, errors, the exactly-once accounting, the LND's counters and registration cache.",
        discussion: """
            --prometheus prints the Prometheus text exposition format (for node_exporter's textfile collector: \
            write to a temporary file in its directory, then rename it to NAME.prom). Text, --json and --prometheus \
            show the same snapshot.
            """)

    static let reportName = "stats show"
    @OptionGroup var socket: SocketOptions
    @OptionGroup var outputFormat: JSONOption
    @Flag(name: .long, help: "Print the Prometheus text exposition format.") var prometheus = false

    func validate() throws {
        guard !(json && prometheus) else { throw ValidationError("--json and --prometheus are exclusive") }
    }

    struct Output: Encodable {
        struct Interface: Encodable {
            var nid: String
            var lnd: String
            var state: String
            var traffic: LNetTrafficStatus
            var sentByType: LNetTypeCountStatus
            var receivedByType: LNetTypeCountStatus
            var accounting: LNetAccountingStatus
            var lndMetrics: [LNDMetric]

            enum CodingKeys: String, CodingKey {
                case nid, lnd, state, traffic, sentByType = "sent_by_type", receivedByType = "received_by_type", accounting, lndMetrics = "lnd_metrics"
            }
        }
        var uptimeSeconds: Double
        var secondsSinceReset: Double?
        var interfaces: [Interface]

        enum CodingKeys: String, CodingKey { case uptimeSeconds = "uptime_seconds", secondsSinceReset = "seconds_since_reset", interfaces }
    }

    func report(on console: Console) async throws {
        let status = try socket.status()
        if prometheus { return console.out(String(PrometheusExposition.render(status).dropLast())) }
        let output = Output(uptimeSeconds: status.uptimeSeconds, secondsSinceReset: status.secondsSinceReset, interfaces: status.interfaces.map { ni in
            Output.Interface(nid: ni.nid, lnd: ni.lnd, state: ni.state, traffic: ni.traffic, sentByType: ni.sentByType,
                             receivedByType: ni.receivedByType, accounting: ni.accounting, lndMetrics: ni.lndStatus?.metrics ?? [])
        })
        if json { return console.out(try jsonLine(output)) }
        console.out(Self.text(status))
    }

    static func text(_ status: LNetNodeStatus) -> String {
        let since = status.secondsSinceReset.map { "since stats reset \(format($0, 1)) s ago" } ?? "since start-up"
        var lines = ["statistics:  # \(since)"]
        func types(_ t: LNetTypeCountStatus) -> String { "\(t.total) (" + t.byType.map { "\($0.type) \($0.count)" }.joined(separator: ", ") + ")" }
        for ni in status.interfaces {
            let t = ni.traffic
            let a = ni.accounting
            lines.append("    - nid: \(ni.nid)")
            lines.append("      state: \(ni.state)")
            lines.append("      sent by type: \(types(ni.sentByType))  # handed to the LND")
            lines.append("      received by type: \(types(ni.receivedByType))  # delivered by the LND")
            lines.append("      sent: \(t.messagesSent) messages, \(t.bytesSent) bytes  # finalized ok")
            lines.append("      received: \(t.messagesReceived) messages, \(t.bytesReceived) bytes")
            lines.append("      drops: \(t.drops) messages, \(t.droppedBytes) bytes")
            lines.append("      errors: \(t.errors)")
            lines.append("      exactly once: \(a.exactlyOnce ? "yes" : "no")  # handed \(a.handedToLnd) = ok \(a.finalizedOk) + error \(a.finalizedError) "
                         + "+ pending \(a.pending); finalized twice \(a.finalizedTwice), left at shutdown \(a.unfinalizedAtShutdown)")
            guard let lnd = ni.lndStatus, !lnd.metrics.isEmpty else { continue }
            lines.append("      \(ni.lnd):")
            for metric in lnd.metrics {
                let labels = metric.labels.sorted { $0.key < $1.key }.map { "\($0.value)" }.joined(separator: ", ")
                lines.append("          \(metric.name)\(labels.isEmpty ? "" : " (\(labels))"): \(metric.value)")
            }
        }
        return lines.joined(separator: "\n")
    }
}

struct StatsResetCommand: ReportingCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset",
        abstract: "Zero what can be zeroed: every counter counts from now on.",
        discussion: """
            Gauges (connections, credits, queues, pending messages, the registration cache's size) and the exactly-once \
            accounting are not reset. The node's own counters (its swift-metrics values and the report it prints at \
            shutdown) are not touched: the control socket subtracts the values it saw at the reset.
            """)

    static let reportName = "stats reset"
    @OptionGroup var socket: SocketOptions
    @OptionGroup var outputFormat: JSONOption

    func report(on console: Console) async throws {
        let path = try socket.path()
        do { try LNetControlClient.reset(socket: path, timeout: socket.timeout?.duration ?? .seconds(10)) } catch {
            throw CommandFailure("\(error)")
        }
        if json { return console.emit(.object(["ok": .bool(true), "reset": .bool(true), "socket": .string(path)])) }
        console.out("counters reset on \(path) (gauges and the exactly-once accounting are kept)")
    }
}
