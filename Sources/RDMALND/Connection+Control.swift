import LNet
import Verbs

/// Control messages (PUT_ACK, PUT_NAK, PUT_DONE, PULL, GET_DONE, REPLY, NOOP) move transactions along; they are
/// handled here, under the connection's lock, and never go through LNet matching.
extension Connection {
    func handleControl(_ body: WireBody, slot: Int, _ resources: Resources, _ state: inout State, _ deferred: inout Deferred) {
        func transaction(_ cookie: UInt64, _ kinds: [Transaction.Kind], _ what: String) -> Transaction? {
            guard let transaction = state.transactions[cookie], kinds.contains(transaction.kind),
                  !transaction.initiated || transaction.requestPosted else {
                violation(.unknownTransfer, "\(what) for a transfer that does not exist (cookie \(cookie))", &state, &deferred)
                return nil
            }
            return transaction
        }
        func unexpected(_ reason: String) { violation(.unexpectedMessage, reason, &state, &deferred) }
        func badDescriptor(_ reason: String) { violation(.badDescriptor, reason, &state, &deferred) }
        switch body {
        case .noop:
            break
        case .putAck(let sourceCookie, let sinkCookie, let sink):
            guard let transaction = transaction(sourceCookie, [.putSource], "PUT_ACK") else { return }
            guard !transaction.pull else { return unexpected("PUT_ACK for a PUT sent by pull") }
            transaction.peerCookie = sinkCookie
            // The sink may have matched fewer bytes (a truncating MD): move what it offers room for.
            transaction.length = min(transaction.length, sink.totalLength)
            guard transaction.message != nil else { return }
            // The source was registered when the PUT was sent (not here, on the scheduler thread).
            // WRITE, then PUT_DONE in the same chain; the PUT is done when PUT_DONE has gone.
            let done = Outgoing(body: .putDone(cookie: sinkCookie, status: 0, length: UInt32(transaction.length)),
                                onSent: .finishTransaction(transaction.cookie), deadline: transaction.deadline)
            startRDMA(transaction, remote: sink, read: false, then: done, &state, &deferred)
        case .putNak(let sourceCookie, let status):
            guard let transaction = transaction(sourceCookie, [.putSource], "PUT_NAK") else { return }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &deferred)
        case .putDone(let cookie, let status, _):
            // Pull: the sink READ our source (source side). Push: the source WROTE into our sink (sink side).
            guard let transaction = transaction(cookie, [.putSource, .putSink], "PUT_DONE") else { return }
            if transaction.kind == .putSink && transaction.pull { return unexpected("PUT_DONE for a PUT we are pulling") }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &deferred)
        case .pull(let requesterCookie, let targetCookie, let status, let length, let source):
            guard let transaction = transaction(requesterCookie, [.getRequester], "PULL") else { return }
            guard !transaction.eager else { return unexpected("PULL for a GET whose sink fits a REPLY") }
            guard status == 0 else {
                complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &deferred)
                return
            }
            guard Int(length) <= transaction.length, source.totalLength >= Int(length) else {
                return badDescriptor("PULL of \(length) bytes does not fit the \(transaction.length)-byte sink")
            }
            transaction.peerCookie = targetCookie
            transaction.length = Int(length)
            // READ, then GET_DONE once it completed; the REPLY is delivered when the READ completes, the
            // transaction (its slot) ends when GET_DONE has gone.
            let done = Outgoing(body: .getDone(cookie: targetCookie, status: 0, length: length),
                                onSent: .finishTransaction(transaction.cookie), deadline: transaction.deadline)
            startRDMA(transaction, remote: source, read: true, then: done, &state, &deferred)
        case .getDone(let cookie, let status, let length):
            // Push (or an error): the target wrote our sink. Pull: the requester finished reading our source.
            guard let transaction = transaction(cookie, [.getRequester, .getTarget], "GET_DONE") else { return }
            if transaction.kind == .getRequester {
                guard Int(length) <= transaction.length else {
                    return badDescriptor("GET_DONE claims \(length) bytes for a \(transaction.length)-byte sink")
                }
                guard !transaction.eager || status != 0 else { return unexpected("GET_DONE with data for a GET whose sink fits a REPLY") }
                transaction.length = Int(length)
            } else if !transaction.pull {
                return unexpected("GET_DONE for a GET we are pushing")
            }
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &deferred)
        case .reply(let cookie, let status, let payloadOffset, let payloadLength):
            guard let transaction = transaction(cookie, [.getRequester], "REPLY") else { return }
            guard transaction.eager else { return unexpected("REPLY for a GET whose sink was described for RDMA") }
            guard payloadLength <= transaction.length else {
                return badDescriptor("REPLY of \(payloadLength) bytes for a \(transaction.length)-byte sink")
            }
            // The data lands in the sink now, before the receive buffer is re-posted.
            let size = resources.messageSize
            let start = slot * size + payloadOffset
            transaction.message?.sink?.copy(from: UnsafeRawBufferPointer(rebasing: resources.receiveBuffers.bytes[start..<start + payloadLength]))
            transaction.length = status == 0 ? payloadLength : 0
            complete(transaction, status: LNetStatus(wire: UInt32(bitPattern: status)), &state, &deferred)
        case .immediate, .putRequest, .getRequest:
            break
        }
    }

    /// A transaction's READ completed: the data is here.
    func rdmaDelivered(_ transaction: Transaction, _ state: inout State, _ deferred: inout Deferred) {
        // The READ is over: the peer may release its source now.
        if let done = transaction.afterRead {
            transaction.afterRead = nil
            state.queue.enqueue(done)
        }
        switch transaction.kind {
        case .putSink:
            // Pulled a PUT: it is received (PUT_DONE is queued).
            complete(transaction, status: .ok, &state, &deferred)
        case .getRequester:
            // Pulled a GET's REPLY: deliver it now; the transaction ends when GET_DONE has gone.
            guard let get = transaction.message else { return }
            transaction.message = nil
            transaction.revokeGrant()
            deferred.completeGet(get, .ok, length: transaction.length)
        case .putSource, .getTarget:
            break
        }
    }

    /// Ends a transaction: revokes its memory, releases its slot, finalizes its LNet message.
    func complete(_ transaction: Transaction, status: LNetStatus, _ state: inout State, _ deferred: inout Deferred) {
        guard state.transactions.removeValue(forKey: transaction.cookie) != nil else { return }
        transaction.revokeGrant()
        if transaction.initiated && transaction.requestPosted {
            _ = state.queue.credits.finishTransaction()
            returnInterfaceCredit(&deferred)
        }
        guard let message = transaction.message else { return }
        transaction.message = nil
        if transaction.kind == .getRequester {
            deferred.completeGet(message, status, length: status == .ok ? transaction.length : 0)
        } else {
            deferred.finalize(message, status)
        }
    }

    /// A GET we sent is over: report its REPLY (data landed, or the target's error) and finalize both.
    /// Under early placement this runs on the partition that sent the GET (its MD cookie names it); otherwise here,
    /// without making a closure per GET.
    static func completeGet(_ get: LNetMessage, status: LNetStatus, length: Int) {
        guard get.ni.placesIncoming else { return finishGet(get, status: status, length: length) }
        get.ni.run(onPartitionOf: get.header.mdCookie) { finishGet(get, status: status, length: length) }
    }

    private static func finishGet(_ get: LNetMessage, status: LNetStatus, length: Int) {
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
}
