import Foundation
import LNet
import Testing

/// The Prometheus text exposition format, checked strictly (as node_exporter's textfile collector and Prometheus
/// parse it): every sample's family has one TYPE (counter or gauge) and one HELP before its samples, a family's
/// samples are contiguous, names and label names are valid, label values are escaped, counters end in `_total`, no
/// series appears twice, every value is a number. Returns the value of each series, keyed `name{a="x",b="y"}` with
/// labels sorted (just `name` without labels).
func parsePrometheus(_ text: String) throws -> [String: Double] {
    struct Failure: Error, CustomStringConvertible { let description: String }
    let nameRule = /[a-zA-Z_:][a-zA-Z0-9_:]*/
    let labelRule = /[a-zA-Z_][a-zA-Z0-9_]*/
    var types: [String: String] = [:]
    var helps: Set<String> = []
    var finished: Set<String> = []
    var current: String?
    var values: [String: Double] = [:]
    guard text.hasSuffix("\n") else { throw Failure(description: "the last line has no newline") }
    for line in text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
        if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 3, (try? nameRule.wholeMatch(in: parts[2])) != nil else { throw Failure(description: "bad comment: \(line)") }
            let name = parts[2]
            if finished.contains(name) || (current != name && (types[name] != nil || helps.contains(name))) {
                throw Failure(description: "family \(name) is not contiguous")
            }
            if let current, current != name { finished.insert(current) }
            current = name
            if parts[1] == "TYPE" {
                guard parts.count == 4, ["counter", "gauge"].contains(parts[3]), types[name] == nil else { throw Failure(description: "bad TYPE: \(line)") }
                if parts[3] == "counter" && !name.hasSuffix("_total") { throw Failure(description: "counter \(name) does not end in _total") }
                types[name] = parts[3]
            } else {
                guard parts.count == 4, !parts[3].isEmpty, !helps.contains(name) else { throw Failure(description: "bad HELP: \(line)") }
                helps.insert(name)
            }
            continue
        }
        guard !line.hasPrefix("#"), !line.isEmpty else { throw Failure(description: "unexpected line: '\(line)'") }
        // name{labels} value
        var rest = Substring(line)
        guard let nameMatch = rest.prefixMatch(of: nameRule) else { throw Failure(description: "bad sample: \(line)") }
        let name = String(nameMatch.output)
        rest = rest[nameMatch.range.upperBound...]
        guard name == current, let type = types[name], helps.contains(name) else {
            throw Failure(description: "sample before its family's TYPE and HELP, or outside it: \(line)")
        }
        _ = type
        var labels: [(String, String)] = []
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                guard let label = rest.prefixMatch(of: labelRule) else { throw Failure(description: "bad label name: \(line)") }
                rest = rest[label.range.upperBound...]
                guard rest.hasPrefix("=\"") else { throw Failure(description: "bad label: \(line)") }
                rest = rest.dropFirst(2)
                var value = ""
                while let c = rest.first, c != "\"" {
                    rest = rest.dropFirst()
                    if c == "\\" {
                        guard let escaped = rest.first else { throw Failure(description: "bad escape: \(line)") }
                        rest = rest.dropFirst()
                        switch escaped {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw Failure(description: "bad escape \\\(escaped): \(line)")
                        }
                    } else {
                        value.append(c)
                    }
                }
                guard rest.first == "\"" else { throw Failure(description: "unterminated label value: \(line)") }
                rest = rest.dropFirst()
                labels.append((String(label.output), value))
                if rest.first == "," { rest = rest.dropFirst() } else if rest.first != "}" { throw Failure(description: "bad labels: \(line)") }
            }
            rest = rest.dropFirst()
        }
        guard rest.first == " ", let value = Double(rest.dropFirst()) else { throw Failure(description: "bad value: \(line)") }
        let key = labels.isEmpty ? name : name + "{" + labels.sorted { $0.0 < $1.0 }.map { "\($0.0)=\"\($0.1)\"" }.joined(separator: ",") + "}"
        guard values[key] == nil else { throw Failure(description: "series twice: \(key)") }
        values[key] = value
    }
    return values
}

/// Where Prometheus's own checker is installed (Debian's `prometheus` package), it must accept the text too
/// (`promtool check metrics`: the parser and its lint rules).
func promtoolAccepts(_ text: String) throws {
    guard let promtool = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
        .map({ "\($0)/promtool" }).first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: promtool)
    process.arguments = ["check", "metrics"]
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    try process.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "promtool check metrics: \(said)")
}

/// An LND on `tcp` that carries nothing and reports two connections and a few metrics (one with a label that
/// needs escaping).
final class ReportingLND: LNetLNDStatusReporting {
    let networkType = LNetNetworkType.tcp
    func startup(ni: LNetNI) throws(LNetError) {}
    func shutdown(ni: LNetNI) {}
    func send(ni: LNetNI, message: LNetMessage) { ni.finalize(message, status: .unreachable) }
    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) { ni.finalize(message, status: .protocolError) }
    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {}
    func controlStatus(ni: LNetNI) -> LNDStatus {
        LNDStatus(
            properties: ["device": "fake0", "LND_PEER_CREDITS": "8"],
            metrics: [LNDMetric("rdma_reads", .counter, 11, help: "RDMA READs posted."),
                      LNDMetric("protocol_errors_by_kind", .counter, 2, help: "By kind.", labels: ["kind": "bad \"descriptor\" \\ here"]),
                      LNDMetric("connections", .gauge, 2, help: "Connections now.")],
            connections: [
                LNDConnectionStatus(peer: "10.0.0.2@tcp", state: "established", role: "active", queueDepth: 8, credits: 5, creditsOwed: 1,
                                    waiting: 0, queuedControl: 1, queuedEager: 2, queuedRequests: 3, queuedRdma: 0, posted: 4,
                                    transactions: 3, transactionsInitiated: 2, msSinceReceive: 15, msSinceSend: 20, details: ["scheduler": 1]),
                LNDConnectionStatus(peer: "10.0.0.3@tcp", state: "connecting", role: "active", details: [:]),
            ])
    }
}

/// A loopback node (and a reporting `tcp` interface) with a control server, in this process.
final class InProcessNode {
    let lnet: LNet
    let server: LNetControlServer
    let me: ProcessID

    init(_ name: String) throws {
        lnet = LNet()
        me = try lnet.addLoopback().processID
        _ = try lnet.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth7:10.0.0.1)"), lnd: ReportingLND())
        _ = try lnet.attach(MatchEntry(portal: 42, matchBits: 1, unlink: .retain),
                            descriptor: MemoryDescriptor(buffer: try LNetBuffer(count: 8192), threshold: .infinite, options: [.put, .get, .manageRemote]))
        let path = "/tmp/lnetctl-\(getpid())-\(name).sock"
        unlink(path)
        server = try lnet.startControlServer(path: path)
    }

    var path: String { server.path }

    func traffic(puts: Int, gets: Int, size: Int) async throws {
        let buffer = try LNetBuffer(count: size)
        for _ in 0..<puts { _ = try await lnet.put(.buffer(buffer), to: me, portal: 42, matchBits: 1, deadline: .now + .seconds(10)) }
        for _ in 0..<gets { _ = try await lnet.get(into: .buffer(buffer), from: me, portal: 42, matchBits: 1, deadline: .now + .seconds(10)) }
    }

    deinit {
        server.stop()
        lnet.shutdown()
    }
}

@Suite(.needsBinary, .serialized, .timeLimit(.minutes(2))) struct ControlCommandTests {
    @Test func showCommandsReadARunningNode() async throws {
        let node = try InProcessNode("show")
        try await node.traffic(puts: 3, gets: 2, size: 1000)

        let net = try await LnetctlBinary.run(["net", "show", "--socket", node.path, "--json"])
        #expect(net.status == 0, "\(net.stderr)")
        let interfaces = try #require(try net.json()["interfaces"] as? [[String: Any]])
        #expect(interfaces.compactMap { $0["nid"] as? String }.sorted() == ["0@lo", "10.0.0.1@tcp"])
        let tcp = try #require(interfaces.first { $0["nid"] as? String == "10.0.0.1@tcp" })
        #expect(tcp["state"] as? String == "up" && tcp["lnd"] as? String == "tcp" && tcp["interface"] as? String == "eth7")
        #expect((tcp["properties"] as? [String: String])?["device"] == "fake0" && tcp["connections"] as? Int == 2)
        let netText = try await LnetctlBinary.run(["net", "show", "--socket", node.path])
        #expect(netText.status == 0 && netText.stdout.contains("- nid: 10.0.0.1@tcp") && netText.stdout.contains("LND_PEER_CREDITS: 8"), "\(netText.stdout)")

        let peers = try await LnetctlBinary.run(["peer", "show", "--socket", node.path, "--json"])
        #expect(peers.status == 0, "\(peers.stderr)")
        let list = try #require(try peers.json()["peers"] as? [[String: Any]])
        let lo = try #require(list.first { $0["nid"] as? String == "0@lo" })
        let traffic = try #require(lo["traffic"] as? [String: Any])
        #expect(traffic["messages_sent"] as? Int == 3 + 2 + 3 + 2, "PUT, GET, ACK, REPLY: \(traffic)")
        #expect(traffic["bytes_sent"] as? Int == 5 * 1000)
        let remote = try #require(list.first { $0["nid"] as? String == "10.0.0.2@tcp" })
        let connection = try #require((remote["connections"] as? [[String: Any]])?.first)
        for (key, value) in [("credits", 5), ("credits_owed", 1), ("queued_eager", 2), ("queued_requests", 3), ("posted", 4),
                             ("transactions", 3), ("transactions_initiated", 2), ("ms_since_receive", 15), ("ms_since_send", 20)] {
            #expect(connection[key] as? Int == value, "\(key): \(connection)")
        }
        let peerText = try await LnetctlBinary.run(["peer", "show", "--socket", node.path, "--nid", "10.0.0.2@tcp"])
        #expect(peerText.status == 0, "\(peerText.stderr)")
        for fragment in ["- nid: 10.0.0.2@tcp", "credits: 5 of 8, owed 1", "queued: 6 (waiting 0, control 1, eager 2, bulk requests 3, rdma 0); posted 4",
                         "open transactions: 3 (2 ours)", "last activity: received 15 ms ago, sent 20 ms ago"] {
            #expect(peerText.stdout.contains(fragment), "\(fragment): \(peerText.stdout)")
        }
        #expect(!peerText.stdout.contains("0@lo"))

        let conns = try await LnetctlBinary.run(["conns", "show", "--socket", node.path, "--json"])
        #expect(conns.status == 0, "\(conns.stderr)")
        let connections = try #require(try conns.json()["connections"] as? [[String: Any]])
        #expect(connections.count == 2 && connections.allSatisfy { $0["ni"] as? String == "10.0.0.1@tcp" })
        #expect(connections.map { $0["state"] as? String } == ["established", "connecting"])
        let connsText = try await LnetctlBinary.run(["conns", "show", "--socket", node.path])
        #expect(connsText.stdout.split(separator: "\n").count == 3 && connsText.stdout.contains("10.0.0.3@tcp"), "\(connsText.stdout)")
    }

    @Test func statsTextJSONAndPrometheusShowTheSameNumbers() async throws {
        let node = try InProcessNode("same")
        try await node.traffic(puts: 7, gets: 4, size: 3000)
        let json = try await LnetctlBinary.run(["stats", "show", "--socket", node.path, "--json"])
        let prometheus = try await LnetctlBinary.run(["stats", "show", "--socket", node.path, "--prometheus"])
        let text = try await LnetctlBinary.run(["stats", "show", "--socket", node.path])
        for outcome in [json, prometheus, text] { #expect(outcome.status == 0, "\(outcome.stderr)") }
        let series = try parsePrometheus(prometheus.stdout)
        try promtoolAccepts(prometheus.stdout)
        let interfaces = try #require(try json.json()["interfaces"] as? [[String: Any]])
        #expect(interfaces.count == 2)
        var compared = 0
        for ni in interfaces {
            let nid = try #require(ni["nid"] as? String)
            let traffic = try #require(ni["traffic"] as? [String: Int])
            for (key, metric) in [("messages_sent", "lnet_messages_sent_total"), ("bytes_sent", "lnet_bytes_sent_total"),
                                  ("messages_received", "lnet_messages_received_total"), ("bytes_received", "lnet_bytes_received_total"),
                                  ("drops", "lnet_drops_total"), ("dropped_bytes", "lnet_dropped_bytes_total"), ("errors", "lnet_errors_total")] {
                #expect(series["\(metric){ni=\"\(nid)\"}"] == Double(try #require(traffic[key])), "\(nid) \(key)")
                compared += 1
            }
            for (field, metric) in [("sent_by_type", "lnet_messages_sent_by_type_total"), ("received_by_type", "lnet_messages_received_by_type_total")] {
                let counts = try #require(ni[field] as? [String: Int])
                for type in ["put", "get", "ack", "reply"] {
                    #expect(series["\(metric){ni=\"\(nid)\",type=\"\(type)\"}"] == Double(try #require(counts[type])), "\(nid) \(field) \(type)")
                    compared += 1
                }
                let total = counts.values.reduce(0, +)
                #expect(text.stdout.contains("\(field.replacingOccurrences(of: "_", with: " ")): \(total) (put \(counts["put"]!), get \(counts["get"]!), ack \(counts["ack"]!), reply \(counts["reply"]!))"),
                        "\(nid) \(field): \(text.stdout)")
            }
            let accounting = try #require(ni["accounting"] as? [String: Any])
            #expect(series["lnet_messages_handed_to_lnd_total{ni=\"\(nid)\"}"] == Double(try #require(accounting["handed_to_lnd"] as? Int)))
            #expect(series["lnet_messages_finalized_total{ni=\"\(nid)\",status=\"ok\"}"] == Double(try #require(accounting["finalized_ok"] as? Int)))
            #expect(series["lnet_messages_pending{ni=\"\(nid)\"}"] == Double(try #require(accounting["pending"] as? Int)))
            #expect(series["lnet_messages_exactly_once{ni=\"\(nid)\"}"] == ((accounting["exactly_once"] as? Bool) == true ? 1 : 0))
            #expect(text.stdout.contains("sent: \(traffic["messages_sent"]!) messages, \(traffic["bytes_sent"]!) bytes"), "\(text.stdout)")
            for metric in ni["lnd_metrics"] as? [[String: Any]] ?? [] {
                let name = try #require(metric["name"] as? String)
                let kind = try #require(metric["kind"] as? String)
                let labels = (metric["labels"] as? [String: String] ?? [:]).merging(["ni": nid]) { a, _ in a }
                let key = "lnet_tcp_\(name)\(kind == "counter" ? "_total" : ""){" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",") + "}"
                #expect(series[key] == Double(try #require(metric["value"] as? Int)), "\(key) in \(series.keys.sorted())")
                compared += 1
            }
        }
        #expect(compared == 2 * 15 + 3)
        let lo = try #require(interfaces.first { $0["nid"] as? String == "0@lo" })
        #expect((lo["sent_by_type"] as? [String: Int]) == ["put": 7, "get": 4, "ack": 7, "reply": 4])
        // The label value with a quote and a backslash came back intact through the escaping.
        #expect(series["lnet_tcp_protocol_errors_by_kind_total{kind=\"bad \"descriptor\" \\ here\",ni=\"10.0.0.1@tcp\"}"] == 2)
        // Connections are gauges per peer; nothing is printed twice (the parser checks) and no timestamps.
        #expect(series["lnet_connection_credits{ni=\"10.0.0.1@tcp\",peer=\"10.0.0.2@tcp\",role=\"active\"}"] == 5)
        #expect(series["lnet_connection_queued{ni=\"10.0.0.1@tcp\",peer=\"10.0.0.2@tcp\",queue=\"requests\",role=\"active\"}"] == 3)
        #expect(series["lnet_connection_up{ni=\"10.0.0.1@tcp\",peer=\"10.0.0.3@tcp\",role=\"active\"}"] == 0)
    }

    @Test func statsResetZeroesCounters() async throws {
        let node = try InProcessNode("reset")
        try await node.traffic(puts: 2, gets: 0, size: 10)
        let reset = try await LnetctlBinary.run(["stats", "reset", "--socket", node.path, "--json"])
        #expect(reset.status == 0, "\(reset.stderr)")
        #expect(try reset.json()["ok"] as? Bool == true)
        let after = try await LnetctlBinary.run(["stats", "show", "--socket", node.path, "--prometheus"])
        let series = try parsePrometheus(after.stdout)
        #expect(series["lnet_messages_sent_total{ni=\"0@lo\"}"] == 0)
        #expect(series["lnet_messages_sent_by_type_total{ni=\"0@lo\",type=\"put\"}"] == 0)
        #expect(series["lnet_tcp_rdma_reads_total{ni=\"10.0.0.1@tcp\"}"] == 0, "an LND counter is reset")
        #expect(series["lnet_tcp_connections{ni=\"10.0.0.1@tcp\"}"] == 2, "a gauge is not")
        #expect((series["lnet_messages_handed_to_lnd_total{ni=\"0@lo\"}"] ?? 0) > 0, "the accounting is not")
        #expect(series["lnet_stats_reset_seconds_ago"] != nil)
        try await node.traffic(puts: 1, gets: 0, size: 10)
        let text = try await LnetctlBinary.run(["stats", "show", "--socket", node.path])
        #expect(text.stdout.contains("since stats reset") && text.stdout.contains("sent by type: 2 (put 1, get 0, ack 1, reply 0)"), "\(text.stdout)")
    }

    @Test(arguments: [["net", "show"], ["peer", "show"], ["conns", "show"], ["stats", "show"], ["stats", "show", "--prometheus"], ["stats", "reset"]])
    func noSocketIsOneLineAndNonZero(arguments: [String]) async throws {
        let none = try await LnetctlBinary.run(arguments)
        #expect(none.status != 0 && none.stderrLines.count == 1, "\(none.stderr)")
        #expect(none.stderr.contains("LNET_CONTROL_SOCKET") && none.stdout.isEmpty, "\(none.stderr)")
        let missing = "/tmp/lnetctl-\(getpid())-missing.sock"
        let absent = try await LnetctlBinary.run(arguments + ["--socket", missing])
        #expect(absent.status != 0 && absent.stderrLines.count == 1 && absent.stderr.contains("no control socket at \(missing)"), "\(absent.stderr)")
        let viaEnvironment = try await LnetctlBinary.run(arguments, environment: ["LNET_CONTROL_SOCKET": missing])
        #expect(viaEnvironment.stderr.contains("no control socket at \(missing)"), "\(viaEnvironment.stderr)")
        if !arguments.contains("--prometheus") {
            let json = try await LnetctlBinary.run(arguments + ["--socket", missing, "--json"])
            #expect(json.status != 0)
            #expect(try json.json()["ok"] as? Bool == false)
        }
    }

    @Test func serveHasAControlSocket() async throws {
        let path = "/tmp/lnetctl-\(getpid())-serve.sock"
        let ready = "/tmp/lnetctl-\(getpid())-serve.ready"
        unlink(path)
        unlink(ready)
        // The path from LNET_CONTROL_SOCKET; the show commands find it there too.
        let (serve, out, err) = try LnetctlBinary.start(["serve", "--nid", "0@lo", "--ready-file", ready, "--json"],
                                                         environment: ["LNET_CONTROL_SOCKET": path])
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: ready), serve.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK && info.st_mode & 0o777 == 0o600,
                "mode \(String(info.st_mode & 0o777, radix: 8))")
        let net = try await LnetctlBinary.run(["net", "show", "--json"], environment: ["LNET_CONTROL_SOCKET": path])
        #expect(net.status == 0, "\(net.stderr)")
        #expect(try net.json()["process_id"] as? Int == Int(serve.processIdentifier))
        // A second node cannot take a socket that is in use.
        let second = try await LnetctlBinary.run(["serve", "--nid", "0@lo", "--control-socket", path])
        #expect(second.status != 0 && second.stderr.contains("in use"), "\(second.stderr)")
        kill(serve.processIdentifier, SIGTERM)
        let outcome = try await LnetctlBinary.finish(serve, out, err, timeout: 30)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(try outcome.json()["control_socket"] as? String == path)
        #expect(!FileManager.default.fileExists(atPath: path), "serve must remove its control socket")
    }
}
