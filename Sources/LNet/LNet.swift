import Metrics
import DequeModule
import Logging
import Synchronization

/// An LNet instance: network interfaces (each driven by an LND), MDs, match entries, portals and the Put/Get API.
///
/// It is an ordinary object (no process-wide state), so several nodes can live in one process. Call
/// ``shutdown()`` when done: it stops the interfaces and breaks the references between them and the instance.
///
/// Locking: one core lock protects MDs, match entries and portals, and is held only for table updates. It is never
/// held while an LND or application code runs. Events are appended to their queue while the core lock is held (so
/// an MD's events are queued in the order its state changed, and the `unlinked` event is last); each queue then
/// delivers them under its own lock discipline (see ``EventQueue``).
public final class LNet: Sendable {
    /// Instance settings.
    public struct Configuration: Sendable {
        /// The pid of this instance's processes.
        public var pid: UInt32
        /// CPU partitions for placing incoming work.
        public var partitions: CPUPartitionTable
        /// Placement of incoming work on partitions.
        public var placement: PlacementPolicy
        /// At most this many messages wait on one lazy portal; more are dropped.
        public var maxDelayedPerPortal: Int
        /// Prefix of swift-metrics labels.
        public var metricsPrefix: String
        /// Also emit swift-metrics counters per peer (one series per peer NID).
        public var perPeerMetrics: Bool
        /// The metrics factory; `nil` uses the process-wide `MetricsSystem.factory` (LNet never bootstraps it).
        public var metricsFactory: (any MetricsFactory)?

        public init(pid: UInt32 = ProcessID.defaultPID, partitions: CPUPartitionTable = CPUPartitionTable(),
                    placement: PlacementPolicy = .peerHash, maxDelayedPerPortal: Int = 1024,
                    metricsPrefix: String = "lnet", perPeerMetrics: Bool = false,
                    metricsFactory: (any MetricsFactory)? = nil) {
            self.metricsFactory = metricsFactory
            self.pid = pid
            self.partitions = partitions
            self.placement = placement
            self.maxDelayedPerPortal = maxDelayedPerPortal
            self.metricsPrefix = metricsPrefix
            self.perPeerMetrics = perPeerMetrics
        }
    }

    /// Work the core does after releasing its lock: LND calls and inline event handlers.
    private struct Effects {
        enum Action {
            case send(LNetNI, LNetMessage)
            case receive(LNetNI, LNetMessage, (any LNDPrivate)?)
            case drop(LNetNI, LNetHeader, LNetStatus, (any LNDPrivate)?)
        }
        var actions = SmallList<Action>()
        var inline = SmallList<(EventQueue, LNetEvent)>()

        init() {}
        init(_ action: Action) { actions.append(action) }
    }

    private struct State {
        var mds: [UInt64: MDRecord] = [:]
        var meToMD: [UInt64: UInt64] = [:]
        var portals: [UInt32: Portal] = [:]
        var interfaces: [LNetNetwork: LNetNI] = [:]
        var nextCookie: UInt64 = 1
        var isShutdown = false
        /// Counters of interfaces that were shut down.
        var retired: [LNetInterfaceCounters] = []

        mutating func makeCookie() -> UInt64 {
            defer { nextCookie += 1 }
            return nextCookie
        }

        mutating func remove(_ record: MDRecord) {
            mds.removeValue(forKey: record.handle.cookie)
            if let me = record.matchEntry {
                portals[me.portal]?.remove(me.handle)
                meToMD.removeValue(forKey: me.handle.cookie)
            }
        }

        func isLocal(_ nid: NID) -> Bool {
            nid == .loopback || interfaces.values.contains { $0.nid == nid }
        }
    }

    public let configuration: Configuration
    public let logger: Logger
    private let state = Mutex(State())
    private let messageIDs = Atomic<UInt64>(1)

    /// Creates an instance with no interfaces.
    public init(configuration: Configuration = Configuration(), logger: Logger? = nil) {
        self.configuration = configuration
        self.logger = logger ?? Logger(label: "lnet", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    /// The pid of this instance.
    public var pid: UInt32 { configuration.pid }

    // MARK: - Interfaces

    /// Brings up an interface on `configuration.network` driven by `lnd`.
    @discardableResult
    public func addInterface(_ configuration: NetworkInterfaceConfiguration, lnd: any LNetLND) throws(LNetError) -> LNetNI {
        guard lnd.networkType == configuration.network.type else {
            throw LNetError.invalidArgument("an LND for '\(lnd.networkType)' cannot drive network '\(configuration.network)'")
        }
        try state.withLock { (state: inout State) throws(LNetError) in
            guard !state.isShutdown else { throw LNetError.shutdown }
            guard state.interfaces[configuration.network] == nil else {
                throw LNetError.duplicateNetwork(configuration.network)
            }
        }
        let address: UInt32
        if let configured = configuration.address {
            address = configured
        } else {
            address = try lnd.resolveAddress(for: configuration)
        }
        let ni = LNetNI(lnet: self, nid: NID(address: address, network: configuration.network),
                        configuration: configuration, lnd: lnd, logger: logger)
        do throws(LNetError) {
            try lnd.startup(ni: ni)
        } catch {
            if case .lndStartupFailed = error { throw error }
            throw LNetError.lndStartupFailed(network: configuration.network, reason: error.description)
        }
        let added = state.withLock { state -> Bool in
            guard !state.isShutdown, state.interfaces[configuration.network] == nil else { return false }
            state.interfaces[configuration.network] = ni
            return true
        }
        guard added else {
            ni.beginStopping()
            lnd.shutdown(ni: ni)
            throw LNetError.duplicateNetwork(configuration.network)
        }
        logger.info("LNet interface up", metadata: ["nid": "\(ni.nid)", "config": "\(configuration)"])
        return ni
    }

    /// Brings up the loopback interface `0@lo`.
    @discardableResult
    public func addLoopback() throws(LNetError) -> LNetNI {
        try addInterface(.loopback, lnd: LoopbackLND())
    }

    /// Brings up every interface of a network list, using `makeLND` to create the driver for each.
    public func addInterfaces(_ networks: NetworkConfiguration,
                              makeLND: (NetworkInterfaceConfiguration) throws(LNetError) -> any LNetLND) throws(LNetError) {
        for entry in networks.interfaces {
            try addInterface(entry, lnd: try makeLND(entry))
        }
    }

    /// The interfaces, ordered by NID.
    public var interfaces: [LNetNI] {
        state.withLock { Array($0.interfaces.values) }.sorted { $0.nid < $1.nid }
    }

    /// The interface on `network`, if any.
    public func interface(on network: LNetNetwork) -> LNetNI? {
        state.withLock { $0.interfaces[network] }
    }

    /// This instance's process id on `network`, if it has an interface there.
    public func processID(on network: LNetNetwork) -> ProcessID? {
        interface(on: network)?.processID
    }

    private func route(_ state: State, to target: NID) throws(LNetError) -> (LNetNI, NID) {
        if let ni = state.interfaces[target.network] {
            // A message to one of our own NIDs goes through loopback when there is one.
            if target == ni.nid, target.network != .loopback, let lo = state.interfaces[.loopback] {
                return (lo, target)
            }
            return (ni, ni.nid)
        }
        throw LNetError.networkUnreachable(destination: target)
    }

    // MARK: - MDs and match entries

    /// Binds a free-floating MD (for the source of a Put or the sink of a Get) (`LNetMDBind`).
    public func bind(_ descriptor: MemoryDescriptor, unlink: LNetUnlinkPolicy = .unlink) throws(LNetError) -> MDHandle {
        let storage = try validate(descriptor)
        return try state.withLock { (state: inout State) throws(LNetError) -> MDHandle in
            guard !state.isShutdown else { throw LNetError.shutdown }
            let handle = MDHandle(cookie: state.makeCookie())
            state.mds[handle.cookie] = MDRecord(handle: handle, storage: storage, descriptor: descriptor, unlinkPolicy: unlink)
            return handle
        }
    }

    /// Creates a match entry on `entry.portal` with `descriptor` attached (`LNetMEAttach` + `LNetMDAttach`).
    /// On a lazy portal, held messages that the new entry matches are delivered to it at once.
    public func attach(_ entry: MatchEntry, descriptor: MemoryDescriptor,
                       position: MatchEntryPosition = .tail) throws(LNetError) -> (me: MEHandle, md: MDHandle) {
        let storage = try validate(descriptor)
        var effects = Effects()
        let handles = try state.withLock { (state: inout State) throws(LNetError) -> (me: MEHandle, md: MDHandle) in
            guard !state.isShutdown else { throw LNetError.shutdown }
            let me = MEHandle(cookie: state.makeCookie())
            let md = MDHandle(cookie: state.makeCookie())
            let record = MDRecord(handle: md, storage: storage, descriptor: descriptor, unlinkPolicy: entry.unlink)
            record.matchEntry = (entry.portal, me, entry)
            var portal = state.portals[entry.portal] ?? Portal()
            try portal.insert(PortalEntry(handle: me, entry: entry, md: record), at: position)
            state.portals[entry.portal] = portal
            state.mds[md.cookie] = record
            state.meToMD[me.cookie] = md.cookie
            if !portal.delayed.isEmpty { redeliverDelayed(&state, portal: entry.portal, &effects) }
            return (me, md)
        }
        perform(effects)
        return handles
    }

    private func validate(_ descriptor: MemoryDescriptor) throws(LNetError) -> MDStorage {
        if case .count(let count) = descriptor.threshold, count <= 0 {
            throw LNetError.invalidMemoryDescriptor("threshold \(count) must be positive (or .infinite)")
        }
        let storage = try descriptor.makeStorage()
        guard storage.length <= Int(UInt32.max) else {
            throw LNetError.invalidMemoryDescriptor("length \(storage.length) exceeds the 4 GiB message limit")
        }
        return storage
    }

    /// Unlinks an MD (and its match entry) (`LNetMDUnlink`). If nothing is in flight on it, an ``LNetEventKind/unlink``
    /// event is posted now; otherwise it stops matching at once and the last in-flight operation's event carries
    /// `unlinked == true`. Unlinking an MD that is already being unlinked does nothing.
    public func unlink(_ md: MDHandle) throws(LNetError) {
        var effects = Effects()
        try state.withLock { (state: inout State) throws(LNetError) in
            guard let record = state.mds[md.cookie] else { throw LNetError.invalidHandle("\(md) does not exist") }
            unlinkLocked(&state, record, &effects)
        }
        perform(effects)
    }

    /// Unlinks a match entry and its MD (`LNetMEUnlink`).
    public func unlink(_ me: MEHandle) throws(LNetError) {
        var effects = Effects()
        try state.withLock { (state: inout State) throws(LNetError) in
            guard let cookie = state.meToMD[me.cookie], let record = state.mds[cookie] else {
                throw LNetError.invalidHandle("\(me) does not exist")
            }
            unlinkLocked(&state, record, &effects)
        }
        perform(effects)
    }

    private func unlinkLocked(_ state: inout State, _ record: MDRecord, _ effects: inout Effects) {
        guard !record.zombie else { return }
        record.zombie = true
        if let me = record.matchEntry {
            state.portals[me.portal]?.remove(me.handle)
        }
        guard record.pending == 0 else { return }
        state.remove(record)
        guard let queue = record.eventQueue else { return }
        let event = LNetEvent(kind: .unlink, status: .ok, initiator: .any, target: .any,
                              portal: record.matchEntry?.portal ?? 0, matchBits: record.matchEntry?.entry.matchBits ?? 0,
                              requestedLength: 0, matchedLength: 0, offset: 0, headerData: 0, hints: .none,
                              md: record.handle, userInfo: record.userInfo, unlinked: true)
        if queue.post(event) { effects.inline.append((queue, event)) }
    }

    /// Whether `md` is still linked (including while being unlinked with operations in flight).
    public func isLinked(_ md: MDHandle) -> Bool {
        state.withLock { $0.mds[md.cookie] != nil }
    }

    /// Makes a portal lazy (unmatched PUTs and GETs are held, up to ``Configuration/maxDelayedPerPortal``, until a
    /// match entry for them is attached) or not (held messages are dropped, and their senders told).
    public func setLazy(portal: UInt32, _ lazy: Bool) {
        var effects = Effects()
        state.withLock { state in
            var entry = state.portals[portal] ?? Portal()
            entry.lazy = lazy
            let held = lazy ? [] : Array(entry.delayed)
            if !lazy { entry.delayed.removeAll() }
            state.portals[portal] = entry
            for message in held {
                reject(&state, ni: message.ni, header: message.header, status: .noMatch, context: message.context,
                       wantsRDMA: message.wantsRDMA, &effects)
            }
        }
        perform(effects)
    }

    /// Messages held on a lazy portal.
    public func delayedCount(portal: UInt32) -> Int {
        state.withLock { $0.portals[portal]?.delayed.count ?? 0 }
    }

    // MARK: - Put and Get

    /// Sends the whole of `md` to `target` (`LNetPut`). Uses one unit of the MD's threshold for the SEND event and,
    /// when `ackRequested`, one more for the ACK: a PUT with an ACK on an MD with room for one more event throws
    /// (the ACK would be dropped). Throws at once if there is no interface for the target's network.
    public func put(_ md: MDHandle, to target: ProcessID, portal: UInt32, matchBits: UInt64, offset: Int = 0,
                    ackRequested: Bool = true, headerData: UInt64 = 0, hints: LNetHints = .none) throws(LNetError) {
        let message = try state.withLock { (state: inout State) throws(LNetError) -> LNetMessage in
            // The ACK uses the MD's threshold too: an MD with room for the SEND only would drop it silently.
            let (ni, source, record) = try outgoing(&state, md: md, to: target, offset: offset, events: ackRequested ? 2 : 1,
                                                    needs: "a PUT with an ACK needs 2 (SEND and ACK)",
                                                    remedy: ", or pass ackRequested: false")
            let header = LNetHeader(type: .put, source: source, destination: target, payloadLength: UInt32(record.length),
                                    portal: portal, matchBits: matchBits, offset: UInt64(offset), headerData: headerData,
                                    mdCookie: md.cookie, ackRequested: ackRequested, hints: hints)
            return LNetMessage(id: nextMessageID(), header: header, direction: .outgoing,
                               payload: record.window(offset: 0, length: record.length), ni: ni,
                               completion: .init(md: md, event: .send, initiator: source, target: target, offset: 0,
                                                 userHeaderData: headerData),
                               requestedLength: record.length, matchedLength: record.length)
        }
        perform(Effects(.send(message.ni, message)))
    }

    /// Asks `target` for `md.length` bytes into `md` (`LNetGet`). Uses one unit of threshold for the SEND event and
    /// one for the REPLY event: a GET on an MD with room for one more event throws (the REPLY would be dropped).
    public func get(_ md: MDHandle, from target: ProcessID, portal: UInt32, matchBits: UInt64, offset: Int = 0,
                    hints: LNetHints = .none) throws(LNetError) {
        let message = try state.withLock { (state: inout State) throws(LNetError) -> LNetMessage in
            // The REPLY uses the MD's threshold too: an MD with room for the SEND only would drop it silently.
            let (ni, source, record) = try outgoing(&state, md: md, to: target, offset: offset, events: 2,
                                                    needs: "a GET needs 2 (SEND and REPLY)", remedy: "")
            let header = LNetHeader(type: .get, source: source, destination: target, length: UInt32(record.length),
                                    portal: portal, matchBits: matchBits, offset: UInt64(offset), mdCookie: md.cookie,
                                    hints: hints)
            return LNetMessage(id: nextMessageID(), header: header, direction: .outgoing,
                               sink: record.window(offset: 0, length: record.length), ni: ni,
                               completion: .init(md: md, event: .send, initiator: source, target: target, offset: 0,
                                                 userHeaderData: 0, countsTraffic: true),
                               requestedLength: record.length, matchedLength: 0)
        }
        perform(Effects(.send(message.ni, message)))
    }

    /// What a PUT or GET from `md` to `target` starts from, under the lock: the interface and our address on the
    /// target's network, and the MD, attached, with room for `events` more events (else the error says which,
    /// `needs` and `remedy` completing it).
    private func outgoing(_ state: inout State, md: MDHandle, to target: ProcessID, offset: Int, events: Int, needs: String,
                          remedy: String) throws(LNetError) -> (ni: LNetNI, source: ProcessID, record: MDRecord) {
        guard offset >= 0 else { throw LNetError.invalidArgument("offset \(offset) is negative") }
        guard !state.isShutdown else { throw LNetError.shutdown }
        let (ni, sourceNID) = try route(state, to: target.nid)
        guard !ni.isStopping else { throw LNetError.shutdown }
        guard let record = state.mds[md.cookie], !record.zombie else { throw LNetError.invalidHandle("\(md) does not exist") }
        guard record.remaining != 0 else { throw LNetError.mdExhausted(md) }
        if let remaining = record.remaining, remaining < events {
            throw LNetError.invalidMemoryDescriptor(
                "\(md) has room for \(remaining) more event; \(needs): bind it with threshold .count(\(events)) or more\(remedy)")
        }
        record.attach()
        return (ni, ProcessID(nid: sourceNID, pid: pid), record)
    }

    private func nextMessageID() -> UInt64 {
        messageIDs.add(1, ordering: .relaxed).newValue
    }

    // MARK: - Incoming messages (called through LNetNI)

    func parse(ni: LNetNI, header: LNetHeader, from: NID, context: (any LNDPrivate)?, wantsRDMA: Bool) -> LNetParseOutcome {
        guard !ni.isStopping else {
            ni.counters.recordDrop(peer: header.source.nid, bytes: Int(header.payloadLength))
            ni.lnd.drop(ni: ni, header: header, status: .shutdown, context: context)
            return .dropped(.shutdown)
        }
        var effects = Effects()
        var outcome = state.withLock { state -> LNetParseOutcome? in
            incoming(&state, ni: ni, header: header, context: context, wantsRDMA: wantsRDMA, mayDelay: true, &effects)
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
                reject(&state, ni: ni, header: header, status: .noResources, context: context, wantsRDMA: wantsRDMA, &effects)
            }
            perform(effects)
            return .dropped(.noResources)
        }
        effects = Effects()
        outcome = state.withLock { state -> LNetParseOutcome? in
            if let done = incoming(&state, ni: ni, header: header, context: held, wantsRDMA: wantsRDMA, mayDelay: false, &effects) {
                return done
            }
            var portal = state.portals[header.portal] ?? Portal()
            guard portal.lazy, portal.delayed.count < configuration.maxDelayedPerPortal else {
                return reject(&state, ni: ni, header: header, status: .noMatch, context: held, wantsRDMA: wantsRDMA, &effects)
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
    private func incoming(_ state: inout State, ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?, wantsRDMA: Bool,
                          mayDelay: Bool, _ effects: inout Effects) -> LNetParseOutcome? {
        let forUs: Bool
        if ni.nid.network == .loopback {
            forUs = state.isLocal(header.destination.nid)
        } else {
            forUs = header.destination.nid == ni.nid
        }
        guard forUs, header.destination.pid == pid else {
            ni.logger.debug("message not for this node", metadata: ["header": "\(header)"])
            return reject(&state, ni: ni, header: header, status: forUs ? .noMatch : .unreachable, context: context,
                          wantsRDMA: wantsRDMA, &effects)
        }
        switch header.type {
        case .put, .get:
            return matchRequest(&state, ni: ni, header: header, context: context, wantsRDMA: wantsRDMA, mayDelay: mayDelay, &effects)
        case .ack:
            guard let record = state.mds[header.mdCookie], record.isActive else {
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

    private func matchRequest(_ state: inout State, ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?,
                              wantsRDMA: Bool, mayDelay: Bool, _ effects: inout Effects) -> LNetParseOutcome? {
        let requested = Int(header.type == .put ? header.payloadLength : header.length)
        let portal = state.portals[header.portal]
        let outcome = portal?.match(type: header.type, initiator: header.source, matchBits: header.matchBits,
                                    offset: Int(clamping: header.offset), length: requested) ?? .none
        switch outcome {
        case .none:
            if portal?.lazy == true { return nil }
            return reject(&state, ni: ni, header: header, status: .noMatch, context: context, wantsRDMA: wantsRDMA, &effects)
        case .rejected(let status):
            return reject(&state, ni: ni, header: header, status: status, context: context, wantsRDMA: wantsRDMA, &effects)
        case .matched(let record, let offset, let length):
            record.attach()
            if !record.options.contains(.manageRemote) { record.localOffset = offset + length }
            if header.type == .put {
                let message = LNetMessage(
                    id: nextMessageID(), header: header, direction: .incoming,
                    payload: record.window(offset: offset, length: length), lndWantsRDMA: wantsRDMA, ni: ni,
                    completion: .init(md: record.handle, event: .put, initiator: header.source, target: header.destination,
                                      offset: offset, userHeaderData: header.headerData,
                                      sendsAck: header.ackRequested && !record.options.contains(.ackDisable)),
                    requestedLength: requested, matchedLength: length)
                effects.actions.append(.receive(ni, message, context))
                return .receiving
            }
            ni.counters.recordReceived(peer: header.source.nid, bytes: 0)
            let replyHeader = header.reply(payloadLength: length, offset: UInt64(offset))
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
    private func reject(_ state: inout State, ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?,
                        wantsRDMA: Bool, _ effects: inout Effects) -> LNetParseOutcome {
        ni.counters.recordDrop(peer: header.source.nid, bytes: Int(header.payloadLength))
        ni.logger.debug("dropping incoming message", metadata: ["header": "\(header)", "status": "\(status)"])
        switch header.type {
        case .put:
            if header.ackRequested {
                effects.actions.append(.send(ni, makeAck(ni: ni, request: header, matched: 0, offset: 0, status: status)))
            }
            effects.actions.append(.drop(ni, header, status, context))
        case .get:
            let replyHeader = header.reply(payloadLength: 0, offset: header.offset, status: status)
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

    private func makeAck(ni: LNetNI, request: LNetHeader, matched: Int, offset: Int, status: LNetStatus) -> LNetMessage {
        let header = LNetHeader(type: .ack, source: request.destination, destination: request.source,
                                length: UInt32(matched), portal: request.portal, matchBits: request.matchBits,
                                offset: UInt64(offset), mdCookie: request.mdCookie, status: status, hints: request.hints)
        return LNetMessage(id: nextMessageID(), header: header, direction: .outgoing, ni: ni,
                           completion: .init(md: nil, event: nil, initiator: request.source, target: request.destination,
                                             offset: offset, userHeaderData: 0),
                           requestedLength: 0, matchedLength: 0)
    }

    /// Tries every message held on a lazy portal against the portal's entries again (after an attach).
    private func redeliverDelayed(_ state: inout State, portal index: UInt32, _ effects: inout Effects) {
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

    // MARK: - Completion

    func finalize(_ message: LNetMessage, status: LNetStatus) {
        let ni = message.ni
        guard message.markFinalized() else {
            ni.counters.recordDoubleFinalize()
            ni.logger.error("message finalized twice (LND bug); ignoring the second finalize",
                            metadata: ["message": "\(message)", "status": "\(status)"])
            return
        }
        ni.untrack(message)
        let completion = message.completion
        let eventStatus = status.isOK ? completion.remoteStatus : status
        let outcome: NICounters.Outcome
        if !status.isOK {
            outcome = .failed
        } else if !completion.countsTraffic {
            outcome = .uncounted
        } else if message.direction == .outgoing {
            outcome = .sent(bytes: message.type == .get ? 0 : message.matchedLength)
        } else {
            outcome = .received(bytes: message.type == .ack ? 0 : message.matchedLength)
        }
        ni.counters.recordFinalized(ok: status.isOK, peer: message.peer.nid, outcome)
        var effects = Effects()
        state.withLock { state in
            if let handle = completion.md, let record = state.mds[handle.cookie] {
                record.pending -= 1
                let unlinked = record.isUnlinkable
                if unlinked { state.remove(record) }
                if let kind = completion.event, let queue = record.eventQueue {
                    let event = LNetEvent(kind: kind, status: eventStatus, initiator: completion.initiator,
                                          target: completion.target, portal: message.header.portal,
                                          matchBits: message.header.matchBits, requestedLength: message.requestedLength,
                                          matchedLength: message.matchedLength, offset: completion.offset,
                                          headerData: completion.userHeaderData, hints: message.header.hints,
                                          md: handle, userInfo: record.userInfo, unlinked: unlinked)
                    if queue.post(event) { effects.inline.append((queue, event)) }
                }
            }
        }
        if completion.sendsAck {
            effects.actions.append(.send(ni, makeAck(ni: ni, request: message.header, matched: message.matchedLength,
                                                     offset: completion.offset, status: eventStatus)))
        }
        perform(effects)
    }

    func createReply(for get: LNetMessage, on ni: LNetNI) -> LNetMessage? {
        guard get.type == .get, get.direction == .outgoing else {
            ni.logger.error("createReply needs an outgoing GET", metadata: ["message": "\(get)"])
            return nil
        }
        let reply = state.withLock { state -> LNetMessage? in
            guard let record = state.mds[get.header.mdCookie], record.isActive else { return nil }
            record.attach()
            let header = get.header.reply(payloadLength: record.length, offset: get.header.offset)
            return LNetMessage(id: nextMessageID(), header: header, direction: .incoming,
                               payload: record.window(offset: 0, length: record.length), ni: ni,
                               completion: .init(md: record.handle, event: .reply, initiator: get.header.source,
                                                 target: get.header.destination, offset: 0, userHeaderData: 0),
                               requestedLength: record.length, matchedLength: record.length)
        }
        guard let reply else {
            ni.logger.warning("cannot create REPLY: the GET's MD is gone or exhausted", metadata: ["get": "\(get)"])
            return nil
        }
        ni.track(reply)
        return reply
    }

    private func perform(_ effects: Effects) {
        effects.inline.forEach { queue, event in queue.runInline(event) }
        effects.actions.forEach { action in
            switch action {
            case .send(let ni, let message):
                ni.track(message)
                if ni.isStopping {
                    finalize(message, status: .shutdown)
                } else {
                    ni.lnd.send(ni: ni, message: message)
                }
            case .receive(let ni, let message, let context):
                ni.track(message)
                ni.lnd.receive(ni: ni, message: message, window: message.payload, context: context)
            case .drop(let ni, let header, let status, let context):
                ni.lnd.drop(ni: ni, header: header, status: status, context: context)
            }
        }
    }

    // MARK: - Counters and shutdown

    /// A snapshot of every counter (what `lnetctl` shows).
    public func counters() -> LNetCountersSnapshot {
        let retired = state.withLock { $0.retired }
        return LNetCountersSnapshot(interfaces: interfaces.map { $0.countersSnapshot() } + retired)
    }

    /// Stops every interface: held messages are dropped, each LND is shut down (finalizing what it still holds),
    /// and anything it leaves unfinalized is finalized with ``LNetStatus/shutdown`` and logged. Every MD still
    /// linked then gets an ``LNetEventKind/unlink`` event with status ``LNetStatus/shutdown`` (its last). Afterwards
    /// every call fails with ``LNetError/shutdown``. Idempotent.
    public func shutdown() {
        let (interfaces, held, first) = state.withLock { state -> ([LNetNI], [DelayedMessage], Bool) in
            guard !state.isShutdown else { return ([], [], false) }
            state.isShutdown = true
            var held: [DelayedMessage] = []
            for key in state.portals.keys {
                held.append(contentsOf: state.portals[key]?.delayed ?? [])
                state.portals[key]?.delayed.removeAll()
            }
            return (Array(state.interfaces.values), held, true)
        }
        // A second call (from anywhere, a handler included) has nothing to stop, and keeps the counters.
        guard first else { return }
        for message in held {
            message.ni.lnd.drop(ni: message.ni, header: message.header, status: .shutdown, context: message.context)
        }
        for ni in interfaces { ni.beginStopping() }
        for ni in interfaces {
            ni.lnd.shutdown(ni: ni)
            let leftovers = ni.takeAllPending()
            if !leftovers.isEmpty {
                ni.counters.recordUnfinalizedAtShutdown(leftovers.count)
                ni.logger.error("LND left messages unfinalized at shutdown; finalizing them",
                                metadata: ["count": "\(leftovers.count)"])
            }
            for message in leftovers { finalize(message, status: .shutdown) }
        }
        let retired = interfaces.sorted { $0.nid < $1.nid }.map { $0.countersSnapshot() }
        var effects = Effects()
        state.withLock { state in
            state.retired = retired
            state.interfaces.removeAll()
            state.portals.removeAll()
            // Every MD still linked gets its last event now (unlinked, status shutdown), so whoever waits on one
            // (an awaited put or get, a handler that frees memory on the unlinked event) learns it is gone.
            for record in state.mds.values {
                guard let queue = record.eventQueue else { continue }
                let event = LNetEvent(kind: .unlink, status: .shutdown, initiator: .any, target: .any,
                                      portal: record.matchEntry?.portal ?? 0, matchBits: record.matchEntry?.entry.matchBits ?? 0,
                                      requestedLength: 0, matchedLength: 0, offset: 0, headerData: 0, hints: .none,
                                      md: record.handle, userInfo: record.userInfo, unlinked: true)
                if queue.post(event) { effects.inline.append((queue, event)) }
            }
            state.mds.removeAll()
            state.meToMD.removeAll()
        }
        perform(effects)
        logger.info("LNet shut down")
    }
}
