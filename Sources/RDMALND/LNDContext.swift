import LNet
import Logging
import Synchronization
import Verbs

/// What every connection of one interface shares: the interface, the tunables, our incarnation stamp, the
/// protection domain, memory registration, and the counters.
final class LNDContext: Sendable {
    let ni: LNetNI
    let tunables: LNDTunables
    /// This instance's incarnation: a restarted node has a new one, so its peers can tell.
    let stamp: UInt64
    let logger: Logger
    let protectionDomain: ProtectionDomain
    let registrar: LNDRegistrar
    /// Transmit descriptors and interface send credits.
    let pool: TransmitPool
    /// What this side proposes and accepts at most.
    let localLimits: ConnectionLimits
    /// READs in flight per connection each way (initiator depth / responder resources).
    let readDepth: UInt8
    let maxScatterGather: Int
    /// Where slow registrations run (`LND_REGISTRATION_OFFLOAD`).
    let registrationWorker: RegistrationWorker
    let counters = LNDCounters()

    init(ni: LNetNI, tunables: LNDTunables, stamp: UInt64, logger: Logger, protectionDomain: ProtectionDomain,
         registrar: LNDRegistrar, pool: TransmitPool, readDepth: UInt8, maxScatterGather: Int, registrationWorker: RegistrationWorker) {
        self.ni = ni
        self.tunables = tunables
        self.stamp = stamp
        self.logger = logger
        self.protectionDomain = protectionDomain
        self.registrar = registrar
        self.pool = pool
        self.readDepth = readDepth
        self.maxScatterGather = maxScatterGather
        self.registrationWorker = registrationWorker
        self.localLimits = ConnectionLimits(
            queueDepth: UInt16(tunables.peerCredits), maxFragments: UInt16(tunables.maxFragments),
            maxMessageSize: UInt32(WireFormat.maxMessageSize(immediateSize: tunables.immediateSize, maxFragments: tunables.maxFragments)))
    }

    var nid: NID { ni.nid }
}

/// Why a connection was closed for breaking the protocol (the peer's fault, or a bug), counted by kind.
enum ProtocolViolation: String, CaseIterable, Sendable {
    /// The message does not decode, or is addressed to another node or incarnation.
    case malformedMessage = "malformed message"
    /// The peer returned more credits than it could owe.
    case creditOverflow = "credit overflow"
    /// A control message names a transfer that does not exist.
    case unknownTransfer = "unknown transfer"
    /// A message the transfer's state does not allow (a PUT_DONE for a pull, an LNet GET in an IMMEDIATE, ...).
    case unexpectedMessage = "unexpected message"
    /// A descriptor or length that does not fit the transfer (checked before any RDMA is posted).
    case badDescriptor = "bad descriptor"
    /// A completion for work this side never posted (a bug in this LND).
    case unknownCompletion = "unknown completion"
}

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
