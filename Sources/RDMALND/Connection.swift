import DequeModule
import LNet
import Logging
import Synchronization
import Verbs

/// Deferred work: what a locked section decided, run after the lock is released (LNet callbacks may re-enter the
/// LND, so nothing calls out while a connection lock is held).
struct Actions {
    private var work: [() -> Void] = []
    mutating func add(_ action: @escaping () -> Void) { work.append(action) }
    func run() { for action in work { action() } }
}

/// One RC connection to a peer: its queue pair and buffers, its credits, and the transactions in flight on it.
///
/// Sends may come from any thread; completions are handled by the connection's scheduler thread. All state is
/// under one lock; work requests are posted under it (so WRITEs precede the DONE that announces them), and LNet
/// is only called after it is released.
final class Connection: @unchecked Sendable, CustomStringConvertible {
    enum Role: String, Sendable { case active, passive }
    enum Phase: Sendable, Equatable { case connecting, established, closed }

    /// The verbs resources, attached when the queue pair is made (before connect or accept).
    struct Resources: @unchecked Sendable {
        let id: CMID
        let queuePair: QueuePair
        let completionQueue: CompletionQueue
        let receiveBuffers: MemoryRegion
        let limits: ConnectionLimits
        /// Sends this connection may have posted at once (`LND_CONCURRENT_SENDS`).
        let sendLimit: Int
        let receiveSlots: Int
        let rdmaBudget: Int
    }

    /// What to do once a SEND completes.
    enum SentAction: Sendable {
        case none
        /// An eager message (IMMEDIATE, ACK) is done once it is on the wire.
        case finalize(LNetMessage)
        /// The control message that ends a transaction has gone.
        case finishTransaction(UInt64)
        /// A NOOP has gone: another may follow.
        case noopSent
    }

    /// A message waiting for a send buffer (and a credit, if credited).
    struct Outgoing: Sendable {
        var body: WireBody
        var payload: LNetMDWindow? = nil
        var credited: Bool
        /// The transaction this message starts (counts against the transaction limit).
        var starts: UInt64? = nil
        /// Carries an LNet message: takes one of the interface's send credits (`LND_CREDITS`).
        var holdsCredit = false
        var onSent: SentAction = .none
        /// An LNet message waiting in the queue, failed if the connection closes before it goes.
        var message: LNetMessage? = nil
        var deadline: ContinuousClock.Instant
    }

    /// One RDMA transfer waiting for send-queue room.
    struct RDMAJob: Sendable {
        var cookie: UInt64
        var steps: Deque<TransferStep>
        var read: Bool
    }

    enum TransactionKind: String, Sendable { case putSource, putSink, getRequester, getTarget }

    /// A transfer that outlives one message: a PUT or GET moved by RDMA, named by its cookie.
    /// Only touched under its connection's lock.
    final class Transaction: @unchecked Sendable {
        let cookie: UInt64
        let kind: TransactionKind
        /// Started by this side (counts against the transaction limit, holds an interface credit).
        let initiated: Bool
        var message: LNetMessage?
        var grant: MemoryGrant?
        var peerCookie: UInt64 = 0
        var length = 0
        var pendingSteps = 0
        var deadline: ContinuousClock.Instant
        /// Its request (PUT_REQ, GET_REQ) was posted: it holds a transaction slot and an interface credit, and
        /// the peer may answer it. A control message for an unposted request is a protocol error.
        var requestPosted = false
        /// For a PUT sink or GET target: whether the transfer is a pull (we READ / the peer READs).
        var pull = false

        init(cookie: UInt64, kind: TransactionKind, initiated: Bool, message: LNetMessage?, deadline: ContinuousClock.Instant) {
            self.cookie = cookie
            self.kind = kind
            self.initiated = initiated
            self.message = message
            self.deadline = deadline
        }
    }

    struct State: Sendable {
        var phase = Phase.connecting
        var resources: Resources?
        var peerStamp: UInt64 = 0
        var credits = Credits(queueDepth: 1)
        /// Sends posted and not completed: their transmit descriptor, what to do when they complete, and
        /// whether they hold an interface credit to return then.
        var posted: [Int: (action: SentAction, credit: Bool)] = [:]
        var rdmaInFlight = 0
        var queue: Deque<Outgoing> = []
        var replies: Deque<Outgoing> = []
        var rdmaJobs: Deque<RDMAJob> = []
        var transactions: [UInt64: Transaction] = [:]
        var nextCookie: UInt64 = 1
        var lastReceive = ContinuousClock.now
        var lastSend = ContinuousClock.now
        var closeReason: String?
        /// LNet messages waiting for the connection to be established (or for earlier ones to be sent).
        var waiting: Deque<LNetMessage> = []
        var draining = false
        /// Receives that completed before this side saw the connection established (the peer may send as soon
        /// as its side is up); handled in order once it is.
        var early: [WorkCompletion] = []
        var noopInFlight = false
        /// The connection that took over this one's waiting messages (a lost race or a retry).
        var successor: Connection?
    }

    static let kindShift: UInt64 = 60
    static let receiveKind: UInt64 = 0
    static let sendKind: UInt64 = 1
    static let rdmaKind: UInt64 = 2
    static let cookieMask: UInt64 = (1 << 60) - 1

    let context: LNDContext
    let peer: NID
    let role: Role
    let scheduler: Scheduler
    let created: ContinuousClock.Instant
    private let state = Mutex(State())
    private let logger: Logger

    /// `created` starts the connect deadline; a retry keeps its predecessor's.
    init(context: LNDContext, peer: NID, role: Role, scheduler: Scheduler, created: ContinuousClock.Instant = .now) {
        self.created = created
        self.context = context
        self.peer = peer
        self.role = role
        self.scheduler = scheduler
        var logger = context.logger
        logger[metadataKey: "peer"] = "\(peer)"
        logger[metadataKey: "conn"] = "\(role.rawValue)"
        self.logger = logger
    }

    var description: String { "conn(\(role.rawValue) \(peer))" }

    var phase: Phase { state.withLock { $0.phase } }
    var peerStamp: UInt64 { state.withLock { $0.peerStamp } }
    var resources: Resources? { state.withLock { $0.resources } }

    private var timeout: Duration { .seconds(context.tunables.timeout) }

    // MARK: - Set-up

    /// Makes the queue pair, completion queue and buffers on `id`, and posts every receive buffer.
    func attach(id: CMID, limits: ConnectionLimits) throws(VerbsError) {
        guard let deviceContext = id.deviceContext else { throw VerbsError(call: "CMID.deviceContext", errno: 19) }
        let depth = Int(limits.queueDepth)
        let sendLimit = context.tunables.effectiveConcurrentSends
        let receiveSlots = Credits.receiveBuffers(queueDepth: depth)
        let rdmaBudget = max(16, 4 * depth)
        let messageSize = Int(limits.maxMessageSize)
        let cq = try CompletionQueue(context: deviceContext, capacity: sendLimit + rdmaBudget + receiveSlots,
                                     channel: scheduler.channel, vector: scheduler.completionVector(for: peer))
        // Our own QP (not rdma_cm's), so the path MTU can be set (LND_IB_MTU) on the way to RTR.
        let qp = try QueuePair(
            protectionDomain: context.protectionDomain, sendQueue: cq, receiveQueue: cq,
            capabilities: QueuePairCapabilities(maxSendWorkRequests: sendLimit + rdmaBudget, maxReceiveWorkRequests: receiveSlots,
                                                maxSendScatterGather: context.maxScatterGather, maxReceiveScatterGather: 1))
        try id.transition(qp, to: .initialized)
        let receiveBuffers = try MemoryRegion(protectionDomain: context.protectionDomain, length: receiveSlots * messageSize,
                                              access: [.localWrite])
        try qp.post((0..<receiveSlots).map {
            ReceiveWorkRequest(id: UInt64($0), scatterGather: [receiveBuffers.sge(offset: $0 * messageSize, length: messageSize)])
        })
        let resources = Resources(id: id, queuePair: qp, completionQueue: cq, receiveBuffers: receiveBuffers, limits: limits,
                                  sendLimit: sendLimit, receiveSlots: receiveSlots, rdmaBudget: rdmaBudget)
        let open = state.withLock { state -> Bool in
            guard state.phase != .closed else { return false }
            state.resources = resources
            state.credits = Credits(queueDepth: depth)
            return true
        }
        guard open else { throw VerbsError(call: "attach", errno: 125, detail: "connection closed while connecting") }
        scheduler.register(self, queue: cq)
        try cq.requestNotification()
    }

    /// The handshake is done: traffic may flow, starting with the messages that waited for it. The passive
    /// side calls this before `rdma_accept` with `sending: false` (receives may arrive as soon as the peer sees
    /// the acceptance, but nothing may be posted until the QP is ready to send), then `startSending()`.
    func established(peerStamp: UInt64, sending: Bool = true) {
        let proceed = state.withLock { state -> Bool? in
            guard state.phase == .connecting else { return nil }
            state.phase = .established
            state.peerStamp = peerStamp
            state.lastReceive = .now
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
        var actions = Actions()
        let waiting = state.withLock { state -> [LNetMessage] in
            let waiting = Array(state.waiting)
            state.waiting.removeAll()
            state.successor = other
            closeLocked(&state, reason: reason, status: .connectionClosed, &actions)
            return waiting
        }
        actions.run()
        for message in waiting { other.send(message) }
    }

    // MARK: - Sending LNet messages

    /// Sends an outgoing LNet message (PUT, GET, ACK) to this peer: it waits while the connection is being
    /// made, then queues until credits allow.
    func send(_ message: LNetMessage) {
        var successor: Connection?
        let now = state.withLock { state -> Bool? in
            switch state.phase {
            case .closed:
                successor = state.successor
                return nil
            case .connecting:
                state.waiting.append(message)
                return false
            case .established:
                if state.draining {
                    state.waiting.append(message)
                    return false
                }
                return true
            }
        }
        switch now {
        case nil:
            if let successor { successor.send(message) } else { message.ni.finalize(message, status: .connectionClosed) }
        case false?: break
        case true?: transmit(message)
        }
    }

    private func transmit(_ message: LNetMessage) {
        var actions = Actions()
        let deadline = ContinuousClock.now + timeout
        do {
            let lnet = message.header.encoded()
            switch message.type {
            case .ack:
                enqueue(Outgoing(body: .immediate(lnet: lnet, payloadOffset: 0, payloadLength: 0), credited: true, holdsCredit: true,
                                 onSent: .finalize(message), message: message, deadline: deadline), &actions)
            case .put where message.payload.length <= eagerLimit:
                enqueue(Outgoing(body: .immediate(lnet: lnet, payloadOffset: 0, payloadLength: message.payload.length),
                                 payload: message.payload, credited: true, holdsCredit: true, onSent: .finalize(message), message: message,
                                 deadline: deadline), &actions)
            case .put:
                let pull = context.tunables.putMode == .pull
                let grant = pull ? try context.registrar.grant(message.payload, access: [.remoteRead]) : nil
                guard fits(grant) else {
                    grant?.revoke()
                    logger.warning("PUT source has more fragments than \(peer) takes")
                    actions.add { message.ni.finalize(message, status: .noResources) }
                    break
                }
                startTransaction(kind: .putSource, message: message, grant: grant, deadline: deadline, &actions) { cookie in
                    .putRequest(lnet: lnet, cookie: cookie, source: grant?.descriptor ?? RDMADescriptor())
                }
            case .get:
                let sink = message.sink ?? .empty
                let grant = sink.length > 0 ? try context.registrar.grant(sink, access: [.localWrite, .remoteWrite]) : nil
                guard fits(grant) else {
                    grant?.revoke()
                    logger.warning("GET sink has more fragments than \(peer) takes")
                    actions.add { message.ni.finalize(message, status: .noResources) }
                    break
                }
                startTransaction(kind: .getRequester, message: message, grant: grant, deadline: deadline, &actions) { cookie in
                    .getRequest(lnet: lnet, cookie: cookie, sink: grant?.descriptor ?? RDMADescriptor())
                }
            case .reply:
                logger.error("REPLY without the context of the GET it answers", metadata: ["message": "\(message)"])
                actions.add { message.ni.finalize(message, status: .protocolError) }
            }
        } catch {
            logger.warning("cannot register memory for \(message.type): \(error)")
            actions.add { message.ni.finalize(message, status: .noResources) }
        }
        actions.run()
    }

    /// Whether a descriptor for `grant` fits the fragments the peer agreed to take.
    private func fits(_ grant: MemoryGrant?) -> Bool {
        guard let grant else { return true }
        return grant.descriptor.fragments.count <= Int(resources?.limits.maxFragments ?? 0)
    }

    /// The largest payload that goes eagerly on this connection: the tunable, within the negotiated message size.
    private var eagerLimit: Int {
        let negotiated = Int(resources?.limits.maxMessageSize ?? 0) - WireFormat.headerSize - WireFormat.lnetHeaderSize
        return min(context.tunables.immediateSize, max(0, negotiated))
    }

    private func enqueue(_ outgoing: Outgoing, _ actions: inout Actions) {
        state.withLock { state in
            guard state.phase != .closed else {
                if let message = outgoing.message { actions.add { message.ni.finalize(message, status: .connectionClosed) } }
                return
            }
            state.queue.append(outgoing)
            pump(&state, &actions)
        }
    }

    private func startTransaction(kind: TransactionKind, message: LNetMessage, grant: MemoryGrant?, deadline: ContinuousClock.Instant,
                                  _ actions: inout Actions, body: (UInt64) -> WireBody) {
        state.withLock { state in
            guard state.phase != .closed else {
                grant?.revoke()
                actions.add { message.ni.finalize(message, status: .connectionClosed) }
                return
            }
            let cookie = Self.newCookie(&state)
            let transaction = Transaction(cookie: cookie, kind: kind, initiated: true, message: message, deadline: deadline)
            transaction.grant = grant
            transaction.length = message.type == .get ? (message.sink?.length ?? 0) : message.payload.length
            state.transactions[cookie] = transaction
            state.queue.append(Outgoing(body: body(cookie), credited: true, starts: cookie, holdsCredit: true, deadline: deadline))
            pump(&state, &actions)
        }
    }

    private static func newCookie(_ state: inout State) -> UInt64 {
        let cookie = state.nextCookie & cookieMask
        state.nextCookie += 1
        return cookie == 0 ? newCookie(&state) : cookie
    }

    // MARK: - Serving what LNet matched

    /// The core matched an incoming PUT_REQ: pull its data (READ) or ask for a push (PUT_ACK).
    func receivePut(_ message: LNetMessage, window: LNetMDWindow, sourceCookie: UInt64, source: RDMADescriptor) {
        var actions = Actions()
        let pull = !source.fragments.isEmpty
        do {
            let access: MemoryAccess = pull ? [.localWrite] : [.localWrite, .remoteWrite]
            let grant = window.length > 0 ? try context.registrar.grant(window, access: access) : nil
            guard pull || fits(grant) else {
                grant?.revoke()
                logger.warning("PUT sink has more fragments than \(peer) takes")
                reply(.putNak(sourceCookie: sourceCookie, status: Int32(LNetStatus.noResources.rawValue)))
                actions.add { message.ni.finalize(message, status: .noResources) }
                actions.run()
                return
            }
            state.withLock { state in
                guard state.phase == .established else {
                    grant?.revoke()
                    actions.add { message.ni.finalize(message, status: .connectionClosed) }
                    return
                }
                let cookie = Self.newCookie(&state)
                let transaction = Transaction(cookie: cookie, kind: .putSink, initiated: false, message: message,
                                              deadline: .now + timeout)
                transaction.grant = grant
                transaction.peerCookie = sourceCookie
                transaction.length = window.length
                transaction.pull = pull
                state.transactions[cookie] = transaction
                if pull {
                    startRDMA(transaction, remote: source, read: true, &state, &actions)
                } else {
                    state.replies.append(Outgoing(body: .putAck(sourceCookie: sourceCookie, sinkCookie: cookie,
                                                                sink: grant?.descriptor ?? RDMADescriptor()),
                                                  credited: false, deadline: transaction.deadline))
                }
                pump(&state, &actions)
            }
        } catch {
            logger.warning("cannot register the PUT sink: \(error)")
            reply(.putNak(sourceCookie: sourceCookie, status: Int32(LNetStatus.noResources.rawValue)))
            actions.add { message.ni.finalize(message, status: .noResources) }
        }
        actions.run()
    }

    /// The core dropped an incoming PUT_REQ (no match): tell the source so its PUT fails promptly.
    func dropPut(sourceCookie: UInt64, pull: Bool, status: LNetStatus) {
        let code = Int32(bitPattern: status.rawValue)
        reply(pull ? .putDone(cookie: sourceCookie, status: code, length: 0) : .putNak(sourceCookie: sourceCookie, status: code))
    }

    /// The core answers a GET_REQ we delivered with `reply`: move its data into the requester's sink.
    func serveGet(_ reply: LNetMessage, requesterCookie: UInt64, sink: RDMADescriptor) {
        var actions = Actions()
        let status = reply.header.status
        let length = reply.payload.length
        guard status == .ok else {
            state.withLock { state in
                guard state.phase == .established else {
                    actions.add { reply.ni.finalize(reply, status: .connectionClosed) }
                    return
                }
                state.replies.append(Outgoing(body: .getDone(cookie: requesterCookie, status: Int32(bitPattern: status.rawValue), length: 0),
                                              credited: false, onSent: .finalize(reply), deadline: .now + timeout))
                pump(&state, &actions)
            }
            actions.run()
            return
        }
        guard length <= sink.totalLength else {
            close(reason: "GET sink descriptor covers \(sink.totalLength) bytes, the REPLY has \(length)", status: .protocolError)
            reply.ni.finalize(reply, status: .protocolError)
            return
        }
        let pull = length > eagerLimit && context.tunables.getMode == .pull
        do {
            let grant = length > 0 ? try context.registrar.grant(reply.payload, access: pull ? [.remoteRead] : []) : nil
            guard !pull || fits(grant) else {
                grant?.revoke()
                logger.warning("GET source has more fragments than \(peer) takes")
                self.reply(.getDone(cookie: requesterCookie, status: Int32(LNetStatus.noResources.rawValue), length: 0))
                actions.add { reply.ni.finalize(reply, status: .noResources) }
                actions.run()
                return
            }
            state.withLock { state in
                guard state.phase == .established else {
                    grant?.revoke()
                    actions.add { reply.ni.finalize(reply, status: .connectionClosed) }
                    return
                }
                let cookie = Self.newCookie(&state)
                let transaction = Transaction(cookie: cookie, kind: .getTarget, initiated: false, message: reply, deadline: .now + timeout)
                transaction.grant = grant
                transaction.peerCookie = requesterCookie
                transaction.length = length
                transaction.pull = pull
                state.transactions[cookie] = transaction
                if pull {
                    // Transmit-first: the data is staged and registered; tell the requester to READ it.
                    state.replies.append(Outgoing(body: .pull(requesterCookie: requesterCookie, targetCookie: cookie, status: 0,
                                                              length: UInt32(length), source: grant?.descriptor ?? RDMADescriptor()),
                                                  credited: false, deadline: transaction.deadline))
                } else if length > 0 {
                    startRDMA(transaction, remote: sink, read: false, &state, &actions)
                } else {
                    state.replies.append(Outgoing(body: .getDone(cookie: requesterCookie, status: 0, length: 0), credited: false,
                                                  onSent: .finishTransaction(cookie), deadline: transaction.deadline))
                }
                pump(&state, &actions)
            }
        } catch {
            logger.warning("cannot register the GET source: \(error)")
            self.reply(.getDone(cookie: requesterCookie, status: Int32(LNetStatus.noResources.rawValue), length: 0))
            actions.add { reply.ni.finalize(reply, status: .noResources) }
        }
        actions.run()
    }

    /// Sends a control reply that belongs to no transaction of ours.
    private func reply(_ body: WireBody) {
        var actions = Actions()
        state.withLock { state in
            guard state.phase == .established else { return }
            state.replies.append(Outgoing(body: body, credited: false, deadline: .now + timeout))
            pump(&state, &actions)
        }
        actions.run()
    }

    /// Plans an RDMA READ (from `remote` into the grant) or WRITE (from the grant into `remote`) and queues it.
    private func startRDMA(_ transaction: Transaction, remote: RDMADescriptor, read: Bool, _ state: inout State, _ actions: inout Actions) {
        let pieces = transaction.grant?.pieces ?? []
        do {
            let steps = try planTransfer(local: pieces, remote: remote.fragments, length: transaction.length,
                                         maxScatterGather: context.maxScatterGather)
            transaction.pendingSteps = steps.count
            if steps.isEmpty {
                finishRDMA(transaction, &state, &actions)
            } else {
                state.rdmaJobs.append(RDMAJob(cookie: transaction.cookie, steps: Deque(steps), read: read))
            }
        } catch {
            closeLocked(&state, reason: "bad RDMA descriptor: \(error)", status: .protocolError, &actions)
        }
    }

    /// Every step of a transaction's RDMA transfer completed (or it had none).
    private func finishRDMA(_ transaction: Transaction, _ state: inout State, _ actions: inout Actions) {
        switch transaction.kind {
        case .putSink:
            // Pulled a PUT: the data is here. Tell the source, then the PUT is received.
            state.replies.append(Outgoing(body: .putDone(cookie: transaction.peerCookie, status: 0, length: UInt32(transaction.length)),
                                          credited: false, deadline: transaction.deadline))
            complete(transaction, status: .ok, &state, &actions)
        case .getRequester:
            // Pulled a GET's REPLY: deliver it now; the transaction ends when GET_DONE has gone.
            let get = transaction.message
            let length = transaction.length
            transaction.message = nil
            transaction.grant?.revoke()
            transaction.grant = nil
            state.replies.append(Outgoing(body: .getDone(cookie: transaction.peerCookie, status: 0, length: UInt32(length)),
                                          credited: false, onSent: .finishTransaction(transaction.cookie), deadline: transaction.deadline))
            if let get { actions.add { Self.completeGet(get, status: .ok, length: length) } }
        case .putSource:
            // Pushed a PUT: announce it; the PUT is done when PUT_DONE has gone.
            state.replies.append(Outgoing(body: .putDone(cookie: transaction.peerCookie, status: 0, length: UInt32(transaction.length)),
                                          credited: false, onSent: .finishTransaction(transaction.cookie), deadline: transaction.deadline))
        case .getTarget:
            state.replies.append(Outgoing(body: .getDone(cookie: transaction.peerCookie, status: 0, length: UInt32(transaction.length)),
                                          credited: false, onSent: .finishTransaction(transaction.cookie), deadline: transaction.deadline))
        }
    }

    /// Ends a transaction: revokes its memory, releases its slot, finalizes its LNet message.
    private func complete(_ transaction: Transaction, status: LNetStatus, _ state: inout State, _ actions: inout Actions) {
        guard state.transactions.removeValue(forKey: transaction.cookie) != nil else { return }
        transaction.grant?.revoke()
        transaction.grant = nil
        if transaction.initiated && transaction.requestPosted {
            _ = state.credits.finishTransaction()
            returnInterfaceCredit(&actions)
        }
        guard let message = transaction.message else { return }
        transaction.message = nil
        if transaction.kind == .getRequester {
            actions.add { Self.completeGet(message, status: status, length: status == .ok ? transaction.length : 0) }
        } else {
            actions.add { message.ni.finalize(message, status: status) }
        }
    }

    /// A GET we sent is over: report its REPLY (data landed, or the target's error) and finalize both.
    static func completeGet(_ get: LNetMessage, status: LNetStatus, length: Int) {
        let ni = get.ni
        // The GET itself went out (its SEND event comes first); a transport failure fails it too.
        let transportFailed = status != .ok && status != .noMatch && status != .tooLarge
        let reply = ni.createReply(for: get)
        ni.finalize(get, status: transportFailed ? status : .ok)
        if let reply {
            ni.setReplyLength(reply, length)
            ni.finalize(reply, status: status)
        }
    }

    // MARK: - Posting

    /// Posts whatever may go now: control replies first (they never wait behind data), RDMA steps, then
    /// credited messages as credits allow, and a NOOP when credits are owed and nothing else carries them.
    /// Sends need a transmit descriptor from the interface's pool and room under `LND_CONCURRENT_SENDS`; LNet
    /// messages also need an interface credit. Without them the connection waits to be woken.
    private func pump(_ state: inout State, _ actions: inout Actions) {
        guard state.phase == .established, let resources = state.resources else { return }
        let pool = context.pool
        while !state.replies.isEmpty, state.posted.count < resources.sendLimit {
            guard let slot = pool.take(credit: false, waiter: self) else { break }
            let outgoing = state.replies.removeFirst()
            guard post(outgoing, slot: slot, credits: state.credits.takeOwed(), resources, &state, &actions) else { return }
        }
        while state.rdmaInFlight < resources.rdmaBudget, !state.rdmaJobs.isEmpty {
            let step = state.rdmaJobs[0].steps.removeFirst()
            let job = state.rdmaJobs[0]
            if job.steps.isEmpty { state.rdmaJobs.removeFirst() }
            let operation: SendWorkRequest.Operation = job.read
                ? .rdmaRead(remoteAddress: step.remoteAddress, rkey: step.rkey)
                : .rdmaWrite(remoteAddress: step.remoteAddress, rkey: step.rkey)
            do {
                try resources.queuePair.post(SendWorkRequest(id: Self.rdmaKind << Self.kindShift | job.cookie, operation: operation,
                                                             scatterGather: step.local))
                state.rdmaInFlight += 1
                context.counters.bump(job.read ? .rdmaReads : .rdmaWrites)
            } catch {
                closeLocked(&state, reason: "posting RDMA failed: \(error)", status: .connectionClosed, &actions)
                return
            }
        }
        while let next = state.queue.first, state.posted.count < resources.sendLimit, state.credits.canSendCredited {
            if next.starts != nil && !state.credits.canStartTransaction { break }
            guard let slot = pool.take(credit: next.holdsCredit, waiter: self) else { break }
            state.queue.removeFirst()
            if let cookie = next.starts {
                state.credits.startTransaction()
                state.transactions[cookie]?.requestPosted = true
            }
            guard post(next, slot: slot, credits: state.credits.takeCredited(), resources, &state, &actions) else { return }
        }
        if state.credits.needsNoop { sendNoop(&state, resources, &actions) }
    }

    /// Sends a NOOP (no credit taken; at most one in flight) carrying the credits owed.
    private func sendNoop(_ state: inout State, _ resources: Resources, _ actions: inout Actions) {
        guard !state.noopInFlight, state.posted.count < resources.sendLimit,
              let slot = context.pool.take(credit: false, waiter: self) else { return }
        context.counters.bump(.noops)
        state.noopInFlight = true
        _ = post(Outgoing(body: .noop, credited: false, onSent: .noopSent, deadline: .now + timeout), slot: slot,
                 credits: state.credits.takeOwed(), resources, &state, &actions)
    }

    /// Encodes `outgoing` into transmit descriptor `slot` and posts the SEND.
    private func post(_ outgoing: Outgoing, slot: Int, credits: UInt8, _ resources: Resources, _ state: inout State,
                      _ actions: inout Actions) -> Bool {
        let pool = context.pool
        let size = min(pool.messageSize, Int(resources.limits.maxMessageSize))
        let buffer = UnsafeMutableRawBufferPointer(rebasing: pool.buffer(slot)[0..<size])
        let addressing = WireAddressing(source: context.nid.rawValue, sourceStamp: context.stamp, destination: peer.rawValue,
                                        destinationStamp: state.peerStamp)
        let length = WireMessage.encode(outgoing.body, credits: credits, addressing: addressing, checksum: context.tunables.checksum,
                                        into: buffer) { destination in
            outgoing.payload?.copy(into: destination)
        }
        // An eager LNet message holds its credit until its send completes; a request's credit belongs to its
        // transaction.
        let eagerCredit = outgoing.holdsCredit && outgoing.starts == nil
        state.posted[slot] = (outgoing.onSent, eagerCredit)
        do {
            try resources.queuePair.post(SendWorkRequest(id: Self.sendKind << Self.kindShift | UInt64(slot), operation: .send,
                                                         scatterGather: [pool.sge(slot, length: length)]))
            state.lastSend = .now
            return true
        } catch {
            state.posted[slot] = nil
            releaseSlot(slot, credit: eagerCredit, &actions)
            if case .finalize(let message) = outgoing.onSent { actions.add { message.ni.finalize(message, status: .connectionClosed) } }
            closeLocked(&state, reason: "posting a send failed: \(error)", status: .connectionClosed, &actions)
            return false
        }
    }

    /// Gives a transmit descriptor (and maybe an interface credit) back; connections waiting for one are woken
    /// after the lock is released.
    private func releaseSlot(_ slot: Int, credit: Bool, _ actions: inout Actions) {
        var waiters = context.pool.give(slot)
        if credit { waiters += context.pool.returnCredit() }
        wakeLater(waiters, &actions)
    }

    private func returnInterfaceCredit(_ actions: inout Actions) {
        wakeLater(context.pool.returnCredit(), &actions)
    }

    private func wakeLater(_ waiters: [Connection], _ actions: inout Actions) {
        for waiter in waiters { actions.add { waiter.wake() } }
    }

    /// A transmit descriptor or credit came free: post what waited for it.
    func wake() {
        var actions = Actions()
        state.withLock { state in pump(&state, &actions) }
        actions.run()
    }

    // MARK: - Completions (scheduler thread)

    /// Handles every completion waiting on this connection's CQ; returns how many there were.
    @discardableResult
    func poll() -> Int {
        guard let resources else { return 0 }
        var total = 0
        while true {
            let early = state.withLock { state -> [WorkCompletion] in
                guard state.phase != .connecting else { return [] }
                defer { state.early.removeAll() }
                return state.early
            }
            if early.isEmpty { break }
            for completion in early { handleReceiveNow(slot: Int(completion.id & Self.cookieMask), completion: completion, resources) }
            total += early.count
        }
        while true {
            var completions: [WorkCompletion] = []
            do {
                try resources.completionQueue.poll(max: 32) { completions.append($0) }
            } catch {
                close(reason: "polling the completion queue failed: \(error)", status: .connectionClosed)
                return total
            }
            if completions.isEmpty {
                if state.withLock({ $0.phase == .closed && $0.posted.isEmpty }) { scheduler.closed(self) }
                return total
            }
            total += completions.count
            for completion in completions { handle(completion, resources) }
        }
    }

    private func handle(_ completion: WorkCompletion, _ resources: Resources) {
        let kind = completion.id >> Self.kindShift
        let value = completion.id & Self.cookieMask
        var actions = Actions()
        if kind == Self.receiveKind {
            handleReceive(slot: Int(value), completion: completion, resources)
            return
        }
        state.withLock { state in
            if kind == Self.sendKind {
                let slot = Int(value)
                let (action, credit) = state.posted.removeValue(forKey: slot) ?? (.none, false)
                releaseSlot(slot, credit: credit, &actions)
                if case .noopSent = action { state.noopInFlight = false }
                if completion.status.isSuccess {
                    switch action {
                    case .none, .noopSent: break
                    case .finalize(let message): actions.add { message.ni.finalize(message, status: .ok) }
                    case .finishTransaction(let cookie):
                        if let transaction = state.transactions[cookie] { complete(transaction, status: .ok, &state, &actions) }
                    }
                } else {
                    if case .finalize(let message) = action { actions.add { message.ni.finalize(message, status: .connectionClosed) } }
                    failed(completion, &state, &actions)
                }
            } else {
                state.rdmaInFlight -= 1
                if !completion.status.isSuccess {
                    failed(completion, &state, &actions)
                } else if let transaction = state.transactions[value] {
                    transaction.pendingSteps -= 1
                    if transaction.pendingSteps == 0 { finishRDMA(transaction, &state, &actions) }
                }
            }
            pump(&state, &actions)
        }
        actions.run()
    }

    private func failed(_ completion: WorkCompletion, _ state: inout State, _ actions: inout Actions) {
        // Flushes after a close, or of a connection the CM is still setting up (the CM thread decides its fate).
        guard state.phase == .established else { return }
        let status: LNetStatus = completion.status == .retryExceeded ? .timeout : .connectionClosed
        closeLocked(&state, reason: "work request failed: \(completion.status) (vendor error \(completion.vendorError))", status: status, &actions)
    }

    private func handleReceive(slot: Int, completion: WorkCompletion, _ resources: Resources) {
        let stashed = state.withLock { state -> Bool in
            // While connecting, and until the early ones are handled, keep arrival order.
            guard state.phase == .connecting || !state.early.isEmpty else { return false }
            state.early.append(completion)
            return true
        }
        if stashed { return }
        handleReceiveNow(slot: slot, completion: completion, resources)
    }

    private func handleReceiveNow(slot: Int, completion: WorkCompletion, _ resources: Resources) {
        guard completion.status.isSuccess else {
            var actions = Actions()
            state.withLock { state in failed(completion, &state, &actions) }
            actions.run()
            return
        }
        let size = Int(resources.limits.maxMessageSize)
        let buffer = UnsafeRawBufferPointer(rebasing: resources.receiveBuffers.bytes[slot * size..<slot * size + Int(completion.byteLength)])
        let message: WireMessage
        do {
            message = try WireMessage.decode(buffer, maxFragments: Int(resources.limits.maxFragments))
            try checkAddressing(message.header)
        } catch {
            context.counters.bump(.protocolErrors)
            close(reason: "malformed message: \(error)", status: .protocolError)
            return
        }
        var actions = Actions()
        var deliver: (() -> Void)?
        state.withLock { state in
            guard state.phase == .established else { return }
            state.lastReceive = .now
            guard state.credits.received(credits: message.header.credits) else {
                closeLocked(&state, reason: "peer returned more credits than it was owed", status: .protocolError, &actions)
                return
            }
            let type = message.body.type
            if type.isControl {
                handleControl(message.body, &state, &actions)
                // A NOOP's buffer is re-posted without owing a credit back (so NOOPs never answer NOOPs).
                repost(slot: slot, credited: false, resources, &state, &actions)
            } else {
                deliver = deliverer(message.body, slot: slot, resources, &state, &actions)
            }
            pump(&state, &actions)
        }
        actions.run()
        deliver?()
    }

    private func checkAddressing(_ header: WireHeader) throws(WireError) {
        guard header.destination == context.nid.rawValue, header.destinationStamp == context.stamp else {
            throw WireError.wrongDestination("to \(NID(rawValue: header.destination)) stamp \(header.destinationStamp)")
        }
        guard header.source == peer.rawValue, header.sourceStamp == peerStamp else {
            throw WireError.wrongDestination("from \(NID(rawValue: header.source)) stamp \(header.sourceStamp), expected \(peer)")
        }
    }

    /// Builds the call into LNet for an IMMEDIATE, PUT_REQ or GET_REQ (run after the lock is released).
    private func deliverer(_ body: WireBody, slot: Int, _ resources: Resources, _ state: inout State, _ actions: inout Actions) -> (() -> Void)? {
        let lnetBytes: [UInt8]
        let receiveContext: ReceiveContext
        let size = Int(resources.limits.maxMessageSize)
        switch body {
        case .immediate(let lnet, let offset, let length):
            lnetBytes = lnet
            let payload = UnsafeRawBufferPointer(rebasing: resources.receiveBuffers.bytes[slot * size + offset..<slot * size + offset + length])
            receiveContext = ReceiveContext(connection: self, kind: .immediate(slot: slot, payload: payload))
        case .putRequest(let lnet, let cookie, let source):
            lnetBytes = lnet
            receiveContext = ReceiveContext(connection: self, kind: .putRequest(cookie: cookie, source: source))
            repost(slot: slot, credited: true, resources, &state, &actions)
        case .getRequest(let lnet, let cookie, let sink):
            lnetBytes = lnet
            receiveContext = ReceiveContext(connection: self, kind: .getRequest(cookie: cookie, sink: sink))
            repost(slot: slot, credited: true, resources, &state, &actions)
        default:
            return nil
        }
        let header: LNetHeader
        do {
            header = try LNetHeader(decoding: lnetBytes)
        } catch {
            closeLocked(&state, reason: "malformed LNet header: \(error)", status: .protocolError, &actions)
            return nil
        }
        let expected: Set<LNetMessageType>
        switch body {
        case .putRequest: expected = [.put]
        case .getRequest: expected = [.get]
        default: expected = [.put, .ack]
        }
        guard expected.contains(header.type) else {
            closeLocked(&state, reason: "\(body.type) carrying an LNet \(header.type)", status: .protocolError, &actions)
            return nil
        }
        if case .immediate(_, _, let length) = body, Int(header.payloadLength) != length {
            closeLocked(&state, reason: "LNet header says \(header.payloadLength) payload bytes, message carries \(length)",
                        status: .protocolError, &actions)
            return nil
        }
        let ni = context.ni
        let peer = peer
        return { ni.parse(header: header, from: peer, context: receiveContext, wantsRDMA: receiveContext.wantsRDMA) }
    }

    /// Gives a receive buffer back to the queue pair; a credited message's buffer is a credit owed to the peer.
    private func repost(slot: Int, credited: Bool, _ resources: Resources, _ state: inout State, _ actions: inout Actions) {
        guard state.phase == .established else { return }
        let size = Int(resources.limits.maxMessageSize)
        do {
            try resources.queuePair.post(ReceiveWorkRequest(id: UInt64(slot), scatterGather: [resources.receiveBuffers.sge(offset: slot * size, length: size)]))
            if credited { state.credits.reposted() }
        } catch {
            closeLocked(&state, reason: "re-posting a receive buffer failed: \(error)", status: .connectionClosed, &actions)
        }
    }

    /// An IMMEDIATE's buffer is free again (the core copied the payload, or dropped it).
    func release(slot: Int) {
        var actions = Actions()
        state.withLock { state in
            guard let resources = state.resources else { return }
            repost(slot: slot, credited: true, resources, &state, &actions)
            pump(&state, &actions)
        }
        actions.run()
    }

    /// PUT_ACK, PUT_NAK, PUT_DONE, PULL, GET_DONE, NOOP: handled here, never through LNet matching.
    private func handleControl(_ body: WireBody, _ state: inout State, _ actions: inout Actions) {
        func transaction(_ cookie: UInt64, _ kinds: Set<String>, _ what: String) -> Transaction? {
            guard let transaction = state.transactions[cookie], kinds.contains(transaction.kind.rawValue),
                  !transaction.initiated || transaction.requestPosted else {
                closeLocked(&state, reason: "\(what) for a transfer that does not exist (cookie \(cookie))", status: .protocolError, &actions)
                return nil
            }
            return transaction
        }
        switch body {
        case .noop:
            break
        case .putAck(let sourceCookie, let sinkCookie, let sink):
            guard let transaction = transaction(sourceCookie, ["putSource"], "PUT_ACK") else { return }
            guard transaction.grant == nil else {
                closeLocked(&state, reason: "PUT_ACK for a PUT sent by pull", status: .protocolError, &actions)
                return
            }
            transaction.peerCookie = sinkCookie
            // The sink may have matched fewer bytes (a truncating MD): move what it offers room for.
            transaction.length = min(transaction.length, sink.totalLength)
            guard let message = transaction.message else { return }
            do {
                transaction.grant = try context.registrar.grant(message.payload, access: [])
            } catch {
                state.replies.append(Outgoing(body: .putDone(cookie: sinkCookie, status: Int32(LNetStatus.noResources.rawValue), length: 0),
                                              credited: false, deadline: transaction.deadline))
                complete(transaction, status: .noResources, &state, &actions)
                return
            }
            startRDMA(transaction, remote: sink, read: false, &state, &actions)
        case .putNak(let sourceCookie, let status):
            guard let transaction = transaction(sourceCookie, ["putSource"], "PUT_NAK") else { return }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &actions)
        case .putDone(let cookie, let status, _):
            // Pull: the sink READ our source (source side). Push: the source WROTE into our sink (sink side).
            guard let transaction = transaction(cookie, ["putSource", "putSink"], "PUT_DONE") else { return }
            if transaction.kind == .putSink && transaction.pull {
                closeLocked(&state, reason: "PUT_DONE for a PUT we are pulling", status: .protocolError, &actions)
                return
            }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &actions)
        case .pull(let requesterCookie, let targetCookie, let status, let length, let source):
            guard let transaction = transaction(requesterCookie, ["getRequester"], "PULL") else { return }
            guard status == 0 else {
                complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &actions)
                return
            }
            guard Int(length) <= transaction.length, source.totalLength >= Int(length) else {
                closeLocked(&state, reason: "PULL of \(length) bytes does not fit the \(transaction.length)-byte sink", status: .protocolError, &actions)
                return
            }
            transaction.peerCookie = targetCookie
            transaction.length = Int(length)
            startRDMA(transaction, remote: source, read: true, &state, &actions)
        case .getDone(let cookie, let status, let length):
            // Push (or an error): the target wrote our sink. Pull: the requester finished reading our source.
            guard let transaction = transaction(cookie, ["getRequester", "getTarget"], "GET_DONE") else { return }
            if transaction.kind == .getRequester {
                guard Int(length) <= transaction.length else {
                    closeLocked(&state, reason: "GET_DONE claims \(length) bytes for a \(transaction.length)-byte sink", status: .protocolError, &actions)
                    return
                }
                transaction.length = Int(length)
            } else if !transaction.pull {
                closeLocked(&state, reason: "GET_DONE for a GET we are pushing", status: .protocolError, &actions)
                return
            }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &actions)
        default:
            break
        }
    }

    // MARK: - Timers and closing

    /// Fails what has waited past its deadline (closing the connection: a timeout means the peer is in
    /// trouble), and sends a keepalive when the connection has been quiet.
    func checkTimers(now: ContinuousClock.Instant) {
        var actions = Actions()
        state.withLock { state in
            switch state.phase {
            case .closed:
                return
            case .connecting:
                if now - created > timeout + .seconds(1) {
                    closeLocked(&state, reason: "connecting timed out", status: .timeout, &actions)
                }
                return
            case .established:
                break
            }
            let expired = state.transactions.values.contains { $0.deadline < now }
                || state.queue.first.map { $0.deadline < now } == true
                || state.replies.first.map { $0.deadline < now } == true
            if expired {
                context.counters.bump(.timeouts)
                // What the connection was waiting for, for the log (as o2iblnd's "timed out tx" lines).
                let waitingFor = state.transactions.values.sorted { $0.cookie < $1.cookie }.prefix(8).map { t in
                    "\(t.kind)#\(t.cookie)(steps \(t.pendingSteps), request \(t.requestPosted ? "posted" : "unposted"), \(t.pull ? "pull" : "push"))"
                }
                logger.warning("message timed out", metadata: [
                    "posted": "\(state.posted.count)", "rdmaInFlight": "\(state.rdmaInFlight)", "queued": "\(state.queue.count)",
                    "replies": "\(state.replies.count)", "rdmaJobs": "\(state.rdmaJobs.count)",
                    "credits": "\(state.credits.available) available, \(state.credits.owed) owed, \(state.credits.transactions) transactions",
                    "transactions": "\(state.transactions.count): \(waitingFor.joined(separator: ", "))",
                    "lastReceive": "\(now - state.lastReceive) ago", "lastSend": "\(now - state.lastSend) ago",
                ])
                closeLocked(&state, reason: "a message timed out after \(context.tunables.timeout) s", status: .timeout, &actions)
                return
            }
            let keepalive = context.tunables.keepalive
            if keepalive > 0 {
                if now - state.lastReceive > .seconds(keepalive * 3) + timeout {
                    closeLocked(&state, reason: "peer silent for \(now - state.lastReceive)", status: .timeout, &actions)
                    return
                }
                if now - state.lastSend > .seconds(keepalive), let resources = state.resources {
                    sendNoop(&state, resources, &actions)
                }
            }
        }
        actions.run()
    }

    /// Closes the connection: every message still on it is finalized with `status` (exactly once), memory
    /// grants are revoked, and the queue pair is disconnected (its posted work is flushed).
    func close(reason: String, status: LNetStatus) {
        var actions = Actions()
        state.withLock { state in closeLocked(&state, reason: reason, status: status, &actions) }
        actions.run()
    }

    private func closeLocked(_ state: inout State, reason: String, status: LNetStatus, _ actions: inout Actions) {
        guard state.phase != .closed else { return }
        let wasEstablished = state.phase == .established
        state.phase = .closed
        state.closeReason = reason
        if status == .protocolError || status == .timeout || !wasEstablished {
            logger.warning("closing: \(reason)")
        } else {
            logger.info("closing: \(reason)")
        }
        context.counters.bump(.connectionsClosed)
        var messages: [LNetMessage] = Array(state.waiting)
        state.waiting.removeAll()
        for outgoing in state.queue { if let message = outgoing.message { messages.append(message) } }
        for outgoing in state.replies { if case .finalize(let message) = outgoing.onSent { messages.append(message) } }
        state.queue.removeAll()
        state.replies.removeAll()
        state.rdmaJobs.removeAll()
        // Posted sends keep their descriptors until the flush completes them; their messages fail now.
        for (slot, entry) in state.posted {
            if case .finalize(let message) = entry.action { messages.append(message) }
            state.posted[slot] = (.none, entry.credit)
        }
        var gets: [LNetMessage] = []
        for transaction in state.transactions.values {
            if transaction.initiated && transaction.requestPosted { returnInterfaceCredit(&actions) }
            transaction.grant?.revoke()
            transaction.grant = nil
            if let message = transaction.message {
                if transaction.kind == .getRequester { gets.append(message) } else { messages.append(message) }
            }
            transaction.message = nil
        }
        state.transactions.removeAll()
        let id = state.resources?.id
        let queuePair = state.resources?.queuePair
        let drained = state.posted.isEmpty
        let manager = scheduler
        actions.add { [self] in
            // The QP is ours, not rdma_cm's: flush it ourselves, then tell the peer.
            try? queuePair?.moveToError()
            // Tell the peer - unless our port is down: after a disconnect sent then, no rdma_cm connection on the
            // rxe device worked any more (perftest's neither; the CM message's failed send most likely broke the
            // device's MAD queue pair). The peer learns from its own timeouts, or from our next connection
            // replacing this one.
            if let id {
                if id.portState() == .down {
                    logger.info("port down: not sending a disconnect request")
                } else {
                    try? id.disconnect()
                }
            }
            // Posted sends still own transmit descriptors: keep polling until the flush returns them.
            if drained { manager.closed(self) }
            for message in messages { message.ni.finalize(message, status: status) }
            for get in gets { Self.completeGet(get, status: status, length: 0) }
        }
    }

    /// Moves the QP to RTR and RTS with rdma_cm's attributes and the LND_IB_MTU override.
    func readyQueuePair() throws(VerbsError) {
        guard let resources else { throw VerbsError(call: "readyQueuePair", errno: 22, detail: "no queue pair") }
        let mtu = PathMTU(bytes: context.tunables.ibMTU)
        // INIT again first: the remote access rights depend on the READ depth both sides agreed on, which the
        // active side did not know when it first moved the QP to INIT (librdmacm does the same).
        try resources.id.transition(resources.queuePair, to: .initialized)
        try resources.id.transition(resources.queuePair, to: .readyToReceive, pathMTU: mtu)
        try resources.id.transition(resources.queuePair, to: .readyToSend)
    }

    /// What `lnetctl` shows of a connection.
    var info: LNDConnectionInfo {
        state.withLock { state in
            let retransmission = state.phase == .established ? try? state.resources?.queuePair.retransmission() : nil
            return LNDConnectionInfo(peer: peer, role: role.rawValue, phase: "\(state.phase)",
                                     queueDepth: Int(state.resources?.limits.queueDepth ?? 0),
                                     pathMTU: (try? state.resources?.queuePair.pathMTU())??.rawValue,
                                     ackTimeout: retransmission.map { Int($0.ackTimeout) },
                                     retryCount: retransmission.map { Int($0.retryCount) },
                                     credits: state.credits.available,
                                     pending: state.waiting.count + state.queue.count + state.transactions.count)
        }
    }

    /// Why the connection closed, if it did.
    var closeReason: String? { state.withLock { $0.closeReason } }

    /// How many LNet messages this connection still holds (queued, in flight, or in a transaction).
    var pendingCount: Int {
        state.withLock { state in
            state.waiting.count + state.queue.count + state.transactions.count
        }
    }
}

/// The private context the LND gives LNet's parse for one incoming message.
final class ReceiveContext: Sendable {
    enum Kind: @unchecked Sendable {
        case immediate(slot: Int, payload: UnsafeRawBufferPointer)
        case copied(LNetBuffer, length: Int)
        case putRequest(cookie: UInt64, source: RDMADescriptor)
        case getRequest(cookie: UInt64, sink: RDMADescriptor)
    }

    let connection: Connection
    let kind: Kind
    private let released = Atomic<Bool>(false)

    init(connection: Connection, kind: Kind) {
        self.connection = connection
        self.kind = kind
    }

    var wantsRDMA: Bool {
        switch kind {
        case .immediate, .copied: false
        case .putRequest, .getRequest: true
        }
    }

    /// Returns an IMMEDIATE's receive buffer, once.
    func releaseBuffer() {
        guard case .immediate(let slot, _) = kind, !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        connection.release(slot: slot)
    }
}
