import Synchronization

/// The LND's own counters (what `lnetctl` shows besides LNet's).
final class LNDCounters: Sendable {
    enum Counter: Int, CaseIterable {
        case connectionsEstablished, connectionsClosed, connectAttemptsFailed, protocolErrors, timeouts, rdmaReads, rdmaWrites,
             noops, rejectsSent, reconnects, registrationsOffloaded
    }

    // One atomic per counter: bumped on the data path, read by lnetctl.
    private let connectionsEstablished = Atomic<Int>(0), connectionsClosed = Atomic<Int>(0), connectAttemptsFailed = Atomic<Int>(0),
                protocolErrors = Atomic<Int>(0),
                timeouts = Atomic<Int>(0), rdmaReads = Atomic<Int>(0), rdmaWrites = Atomic<Int>(0), noops = Atomic<Int>(0),
                rejectsSent = Atomic<Int>(0), reconnects = Atomic<Int>(0), registrationsOffloaded = Atomic<Int>(0)

    private func with<R>(_ counter: Counter, _ body: (borrowing Atomic<Int>) -> R) -> R {
        switch counter {
        case .connectionsEstablished: body(connectionsEstablished)
        case .connectionsClosed: body(connectionsClosed)
        case .connectAttemptsFailed: body(connectAttemptsFailed)
        case .protocolErrors: body(protocolErrors)
        case .timeouts: body(timeouts)
        case .rdmaReads: body(rdmaReads)
        case .rdmaWrites: body(rdmaWrites)
        case .noops: body(noops)
        case .rejectsSent: body(rejectsSent)
        case .reconnects: body(reconnects)
        case .registrationsOffloaded: body(registrationsOffloaded)
        }
    }

    func bump(_ counter: Counter, by n: Int = 1) {
        with(counter) { _ = $0.add(n, ordering: .relaxed) }
    }

    func value(_ counter: Counter) -> Int { with(counter) { $0.load(ordering: .relaxed) } }

    private let violations = Mutex<[ProtocolViolation: Int]>([:])

    /// A connection is closed for `violation` (counted in `protocolErrors` too).
    func record(_ violation: ProtocolViolation) {
        bump(.protocolErrors)
        violations.withLock { $0[violation, default: 0] += 1 }
    }

    var violationCounts: [String: Int] {
        violations.withLock { counts in Dictionary(uniqueKeysWithValues: counts.map { ($0.key.rawValue, $0.value) }) }
    }
}

/// A snapshot of the LND's counters.
public struct LNDCountersSnapshot: Sendable, Equatable {
    public var connectionsEstablished: Int
    /// Established connections that closed.
    public var connectionsClosed: Int
    /// Connection attempts (ours or a peer's) that ended before the connection was established.
    public var connectAttemptsFailed: Int
    public var protocolErrors: Int
    public var timeouts: Int
    public var rdmaReads: Int
    public var rdmaWrites: Int
    public var noops: Int
    public var rejectsSent: Int
    public var reconnects: Int
    /// Registrations made on the registration thread rather than a scheduler thread (`LND_REGISTRATION_OFFLOAD`).
    public var registrationsOffloaded: Int
    /// Connections closed for a protocol violation, by kind (``protocolErrors`` is their sum, with the handshake's).
    public var protocolErrorsByKind: [String: Int]
}

extension LNDCounters {
    var snapshot: LNDCountersSnapshot {
        LNDCountersSnapshot(
            connectionsEstablished: value(.connectionsEstablished), connectionsClosed: value(.connectionsClosed),
            connectAttemptsFailed: value(.connectAttemptsFailed),
            protocolErrors: value(.protocolErrors), timeouts: value(.timeouts), rdmaReads: value(.rdmaReads),
            rdmaWrites: value(.rdmaWrites), noops: value(.noops), rejectsSent: value(.rejectsSent), reconnects: value(.reconnects),
            registrationsOffloaded: value(.registrationsOffloaded), protocolErrorsByKind: violationCounts)
    }
}
