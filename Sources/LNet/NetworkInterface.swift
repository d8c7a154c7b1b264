import Logging
import Synchronization

/// A network interface (Lustre's `lnet_ni`): one LND instance on one network, with its NID.
///
/// This is the LND's handle on the core: it calls ``parse(header:from:context:wantsRDMA:)`` for every incoming
/// message, ``finalize(_:status:)`` exactly once for every message handed to it, and ``createReply(for:)`` /
/// ``setReplyLength(_:_:)`` when it completes a GET's REPLY by RDMA itself.
public final class LNetNI: Sendable, CustomStringConvertible {
    /// The interface's NID.
    public let nid: NID
    /// The configuration it was brought up with (interface name, address).
    public let configuration: NetworkInterfaceConfiguration
    /// The driver.
    public let lnd: any LNetLND
    /// A logger with the NID in its metadata, for the LND to use.
    public let logger: Logger
    /// The CPU partitions of the instance, for placing connections and incoming work.
    public let partitions: CPUPartitionTable
    /// How incoming work is placed on partitions.
    public let placement: PlacementPolicy

    let lnet: LNet
    let counters: NICounters
    /// Early placement of incoming messages (`nil` under ``PlacementPolicy/peerHash``: matched where received).
    let incoming: IncomingPlacement?
    /// Messages handed to the LND and not yet finalized: an intrusive list through the messages themselves.
    private struct Tracked {
        var head: LNetMessage?
        var count = 0
    }
    private let pending = Mutex(Tracked())
    private let stopping = Atomic<Bool>(false)

    init(lnet: LNet, nid: NID, configuration: NetworkInterfaceConfiguration, lnd: any LNetLND, logger: Logger) throws(LNetError) {
        self.lnet = lnet
        self.nid = nid
        self.configuration = configuration
        self.lnd = lnd
        var logger = logger
        logger[metadataKey: "lnet.ni"] = "\(nid)"
        self.logger = logger
        self.partitions = lnet.configuration.partitions
        self.placement = lnet.configuration.placement
        self.incoming = placement == .peerHash ? nil
            : try IncomingPlacement(policy: placement, partitions: partitions, name: "lnet-cpt")
        self.counters = NICounters(nid: nid, prefix: lnet.configuration.metricsPrefix,
                                   perPeerMetrics: lnet.configuration.perPeerMetrics,
                                   factory: lnet.configuration.metricsFactory)
    }

    /// The network.
    public var network: LNetNetwork { nid.network }

    /// This interface's process id (NID + the instance's pid).
    public var processID: ProcessID { ProcessID(nid: nid, pid: lnet.pid) }

    /// Whether the interface is shutting down.
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Messages handed to the LND and not yet finalized.
    public var pendingMessageCount: Int { pending.withLock { $0.count } }

    public var description: String { "ni(\(nid))" }

    // MARK: - Calls an LND makes

    /// Hands an incoming message's header to the core (`lnet_parse`).
    ///
    /// The core matches PUT/GET against the portal's match entries and ACK/REPLY against the initiator's MD by
    /// cookie, then, before returning or later (lazy portals), calls exactly one of:
    /// ``LNetLND/receive(ni:message:window:context:)`` (PUT, ACK, REPLY matched), ``LNetLND/send(ni:message:)`` with
    /// a REPLY carrying `context` (GET, matched or not), or ``LNetLND/drop(ni:header:status:context:)``.
    ///
    /// - Parameters:
    ///   - header: the decoded LNet header.
    ///   - from: the NID of the peer the LND received it from.
    ///   - context: the LND's private receive context, handed back in `receive`/`drop` and, for a GET, in the
    ///     REPLY's ``LNetMessage/privateContext``.
    ///   - wantsRDMA: the LND moves the data itself by RDMA (recorded in ``LNetMessage/lndWantsRDMA``).
    @discardableResult
    public func parse(header: LNetHeader, from: NID, context: (any LNDPrivate)?, wantsRDMA: Bool) -> LNetParseOutcome {
        counters.recordParsed(header.type)
        return lnet.parse(ni: self, header: header, from: from, context: context, wantsRDMA: wantsRDMA)
    }

    /// Completes a message handed to this LND (`lnet_finalize`). Call exactly once per message; a second call is
    /// logged as an error and counted, and has no other effect.
    public func finalize(_ message: LNetMessage, status: LNetStatus) {
        lnet.finalize(message, status: status)
    }

    /// Requester side of a GET served by RDMA (`lnet_create_reply_msg`): creates the incoming REPLY for an
    /// outgoing GET this LND was given, attached to the GET's MD, so the LND can report the data that landed in
    /// ``LNetMessage/sink``. Set the length with ``setReplyLength(_:_:)`` and finalize the REPLY (with an error if
    /// the target reported one, e.g. ``LNetStatus/noMatch``) as well as the GET.
    /// Returns `nil` (and logs) if the GET's MD is gone or exhausted.
    public func createReply(for get: LNetMessage) -> LNetMessage? {
        lnet.createReply(for: get, on: self)
    }

    /// Sets how many bytes landed for a REPLY made by ``createReply(for:)`` (`lnet_set_reply_msg_len`); clamped
    /// to the sink MD's length.
    public func setReplyLength(_ reply: LNetMessage, _ length: Int) {
        let clamped = min(max(0, length), reply.payload.length)
        reply.setLengths(requested: max(0, length), matched: clamped)
    }

    /// Hands an incoming message to the core on the CPU partition the instance's ``placement`` chooses (early
    /// placement): as ``parse(header:from:context:wantsRDMA:)``, but under ``PlacementPolicy/hints`` or
    /// ``PlacementPolicy/roundRobin`` the message is matched, and its events delivered, by a service thread of its
    /// partition (bound to that partition's CPUs), or inline when that partition is the receiving thread's and
    /// nothing of the peer's is ahead of it. `order` keeps the peer's messages matched in arrival order; pass the
    /// same one for every message of a connection, from one thread at a time. The core then calls the LND back
    /// (`receive`, `send` of a REPLY, or `drop`) from that thread. Under ``PlacementPolicy/peerHash`` (or with no
    /// `order`) this is ``parse(header:from:context:wantsRDMA:)``.
    ///
    /// - An eager message's events are delivered where it was matched. A message whose data the LND moves by RDMA
    ///   completes where the LND finishes the transfer (for the RDMA LND, as in o2iblnd, the peer's scheduler
    ///   thread), and its events are delivered there.
    /// - An ACK or REPLY goes to the partition that bound its MD: an inline handler on a partition's thread must
    ///   not wait there for the answer to an operation it starts (that answer is queued behind it).
    /// - Call it only from threads that stop before the LND's `shutdown` returns (the LND's own receive threads):
    ///   a message handed in after the interface's partitions stopped is not matched.
    public func parse(header: LNetHeader, from: NID, context: (any LNDPrivate)?, wantsRDMA: Bool,
                      order: LNetIncomingOrder?) {
        guard let incoming, let order else {
            parse(header: header, from: from, context: context, wantsRDMA: wantsRDMA)
            return
        }
        counters.recordParsed(header.type)
        incoming.place(ni: self, header: header, from: from, context: context, wantsRDMA: wantsRDMA, order: order)
    }

    /// A producer for a receiving thread of `partition` (`nil`: of none), or `nil` when messages are matched where
    /// they are received (``PlacementPolicy/peerHash``). See ``LNetPlacementProducer``.
    public func makePlacementProducer(partition: Int?) -> LNetPlacementProducer? {
        incoming?.makeProducer(partition: partition)
    }

    /// Whether incoming messages are placed on partitions (``PlacementPolicy/hints`` or
    /// ``PlacementPolicy/roundRobin``), so ``run(onPartitionOf:_:)`` may hand work to another thread.
    public var placesIncoming: Bool { incoming != nil }

    /// Runs `work`, which completes an operation this node started (e.g. a GET whose REPLY the LND received by
    /// RDMA: its finalizations), on the CPU partition that started it (named by the operation's MD cookie), so
    /// the REPLY is handled where its GET was sent. Runs it here under ``PlacementPolicy/peerHash``, when the
    /// caller already serves that partition, or when the interface is stopping.
    public func run(onPartitionOf mdCookie: UInt64, _ work: @escaping @Sendable () -> Void) {
        guard let incoming else {
            work()
            return
        }
        incoming.run(onPartitionOf: mdCookie, work)
    }

    /// The early placement's counters (`nil` under ``PlacementPolicy/peerHash``).
    public var placementStatistics: LNetPlacementStatistics? { incoming?.statistics }

    /// The partition for an incoming message under the instance's placement policy (by the peer's NID under
    /// ``PlacementPolicy/roundRobin``, which has no fixed partition).
    public func partition(for header: LNetHeader) -> Int {
        partitions.partition(peer: header.source.nid, hints: header.hints, policy: placement)
    }

    // MARK: - Core side

    func track(_ message: LNetMessage) {
        counters.recordHandedToLND(message)
        pending.withLock { tracked in
            guard !message.isTracked else { return }
            message.isTracked = true
            message.trackedNext = tracked.head
            tracked.head?.trackedPrevious = message
            tracked.head = message
            tracked.count += 1
        }
    }

    func untrack(_ message: LNetMessage) {
        pending.withLock { tracked in
            guard message.isTracked else { return }
            message.isTracked = false
            if let previous = message.trackedPrevious {
                previous.trackedNext = message.trackedNext
            } else {
                tracked.head = message.trackedNext
            }
            message.trackedNext?.trackedPrevious = message.trackedPrevious
            message.trackedNext = nil
            message.trackedPrevious = nil
            tracked.count -= 1
        }
    }

    func beginStopping() {
        stopping.store(true, ordering: .releasing)
    }

    func takeAllPending() -> [LNetMessage] {
        pending.withLock { tracked in
            var all: [LNetMessage] = []
            all.reserveCapacity(tracked.count)
            while let message = tracked.head {
                tracked.head = message.trackedNext
                message.trackedNext = nil
                message.trackedPrevious = nil
                message.isTracked = false
                all.append(message)
            }
            tracked.count = 0
            return all
        }
    }

    func countersSnapshot() -> LNetInterfaceCounters {
        counters.snapshot(pending: pendingMessageCount)
    }
}
