import Metrics
import DequeModule
import Logging
import Synchronization

// The core's side of an incoming message: parse (called by an LND through LNetNI), matching against the portal's
// match entries, lazy portals, and the ACK, REPLY or drop that answers it.

extension LNet {
    // MARK: - Incoming messages (called through LNetNI)

    /// `partition`: where the message is matched (early placement); `nil`: on the receiving thread, the peer's.
    func parse(ni: LNetNI, header: LNetHeader, from: NID, context: (any LNDPrivate)?, wantsRDMA: Bool,
               partition: Int? = nil) -> LNetParseOutcome {
        guard !ni.isStopping else {
            ni.counters.recordDrop(peer: header.source.nid, bytes: Int(header.payloadLength))
            ni.lnd.drop(ni: ni, header: header, status: .shutdown, context: context)
            return .dropped(.shutdown)
        }
        var effects = Effects()
        var outcome = state.withLock { state -> LNetParseOutcome? in
            incoming(&state, ni: ni, header: header, context: context, wantsRDMA: wantsRDMA, mayDelay: true,
                     partition: partition, &effects)
        }
        perform(effects)
        if let outcome { return outcome }

        // A lazy portal wants to hold the message: let the LND copy it out of its receive buffer first.
        let held: (any LNDPrivate)?
        do {
            held = try ni.lnd.eagerReceive(ni: ni, header: header, context: context)
        } catch {
            ni.logger.warning("eager receive failed; dropping", metadata: ["header": "\(header)", "error": "\(error)"])
            effects = Effects()
            _ = state.withLock { state in
                reject(&state, ni: ni, header: header, status: .noResources, context: context, wantsRDMA: wantsRDMA,
                       partition: partition, &effects)
            }
            perform(effects)
            return .dropped(.noResources)
        }
        effects = Effects()
        outcome = state.withLock { state -> LNetParseOutcome? in
            if let done = incoming(&state, ni: ni, header: header, context: held, wantsRDMA: wantsRDMA, mayDelay: false,
                                   partition: partition, &effects) {
                return done
            }
            var portal = state.portals[header.portal] ?? Portal()
            guard portal.lazy, portal.delayed.count < configuration.maxDelayedPerPortal else {
                return reject(&state, ni: ni, header: header, status: .noMatch, context: held, wantsRDMA: wantsRDMA,
                              partition: partition, &effects)
            }
            portal.delayed.append(DelayedMessage(ni: ni, header: header, context: held, wantsRDMA: wantsRDMA))
            state.portals[header.portal] = portal
            return .delayed
        }
        perform(effects)
        return outcome ?? .delayed
    }

    /// Matches an incoming message. Returns `nil` only when `mayDelay` and the message should be held on a lazy
    /// portal (nothing has been done yet); when `mayDelay` is false, returns `nil` for an unmatched message on a
    /// lazy portal too, leaving the decision to the caller.
    func incoming(_ state: inout State, ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?, wantsRDMA: Bool,
                          mayDelay: Bool, partition: Int? = nil, _ effects: inout Effects) -> LNetParseOutcome? {
        let forUs: Bool
        if ni.nid.network == .loopback {
            forUs = state.isLocal(header.destination.nid)
        } else {
            forUs = header.destination.nid == ni.nid
        }
        guard forUs, header.destination.pid == pid else {
            ni.logger.debug("message not for this node", metadata: ["header": "\(header)"])
            return reject(&state, ni: ni, header: header, status: forUs ? .noMatch : .unreachable, context: context,
                          wantsRDMA: wantsRDMA, partition: partition, &effects)
        }
        switch header.type {
        case .put, .get:
            return matchRequest(&state, ni: ni, header: header, context: context, wantsRDMA: wantsRDMA, mayDelay: mayDelay,
                                partition: partition, &effects)
        case .ack:
            // An ACK nobody waits for any more (its PUT's transaction timeout passed) is dropped.
            guard let record = state.mds[header.mdCookie], record.isActive, endAckWait(&state, record: record) else {
                return reject(&state, ni: ni, header: header, status: .noMatch, context: context, wantsRDMA: wantsRDMA, &effects)
            }
            record.attach()
            let length = Int(header.length)
            let message = LNetMessage(
                id: nextMessageID(), header: header, direction: .incoming, lndWantsRDMA: wantsRDMA, ni: ni,
                completion: .init(md: record.handle, event: .ack, initiator: header.destination, target: header.source,
                                  offset: Int(clamping: header.offset), userHeaderData: 0, remoteStatus: header.status),
                requestedLength: length, matchedLength: length)
            effects.actions.append(.receive(ni, message, context))
            return .receiving
        case .reply:
            guard let record = state.mds[header.mdCookie], record.isActive else {
                return reject(&state, ni: ni, header: header, status: .noMatch, context: context, wantsRDMA: wantsRDMA, &effects)
            }
            let requested = header.status.isOK ? Int(header.payloadLength) : 0
            guard requested <= record.length || record.options.contains(.truncate) else {
                return reject(&state, ni: ni, header: header, status: .tooLarge, context: context, wantsRDMA: wantsRDMA, &effects)
            }
            let matched = min(requested, record.length)
            record.attach()
            let message = LNetMessage(
                id: nextMessageID(), header: header, direction: .incoming,
                payload: record.window(offset: 0, length: matched), lndWantsRDMA: wantsRDMA, ni: ni,
                completion: .init(md: record.handle, event: .reply, initiator: header.destination, target: header.source,
                                  offset: 0, userHeaderData: 0, remoteStatus: header.status),
                requestedLength: requested, matchedLength: matched)
            effects.actions.append(.receive(ni, message, context))
            return .receiving
        }
    }

    func matchRequest(_ state: inout State, ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?,
                              wantsRDMA: Bool, mayDelay: Bool, partition: Int? = nil, _ effects: inout Effects) -> LNetParseOutcome? {
        let requested = Int(header.type == .put ? header.payloadLength : header.length)
        let portal = state.portals[header.portal]
        let outcome = portal?.match(type: header.type, initiator: header.source, matchBits: header.matchBits,
                                    offset: Int(clamping: header.offset), length: requested) ?? .none
        switch outcome {
        case .none:
            if portal?.lazy == true { return nil }
            return reject(&state, ni: ni, header: header, status: .noMatch, context: context, wantsRDMA: wantsRDMA,
                          partition: partition, &effects)
        case .rejected(let status):
            return reject(&state, ni: ni, header: header, status: status, context: context, wantsRDMA: wantsRDMA,
                          partition: partition, &effects)
        case .matched(let record, let offset, let length):
            record.attach()
            if !record.options.contains(.manageRemote) { record.localOffset = offset + length }
            if header.type == .put {
                let message = LNetMessage(
                    id: nextMessageID(), header: header, direction: .incoming,
                    payload: record.window(offset: offset, length: length), lndWantsRDMA: wantsRDMA, ni: ni,
                    completion: .init(md: record.handle, event: .put, initiator: header.source, target: header.destination,
                                      offset: offset, userHeaderData: header.headerData,
                                      sendsAck: header.ackRequested && !record.options.contains(.ackDisable),
                                      partition: partition),
                    requestedLength: requested, matchedLength: length)
                effects.actions.append(.receive(ni, message, context))
                return .receiving
            }
            ni.counters.recordReceived(peer: header.source.nid, bytes: 0)
            var replyHeader = header.reply(payloadLength: length, offset: UInt64(offset))
            replyHeader.givenCookie = cookie(ni: ni, request: header, partition: partition)
            let reply = LNetMessage(
                id: nextMessageID(), header: replyHeader, direction: .outgoing,
                payload: record.window(offset: offset, length: length), privateContext: context, lndWantsRDMA: wantsRDMA,
                ni: ni,
                completion: .init(md: record.handle, event: .get, initiator: header.source, target: header.destination,
                                  offset: offset, userHeaderData: 0),
                requestedLength: requested, matchedLength: length)
            effects.actions.append(.send(ni, reply))
            return .replying
        }
    }

    /// Drops an incoming message, telling the sender: a negative ACK for a PUT that asked for one, a failed REPLY
    /// for a GET (carrying the LND's context), and ``LNetLND/drop(ni:header:status:context:)`` for everything but GET.
    @discardableResult
    func reject(_ state: inout State, ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?,
                        wantsRDMA: Bool, partition: Int? = nil, _ effects: inout Effects) -> LNetParseOutcome {
        ni.counters.recordDrop(peer: header.source.nid, bytes: Int(header.payloadLength))
        ni.logger.debug("dropping incoming message", metadata: ["header": "\(header)", "status": "\(status)"])
        switch header.type {
        case .put:
            if header.ackRequested {
                effects.actions.append(.send(ni, makeAck(ni: ni, request: header, matched: 0, offset: 0, status: status,
                                                         partition: partition)))
            }
            effects.actions.append(.drop(ni, header, status, context))
        case .get:
            var replyHeader = header.reply(payloadLength: 0, offset: header.offset, status: status)
            replyHeader.givenCookie = cookie(ni: ni, request: header, partition: partition)
            let reply = LNetMessage(id: nextMessageID(), header: replyHeader, direction: .outgoing,
                                    privateContext: context, lndWantsRDMA: wantsRDMA, ni: ni,
                                    completion: .init(md: nil, event: nil, initiator: header.source, target: header.destination,
                                                      offset: 0, userHeaderData: 0),
                                    requestedLength: Int(header.length), matchedLength: 0)
            effects.actions.append(.send(ni, reply))
            return .replying
        case .ack, .reply:
            effects.actions.append(.drop(ni, header, status, context))
        }
        return .dropped(status)
    }

    /// The placement cookie an ACK or REPLY to `request` carries (``Configuration/placementCookies``): the
    /// partition the request was matched on (`nil`: the receiving thread's, which is the peer's).
    func cookie(ni: LNetNI, request: LNetHeader, partition: Int?) -> LNetPlacementCookie? {
        guard configuration.placementCookies else { return nil }
        return LNetPlacementCookie(partition: partition ?? ni.partitions.partition(forPeer: request.source.nid))
    }

    func makeAck(ni: LNetNI, request: LNetHeader, matched: Int, offset: Int, status: LNetStatus,
                 partition: Int? = nil) -> LNetMessage {
        var header = LNetHeader(type: .ack, source: request.destination, destination: request.source,
                                length: UInt32(matched), portal: request.portal, matchBits: request.matchBits,
                                offset: UInt64(offset), mdCookie: request.mdCookie, status: status, hints: request.hints)
        header.givenCookie = cookie(ni: ni, request: request, partition: partition)
        return LNetMessage(id: nextMessageID(), header: header, direction: .outgoing, ni: ni,
                           completion: .init(md: nil, event: nil, initiator: request.source, target: request.destination,
                                             offset: offset, userHeaderData: 0),
                           requestedLength: 0, matchedLength: 0)
    }

    /// Tries every message held on a lazy portal against the portal's entries again (after an attach).
    func redeliverDelayed(_ state: inout State, portal index: UInt32, _ effects: inout Effects) {
        guard let held = state.portals[index]?.delayed, !held.isEmpty else { return }
        var still: Deque<DelayedMessage> = []
        state.portals[index]?.delayed.removeAll()
        for message in held {
            let outcome = matchRequest(&state, ni: message.ni, header: message.header, context: message.context,
                                       wantsRDMA: message.wantsRDMA, mayDelay: true, &effects)
            if outcome == nil { still.append(message) }
        }
        state.portals[index]?.delayed = still
    }
}
