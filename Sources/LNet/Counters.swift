import CoreMetrics
import Metrics
import Synchronization

/// Message and byte counts (for one interface, one peer, or a total).
public struct LNetCounterSet: Hashable, Sendable {
    public var messagesSent = 0
    public var bytesSent = 0
    public var messagesReceived = 0
    public var bytesReceived = 0
    /// Incoming messages dropped (no match, too large, bad destination, shutdown).
    public var drops = 0
    public var droppedBytes = 0
    /// Messages finalized with a failure status.
    public var errors = 0

    public init() {}

    static func + (lhs: LNetCounterSet, rhs: LNetCounterSet) -> LNetCounterSet {
        var sum = lhs
        sum.messagesSent += rhs.messagesSent
        sum.bytesSent += rhs.bytesSent
        sum.messagesReceived += rhs.messagesReceived
        sum.bytesReceived += rhs.bytesReceived
        sum.drops += rhs.drops
        sum.droppedBytes += rhs.droppedBytes
        sum.errors += rhs.errors
        return sum
    }
}

/// The counters of one interface, with a per-peer breakdown.
public struct LNetInterfaceCounters: Hashable, Sendable {
    public var nid: NID
    public var totals: LNetCounterSet
    public var peers: [NID: LNetCounterSet]
    /// Messages handed to the LND and not yet finalized.
    public var pendingMessages: Int
    /// Finalize calls on already-finalized messages (LND bugs; logged as errors).
    public var doubleFinalizations: Int
    /// Messages handed to the LND (sends, receives and REPLYs it created), since start-up.
    public var messagesHandedToLND = 0
    /// Handed messages finalized with success.
    public var finalizedOK = 0
    /// Handed messages finalized with an error status (including those LNet finalized at shutdown).
    public var finalizedWithError = 0
    /// Messages the LND still held after its shutdown, which LNet then finalized with ``LNetStatus/shutdown``
    /// (an LND bug: it must finalize what it holds).
    public var unfinalizedAtShutdown = 0
    /// Outgoing messages handed to the LND, by type (PUT, GET, ACK, REPLY), since start-up.
    public var sentByType = LNetMessageTypeCounts()
    /// Incoming messages the LND delivered to LNet (every ``LNetNI/parse(header:from:context:wantsRDMA:)``, matched
    /// or dropped), by type, since start-up.
    public var receivedByType = LNetMessageTypeCounts()

    /// Every message handed to the LND was finalized exactly once, by the LND: nothing pending, nothing
    /// finalized twice, nothing left for LNet to clean up at shutdown.
    public var finalizedExactlyOnce: Bool {
        pendingMessages == 0 && doubleFinalizations == 0 && unfinalizedAtShutdown == 0
            && messagesHandedToLND == finalizedOK + finalizedWithError
    }
}

/// Message counts by LNet message type.
public struct LNetMessageTypeCounts: Hashable, Sendable {
    public var put = 0
    public var get = 0
    public var ack = 0
    public var reply = 0

    public init(put: Int = 0, get: Int = 0, ack: Int = 0, reply: Int = 0) {
        self.put = put
        self.get = get
        self.ack = ack
        self.reply = reply
    }

    public subscript(type: LNetMessageType) -> Int {
        get {
            switch type {
            case .put: put
            case .get: get
            case .ack: ack
            case .reply: reply
            }
        }
        set {
            switch type {
            case .put: put = newValue
            case .get: get = newValue
            case .ack: ack = newValue
            case .reply: reply = newValue
            }
        }
    }

    public var total: Int { put + get + ack + reply }
}

/// A point-in-time copy of every counter of an LNet instance (what `lnetctl stats show` prints).
public struct LNetCountersSnapshot: Hashable, Sendable, CustomStringConvertible {
    public var interfaces: [LNetInterfaceCounters]

    /// The sum over interfaces.
    public var totals: LNetCounterSet { interfaces.reduce(LNetCounterSet()) { $0 + $1.totals } }

    /// The counters of the interface with `nid`.
    public func interface(_ nid: NID) -> LNetInterfaceCounters? { interfaces.first { $0.nid == nid } }

    public var description: String {
        func row(_ name: String, _ set: LNetCounterSet) -> String {
            "\(name.padding(24)) sent \(set.messagesSent)/\(set.bytesSent)B recv \(set.messagesReceived)/\(set.bytesReceived)B "
                + "drops \(set.drops)/\(set.droppedBytes)B errors \(set.errors)"
        }
        var lines: [String] = []
        for ni in interfaces {
            lines.append(row("ni \(ni.nid)", ni.totals) + " pending \(ni.pendingMessages)")
            for (peer, set) in ni.peers.sorted(by: { $0.key < $1.key }) {
                lines.append(row("  peer \(peer)", set))
            }
        }
        return lines.joined(separator: "\n")
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// Live counters of one interface: an in-process snapshot for `lnetctl`, and swift-metrics counters
/// (`lnet_messages_sent_total`, `lnet_bytes_sent_total`, `lnet_messages_received_total`,
/// `lnet_bytes_received_total`, `lnet_drops_total`, `lnet_errors_total`, dimension `ni`; plus `peer` when
/// per-peer metrics are enabled; `lnet_messages_sent_by_type_total` and `lnet_messages_received_by_type_total`,
/// dimensions `ni` and `type`). Each event updates the snapshot and its swift-metrics counter in the same call, by
/// the same amount: the control socket (`lnetctl stats show`) reports the snapshot, so its numbers are the
/// swift-metrics values.
final class NICounters: Sendable {
    private struct Metrics: Sendable {
        let messagesSent: Counter
        let bytesSent: Counter
        let messagesReceived: Counter
        let bytesReceived: Counter
        let drops: Counter
        let errors: Counter

        init(prefix: String, dimensions: [(String, String)], factory: any MetricsFactory) {
            messagesSent = Counter(label: "\(prefix)_messages_sent_total", dimensions: dimensions, factory: factory)
            bytesSent = Counter(label: "\(prefix)_bytes_sent_total", dimensions: dimensions, factory: factory)
            messagesReceived = Counter(label: "\(prefix)_messages_received_total", dimensions: dimensions, factory: factory)
            bytesReceived = Counter(label: "\(prefix)_bytes_received_total", dimensions: dimensions, factory: factory)
            drops = Counter(label: "\(prefix)_drops_total", dimensions: dimensions, factory: factory)
            errors = Counter(label: "\(prefix)_errors_total", dimensions: dimensions, factory: factory)
        }

        func sent(_ bytes: Int) {
            messagesSent.increment()
            bytesSent.increment(by: Int64(bytes))
        }

        func received(_ bytes: Int) {
            messagesReceived.increment()
            bytesReceived.increment(by: Int64(bytes))
        }
    }

    private struct State {
        var totals = LNetCounterSet()
        var peers: [NID: LNetCounterSet] = [:]
        var peerMetrics: [NID: Metrics] = [:]
        var doubleFinalizations = 0
        var handed = 0
        var finalizedOK = 0
        var finalizedWithError = 0
        var unfinalizedAtShutdown = 0
        var sentByType = LNetMessageTypeCounts()
    }

    private let state = Mutex(State())
    private let metrics: Metrics
    /// Incoming messages by type, bumped once per parse without taking the lock.
    private let receivedPut = Atomic<Int>(0), receivedGet = Atomic<Int>(0), receivedAck = Atomic<Int>(0), receivedReply = Atomic<Int>(0)
    /// The swift-metrics counters by type (index: the type's raw value - 1).
    private let sentByTypeMetrics: [Counter]
    private let receivedByTypeMetrics: [Counter]
    private let prefix: String
    private let nid: NID
    private let perPeerMetrics: Bool
    private let factory: any MetricsFactory

    init(nid: NID, prefix: String, perPeerMetrics: Bool, factory: (any MetricsFactory)?) {
        self.nid = nid
        self.prefix = prefix
        self.perPeerMetrics = perPeerMetrics
        self.factory = factory ?? MetricsSystem.factory
        self.metrics = Metrics(prefix: prefix, dimensions: [("ni", nid.description)], factory: self.factory)
        let types: [LNetMessageType] = [.put, .get, .ack, .reply]
        let factory = self.factory
        sentByTypeMetrics = types.map { type in
            Counter(label: "\(prefix)_messages_sent_by_type_total", dimensions: [("ni", nid.description), ("type", type.metricName)],
                    factory: factory)
        }
        receivedByTypeMetrics = types.map { type in
            Counter(label: "\(prefix)_messages_received_by_type_total", dimensions: [("ni", nid.description), ("type", type.metricName)],
                    factory: factory)
        }
    }

    /// What one finalized message adds to the counters.
    enum Outcome {
        case sent(bytes: Int)
        case received(bytes: Int)
        case failed
        case uncounted
    }

    private func update(_ peer: NID, _ body: (inout LNetCounterSet) -> Void) -> Metrics? {
        state.withLock { state in update(&state, peer, body) }
    }

    private func update(_ state: inout State, _ peer: NID, _ body: (inout LNetCounterSet) -> Void) -> Metrics? {
        body(&state.totals)
        body(&state.peers[peer, default: LNetCounterSet()])
        guard perPeerMetrics else { return nil }
        if let existing = state.peerMetrics[peer] { return existing }
        let made = Metrics(prefix: prefix, dimensions: [("ni", nid.description), ("peer", peer.description)], factory: factory)
        state.peerMetrics[peer] = made
        return made
    }

    /// A message handed to the LND was finalized: its outcome and traffic, under one lock.
    func recordFinalized(ok: Bool, peer: NID, _ outcome: Outcome) {
        let peerMetrics = state.withLock { state -> Metrics? in
            if ok { state.finalizedOK += 1 } else { state.finalizedWithError += 1 }
            switch outcome {
            case .sent(let bytes): return update(&state, peer) { $0.messagesSent += 1; $0.bytesSent += bytes }
            case .received(let bytes): return update(&state, peer) { $0.messagesReceived += 1; $0.bytesReceived += bytes }
            case .failed: return update(&state, peer) { $0.errors += 1 }
            case .uncounted: return nil
            }
        }
        switch outcome {
        case .sent(let bytes):
            metrics.sent(bytes)
            peerMetrics?.sent(bytes)
        case .received(let bytes):
            metrics.received(bytes)
            peerMetrics?.received(bytes)
        case .failed:
            metrics.errors.increment()
            peerMetrics?.errors.increment()
        case .uncounted:
            break
        }
    }

    func recordReceived(peer: NID, bytes: Int) {
        let peerMetrics = update(peer) { $0.messagesReceived += 1; $0.bytesReceived += bytes }
        metrics.received(bytes)
        peerMetrics?.received(bytes)
    }

    func recordDrop(peer: NID, bytes: Int) {
        let peerMetrics = update(peer) { $0.drops += 1; $0.droppedBytes += bytes }
        metrics.drops.increment()
        peerMetrics?.drops.increment()
    }

    func recordDoubleFinalize() {
        state.withLock { $0.doubleFinalizations += 1 }
    }

    /// A message is handed to the LND (counted by type when it is outgoing).
    func recordHandedToLND(_ message: LNetMessage) {
        let outgoing = message.direction == .outgoing
        let type = message.type
        state.withLock { state in
            state.handed += 1
            if outgoing { state.sentByType[type] += 1 }
        }
        if outgoing { sentByTypeMetrics[Int(type.rawValue) - 1].increment() }
    }

    /// The LND delivered an incoming message of `type` (before matching).
    func recordParsed(_ type: LNetMessageType) {
        switch type {
        case .put: receivedPut.add(1, ordering: .relaxed)
        case .get: receivedGet.add(1, ordering: .relaxed)
        case .ack: receivedAck.add(1, ordering: .relaxed)
        case .reply: receivedReply.add(1, ordering: .relaxed)
        }
        receivedByTypeMetrics[Int(type.rawValue) - 1].increment()
    }

    private var receivedByType: LNetMessageTypeCounts {
        LNetMessageTypeCounts(put: receivedPut.load(ordering: .relaxed), get: receivedGet.load(ordering: .relaxed),
                              ack: receivedAck.load(ordering: .relaxed), reply: receivedReply.load(ordering: .relaxed))
    }

    func recordUnfinalizedAtShutdown(_ count: Int) {
        state.withLock { $0.unfinalizedAtShutdown += count }
    }

    func snapshot(pending: Int) -> LNetInterfaceCounters {
        let received = receivedByType
        return state.withLock { state in
            LNetInterfaceCounters(nid: nid, totals: state.totals, peers: state.peers, pendingMessages: pending,
                                  doubleFinalizations: state.doubleFinalizations, messagesHandedToLND: state.handed,
                                  finalizedOK: state.finalizedOK, finalizedWithError: state.finalizedWithError,
                                  unfinalizedAtShutdown: state.unfinalizedAtShutdown, sentByType: state.sentByType,
                                  receivedByType: received)
        }
    }
}

extension LNetMessageType {
    /// The name in metric labels and JSON: `put`, `get`, `ack`, `reply`.
    public var metricName: String {
        switch self {
        case .put: "put"
        case .get: "get"
        case .ack: "ack"
        case .reply: "reply"
        }
    }
}
