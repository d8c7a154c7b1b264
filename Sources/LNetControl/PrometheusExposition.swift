import LNet

/// `lnetctl stats show --prometheus`: a node's status in the Prometheus text exposition format (version 0.0.4), as
/// node_exporter's textfile collector reads it.
///
/// LNet's series carry the names and labels of the swift-metrics counters the node keeps (`lnet_messages_sent_total`
/// with `ni`, ...); the LND's are `lnet_<lnd>_<name>_total` (counters) or `lnet_<lnd>_<name>` (gauges). Written here
/// rather than through a metrics registry: the numbers arrive as one decoded snapshot (the same one text and --json
/// print), and a registry is a store for live increments. Families come out in a fixed order, series in the
/// snapshot's order, every family with its HELP and TYPE before its samples.
enum PrometheusExposition {
    struct Family {
        var name: String
        var type: String
        var help: String
        var samples: [(labels: [(String, String)], value: String)] = []
    }

    /// Families in the order they were first named.
    struct Builder {
        private(set) var families: [Family] = []
        private var index: [String: Int] = [:]

        mutating func add(_ name: String, _ type: String, _ help: String, _ labels: [(String, String)], _ value: String) {
            if index[name] == nil {
                index[name] = families.count
                families.append(Family(name: name, type: type, help: help))
            }
            families[index[name]!].samples.append((labels, value))
        }

        mutating func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Int) {
            add(name, "counter", help, labels, String(value))
        }

        mutating func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Int) {
            add(name, "gauge", help, labels, String(value))
        }

        mutating func gauge(_ name: String, _ help: String, _ labels: [(String, String)], seconds value: Double) {
            add(name, "gauge", help, labels, value.isFinite ? String(value) : "NaN")
        }

        var text: String {
            var out = ""
            for family in families {
                out += "# HELP \(family.name) \(escapeHelp(family.help))\n"
                out += "# TYPE \(family.name) \(family.type)\n"
                for sample in family.samples {
                    out += family.name
                    if !sample.labels.isEmpty {
                        out += "{" + sample.labels.map { "\($0.0)=\"\(escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
                    }
                    out += " \(sample.value)\n"
                }
            }
            return out
        }
    }

    static func escapeHelp(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func escapeLabel(_ text: String) -> String {
        escapeHelp(text).replacingOccurrences(of: "\"", with: "\\\"")
    }

    /// A metric name from an LND's name for it (`[a-zA-Z0-9_]`, nothing else).
    static func sanitize(_ name: String) -> String {
        String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" })
    }

    /// LNet's traffic series, in the order they are printed: the count, the name (`lnet_<name>_total` for an
    /// interface, `lnet_peer_<name>_total` for a peer), the help for an interface and for a peer (nil: no peer series).
    static let traffic: [(count: KeyPath<LNetTrafficStatus, Int> & Sendable, name: String, help: String, peerHelp: String?)] = [
        (\.messagesSent, "messages_sent", "Messages sent and finalized ok.", "Messages sent to the peer and finalized ok."),
        (\.bytesSent, "bytes_sent", "Payload bytes of messages sent.", "Payload bytes sent to the peer."),
        (\.messagesReceived, "messages_received", "Messages received and finalized ok.", "Messages received from the peer and finalized ok."),
        (\.bytesReceived, "bytes_received", "Payload bytes of messages received.", "Payload bytes received from the peer."),
        (\.drops, "drops", "Incoming messages dropped (no match, too large, bad destination, shutdown).", "Messages from the peer dropped."),
        (\.droppedBytes, "dropped_bytes", "Payload bytes of incoming messages dropped.", nil),
        (\.errors, "errors", "Messages finalized with a failure status.", "Messages with the peer finalized with a failure status."),
    ]

    static func render(_ status: LNetNodeStatus) -> String {
        var b = Builder()
        b.gauge("lnet_control_uptime_seconds", "Seconds since the node's control socket started.", [], seconds: status.uptimeSeconds)
        if let since = status.secondsSinceReset {
            b.gauge("lnet_stats_reset_seconds_ago", "Seconds since lnetctl stats reset (counters count from then).", [], seconds: since)
        }
        for ni in status.interfaces {
            let n = [("ni", ni.nid)]
            b.gauge("lnet_interface_up", "1 while the interface is up.", n + [("lnd", ni.lnd)], ni.state == "up" ? 1 : 0)
            for series in traffic { b.counter("lnet_\(series.name)_total", series.help, n, ni.traffic[keyPath: series.count]) }
            for (type, count) in ni.sentByType.byType {
                b.counter("lnet_messages_sent_by_type_total", "Outgoing messages handed to the LND, by type.", n + [("type", type)], count)
            }
            for (type, count) in ni.receivedByType.byType {
                b.counter("lnet_messages_received_by_type_total", "Incoming messages the LND delivered, by type.", n + [("type", type)], count)
            }
            let a = ni.accounting
            b.counter("lnet_messages_handed_to_lnd_total", "Messages handed to the LND (never reset).", n, a.handedToLnd)
            b.counter("lnet_messages_finalized_total", "Messages handed to the LND and finalized, by outcome (never reset).", n + [("status", "ok")], a.finalizedOk)
            b.counter("lnet_messages_finalized_total", "Messages handed to the LND and finalized, by outcome (never reset).", n + [("status", "error")], a.finalizedError)
            b.counter("lnet_messages_finalized_twice_total", "Finalize calls on messages already finalized (LND bugs).", n, a.finalizedTwice)
            b.counter("lnet_messages_unfinalized_at_shutdown_total", "Messages the LND left unfinalized at shutdown (LND bugs).", n, a.unfinalizedAtShutdown)
            b.gauge("lnet_messages_pending", "Messages handed to the LND and not yet finalized.", n, a.pending)
            b.gauge("lnet_messages_exactly_once", "1 while handed = finalized ok + error + pending and nothing was finalized twice or left.", n, a.exactlyOnce ? 1 : 0)
            for peer in ni.peers {
                let p = n + [("peer", peer.nid)]
                for series in traffic {
                    if let help = series.peerHelp { b.counter("lnet_peer_\(series.name)_total", help, p, peer.traffic[keyPath: series.count]) }
                }
                for connection in peer.connections {
                    let c = p + [("role", connection.role ?? "")]
                    b.gauge("lnet_connection_up", "1 while the connection is established.", c, connection.state == "established" ? 1 : 0)
                    if let depth = connection.queueDepth { b.gauge("lnet_connection_queue_depth", "The connection's queue depth (peer credits).", c, depth) }
                    if let credits = connection.credits { b.gauge("lnet_connection_credits", "Credits this side holds.", c, credits) }
                    if let owed = connection.creditsOwed { b.gauge("lnet_connection_credits_owed", "Credits this side owes the peer.", c, owed) }
                    for (queue, value) in [("waiting", connection.waiting), ("control", connection.queuedControl), ("eager", connection.queuedEager),
                                           ("requests", connection.queuedRequests), ("rdma", connection.queuedRdma)] {
                        if let value { b.gauge("lnet_connection_queued", "Messages queued on the connection, by queue.", c + [("queue", queue)], value) }
                    }
                    if let posted = connection.posted { b.gauge("lnet_connection_posted", "Work requests posted and not completed.", c, posted) }
                    if let open = connection.transactions { b.gauge("lnet_connection_transactions", "Transactions open on the connection.", c, open) }
                    if let ms = connection.msSinceReceive {
                        b.gauge("lnet_connection_receive_seconds_ago", "Seconds since a message last arrived.", c, seconds: Double(ms) / 1000)
                    }
                    if let ms = connection.msSinceSend {
                        b.gauge("lnet_connection_send_seconds_ago", "Seconds since a message was last sent.", c, seconds: Double(ms) / 1000)
                    }
                }
            }
            for metric in ni.lndStatus?.metrics ?? [] {
                let base = "lnet_\(sanitize(ni.lnd))_\(sanitize(metric.name))"
                let labels = n + metric.labels.sorted { $0.key < $1.key }.map { (sanitize($0.key), $0.value) }
                switch metric.kind {
                case .counter: b.counter(base + "_total", metric.help, labels, metric.value)
                case .gauge: b.gauge(base, metric.help, labels, metric.value)
                }
            }
        }
        return b.text
    }
}
