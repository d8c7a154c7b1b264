import Synchronization

/// One LNet message handed to an LND: an outgoing PUT/GET/ACK/REPLY to send, or an incoming PUT/ACK/REPLY to
/// receive into its matched MD window (Lustre's `struct lnet_msg`).
///
/// Every message handed to an LND (through ``LNetLND/send(ni:message:)`` or ``LNetLND/receive(ni:message:window:context:)``,
/// or created by ``LNetNI/createReply(for:)``) must be finalized exactly once with ``LNetNI/finalize(_:status:)``.
/// A second finalize is logged as an error and counted (``LNetInterfaceCounters/doubleFinalizations``), never a crash.
public final class LNetMessage: Sendable, CustomStringConvertible {
    /// Which way the message travels.
    public enum Direction: Sendable, Hashable {
        /// The LND sends it.
        case outgoing
        /// The LND received it and moves its payload into ``LNetMessage/payload``.
        case incoming
    }

    /// What the core does when the message is finalized.
    struct Completion: Sendable {
        /// The MD the message holds a pending operation on.
        var md: MDHandle?
        /// The event to post on that MD (its status is decided at finalize).
        var event: LNetEventKind?
        var initiator: ProcessID
        var target: ProcessID
        var offset: Int
        var userHeaderData: UInt64
        /// For an incoming ACK or REPLY: the status the target reported.
        var remoteStatus: LNetStatus = .ok
        /// For an incoming PUT that asked for an ACK (and whose MD allows one): send the ACK on finalize.
        var sendsAck = false
        /// Count the message's bytes as sent/received on finalize.
        var countsTraffic = true
        /// For an incoming PUT: the partition it was matched on (named by the cookie its ACK carries).
        var partition: Int?
    }

    /// A unique id for logs.
    public let id: UInt64
    /// The header: what goes on the wire for outgoing messages; what arrived for incoming ones.
    public let header: LNetHeader
    public let direction: Direction
    /// Outgoing PUT/REPLY: the bytes to send. Incoming PUT/REPLY: where the bytes land (the matched MD window).
    /// Empty for GET and ACK.
    public let payload: LNetMDWindow
    /// Outgoing GET: the requester's MD that the REPLY will land in (for an RDMA LND's sink descriptor).
    public let sink: LNetMDWindow?
    /// Outgoing REPLY answering a GET this LND delivered: the context the LND gave to ``LNetNI/parse(header:from:context:wantsRDMA:)``.
    public let privateContext: (any LNDPrivate)?
    /// Incoming message (or a REPLY answering one): whether the LND said at parse that it moves the data itself by RDMA.
    public let lndWantsRDMA: Bool
    /// The interface the message belongs to.
    public let ni: LNetNI

    let completion: Completion
    /// Links in its interface's list of messages handed to the LND (``LNetNI``'s tracking; only touched under
    /// the interface's lock): an intrusive list, so tracking a message costs no hashing and no allocation.
    nonisolated(unsafe) var trackedNext: LNetMessage?
    nonisolated(unsafe) unowned(unsafe) var trackedPrevious: LNetMessage?
    nonisolated(unsafe) var isTracked = false
    private let requested: Atomic<Int>
    private let matched: Atomic<Int>
    private let finalizedFlag = Atomic<Bool>(false)

    init(id: UInt64, header: LNetHeader, direction: Direction, payload: LNetMDWindow = .empty, sink: LNetMDWindow? = nil,
         privateContext: (any LNDPrivate)? = nil, lndWantsRDMA: Bool = false, ni: LNetNI, completion: Completion,
         requestedLength: Int, matchedLength: Int) {
        self.id = id
        self.header = header
        self.direction = direction
        self.payload = payload
        self.sink = sink
        self.privateContext = privateContext
        self.lndWantsRDMA = lndWantsRDMA
        self.ni = ni
        self.completion = completion
        self.requested = Atomic(requestedLength)
        self.matched = Atomic(matchedLength)
    }

    public var type: LNetMessageType { header.type }

    /// The remote end: the destination of an outgoing message, the source of an incoming one.
    public var peer: ProcessID { direction == .outgoing ? header.destination : header.source }

    /// Bytes the operation asked to move (Lustre's `rlength`). For an incoming PUT or REPLY, the LND must consume
    /// this many payload bytes from the wire even when fewer land (truncation).
    public var requestedLength: Int { requested.load(ordering: .relaxed) }

    /// Bytes that actually move (Lustre's `mlength`); equal to `payload.length`.
    public var matchedLength: Int { matched.load(ordering: .relaxed) }

    /// Whether the message has been finalized.
    public var isFinalized: Bool { finalizedFlag.load(ordering: .acquiring) }

    /// Marks the message finalized; `false` if it already was.
    func markFinalized() -> Bool {
        finalizedFlag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    func setLengths(requested: Int, matched: Int) {
        self.requested.store(requested, ordering: .relaxed)
        self.matched.store(matched, ordering: .relaxed)
    }

    public var description: String { "msg#\(id) \(direction == .outgoing ? "tx" : "rx") \(header)" }
}

/// What ``LNetNI/parse(header:from:context:wantsRDMA:)`` did with an incoming message.
public enum LNetParseOutcome: Sendable, Hashable {
    /// PUT, ACK or REPLY: matched; the core has called (or is calling) ``LNetLND/receive(ni:message:window:context:)``.
    case receiving
    /// GET: the core has handed a REPLY to ``LNetLND/send(ni:message:)`` (with the context); it reports failure
    /// in its status when the GET matched nothing.
    case replying
    /// Held on a lazy portal until a match entry arrives (after ``LNetLND/eagerReceive(ni:header:context:)``).
    case delayed
    /// Dropped; the core has called ``LNetLND/drop(ni:header:status:context:)`` (for a PUT that asked for an ACK it
    /// also sends a negative ACK).
    case dropped(LNetStatus)
}
