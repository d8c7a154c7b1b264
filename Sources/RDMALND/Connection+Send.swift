import LNet
import Synchronization
import Verbs

/// The send path: LNet messages handed to the LND, what LNet matched for incoming requests, and posting.
extension Connection {
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

    func transmit(_ message: LNetMessage) {
        var deferred = Deferred()
        let deadline = Tick.coarse + timeoutSeconds
        let lnet = message.header
        switch message.type {
        case .ack:
            // Nothing waits for an ACK's own completion (it has no event).
            enqueue(Outgoing(body: .immediate(lnet: lnet, payloadOffset: 0, payloadLength: 0), onSent: .finalize(message),
                             message: message, holdsCredit: true, answered: true, deadline: deadline), &deferred)
        case .put where message.payload.length <= eagerLimit:
            enqueue(Outgoing(body: .immediate(lnet: lnet, payloadOffset: 0, payloadLength: message.payload.length),
                             payload: message.payload, onSent: .finalize(message), message: message, holdsCredit: true,
                             answered: lnet.ackRequested, deadline: deadline), &deferred)
        case .put:
            let pull = context.tunables.putMode == .pull
            do {
                // Pull: the sink READs the source, exposed for this transfer. Push: we WRITE it once the sink's
                // PUT_ACK is in; registered now, on the sender's thread, so that the scheduler thread handling the
                // PUT_ACK does not register (and hold up its other connections).
                let grant = try context.registrar.grant(message.payload, access: pull ? [.remoteRead] : [])
                guard fits(grant.descriptor) else {
                    grant.revoke()
                    logger.warning("PUT source has more fragments than \(peer) takes")
                    deferred.finalize(message, .noResources)
                    break
                }
                let source = grant.descriptor
                startTransaction(kind: .putSource, message: message, grant: grant, length: message.payload.length, eager: false,
                                 pull: pull, deadline: deadline, &deferred) { cookie in
                    .putRequest(lnet: lnet, cookie: cookie, source: source)
                }
            } catch {
                logger.warning("cannot register the PUT source: \(error)")
                deferred.finalize(message, .noResources)
            }
        case .get:
            let sink = message.sink ?? .empty
            // A sink that fits one message goes undescribed: the target answers with a REPLY carrying the data.
            let eager = sink.length <= eagerLimit
            do {
                let grant = eager ? nil : try context.registrar.grant(sink, access: [.localWrite, .remoteWrite])
                guard fits(grant.descriptor) else {
                    grant?.revoke()
                    logger.warning("GET sink has more fragments than \(peer) takes")
                    deferred.finalize(message, .noResources)
                    break
                }
                let descriptor = grant.descriptor ?? RDMADescriptor()
                startTransaction(kind: .getRequester, message: message, grant: grant, length: sink.length, eager: eager,
                                 pull: false, deadline: deadline, &deferred) { cookie in
                    .getRequest(lnet: lnet, cookie: cookie, sink: descriptor)
                }
            } catch {
                logger.warning("cannot register the GET sink: \(error)")
                deferred.finalize(message, .noResources)
            }
        case .reply:
            logger.error("REPLY without the context of the GET it answers", metadata: ["message": "\(message)"])
            deferred.finalize(message, .protocolError)
        }
        deferred.run()
    }

    /// Whether a grant's descriptor fits the fragments the peer agreed to take (no grant, nil: it does).
    private func fits(_ descriptor: RDMADescriptor?) -> Bool {
        guard let descriptor else { return true }
        return descriptor.fragments.count <= Int(attached?.limits.maxFragments ?? 0)
    }

    /// The largest payload that goes in one message on this connection: the tunable, within the negotiated size.
    var eagerLimit: Int {
        let negotiated = (attached?.messageSize ?? 0) - WireFormat.headerSize - WireFormat.lnetHeaderSize
        return min(context.tunables.immediateSize, max(0, negotiated))
    }

    private func enqueue(_ outgoing: Outgoing, _ deferred: inout Deferred) {
        state.withLock { state in
            guard state.phase != .closed else {
                if let message = outgoing.message { deferred.finalize(message, .connectionClosed) }
                return
            }
            state.queue.enqueue(outgoing)
            pump(&state, &deferred)
        }
    }

    /// (`grant` is taken into the lock's closure, which may not consume what it captures: so the Optional's
    /// `take()`, at run time, moves it into the transaction or to its revocation.)
    private func startTransaction(kind: Transaction.Kind, message: LNetMessage, grant: consuming MemoryGrant?, length: Int, eager: Bool,
                                  pull: Bool, deadline: Tick, _ deferred: inout Deferred, body: (UInt64) -> WireBody) {
        state.withLock { state in
            guard state.phase != .closed else {
                grant.take()?.revoke()
                deferred.finalize(message, .connectionClosed)
                return
            }
            let cookie = Self.newCookie(&state)
            let transaction = Transaction(cookie: cookie, kind: kind, initiated: true, message: message, deadline: deadline)
            transaction.grant = grant.take()
            transaction.length = length
            transaction.eager = eager
            transaction.pull = pull
            state.transactions[cookie] = transaction
            state.queue.enqueue(Outgoing(body: body(cookie), starts: cookie, holdsCredit: true, answered: true, deadline: deadline))
            pump(&state, &deferred)
        }
    }

    // MARK: - Registering off the scheduler thread

    /// Grants `window` with `access` and runs `then` with the grant (nil for an empty window) or the error, once.
    /// At once on this thread, unless the grant would register at least `LND_REGISTRATION_OFFLOAD` bytes (a cache
    /// miss, or remote access): then the registration runs on the registration thread, so the scheduler thread
    /// keeps serving its other connections meanwhile, and `then` runs on this connection's scheduler thread when
    /// the grant is ready. If the connection closed before the registration started, nothing is registered and
    /// `then` gets nil: it finds the connection closed and finalizes its message.
    func withGrant(_ window: LNetMDWindow, access: MemoryAccess,
                   _ then: @escaping @Sendable (consuming Result<MemoryGrant?, VerbsError>) -> Void) {
        guard window.length > 0 else { return then(.success(nil)) }
        let registrar = context.registrar
        let threshold = context.tunables.registrationOffload
        guard threshold > 0, registrar.bytesToRegister(window, access: access) >= threshold else {
            then(Result { () throws(VerbsError) -> MemoryGrant? in try registrar.grant(window, access: access) })
            return
        }
        let scheduler = self.scheduler
        let counters = context.counters
        context.registrationWorker.submit { [self] in
            let result: Result<MemoryGrant?, VerbsError>
            if isClosed {
                result = .success(nil)
            } else {
                counters.bump(.registrationsOffloaded)
                result = Result { () throws(VerbsError) -> MemoryGrant? in try registrar.grant(window, access: access) }
            }
            let handoff = GrantHandoff(result)
            scheduler.submit { [self] in
                then(handoff.take())
                // Serve the connection in this round: work `then` posted is armed for before the thread sleeps.
                scheduler.kick(self)
            }
        }
    }

    // MARK: - Serving what LNet matched

    /// The core matched an incoming PUT_REQ: pull its data (READ) or ask for a push (PUT_ACK), once the sink is
    /// registered.
    func receivePut(_ message: LNetMessage, window: LNetMDWindow, sourceCookie: UInt64, source: RDMADescriptor) {
        let pull = !source.fragments.isEmpty
        withGrant(window, access: pull ? [.localWrite] : [.localWrite, .remoteWrite]) { [self] granted in
            receivePut(message, window: window, sourceCookie: sourceCookie, source: source, granted: granted)
        }
    }

    private func receivePut(_ message: LNetMessage, window: LNetMDWindow, sourceCookie: UInt64, source: RDMADescriptor,
                            granted: consuming Result<MemoryGrant?, VerbsError>) {
        var deferred = Deferred()
        let pull = !source.fragments.isEmpty
        var grant: MemoryGrant?
        switch consume granted {
        case .success(let granted):
            grant = granted
        case .failure(let error):
            logger.warning("cannot register the PUT sink: \(error)")
            reply(.putNak(sourceCookie: sourceCookie, status: Int32(LNetStatus.noResources.rawValue)))
            message.ni.finalize(message, status: .noResources)
            return
        }
        guard pull || fits(grant.descriptor) else {
            grant?.revoke()
            logger.warning("PUT sink has more fragments than \(peer) takes")
            reply(.putNak(sourceCookie: sourceCookie, status: Int32(LNetStatus.noResources.rawValue)))
            message.ni.finalize(message, status: .noResources)
            return
        }
        let sink = grant.descriptor ?? RDMADescriptor()
        // The lock's closure may not consume what it captures: `take()` moves the grant in (see `startTransaction`).
        state.withLock { state in
            guard state.phase == .established else {
                grant.take()?.revoke()
                deferred.finalize(message, state.closeStatus)
                return
            }
            let deadline = Tick.coarse + timeoutSeconds
            let cookie = Self.newCookie(&state)
            let transaction = Transaction(cookie: cookie, kind: .putSink, initiated: false, message: message, deadline: deadline)
            transaction.grant = grant.take()
            transaction.peerCookie = sourceCookie
            transaction.length = window.length
            transaction.pull = pull
            state.transactions[cookie] = transaction
            if pull {
                // READ the source; PUT_DONE follows once the READ completed.
                let done = Outgoing(body: .putDone(cookie: sourceCookie, status: 0, length: UInt32(window.length)),
                                    answered: true, deadline: deadline)
                startRDMA(transaction, remote: source, read: true, then: done, &state, &deferred)
            } else {
                state.queue.enqueue(Outgoing(body: .putAck(sourceCookie: sourceCookie, sinkCookie: cookie, sink: sink),
                                             answered: true, deadline: deadline))
            }
            pump(&state, &deferred)
        }
        deferred.run()
    }

    /// The core dropped an incoming PUT_REQ (no match): tell the source so its PUT fails promptly.
    func dropPut(sourceCookie: UInt64, pull: Bool, status: LNetStatus) {
        let code = Int32(bitPattern: status.rawValue)
        reply(pull ? .putDone(cookie: sourceCookie, status: code, length: 0) : .putNak(sourceCookie: sourceCookie, status: code))
    }

    /// The core answers a GET_REQ we delivered with `reply`: send its data in a REPLY (an undescribed sink), or
    /// move it into the requester's sink by RDMA.
    func serveGet(_ reply: LNetMessage, requesterCookie: UInt64, sink: RDMADescriptor) {
        var deferred = Deferred()
        let status = reply.header.status
        let length = reply.payload.length
        let deadline = Tick.coarse + timeoutSeconds
        guard status == .ok else {
            state.withLock { state in
                guard state.phase == .established else {
                    deferred.finalize(reply, .connectionClosed)
                    return
                }
                state.queue.enqueue(Outgoing(body: .getDone(cookie: requesterCookie, status: Int32(bitPattern: status.rawValue), length: 0),
                                             onSent: .finalize(reply), deadline: deadline))
                pump(&state, &deferred)
            }
            deferred.run()
            return
        }
        if sink.fragments.isEmpty {
            let capacity = WireFormat.replyCapacity(maxMessageSize: attached?.messageSize ?? 0)
            guard length <= capacity else {
                violation(.badDescriptor, "GET of \(length) bytes with an undescribed sink (a REPLY carries \(capacity))")
                reply.ni.finalize(reply, status: .protocolError)
                return
            }
            state.withLock { state in
                guard state.phase == .established else {
                    deferred.finalize(reply, .connectionClosed)
                    return
                }
                state.queue.enqueue(Outgoing(body: .reply(cookie: requesterCookie, status: 0, payloadOffset: 0, payloadLength: length),
                                             payload: reply.payload, onSent: .finalize(reply), deadline: deadline))
                pump(&state, &deferred)
            }
            deferred.run()
            return
        }
        guard length <= sink.totalLength else {
            violation(.badDescriptor, "GET sink descriptor covers \(sink.totalLength) bytes, the REPLY has \(length)")
            reply.ni.finalize(reply, status: .protocolError)
            return
        }
        let pull = length > eagerLimit && context.tunables.getMode == .pull
        withGrant(reply.payload, access: pull ? [.remoteRead] : []) { [self] granted in
            serveGet(reply, requesterCookie: requesterCookie, sink: sink, pull: pull, deadline: deadline, granted: granted)
        }
    }

    /// The bulk part of ``serveGet(_:requesterCookie:sink:)``, once the source is registered.
    private func serveGet(_ reply: LNetMessage, requesterCookie: UInt64, sink: RDMADescriptor, pull: Bool, deadline: Tick,
                          granted: consuming Result<MemoryGrant?, VerbsError>) {
        var deferred = Deferred()
        let length = reply.payload.length
        var grant: MemoryGrant?
        switch consume granted {
        case .success(let granted):
            grant = granted
        case .failure(let error):
            logger.warning("cannot register the GET source: \(error)")
            self.reply(.getDone(cookie: requesterCookie, status: Int32(LNetStatus.noResources.rawValue), length: 0))
            reply.ni.finalize(reply, status: .noResources)
            return
        }
        guard !pull || fits(grant.descriptor) else {
            grant?.revoke()
            logger.warning("GET source has more fragments than \(peer) takes")
            self.reply(.getDone(cookie: requesterCookie, status: Int32(LNetStatus.noResources.rawValue), length: 0))
            reply.ni.finalize(reply, status: .noResources)
            return
        }
        let source = grant.descriptor ?? RDMADescriptor()
        // The lock's closure may not consume what it captures: `take()` moves the grant in (see `startTransaction`).
        state.withLock { state in
            guard state.phase == .established else {
                grant.take()?.revoke()
                deferred.finalize(reply, state.closeStatus)
                return
            }
            let cookie = Self.newCookie(&state)
            let transaction = Transaction(cookie: cookie, kind: .getTarget, initiated: false, message: reply, deadline: deadline)
            transaction.grant = grant.take()
            transaction.peerCookie = requesterCookie
            transaction.length = length
            transaction.pull = pull
            state.transactions[cookie] = transaction
            let done = Outgoing(body: .getDone(cookie: requesterCookie, status: 0, length: UInt32(length)),
                                onSent: .finishTransaction(cookie), deadline: deadline)
            if pull {
                // Transmit-first: the data is staged and registered; tell the requester to READ it.
                state.queue.enqueue(Outgoing(body: .pull(requesterCookie: requesterCookie, targetCookie: cookie, status: 0,
                                                         length: UInt32(length), source: source),
                                             answered: true, deadline: deadline))
            } else {
                // Push: WRITE into the sink, GET_DONE right behind the WRITEs in one chain.
                startRDMA(transaction, remote: sink, read: false, then: done, &state, &deferred)
            }
            pump(&state, &deferred)
        }
        deferred.run()
    }

    /// Sends a control reply that belongs to no transaction of ours.
    func reply(_ body: WireBody) {
        var deferred = Deferred()
        state.withLock { state in
            guard state.phase == .established else { return }
            state.queue.enqueue(Outgoing(body: body, answered: true, deadline: Tick.coarse + timeoutSeconds))
            pump(&state, &deferred)
        }
        deferred.run()
    }

    /// Plans an RDMA READ (from `remote` into the grant) or WRITE (from the grant into `remote`) and queues it,
    /// then `then` (the DONE): behind a WRITE's last step in the same chain (an RC queue pair delivers the WRITEs'
    /// data before a later SEND), after a READ's completion (which is signaled: it delivers the data here, and the
    /// DONE lets the peer release its source, so the DONE must not go before the READ is over).
    func startRDMA(_ transaction: Transaction, remote: RDMADescriptor, read: Bool, then: Outgoing?, _ state: inout State,
                   _ deferred: inout Deferred) {
        let pieces = transaction.grant?.pieces ?? []
        do {
            let steps = try planTransfer(local: pieces, remote: remote.fragments, length: transaction.length,
                                         maxScatterGather: context.maxScatterGather)
            if read { transaction.afterRead = then }
            if steps.isEmpty {
                // Nothing to move: the transfer is done at once.
                if read {
                    rdmaDelivered(transaction, &state, &deferred)
                } else if let then {
                    state.queue.enqueue(then)
                }
            } else {
                state.queue.enqueue(RDMAJob(cookie: transaction.cookie, steps: steps, read: read, signalLast: read, then: read ? nil : then))
            }
        } catch {
            violation(.badDescriptor, "\(error)", &state, &deferred)
        }
    }

    // MARK: - Posting

    /// Posts whatever may go now (``SendQueue`` decides the order), as one chain of work requests: one
    /// `ibv_post_send`. Sends need a transmit descriptor from the interface's pool and room under
    /// `LND_CONCURRENT_SENDS`; LNet messages also need an interface credit. Without them the connection waits
    /// to be woken.
    func pump(_ state: inout State, _ deferred: inout Deferred) {
        guard state.phase == .established, let resources = state.resources else { return }
        let pool = context.pool
        let chain = resources.chain
        let size = min(pool.messageSize, resources.messageSize)
        let checksum = context.tunables.checksum
        var reads = 0
        var writes = 0
        let now = Tick.coarse
        while !chain.isFull, let work = state.queue.next(now: now, slot: { credit in pool.take(credit: credit, waiter: self) }) {
            switch work {
            case .send(let outgoing, let slot, let credits, let sequence, let fence):
                let buffer = UnsafeMutableRawBufferPointer(rebasing: pool.buffer(slot)[0..<size])
                let length = WireMessage.encode(outgoing.body, credits: credits, addressing: state.addressing, checksum: checksum,
                                                into: buffer) { destination in
                    outgoing.payload?.copy(into: destination)
                }
                chain.appendSend(id: sequence, pool.sge(slot, length: length), fence: fence)
                if case .noop = outgoing.body { context.counters.bump(.noops) }
                if let cookie = outgoing.starts, let transaction = state.transactions[cookie] {
                    // Its deadline counts from now: while queued, the queue's own rule applied (SendQueue).
                    transaction.requestPosted = true
                    transaction.deadline = now + timeoutSeconds
                }
            case .rdma(let step, let read, let sequence, let signaled):
                chain.appendRDMA(id: sequence, read: read, remoteAddress: step.remoteAddress, rkey: step.rkey, local: step.local,
                                 signaled: signaled)
                if read { reads += 1 } else { writes += 1 }
            }
        }
        guard !chain.isEmpty else { return }
        // Work whose completion matters, posted from another thread while the scheduler may sleep: arm before
        // posting, so its completion raises an event whenever it comes (armed after, a completion that came first
        // would raise none, and nothing would poll it). Its own thread arms before sleeping.
        if state.queue.awaitsCompletions, !state.sendArmed, !scheduler.isCurrentThread, context.tunables.poll != .busy {
            state.sendArmed = true
            try? resources.sendQueue.requestNotification()
        }
        let total = chain.count
        let (accepted, error) = chain.post(on: resources.queuePair)
        if error == nil {
            // Work requests the queue pair took, not decisions: the counters say which bulk mode moved the data.
            // (A chain refused part-way counts nothing: the connection closes and flushes it.)
            if reads > 0 { context.counters.bump(.rdmaReads, by: reads) }
            if writes > 0 { context.counters.bump(.rdmaWrites, by: writes) }
        }
        if let error {
            state.queue.unpost(last: total - accepted) { work in
                if case .send(let slot, let action, let credit) = work.kind {
                    releaseSlot(slot, credit: credit, &deferred)
                    if case .finalize(let message) = action { deferred.finalize(message, .connectionClosed) }
                }
            }
            closeLocked(&state, reason: "posting failed: \(error)", status: .connectionClosed, &deferred)
            return
        }
        state.lastSend = now
    }
}

/// Carries a registration's result from the registration thread to the scheduler thread's job. The job is an
/// escaping closure, and an escaping closure may not consume a noncopyable value it captures: so the grant rides
/// in this box and is taken out once (a second `take()` traps). Only offloaded registrations go this way.
private final class GrantHandoff: Sendable {
    private let result: Mutex<Result<MemoryGrant?, VerbsError>?>

    init(_ result: consuming sending Result<MemoryGrant?, VerbsError>) {
        self.result = Mutex(result)
    }

    func take() -> Result<MemoryGrant?, VerbsError> {
        result.withLock { $0.take()! }
    }
}
