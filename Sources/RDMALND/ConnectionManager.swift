import DequeModule
import Foundation
import LNet
import Logging
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// The rdma_cm side of the LND, on one thread: it listens on the interface's address, makes connections the
/// send path asks for, accepts or rejects incoming ones, and turns disconnects into closed connections.
///
/// Handshake rules:
/// - The passive side rejects a request whose version, destination NID or limits it cannot take, saying why
///   and what it would accept; the active side retries with those limits when the reason allows.
/// - Connection race (both sides connecting at once): the side with the higher NID keeps its own connection
///   and rejects the other's request; the lower side accepts, moves its queued messages over, and drops its
///   own attempt. Exactly one connection survives.
/// - A request from a newer incarnation of a peer replaces the old connection (whose messages fail); one from
///   an older incarnation is rejected as stale.
///
/// No CM message while the link is down: on rxe a CM message (REQ, REP, RTU, REJ, DREQ, DREP) posted while the
/// device's link is down fails for want of a route and puts the device's GSI queue pair (QP1, which carries every
/// CM message) into the error state, after which no rdma_cm connection on the device works, in any process, until
/// the device is re-created. Destroying an id sends one too (a DREQ for a connected id, a REJ for one still
/// connecting). So while the port is down this thread starts no connection (the attempt fails at once and the
/// back-off applies), connects, establishes, accepts, rejects and disconnects nothing, and closes the connections
/// still connecting (their requests would be resent while it is down); and it holds every id it made or accepted,
/// destroying one only once nothing else holds it and the port is up.
final class ConnectionManager: @unchecked Sendable {
    private let channel: CMEventChannel
    /// Released on stop, so the address and port are free again at once.
    private var listener: CMID?
    private let thread: ServiceThread
    private let requests = Mutex<Deque<(connection: Connection, delay: Duration)>>([])
    /// Only the CM thread touches this map.
    private var byID: [ObjectIdentifier: (CMID, Connection, ConnectionLimits)] = [:]
    private var retries: [(at: ContinuousClock.Instant, connection: Connection, limits: ConnectionLimits)] = []
    /// Every id this thread made or accepted, until it is destroyed (only here, only with the port up).
    private var held: [CMID] = []
    /// The port's state at the last pass (to notice it going down).
    private var portWasUp = true
    private unowned(unsafe) let runtime: LNDRuntime

    /// Binds and listens on `endpoint`; the listener's device is the LND's device.
    init(channel: CMEventChannel, listener: CMID, runtime: LNDRuntime) throws(LNetError) {
        self.channel = channel
        self.listener = listener
        self.runtime = runtime
        self.thread = try ServiceThread(name: "o2ib-cm")
    }

    private var context: LNDContext { runtime.context }
    private var logger: Logger { runtime.context.logger }

    func start() throws(LNetError) {
        try thread.startLoop(watching: channel.fileDescriptor, body: { [self] in serveOnce() },
                             tearDown: { [self] in
                                 byID.removeAll()
                                 retries.removeAll()
                                 held.removeAll()
                             })
    }

    /// Stops the thread and waits for it; then releases the listener and every id still held.
    func stop() {
        thread.stop()
        listener = nil
    }

    /// Asks the CM thread to connect `connection` (active, just made by the send path), after `delay`.
    func connect(_ connection: Connection, after delay: Duration = .zero) {
        requests.withLock { $0.append((connection, delay)) }
        wake()
    }

    private func wake() {
        thread.wake()
    }

    /// Whether the port the LND listens on is up (as rxe reports it; unknown counts as up).
    private func portIsUp() -> Bool {
        switch listener?.portState() {
        case .none, .active, .activeDeferred: true
        default: false
        }
    }

    /// One pass of the CM thread: the port's state, connect requests, due retries, every pending rdma_cm event,
    /// then the ids that may go.
    private func serveOnce() {
        let up = portIsUp()
        if !up && portWasUp {
            // Requests still in flight would be resent by the CM while the link is down: end those attempts and let
            // the back-off retry; their ids, and those of connections that closed before the CM was done with them,
            // go once the port is back (destroying them cancels what the CM would resend).
            logger.warning("port down: failing the connections still connecting")
            for (key, entry) in byID where entry.1.phase != .established {
                byID[key] = nil
                if entry.1.phase == .connecting { fail(entry.1, "the port went down while connecting", status: .unreachable) }
            }
        }
        portWasUp = up
        let asked = requests.withLock { queue -> [(connection: Connection, delay: Duration)] in
            defer { queue.removeAll() }
            return Array(queue)
        }
        for (connection, delay) in asked {
            if delay > .zero {
                retries.append((at: .now + delay, connection: connection, limits: context.localLimits))
            } else {
                startActive(connection, limits: context.localLimits)
            }
        }
        let now = ContinuousClock.now
        let due = retries.filter { $0.at <= now }
        retries.removeAll { $0.at <= now }
        for retry in due where retry.connection.phase == .connecting {
            startActive(retry.connection, limits: retry.limits)
        }
        do {
            while let event = try channel.nextEvent() { handle(event) }
        } catch {
            logger.error("rdma_cm event channel failed: \(error)")
        }
        release()
    }

    /// Destroys the ids nothing else holds any more (neither a connection nor the map of ids whose events still
    /// matter) - only with the port up: destroying one may send a CM message.
    private func release() {
        guard portIsUp() else { return }
        var index = 0
        while index < held.count {
            // Only this thread holds the array and makes new references from the channel's weak ones, so an id
            // found uniquely referenced here stays so.
            if isKnownUniquelyReferenced(&held[index]) {
                held.swapAt(index, held.count - 1)
                held.removeLast()
            } else {
                index += 1
            }
        }
    }

    // MARK: - Active side

    private func startActive(_ connection: Connection, limits: ConnectionLimits) {
        guard portIsUp() else {
            fail(connection, "cannot start connecting: the port is down", status: .unreachable)
            return
        }
        var key: ObjectIdentifier?
        do {
            let id = try channel.createID()
            held.append(id)
            key = ObjectIdentifier(id)
            byID[ObjectIdentifier(id)] = (id, connection, limits)
            try id.setAckTimeout(UInt8(context.tunables.ackTimeout))
            let source = try IPv4Endpoint(formatIPv4(context.nid.address))
            let destination = try IPv4Endpoint(formatIPv4(connection.peer.address), port: UInt16(context.tunables.servicePort))
            try id.resolveAddress(from: source, to: destination, timeout: .seconds(min(context.tunables.timeout, 5)))
        } catch {
            if let key { byID[key] = nil }
            fail(connection, "cannot start connecting: \(error)", status: .unreachable)
        }
    }

    private func fail(_ connection: Connection, _ reason: String, status: LNetStatus) {
        if connection.role == .active, connection.phase == .connecting { runtime.attempt(to: connection.peer, succeeded: false) }
        connection.close(reason: reason, status: status)
        runtime.forget(connection)
    }

    private func handle(_ event: CMEvent) {
        let key = ObjectIdentifier(event.id)
        if event.kind == .connectRequest {
            handleRequest(event)
            return
        }
        guard let (id, connection, limits) = byID[key] else { return }
        switch event.kind {
        case .addressResolved:
            do {
                try id.resolveRoute(timeout: .seconds(min(context.tunables.timeout, 5)))
            } catch {
                fail(connection, "route resolution failed to start: \(error)", status: .unreachable)
            }
        case .routeResolved:
            guard connection.phase == .connecting else { return }
            guard portIsUp() else {
                fail(connection, "the port went down before the connect request", status: .unreachable)
                return
            }
            do {
                try connection.attach(id: id, limits: limits)
                guard let queuePair = connection.resources?.queuePair else { return }
                let request = ConnectRequest(source: context.nid.rawValue, sourceStamp: context.stamp,
                                             destination: connection.peer.rawValue, limits: limits)
                try id.connect(ConnectionParameters(privateData: request.encoded(), responderResources: context.readDepth,
                                                    initiatorDepth: context.readDepth, retryCount: UInt8(context.tunables.retryCount),
                                                    rnrRetryCount: UInt8(context.tunables.rnrRetryCount)),
                               queuePair: queuePair)
            } catch {
                fail(connection, "connect failed: \(error)", status: .unreachable)
            }
        case .connectResponse:
            // Accepted: check the acceptance, bring our QP to RTS, and complete the handshake.
            guard connection.phase == .connecting else { return }
            guard let accept = try? ConnectAccept.decode(event.privateData), accept.source == connection.peer.rawValue,
                  accept.requesterStamp == context.stamp, accept.limits == limits else {
                context.counters.bump(.protocolErrors)
                if portIsUp() {
                    try? id.reject(privateData: ConnectReject(reason: .malformed, stamp: context.stamp, limits: context.localLimits,
                                                              servedNID: context.nid.rawValue).encoded())
                }
                fail(connection, "malformed or mismatched connection acceptance", status: .protocolError)
                return
            }
            guard portIsUp() else {
                fail(connection, "the port went down before the connection was established", status: .unreachable)
                return
            }
            do {
                try connection.readyQueuePair()
                try id.establish()
                connection.established(peerStamp: accept.sourceStamp)
                runtime.attempt(to: connection.peer, succeeded: true)
            } catch {
                fail(connection, "completing the connection failed: \(error)", status: .unreachable)
            }
        case .established:
            // A connection closed before rdma_cm saw it established (the passive side closes on a bad first message
            // before the peer's RTU arrives) could not send its disconnect request then: send it now, or the peer
            // never learns.
            if connection.phase == .closed, portIsUp() { disconnectLate(id, connection) }
        case .rejected:
            byID[key] = nil
            handleReject(event, connection: connection, limits: limits)
        case .addressError, .routeError, .unreachable, .connectError:
            byID[key] = nil
            fail(connection, "cannot reach \(connection.peer): \(event.kind) (status \(event.status))", status: .unreachable)
        case .disconnected:
            // Answer the peer's request (DREP) - with the port down, rdma_destroy_id answers it later.
            if portIsUp() { try? id.disconnect() }
            fail(connection, "disconnected by the peer", status: .connectionClosed)
        case .timeWaitExit:
            byID[key] = nil
        case .deviceRemoval:
            fail(connection, "device removed", status: .connectionClosed)
        default:
            break
        }
    }

    private func disconnectLate(_ id: CMID, _ connection: Connection) {
        do {
            try id.disconnect()
            logger.info("sent the disconnect request \(connection) could not send when it closed")
        } catch {
            logger.warning("disconnecting \(connection) failed: \(error)")
        }
    }

    private func handleReject(_ event: CMEvent, connection: Connection, limits: ConnectionLimits) {
        guard connection.phase == .connecting else { return }
        guard let reject = ConnectReject.decode(event.privateData) else {
            fail(connection, "connection refused by \(connection.peer) (no LND listening? status \(event.status))", status: .unreachable)
            return
        }
        let deadline = connection.created + context.tunables.timeout
        switch reject.reason {
        case .connectionRace:
            // The peer's own connection wins; it arrives here as a request and takes our queue. Should it not
            // come (the peer gave up), try again shortly.
            logger.debug("connection race with \(connection.peer): waiting for its connection")
            if Tick.coarse < deadline {
                retry(connection, limits: limits, after: .milliseconds(200))
            }
        case .queueDepthTooLarge, .tooManyFragments, .messageSizeTooLarge, .noResources:
            let lowered = ConnectionLimits(queueDepth: min(limits.queueDepth, reject.limits.queueDepth),
                                           maxFragments: min(limits.maxFragments, reject.limits.maxFragments),
                                           maxMessageSize: min(limits.maxMessageSize, reject.limits.maxMessageSize))
            guard lowered != limits, lowered.queueDepth >= LNDTunables.minimumQueueDepth, lowered.maxFragments >= 1,
                  Int(lowered.maxMessageSize) >= WireFormat.maxMessageSize(immediateSize: 0, maxFragments: Int(lowered.maxFragments)),
                  Tick.coarse < deadline else {
                fail(connection, "rejected by \(connection.peer): \(reject.reason); its limits \(reject.limits) are unusable", status: .unreachable)
                return
            }
            logger.info("rejected by \(connection.peer): \(reject.reason); retrying with \(lowered)")
            context.counters.bump(.reconnects)
            retry(connection, limits: lowered, after: reject.reason == .noResources ? .milliseconds(500) : .zero)
        default:
            fail(connection, "rejected by \(connection.peer): \(reject.reason)", status: .unreachable)
        }
    }

    /// Tries again on a fresh id and connection (a rejected id cannot connect again); the queue moves over.
    private func retry(_ connection: Connection, limits: ConnectionLimits, after delay: Duration) {
        let fresh = runtime.replace(connection)
        retries.append((at: .now + delay, connection: fresh, limits: limits))
    }

    // MARK: - Passive side

    private func handleRequest(_ event: CMEvent) {
        let id = event.id
        held.append(id)
        guard portIsUp() else {
            // Neither accept nor reject (either sends a CM message); the id goes once the port is back.
            logger.info("port down: ignoring a connection request")
            return
        }
        let request: ConnectRequest
        do {
            request = try ConnectRequest.decode(event.privateData)
        } catch {
            reject(id, .malformed, "malformed connection request: \(error)")
            return
        }
        let peer = NID(rawValue: request.source)
        guard request.version == Handshake.version else {
            reject(id, .versionMismatch, "\(peer) speaks version \(request.version)")
            return
        }
        guard request.destination == context.nid.rawValue else {
            reject(id, .wrongDestination, "request from \(peer) for \(NID(rawValue: request.destination))")
            return
        }
        guard peer.network == context.nid.network, peer != context.nid,
              id.remoteEndpoint?.address == formatIPv4(peer.address) else {
            reject(id, .wrongDestination, "request claims NID \(peer) from address \(id.remoteEndpoint?.address ?? "?")")
            return
        }
        let ours = context.localLimits
        if request.limits.queueDepth < LNDTunables.minimumQueueDepth {
            reject(id, .malformed, "\(peer) asked for queue depth \(request.limits.queueDepth)")
            return
        }
        if request.limits.queueDepth > ours.queueDepth {
            reject(id, .queueDepthTooLarge, "\(peer) asked for queue depth \(request.limits.queueDepth), ours is \(ours.queueDepth)")
            return
        }
        if request.limits.maxFragments > ours.maxFragments || request.limits.maxFragments < 1 {
            reject(id, .tooManyFragments, "\(peer) asked for \(request.limits.maxFragments) fragments")
            return
        }
        if request.limits.maxMessageSize > ours.maxMessageSize
            || Int(request.limits.maxMessageSize) < WireFormat.maxMessageSize(immediateSize: 0, maxFragments: Int(request.limits.maxFragments)) {
            reject(id, .messageSizeTooLarge, "\(peer) asked for \(request.limits.maxMessageSize)-byte messages")
            return
        }
        let decision = runtime.admit(peer: peer, stamp: request.sourceStamp)
        let connection: Connection
        switch decision {
        case .reject(let reason, let why):
            reject(id, reason, why)
            return
        case .accept(let fresh):
            connection = fresh
        }
        do {
            try id.setAckTimeout(UInt8(context.tunables.ackTimeout))
            try connection.attach(id: id, limits: request.limits)
            let accept = ConnectAccept(source: context.nid.rawValue, sourceStamp: context.stamp, requesterStamp: request.sourceStamp,
                                       limits: request.limits, destination: request.source)
            let depth = min(context.readDepth, event.initiatorDepth, event.responderResources)
            // Established before the accept goes out: the peer may send the moment it sees the acceptance.
            byID[ObjectIdentifier(id)] = (id, connection, request.limits)
            try connection.readyQueuePair()
            guard let queuePair = connection.resources?.queuePair else { throw VerbsError(call: "accept", errno: EINVAL) }
            connection.established(peerStamp: request.sourceStamp, sending: false)
            guard portIsUp() else { throw VerbsError(call: "rdma_accept", errno: ENETDOWN, detail: "the port is down") }
            try id.accept(ConnectionParameters(privateData: accept.encoded(), responderResources: depth, initiatorDepth: depth,
                                               retryCount: UInt8(context.tunables.retryCount), rnrRetryCount: UInt8(context.tunables.rnrRetryCount)),
                          queuePair: queuePair)
            connection.startSending()
            runtime.attempt(to: peer, succeeded: true)
        } catch {
            logger.warning("cannot accept \(peer): \(error)")
            if portIsUp() {
                try? id.reject(privateData: ConnectReject(reason: .noResources, stamp: context.stamp, limits: ours,
                                                          servedNID: context.nid.rawValue).encoded())
            }
            fail(connection, "accept failed: \(error)", status: .connectionClosed)
        }
    }

    private func reject(_ id: CMID, _ reason: RejectReason, _ why: String) {
        logger.info("rejecting a connection: \(why) (\(reason))")
        context.counters.bump(.rejectsSent)
        let reject = ConnectReject(reason: reason, stamp: context.stamp, limits: context.localLimits, servedNID: context.nid.rawValue)
        // With the port down the id goes unanswered; destroying it later (port up) rejects it.
        guard portIsUp() else { return }
        try? id.reject(privateData: reject.encoded())
    }
}
