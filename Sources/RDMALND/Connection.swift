import DequeModule
import LNet
import Logging
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// One RC connection to a peer (o2iblnd's `kib_conn`): its queue pair, completion queues and receive buffers, its
/// send queue and credits, and the transactions in flight on it.
///
/// Sends may come from any thread; completions are reaped by the connection's scheduler thread, which finishes
/// the work they start. All state is under one lock; work requests are posted under it (so the send queue's
/// record of posted work is in posting order), and LNet is only called after it is released.
///
/// This file holds the connection's state, its set-up and its closing; `Connection+Send.swift` the send path,
/// `Connection+Receive.swift` completions and incoming messages, `Connection+Control.swift` the control messages
/// that move transactions along, `Connection+Timers.swift` timeouts and keepalives.
final class Connection: @unchecked Sendable, CustomStringConvertible {
    enum Role: String, Sendable { case active, passive }
    enum Phase: Sendable, Equatable { case connecting, established, closed }

    /// The verbs resources, attached when the queue pair is made (before connect or accept). The rdma_cm id is
    /// not among them: the connection lets go of it when it closes (`State.cmID`), so that the CM thread, which
    /// holds every id, decides when it is destroyed (see `ConnectionManager`).
    struct Resources: @unchecked Sendable {
        let queuePair: QueuePair
        let sendQueue: CompletionQueue
        let receiveQueue: CompletionQueue
        let receiveBuffers: MemoryRegion
        let limits: ConnectionLimits
        let receiveSlots: Int
        /// The chain this connection's work requests are posted with (one doorbell per pump).
        let chain: SendChain
        /// Bytes of one message on this connection (the negotiated size).
        var messageSize: Int { Int(limits.maxMessageSize) }
    }

    struct State: Sendable {
        var phase = Phase.connecting
        var resources: Resources?
        /// The rdma_cm id, from `attach` until the connection closes.
        var cmID: CMID?
        /// A work request failed: the queue pair is in error, and the link may be gone (rxe fails a QP with a local
        /// QP operation error when it cannot route a packet, which can be before it marks the port down). No
        /// disconnect request then (see `closeLocked`).
        var queuePairFailed = false
        var peerStamp: UInt64 = 0
        var addressing: WireAddressing
        var queue = SendQueue(queueDepth: 1, limits: .init(sends: 1, rdma: 1))
        var transactions: [UInt64: Transaction] = [:]
        var nextCookie: UInt64 = 1
        var lastReceive = Tick.coarse
        var lastSend = Tick.coarse
        var closeReason: String?
        /// What the connection's messages were failed with when it closed (later ones get the same).
        var closeStatus = LNetStatus.connectionClosed
        /// LNet messages waiting for the connection to be established (or for earlier ones to be sent).
        var waiting: Deque<LNetMessage> = []
        var draining = false
        /// Receives that completed before this side saw the connection established (the peer may send as soon
        /// as its side is up); handled in order once it is.
        var early: [WorkCompletion] = []
        /// The connection that took over this one's waiting messages (a lost race or a retry).
        var successor: Connection?
        /// Whether each completion queue is armed (will raise a channel event at its next completion).
        var receiveArmed = false
        var sendArmed = false
    }

    let context: LNDContext
    let peer: NID
    let role: Role
    let scheduler: Scheduler
    /// Keeps this peer's incoming messages matched in arrival order when they are placed on other partitions
    /// (`nil` when LNet matches them on the scheduler thread, under `LNET_PLACEMENT=nid`).
    let incomingOrder: LNetIncomingOrder?
    let created: Tick
    let state: Mutex<State>
    let logger: Logger
    /// Set once the connection closed (for the scheduler's polling, without the lock).
    private let closedFlag = Atomic<Bool>(false)
    var isClosed: Bool { closedFlag.load(ordering: .acquiring) }

    /// The resources, for the scheduler thread's polling: set once in `attach`, before the scheduler knows the
    /// connection (registration publishes it), never changed after.
    nonisolated(unsafe) private(set) var attached: Resources?

    /// `created` starts the connect deadline; a retry keeps its predecessor's.
    init(context: LNDContext, peer: NID, role: Role, scheduler: Scheduler, created: Tick = .coarse) {
        self.created = created
        self.context = context
        self.peer = peer
        self.role = role
        self.scheduler = scheduler
        self.incomingOrder = scheduler.placement?.makeOrder()
        self.state = Mutex(State(addressing: WireAddressing(source: context.nid.rawValue, sourceStamp: context.stamp,
                                                            destination: peer.rawValue, destinationStamp: 0)))
        var logger = context.logger
        logger[metadataKey: "peer"] = "\(peer)"
        logger[metadataKey: "conn"] = "\(role.rawValue)"
        self.logger = logger
    }

    var description: String { "conn(\(role.rawValue) \(peer))" }

    var phase: Phase { state.withLock { $0.phase } }
    var peerStamp: UInt64 { state.withLock { $0.peerStamp } }
    var resources: Resources? { state.withLock { $0.resources } }

    var timeoutSeconds: Int { context.tunables.timeout }

    // MARK: - Set-up

    /// Makes the queue pair, its completion queues and buffers on `id`, and posts every receive buffer.
    func attach(id: CMID, limits: ConnectionLimits) throws(VerbsError) {
        guard let deviceContext = id.deviceContext else { throw VerbsError(call: "CMID.deviceContext", errno: ENODEV) }
        let depth = Int(limits.queueDepth)
        let sendLimit = context.tunables.effectiveConcurrentSends
        let receiveSlots = Credits.receiveBuffers(queueDepth: depth)
        let rdmaBudget = max(16, 4 * depth)
        let messageSize = Int(limits.maxMessageSize)
        let vector = scheduler.completionVector(for: peer)
        // Two queues: every receive wakes the scheduler; a send completion only when it is waited for.
        let sendCQ = try CompletionQueue(context: deviceContext, capacity: sendLimit + rdmaBudget, channel: scheduler.channel, vector: vector)
        let receiveCQ = try CompletionQueue(context: deviceContext, capacity: receiveSlots, channel: scheduler.channel, vector: vector)
        // Our own QP (not rdma_cm's), so the path MTU can be set (LND_IB_MTU) on the way to RTR.
        let qp = try QueuePair(
            protectionDomain: context.protectionDomain, sendQueue: sendCQ, receiveQueue: receiveCQ,
            capabilities: QueuePairCapabilities(maxSendWorkRequests: sendLimit + rdmaBudget, maxReceiveWorkRequests: receiveSlots,
                                                maxSendScatterGather: context.maxScatterGather, maxReceiveScatterGather: 1))
        try id.transition(qp, to: .initialized)
        let receiveBuffers: MemoryRegion
        do {
            receiveBuffers = try MemoryRegion(protectionDomain: context.protectionDomain, length: receiveSlots * messageSize, access: [.localWrite])
        } catch {
            throw context.registrar.memoryLock.annotated(error)
        }
        for slot in 0..<receiveSlots {
            try qp.postReceive(id: UInt64(slot), receiveBuffers.sge(offset: slot * messageSize, length: messageSize))
        }
        let resources = Resources(queuePair: qp, sendQueue: sendCQ, receiveQueue: receiveCQ, receiveBuffers: receiveBuffers,
                                  limits: limits, receiveSlots: receiveSlots,
                                  chain: SendChain(capacity: sendLimit + rdmaBudget, maxScatterGather: context.maxScatterGather))
        let arm = context.tunables.poll != .busy
        let open = state.withLock { state -> Bool in
            guard state.phase != .closed else { return false }
            state.resources = resources
            state.cmID = id
            state.queue = SendQueue(queueDepth: depth, limits: .init(sends: sendLimit, rdma: rdmaBudget), timeoutSeconds: timeoutSeconds)
            state.receiveArmed = arm
            return true
        }
        guard open else { throw VerbsError(call: "attach", errno: ECANCELED, detail: "connection closed while connecting") }
        attached = resources
        scheduler.register(self, queues: [sendCQ, receiveCQ])
        if arm { try receiveCQ.requestNotification() }
    }

    /// The handshake is done: traffic may flow, starting with the messages that waited for it. The passive
    /// side calls this before `rdma_accept` with `sending: false` (receives may arrive as soon as the peer sees
    /// the acceptance, but nothing may be posted until the QP is ready to send), then `startSending()`.
    func established(peerStamp: UInt64, sending: Bool = true) {
        let proceed = state.withLock { state -> Bool? in
            guard state.phase == .connecting else { return nil }
            state.phase = .established
            state.peerStamp = peerStamp
            state.addressing.destinationStamp = peerStamp
            state.lastReceive = .coarse
            state.draining = true
            return !state.early.isEmpty
        }
        guard let hasEarly = proceed else { return }
        context.counters.bump(.connectionsEstablished)
        logger.debug("established", metadata: ["limits": "\(resources?.limits.description ?? "-")"])
        // Receives that came early are handled by the scheduler thread, in order, before anything newer.
        if hasEarly { scheduler.kick(self) }
        if sending { drainWaiting() }
    }

    /// The passive side's QP is ready to send (after `rdma_accept`): post what waited.
    func startSending() {
        drainWaiting()
        wake()
    }

    /// Sends the waiting messages in order; sends arriving meanwhile queue behind them.
    private func drainWaiting() {
        while true {
            let batch = state.withLock { state -> [LNetMessage] in
                let batch = Array(state.waiting)
                state.waiting.removeAll()
                if batch.isEmpty { state.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            for message in batch { transmit(message) }
        }
    }

    /// This attempt is replaced by `other` (it lost a connection race, or is retried): its waiting messages move
    /// there, it closes, and any send that still reaches it is forwarded.
    func supersede(by other: Connection, reason: String) {
        var deferred = Deferred()
        let waiting = state.withLock { state -> [LNetMessage] in
            let waiting = Array(state.waiting)
            state.waiting.removeAll()
            state.successor = other
            closeLocked(&state, reason: reason, status: .connectionClosed, &deferred)
            return waiting
        }
        deferred.run()
        for message in waiting { other.send(message) }
    }

    /// Moves the QP to RTR and RTS with rdma_cm's attributes and the LND_IB_MTU override.
    func readyQueuePair() throws(VerbsError) {
        let (resources, id) = state.withLock { ($0.resources, $0.cmID) }
        guard let resources, let id else { throw VerbsError(call: "readyQueuePair", errno: EINVAL, detail: "no queue pair") }
        let mtu = PathMTU(bytes: context.tunables.ibMTU)
        // INIT again first: the remote access rights depend on the READ depth both sides agreed on, which the
        // active side did not know when it first moved the QP to INIT (librdmacm does the same).
        try id.transition(resources.queuePair, to: .initialized)
        try id.transition(resources.queuePair, to: .readyToReceive, pathMTU: mtu)
        try id.transition(resources.queuePair, to: .readyToSend)
    }

    // MARK: - Closing

    /// Closes the connection: every message still on it is finalized with `status` (exactly once), memory
    /// grants are revoked, and the queue pair is disconnected (its posted work is flushed).
    func close(reason: String, status: LNetStatus) {
        var deferred = Deferred()
        state.withLock { state in closeLocked(&state, reason: reason, status: status, &deferred) }
        deferred.run()
    }

    func closeLocked(_ state: inout State, reason: String, status: LNetStatus, _ deferred: inout Deferred) {
        guard state.phase != .closed else { return }
        let wasEstablished = state.phase == .established
        state.phase = .closed
        closedFlag.store(true, ordering: .releasing)
        state.closeReason = reason
        state.closeStatus = status
        if status == .protocolError || status == .timeout || !wasEstablished {
            logger.warning("closing: \(reason)")
        } else {
            logger.info("closing: \(reason)")
        }
        context.counters.bump(wasEstablished ? .connectionsClosed : .connectAttemptsFailed)
        var messages: [LNetMessage] = Array(state.waiting)
        state.waiting.removeAll()
        state.queue.removeQueued { outgoing in
            if let message = outgoing.message {
                messages.append(message)
            } else if case .finalize(let message) = outgoing.onSent {
                messages.append(message)
            }
        }
        // Posted sends keep their descriptors until the flush completes them; their messages fail now.
        state.queue.postedMessages { messages.append($0) }
        state.queue.disarmPosted()
        var gets: [LNetMessage] = []
        for transaction in state.transactions.values {
            if transaction.initiated && transaction.requestPosted { returnInterfaceCredit(&deferred) }
            transaction.revokeGrant()
            if let message = transaction.message {
                if transaction.kind == .getRequester { gets.append(message) } else { messages.append(message) }
            }
            transaction.message = nil
        }
        state.transactions.removeAll()
        // The id goes back to the CM thread, which destroys it once nothing holds it and the port is up.
        let id = state.cmID
        state.cmID = nil
        let queuePairFailed = state.queuePairFailed
        let queuePair = state.resources?.queuePair
        let drained = state.queue.posted.isEmpty
        let manager = scheduler
        deferred.add { [self] in
            // The QP is ours, not rdma_cm's: flush it ourselves, then tell the peer.
            try? queuePair?.moveToError()
            // Tell the peer - unless the link may be gone. On rxe a CM message sent while the link is down fails
            // (no route) and takes the device's GSI queue pair (QP1, which carries every CM message) into the error
            // state: no rdma_cm connection on the device works after that, in any process. The port state alone
            // races a flap (the QP fails on the missing route before rxe marks the port down), so after a failed
            // work request nothing is sent from here either. The peer then learns from its own QP, or from the
            // disconnect request rdma_destroy_id sends when the CM thread destroys the id, with the port up.
            if let id {
                if queuePairFailed || id.portState() == .down {
                    logger.info("not sending a disconnect request", metadata: ["why": "\(queuePairFailed ? "the queue pair failed" : "the port is down")"])
                } else {
                    do {
                        try id.disconnect()
                    } catch {
                        // Not established at the CM yet (rdma_cm refuses a DREQ before the RTU): the CM thread sends
                        // it when the ESTABLISHED event comes.
                        logger.info("disconnect request deferred: \(error)")
                    }
                }
            }
            // Posted sends still own transmit descriptors: the scheduler keeps polling until the flush returns them.
            if drained { manager.closed(self) } else { manager.kick(self) }
            for message in messages { message.ni.finalize(message, status: status) }
            for get in gets { Self.completeGet(get, status: status, length: 0) }
        }
    }

    /// The peer broke the protocol (or this LND has a bug): count it by kind and close, failing what the
    /// connection holds with ``LNetStatus/protocolError``.
    func violation(_ kind: ProtocolViolation, _ reason: String, _ state: inout State, _ deferred: inout Deferred) {
        guard state.phase != .closed else { return }
        context.counters.record(kind)
        closeLocked(&state, reason: "\(kind): \(reason)", status: .protocolError, &deferred)
    }

    /// `violation` for callers that hold no lock.
    func violation(_ kind: ProtocolViolation, _ reason: String) {
        var deferred = Deferred()
        state.withLock { state in violation(kind, reason, &state, &deferred) }
        deferred.run()
    }

    /// Gives a transmit descriptor (and maybe an interface credit) back; connections waiting for one are woken
    /// after the lock is released.
    func releaseSlot(_ slot: Int, credit: Bool, _ deferred: inout Deferred) {
        var waiters = context.pool.give(slot)
        if credit { waiters += context.pool.returnCredit() }
        deferred.wake(waiters)
    }

    func returnInterfaceCredit(_ deferred: inout Deferred) {
        deferred.wake(context.pool.returnCredit())
    }

    /// A transmit descriptor or credit came free: post what waited for it.
    func wake() {
        var deferred = Deferred()
        state.withLock { state in pump(&state, &deferred) }
        deferred.run()
    }

    static func newCookie(_ state: inout State) -> UInt64 {
        let cookie = state.nextCookie & ((1 << 60) - 1)
        state.nextCookie += 1
        return cookie == 0 ? newCookie(&state) : cookie
    }

    // MARK: - What lnetctl shows

    var info: LNDConnectionInfo {
        let now = Tick.coarse
        return state.withLock { state in
            let retransmission = state.phase == .established ? try? state.resources?.queuePair.retransmission() : nil
            var info = LNDConnectionInfo(peer: peer, role: role.rawValue, phase: "\(state.phase)",
                                         queueDepth: Int(state.resources?.limits.queueDepth ?? 0),
                                         pathMTU: (try? state.resources?.queuePair.pathMTU())??.rawValue,
                                         ackTimeout: retransmission.map { Int($0.ackTimeout) },
                                         retryCount: retransmission.map { Int($0.retryCount) },
                                         credits: state.queue.credits.available,
                                         pending: state.waiting.count + state.queue.queuedCount + state.transactions.count,
                                         scheduler: scheduler.index)
            info.creditsOwed = state.queue.credits.owed
            info.waiting = state.waiting.count
            info.queuedControl = state.queue.control.count
            info.queuedEager = state.queue.eager.count
            info.queuedRequests = state.queue.requests.count
            info.queuedRDMA = state.queue.rdma.count
            info.posted = state.queue.posted.count
            info.transactions = state.transactions.count
            info.transactionsInitiated = state.queue.credits.transactions
            info.sinceReceive = now.duration(since: state.lastReceive)
            info.sinceSend = now.duration(since: state.lastSend)
            return info
        }
    }

    /// Why the connection closed, if it did.
    var closeReason: String? { state.withLock { $0.closeReason } }

    /// The send side's inner state, for a test that reports a stall: credits, what is posted and whether the
    /// completion queues are armed.
    var sendState: String {
        state.withLock { state in
            let queue = state.queue
            let credits = queue.credits
            let posted = queue.posted.map { work -> String in
                switch work.kind {
                case .send(_, let action, _): "send(\(action))\(work.awaited ? "*" : "")"
                case .rdma(let cookie, _, let read): "\(read ? "read" : "write")(\(cookie))\(work.awaited ? "*" : "")"
                }
            }
            return "\(peer) \(role) \(state.phase): credits \(credits.available) available, \(credits.owed) owed, "
                + "\(credits.transactions) transactions; noopInFlight \(queue.noopInFlight), awaits \(queue.awaitsCompletions); "
                + "queued control \(queue.control.count) eager \(queue.eager.count) requests \(queue.requests.count) rdma \(queue.rdma.count); "
                + "posted \(posted.prefix(8)) (\(queue.sendsPosted) sends); armed send \(state.sendArmed) receive \(state.receiveArmed); "
                + "since receive \(Tick.coarse.duration(since: state.lastReceive)), since send \(Tick.coarse.duration(since: state.lastSend)); "
                + "noops sent \(context.counters.value(.noops))"
        }
    }

    /// How many LNet messages this connection still holds (queued, in flight, or in a transaction).
    var pendingCount: Int {
        state.withLock { state in
            state.waiting.count + state.queue.queuedCount + state.transactions.count
        }
    }
}
