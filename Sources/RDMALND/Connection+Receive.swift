import LNet
import Synchronization
import Verbs

/// Completions (on the scheduler thread): send-queue work done, and incoming messages decoded, credited and
/// handed to LNet (or to the connection itself, for control messages).
extension Connection {
    /// Handles every completion waiting on this connection's queues, send queue first (so a message's own SEND
    /// completes before the answer to it is handled); returns how many there were.
    @discardableResult
    func poll() -> Int {
        guard let resources = attached else { return 0 }
        var failure: VerbsError?
        var deferred = Deferred()
        // One lock for the send queue's completions and for taking the receives that came early.
        let (sent, early) = state.withLock { state -> (Int, [WorkCompletion]) in
            var count = 0
            do {
                count = try resources.sendQueue.poll(max: 32) { completion in
                    self.sendCompleted(completion, &state, &deferred)
                }
            } catch {
                failure = error as? VerbsError
            }
            if count > 0 { pump(&state, &deferred) }
            guard state.phase != .connecting, !state.early.isEmpty else { return (count, []) }
            defer { state.early.removeAll() }
            return (count, state.early)
        }
        deferred.run()
        // Receives that came before the connection was established go first, in order.
        for completion in early { handleReceive(slot: Int(completion.id), completion: completion, resources, stash: false) }
        var total = sent + early.count
        do {
            total += try resources.receiveQueue.poll(max: 32) { completion in
                self.handleReceive(slot: Int(completion.id), completion: completion, resources, stash: true)
            }
        } catch {
            failure = error as? VerbsError
        }
        if let failure {
            close(reason: "polling a completion queue failed: \(failure)", status: .connectionClosed)
        }
        if isClosed, state.withLock({ $0.queue.posted.isEmpty }) { scheduler.closed(self) }
        return total
    }

    /// Whether posted work's completion matters before any answer from the peer can bring the scheduler back.
    var awaitsLocalCompletions: Bool { state.withLock { $0.queue.awaitsCompletions } }

    /// The scheduler is about to sleep: arms the receive queue (and the send queue, while completions there
    /// matter), then polls once more. Returns whether that found work (then the scheduler does not sleep).
    func prepareToSleep() -> Bool {
        guard let resources = attached else { return false }
        let armed = state.withLock { state -> Bool in
            guard state.phase != .closed || !state.queue.posted.isEmpty else { return false }
            var failed = false
            if !state.receiveArmed {
                do { try resources.receiveQueue.requestNotification(); state.receiveArmed = true } catch { failed = true }
            }
            if state.queue.awaitsCompletions || state.phase == .closed, !state.sendArmed {
                do { try resources.sendQueue.requestNotification(); state.sendArmed = true } catch { failed = true }
            }
            return !failed
        }
        if !armed, phase != .closed {
            close(reason: "arming a completion queue failed", status: .connectionClosed)
        }
        return poll() > 0
    }

    /// The channel says `queue` fired: it is no longer armed.
    func queueFired(_ queue: CompletionQueue) {
        state.withLock { state in
            if queue === attached?.sendQueue { state.sendArmed = false } else { state.receiveArmed = false }
        }
    }

    // MARK: - The send queue

    private func sendCompleted(_ completion: WorkCompletion, _ state: inout State, _ deferred: inout Deferred) {
        var done = SmallList<PostedWork>()
        let known = state.queue.completed(through: completion.id) { done.append($0) }
        done.forEach { work in
            switch work.kind {
            case .send(let slot, let action, let credit):
                releaseSlot(slot, credit: credit, &deferred)
                // Only the completed request itself can have failed (earlier ones were done before it).
                let ok = completion.status.isSuccess || work.sequence < completion.id
                switch action {
                case .none, .noopSent:
                    break
                case .finalize(let message):
                    deferred.finalize(message, ok ? .ok : .connectionClosed)
                case .finishTransaction(let cookie):
                    if ok, let transaction = state.transactions[cookie] { complete(transaction, status: .ok, &state, &deferred) }
                }
            case .rdma(let cookie, let delivers, _):
                if delivers, completion.status.isSuccess, let transaction = state.transactions[cookie] {
                    rdmaDelivered(transaction, &state, &deferred)
                }
            }
        }
        if !known, state.phase == .established {
            violation(.unknownCompletion, "completion for work request \(completion.id), which is not posted", &state, &deferred)
        } else if !completion.status.isSuccess {
            failed(completion, &state, &deferred)
        }
    }

    func failed(_ completion: WorkCompletion, _ state: inout State, _ deferred: inout Deferred) {
        // Flushes after a close, or of a connection the CM is still setting up (the CM thread decides its fate).
        guard state.phase == .established else { return }
        state.queuePairFailed = true
        let status: LNetStatus = completion.status == .retryExceeded ? .timeout : .connectionClosed
        closeLocked(&state, reason: "work request failed: \(completion.status) (vendor error \(completion.vendorError))", status: status, &deferred)
    }

    // MARK: - Incoming messages

    /// One receive completion: decoded, then (under one lock) stashed if the connection is not established yet
    /// (`stash`: while connecting, and until the early ones are handled, arrival order is kept), checked,
    /// credited and handled; an LNet message is handed to LNet's parse once the lock is released (matched here, or
    /// placed on the partition `LNET_PLACEMENT` names, in the peer's order).
    private func handleReceive(slot: Int, completion: WorkCompletion, _ resources: Resources, stash: Bool) {
        guard completion.status.isSuccess else {
            var deferred = Deferred()
            state.withLock { state in
                if stash, state.phase == .connecting || !state.early.isEmpty {
                    state.early.append(completion)
                } else {
                    failed(completion, &state, &deferred)
                }
            }
            deferred.run()
            return
        }
        let size = resources.messageSize
        guard slot >= 0, slot < resources.receiveSlots else {
            violation(.unknownCompletion, "receive completion for buffer \(slot), which does not exist")
            return
        }
        let buffer = UnsafeRawBufferPointer(rebasing: resources.receiveBuffers.bytes[slot * size..<slot * size + Int(completion.byteLength)])
        let decoded = Result { () throws(WireError) in try WireMessage.decode(buffer, maxFragments: Int(resources.limits.maxFragments)) }
        var deferred = Deferred()
        var delivery: (LNetHeader, ReceiveContext)?
        state.withLock { state in
            if stash, state.phase == .connecting || !state.early.isEmpty {
                state.early.append(completion)
                return
            }
            guard state.phase == .established else { return }
            let message: WireMessage
            do {
                message = try decoded.get()
                try checkAddressing(message.header, peerStamp: state.peerStamp)
            } catch {
                violation(.malformedMessage, "\(error)", &state, &deferred)
                return
            }
            state.lastReceive = .coarse
            guard state.queue.credits.received(credits: message.header.credits) else {
                violation(.creditOverflow, "peer returned more credits than it was owed", &state, &deferred)
                return
            }
            if message.body.type.isControl {
                handleControl(message.body, slot: slot, resources, &state, &deferred)
                // A control message's buffer is re-posted without owing a credit back (so NOOPs never answer NOOPs).
                repost(slot: slot, credited: false, resources, &state, &deferred)
            } else {
                delivery = deliverable(message.body, slot: slot, resources, &state, &deferred)
            }
            pump(&state, &deferred)
        }
        deferred.run()
        if let (header, receiveContext) = delivery {
            context.observeArrival?(peer, header)
            scheduler.received.add(1, ordering: .relaxed)
            context.ni.parse(header: header, from: peer, context: receiveContext, wantsRDMA: receiveContext.wantsRDMA,
                             order: incomingOrder)
        }
    }

    private func checkAddressing(_ header: WireHeader, peerStamp: UInt64) throws(WireError) {
        guard header.destination == context.nid.rawValue, header.destinationStamp == context.stamp else {
            throw WireError.wrongDestination("to \(NID(rawValue: header.destination)) stamp \(header.destinationStamp)")
        }
        guard header.source == peer.rawValue, header.sourceStamp == peerStamp else {
            throw WireError.wrongDestination("from \(NID(rawValue: header.source)) stamp \(header.sourceStamp), expected \(peer)")
        }
    }

    /// The LNet header and receive context of an IMMEDIATE, PUT_REQ or GET_REQ, for LNet's parse (called once
    /// the lock is released).
    private func deliverable(_ body: WireBody, slot: Int, _ resources: Resources, _ state: inout State,
                             _ deferred: inout Deferred) -> (LNetHeader, ReceiveContext)? {
        let size = resources.messageSize
        let header: LNetHeader
        let receiveContext: ReceiveContext
        switch body {
        case .immediate(let lnet, let offset, let length):
            guard lnet.type == .put || lnet.type == .ack else {
                violation(.unexpectedMessage, "IMMEDIATE carrying an LNet \(lnet.type)", &state, &deferred)
                return nil
            }
            guard Int(lnet.payloadLength) == length else {
                violation(.badDescriptor, "LNet header says \(lnet.payloadLength) payload bytes, message carries \(length)",
                          &state, &deferred)
                return nil
            }
            header = lnet
            let payload = UnsafeRawBufferPointer(rebasing: resources.receiveBuffers.bytes[slot * size + offset..<slot * size + offset + length])
            receiveContext = ReceiveContext(connection: self, kind: .immediate(slot: slot, payload: payload))
        case .putRequest(let lnet, let cookie, let source):
            guard lnet.type == .put else {
                violation(.unexpectedMessage, "PUT_REQ carrying an LNet \(lnet.type)", &state, &deferred)
                return nil
            }
            // A pull source must cover exactly the PUT: our READ may touch nothing the peer did not expose.
            guard source.fragments.isEmpty || source.totalLength == Int(lnet.payloadLength) else {
                violation(.badDescriptor, "PUT_REQ source covers \(source.totalLength) bytes, the PUT has \(lnet.payloadLength)",
                          &state, &deferred)
                return nil
            }
            header = lnet
            receiveContext = ReceiveContext(connection: self, kind: .putRequest(cookie: cookie, source: source))
            repost(slot: slot, credited: true, resources, &state, &deferred)
        case .getRequest(let lnet, let cookie, let sink):
            guard lnet.type == .get else {
                violation(.unexpectedMessage, "GET_REQ carrying an LNet \(lnet.type)", &state, &deferred)
                return nil
            }
            // A described sink must cover what the GET asks for; an undescribed one must fit a REPLY.
            let asked = Int(lnet.length)
            guard sink.fragments.isEmpty ? asked <= WireFormat.replyCapacity(maxMessageSize: size) : sink.totalLength >= asked else {
                violation(.badDescriptor, "GET_REQ for \(asked) bytes with a sink of \(sink.totalLength) bytes"
                          + (sink.fragments.isEmpty ? " (undescribed: a REPLY carries \(WireFormat.replyCapacity(maxMessageSize: size)))" : ""),
                          &state, &deferred)
                return nil
            }
            header = lnet
            receiveContext = ReceiveContext(connection: self, kind: .getRequest(cookie: cookie, sink: sink))
            repost(slot: slot, credited: true, resources, &state, &deferred)
        default:
            return nil
        }
        return (header, receiveContext)
    }

    /// Gives a receive buffer back to the queue pair; a credited message's buffer is a credit owed to the peer.
    func repost(slot: Int, credited: Bool, _ resources: Resources, _ state: inout State, _ deferred: inout Deferred) {
        guard state.phase == .established else { return }
        let size = resources.messageSize
        do {
            try resources.queuePair.postReceive(id: UInt64(slot), resources.receiveBuffers.sge(offset: slot * size, length: size))
            if credited { state.queue.credits.reposted() }
        } catch {
            closeLocked(&state, reason: "re-posting a receive buffer failed: \(error)", status: .connectionClosed, &deferred)
        }
    }

    /// An IMMEDIATE's buffer is free again (the core copied the payload, or dropped it).
    func release(slot: Int) {
        var deferred = Deferred()
        state.withLock { state in
            guard let resources = state.resources else { return }
            repost(slot: slot, credited: true, resources, &state, &deferred)
            pump(&state, &deferred)
        }
        deferred.run()
    }
}
