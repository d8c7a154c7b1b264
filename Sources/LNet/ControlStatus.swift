/// What a running node reports on its control socket (``LNetControlServer``), and what `lnetctl net show`,
/// `peer show`, `conns show` and `stats show` print: one snapshot, taken on the server's thread per request.
///
/// The counters are the ones the node already keeps: LNet's per-interface counters (each event bumps the snapshot
/// and the matching swift-metrics counter together, see ``LNet/counters()``), and what an LND reports through
/// ``LNetLNDStatusReporting`` (the RDMA LND: its connection counters and its registration cache). `lnetctl`
/// renders the same decoded snapshot as text, JSON and Prometheus exposition format, so the three agree.
///
/// The JSON keys are snake_case (`CodingKeys`); the format carries ``version``.
public struct LNetNodeStatus: Codable, Sendable, Equatable {
    /// The format's version (``currentVersion``).
    public var version: Int
    /// The node's operating-system process id.
    public var processId: Int32
    /// The node's LNet pid (``LNet/pid``).
    public var lnetPid: UInt32
    /// Seconds since the control server started.
    public var uptimeSeconds: Double
    /// Seconds since `lnetctl stats reset` (nil: never reset). Counters count from then; gauges and the
    /// exactly-once accounting are never reset.
    public var secondsSinceReset: Double?
    public var interfaces: [LNetInterfaceStatus]

    public static let currentVersion = 1

    public init(version: Int = Self.currentVersion, processId: Int32, lnetPid: UInt32, uptimeSeconds: Double,
                secondsSinceReset: Double? = nil, interfaces: [LNetInterfaceStatus]) {
        self.version = version
        self.processId = processId
        self.lnetPid = lnetPid
        self.uptimeSeconds = uptimeSeconds
        self.secondsSinceReset = secondsSinceReset
        self.interfaces = interfaces
    }

    enum CodingKeys: String, CodingKey {
        case version, processId = "process_id", lnetPid = "lnet_pid", uptimeSeconds = "uptime_seconds"
        case secondsSinceReset = "seconds_since_reset", interfaces
    }
}

/// One interface (NI): its NID and state, LNet's counters for it, its peers, and what its LND reports.
public struct LNetInterfaceStatus: Codable, Sendable, Equatable {
    public var nid: String
    /// The network type's name (`o2ib`, `lo`).
    public var lnd: String
    /// `up`, `stopping`, or `down` (shut down; its counters are kept).
    public var state: String
    /// The interface named in the configuration (`rxe0` of `o2ib(rxe0:192.0.2.1)`), if any.
    public var interfaceName: String?
    /// Messages finalized, bytes, drops and errors (the swift-metrics `lnet_*_total` counters).
    public var traffic: LNetTrafficStatus
    /// Outgoing messages handed to the LND, by type.
    public var sentByType: LNetTypeCountStatus
    /// Incoming messages the LND delivered, by type (before matching).
    public var receivedByType: LNetTypeCountStatus
    public var accounting: LNetAccountingStatus
    /// Peers LNet counted traffic with, and the LND's connections to each.
    public var peers: [LNetPeerStatus]
    /// What the LND reports (nil: an LND without ``LNetLNDStatusReporting``, such as loopback).
    public var lndStatus: LNDStatus?

    public init(nid: String, lnd: String, state: String, interfaceName: String?, traffic: LNetTrafficStatus,
                sentByType: LNetTypeCountStatus, receivedByType: LNetTypeCountStatus, accounting: LNetAccountingStatus,
                peers: [LNetPeerStatus], lndStatus: LNDStatus?) {
        self.nid = nid
        self.lnd = lnd
        self.state = state
        self.interfaceName = interfaceName
        self.traffic = traffic
        self.sentByType = sentByType
        self.receivedByType = receivedByType
        self.accounting = accounting
        self.peers = peers
        self.lndStatus = lndStatus
    }

    enum CodingKeys: String, CodingKey {
        case nid, lnd, state, interfaceName = "interface", traffic, sentByType = "sent_by_type"
        case receivedByType = "received_by_type", accounting, peers, lndStatus = "lnd_status"
    }
}

/// LNet's traffic counters (``LNetCounterSet``): messages finalized ok and their bytes, drops, errors.
public struct LNetTrafficStatus: Codable, Sendable, Equatable {
    public var messagesSent: Int
    public var bytesSent: Int
    public var messagesReceived: Int
    public var bytesReceived: Int
    public var drops: Int
    public var droppedBytes: Int
    public var errors: Int

    /// Every count, in declaration order (what ``subtracting(_:)`` walks).
    static let counts: [WritableKeyPath<LNetTrafficStatus, Int> & Sendable] = [
        \.messagesSent, \.bytesSent, \.messagesReceived, \.bytesReceived, \.drops, \.droppedBytes, \.errors,
    ]

    /// These counts less `baseline`'s (not below zero).
    public func subtracting(_ baseline: LNetTrafficStatus) -> LNetTrafficStatus {
        countsSince(baseline, self, Self.counts)
    }

    enum CodingKeys: String, CodingKey {
        case messagesSent = "messages_sent", bytesSent = "bytes_sent", messagesReceived = "messages_received"
        case bytesReceived = "bytes_received", drops, droppedBytes = "dropped_bytes", errors
    }
}

extension LNetTrafficStatus {
    public init(_ set: LNetCounterSet) {
        self.init(messagesSent: set.messagesSent, bytesSent: set.bytesSent, messagesReceived: set.messagesReceived,
                  bytesReceived: set.bytesReceived, drops: set.drops, droppedBytes: set.droppedBytes, errors: set.errors)
    }
}

/// Message counts by LNet type.
public struct LNetTypeCountStatus: Codable, Sendable, Equatable {
    public var put: Int
    public var get: Int
    public var ack: Int
    public var reply: Int

    /// Each type's name (its JSON key, and its label in `stats show` and Prometheus) and count, in declaration
    /// order (what ``byType`` and ``subtracting(_:)`` walk).
    static let types: [(name: String, count: WritableKeyPath<LNetTypeCountStatus, Int> & Sendable)] = [
        ("put", \.put), ("get", \.get), ("ack", \.ack), ("reply", \.reply),
    ]

    public var total: Int { put + get + ack + reply }

    /// The counts by type name (`put`, `get`, `ack`, `reply`), in that order.
    package var byType: [(type: String, count: Int)] { Self.types.map { ($0.name, self[keyPath: $0.count]) } }

    public func subtracting(_ baseline: LNetTypeCountStatus) -> LNetTypeCountStatus {
        countsSince(baseline, self, Self.types.map(\.count))
    }
}

extension LNetTypeCountStatus {
    public init(_ counts: LNetMessageTypeCounts) {
        self.init(put: counts.put, get: counts.get, ack: counts.ack, reply: counts.reply)
    }
}

/// `value` less `baseline` at each of `counts`, not below zero: what a counter counted since `stats reset`.
func countsSince<Status>(_ baseline: Status, _ value: Status, _ counts: [WritableKeyPath<Status, Int> & Sendable]) -> Status {
    var result = value
    for count in counts { result[keyPath: count] = countSince(baseline[keyPath: count], value[keyPath: count]) }
    return result
}

/// `value` less `baseline`, not below zero.
func countSince(_ baseline: Int, _ value: Int) -> Int { max(0, value - baseline) }

/// LNet's exactly-once accounting for one interface (``LNetInterfaceCounters``). Never reset.
public struct LNetAccountingStatus: Codable, Sendable, Equatable {
    public var handedToLnd: Int
    public var finalizedOk: Int
    public var finalizedError: Int
    public var finalizedTwice: Int
    public var unfinalizedAtShutdown: Int
    public var pending: Int
    /// handed = ok + error + pending, nothing finalized twice or left at shutdown. On a node with traffic in
    /// flight the counts are read one after another and may be off by the messages moving meanwhile; once the
    /// node is idle it is exact.
    public var exactlyOnce: Bool

    public init(_ counters: LNetInterfaceCounters) {
        handedToLnd = counters.messagesHandedToLND
        finalizedOk = counters.finalizedOK
        finalizedError = counters.finalizedWithError
        finalizedTwice = counters.doubleFinalizations
        unfinalizedAtShutdown = counters.unfinalizedAtShutdown
        pending = counters.pendingMessages
        exactlyOnce = counters.doubleFinalizations == 0 && counters.unfinalizedAtShutdown == 0
            && counters.messagesHandedToLND == counters.finalizedOK + counters.finalizedWithError + counters.pendingMessages
    }

    enum CodingKeys: String, CodingKey {
        case handedToLnd = "handed_to_lnd", finalizedOk = "finalized_ok", finalizedError = "finalized_error"
        case finalizedTwice = "finalized_twice", unfinalizedAtShutdown = "unfinalized_at_shutdown", pending
        case exactlyOnce = "exactly_once"
    }
}

/// A peer of one interface: LNet's traffic with it and the LND's connections to it.
public struct LNetPeerStatus: Codable, Sendable, Equatable {
    public var nid: String
    public var traffic: LNetTrafficStatus
    public var connections: [LNDConnectionStatus]

    public init(nid: String, traffic: LNetTrafficStatus, connections: [LNDConnectionStatus]) {
        self.nid = nid
        self.traffic = traffic
        self.connections = connections
    }
}

/// What an LND reports about one interface.
public struct LNDStatus: Codable, Sendable, Equatable {
    /// Facts about the interface (`device`, `schedulers`, tunables ...), shown by `lnetctl net show`.
    public var properties: [String: String]
    /// Counters and gauges (connections made, RDMA reads, the registration cache ...).
    public var metrics: [LNDMetric]
    /// The connections; the control server files them under their peers (``LNetPeerStatus/connections``), so they
    /// are not encoded here.
    public var connections: [LNDConnectionStatus] = []

    public init(properties: [String: String] = [:], metrics: [LNDMetric] = [], connections: [LNDConnectionStatus] = []) {
        self.properties = properties
        self.metrics = metrics
        self.connections = connections
    }

    enum CodingKeys: String, CodingKey { case properties, metrics }
}

/// One number an LND reports: a counter (only grows; `stats reset` zeroes it) or a gauge (a current value).
public struct LNDMetric: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case counter, gauge }

    /// snake_case, without a unit suffix for counters (`rdma_reads`; Prometheus shows `lnet_o2ib_rdma_reads_total`).
    public var name: String
    public var help: String
    public var kind: Kind
    /// Extra labels (e.g. `kind` for protocol errors by kind).
    public var labels: [String: String]
    public var value: Int

    public init(_ name: String, _ kind: Kind, _ value: Int, help: String, labels: [String: String] = [:]) {
        self.name = name
        self.kind = kind
        self.value = value
        self.help = help
        self.labels = labels
    }

    /// Identifies the metric across snapshots (for `stats reset`).
    public var key: String { ([name] + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: ",") }
}

/// One connection as an LND reports it. Fields an LND does not have are nil.
public struct LNDConnectionStatus: Codable, Sendable, Equatable {
    public var peer: String
    /// `connecting`, `established`, `closed`.
    public var state: String
    /// `active` (this side connected) or `passive`.
    public var role: String?
    public var queueDepth: Int?
    /// Credits this side holds (credited messages it may send now).
    public var credits: Int?
    /// Credits this side owes the peer (to return in its next message or a NOOP).
    public var creditsOwed: Int?
    /// LNet messages waiting for the connection to be established.
    public var waiting: Int?
    /// Queued to send: control messages, eager messages, bulk requests, RDMA transfers.
    public var queuedControl: Int?
    public var queuedEager: Int?
    public var queuedRequests: Int?
    public var queuedRdma: Int?
    /// Work requests posted and not yet completed.
    public var posted: Int?
    /// Transactions open on the connection (either side's), and those this side started.
    public var transactions: Int?
    public var transactionsInitiated: Int?
    /// Milliseconds since the last message arrived / was sent.
    public var msSinceReceive: Int?
    public var msSinceSend: Int?
    /// LND-specific figures (`scheduler`, `path_mtu`, `ack_timeout`, `retry_count`).
    public var details: [String: Int]

    public init(peer: String, state: String, role: String? = nil, queueDepth: Int? = nil, credits: Int? = nil,
                creditsOwed: Int? = nil, waiting: Int? = nil, queuedControl: Int? = nil, queuedEager: Int? = nil,
                queuedRequests: Int? = nil, queuedRdma: Int? = nil, posted: Int? = nil, transactions: Int? = nil,
                transactionsInitiated: Int? = nil, msSinceReceive: Int? = nil, msSinceSend: Int? = nil,
                details: [String: Int] = [:]) {
        self.peer = peer
        self.state = state
        self.role = role
        self.queueDepth = queueDepth
        self.credits = credits
        self.creditsOwed = creditsOwed
        self.waiting = waiting
        self.queuedControl = queuedControl
        self.queuedEager = queuedEager
        self.queuedRequests = queuedRequests
        self.queuedRdma = queuedRdma
        self.posted = posted
        self.transactions = transactions
        self.transactionsInitiated = transactionsInitiated
        self.msSinceReceive = msSinceReceive
        self.msSinceSend = msSinceSend
        self.details = details
    }

    /// Messages queued on the connection in all (waiting, control, eager, bulk requests, RDMA).
    public var queued: Int {
        (waiting ?? 0) + (queuedControl ?? 0) + (queuedEager ?? 0) + (queuedRequests ?? 0) + (queuedRdma ?? 0)
    }

    enum CodingKeys: String, CodingKey {
        case peer, state, role, queueDepth = "queue_depth", credits, creditsOwed = "credits_owed", waiting
        case queuedControl = "queued_control", queuedEager = "queued_eager", queuedRequests = "queued_requests"
        case queuedRdma = "queued_rdma", posted, transactions, transactionsInitiated = "transactions_initiated"
        case msSinceReceive = "ms_since_receive", msSinceSend = "ms_since_send", details
    }
}

/// An LND that can say what it is doing, for the control socket (`lnetctl peer show`, `conns show`, `stats show`).
/// Called on the control server's thread, never on a data path; it may take the LND's locks briefly.
public protocol LNetLNDStatusReporting: LNetLND {
    func controlStatus(ni: LNetNI) -> LNDStatus
}

extension LNetNodeStatus {
    /// Counters less `baseline`'s (the snapshot `stats reset` took); gauges and the accounting unchanged.
    public func subtracting(_ baseline: LNetNodeStatus) -> LNetNodeStatus {
        var result = self
        result.interfaces = interfaces.map { ni in
            guard let base = baseline.interfaces.first(where: { $0.nid == ni.nid }) else { return ni }
            var ni = ni
            ni.traffic = ni.traffic.subtracting(base.traffic)
            ni.sentByType = ni.sentByType.subtracting(base.sentByType)
            ni.receivedByType = ni.receivedByType.subtracting(base.receivedByType)
            ni.peers = ni.peers.map { peer in
                guard let old = base.peers.first(where: { $0.nid == peer.nid }) else { return peer }
                var peer = peer
                peer.traffic = peer.traffic.subtracting(old.traffic)
                return peer
            }
            if var lnd = ni.lndStatus, let old = base.lndStatus {
                let previous = Dictionary(old.metrics.filter { $0.kind == .counter }.map { ($0.key, $0.value) }) { a, _ in a }
                lnd.metrics = lnd.metrics.map { metric in
                    guard metric.kind == .counter, let before = previous[metric.key] else { return metric }
                    var metric = metric
                    metric.value = countSince(before, metric.value)
                    return metric
                }
                ni.lndStatus = lnd
            }
            return ni
        }
        return result
    }
}
