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
        /// How long a PUT waits for the ACK it asked for (Lustre's `lnet_transaction_timeout`): then its MD gets an
        /// ACK event with status `.timeout`, and an ACK that comes later is dropped. The LND finalizes what it was
        /// handed, but an ACK the peer could not send (its connection failed after the data was in) would
        /// otherwise leave the MD waiting forever. The wait is tracked per MD, as Lustre does: a PUT waits at most
        /// this long after its MD's newest PUT. `nil`: wait forever. `lnetctl` reads `LNET_TRANSACTION_TIMEOUT`.
        public var ackTimeout: Duration?
        /// Give peers placement cookies (``LNetPlacementCookie``): every ACK and REPLY this node sends names, with
        /// a cookie, the partition it matched the request on; a peer that echoes the cookie is placed there.
        /// `lnetctl` reads `LNET_PLACEMENT_COOKIES` (0 or 1).
        public var placementCookies: Bool

        public init(pid: UInt32 = ProcessID.defaultPID, partitions: CPUPartitionTable = CPUPartitionTable(),
                    placement: PlacementPolicy = .peerHash, maxDelayedPerPortal: Int = 1024,
                    metricsPrefix: String = "lnet", perPeerMetrics: Bool = false,
                    metricsFactory: (any MetricsFactory)? = nil, ackTimeout: Duration? = .seconds(100),
                    placementCookies: Bool = false) {
            self.placementCookies = placementCookies
            self.metricsFactory = metricsFactory
            self.ackTimeout = ackTimeout
            self.pid = pid
            self.partitions = partitions
            self.placement = placement
            self.maxDelayedPerPortal = maxDelayedPerPortal
            self.metricsPrefix = metricsPrefix
            self.perPeerMetrics = perPeerMetrics
        }
    }

    /// Work the core does after releasing its lock: LND calls and inline event handlers.
    struct Effects {
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

    struct State {
        var mds: [UInt64: MDRecord] = [:]
        var meToMD: [UInt64: UInt64] = [:]
        var portals: [UInt32: Portal] = [:]
        var interfaces: [LNetNetwork: LNetNI] = [:]
        var nextCookie: UInt64 = 1
        var isShutdown = false
        /// Counters of interfaces that were shut down.
        var retired: [LNetInterfaceCounters] = []
        /// MDs whose PUTs wait for their ACK, in deadline order (``Configuration/ackTimeout``).
        var ackTracker = AckTracker()

        mutating func makeCookie() -> UInt64 {
            defer { nextCookie += 1 }
            return nextCookie
        }

        mutating func remove(_ record: MDRecord) {
            mds.removeValue(forKey: record.handle.cookie)
            ackTracker.remove(record)
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
    let state = Mutex(State())
    private let messageIDs = Atomic<UInt64>(1)

    /// Creates an instance with no interfaces.
    public init(configuration: Configuration = Configuration(), logger: Logger? = nil) {
        self.configuration = configuration
        self.logger = logger ?? Logger(label: "lnet", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    deinit {
        // The ACK tracker's list, freed one MD at a time (an instance dropped without shutdown()).
        state.withLock { $0.ackTracker.removeAll() }
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
        let ni = try LNetNI(lnet: self, nid: NID(address: address, network: configuration.network),
                        configuration: configuration, lnd: lnd, logger: logger)
        do throws(LNetError) {
            try lnd.startup(ni: ni)
        } catch {
            ni.incoming?.shutdown()
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
            ni.incoming?.shutdown()
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

    /// Under early placement, the partition of the thread binding an MD: the ACK or REPLY of an operation on the
    /// MD is handled there (the MD cookie, which they echo, names it).
    private func homePartitionOfCaller() -> Int? {
        configuration.placement == .peerHash ? nil : configuration.partitions.partitionOfCurrentThread()
    }

    /// An MD cookie: unique, with `home` (plus one) in its top byte when given.
    private func mdCookie(_ state: inout State, home: Int?) -> UInt64 {
        let cookie = state.makeCookie()
        guard let home else { return cookie }
        return (UInt64(min(home, 254) + 1) << 56) | cookie
    }

    /// The partition an MD cookie names (``bind(_:unlink:)`` under early placement), if any.
    static func homePartition(ofMDCookie cookie: UInt64) -> Int? {
        let top = Int(cookie >> 56)
        return top == 0 ? nil : top - 1
    }

    /// Binds a free-floating MD (for the source of a Put or the sink of a Get) (`LNetMDBind`).
    public func bind(_ descriptor: MemoryDescriptor, unlink: LNetUnlinkPolicy = .unlink) throws(LNetError) -> MDHandle {
        let storage = try validate(descriptor)
        let home = homePartitionOfCaller()
        return try state.withLock { (state: inout State) throws(LNetError) -> MDHandle in
            guard !state.isShutdown else { throw LNetError.shutdown }
            let handle = MDHandle(cookie: mdCookie(&state, home: home))
            state.mds[handle.cookie] = MDRecord(handle: handle, storage: storage, descriptor: descriptor, unlinkPolicy: unlink)
            return handle
        }
    }

    /// Creates a match entry on `entry.portal` with `descriptor` attached (`LNetMEAttach` + `LNetMDAttach`).
    /// On a lazy portal, held messages that the new entry matches are delivered to it at once.
    public func attach(_ entry: MatchEntry, descriptor: MemoryDescriptor,
                       position: MatchEntryPosition = .tail) throws(LNetError) -> (me: MEHandle, md: MDHandle) {
        let storage = try validate(descriptor)
        let home = homePartitionOfCaller()
        var effects = Effects()
        let handles = try state.withLock { (state: inout State) throws(LNetError) -> (me: MEHandle, md: MDHandle) in
            guard !state.isShutdown else { throw LNetError.shutdown }
            let me = MEHandle(cookie: state.makeCookie())
            let md = MDHandle(cookie: mdCookie(&state, home: home))
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

    func unlinkLocked(_ state: inout State, _ record: MDRecord, _ effects: inout Effects) {
        guard !record.zombie else { return }
        record.zombie = true
        if let me = record.matchEntry {
            state.portals[me.portal]?.remove(me.handle)
        }
        guard record.pending == 0 else { return }
        state.remove(record)
        guard let queue = record.eventQueue else { return }
        let event = record.unlinkEvent(status: .ok)
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
        let timeout = ackRequested ? configuration.ackTimeout : nil
        let (message, sweep) = try state.withLock { (state: inout State) throws(LNetError) -> (LNetMessage, ContinuousClock.Instant?) in
            // The ACK uses the MD's threshold too: an MD with room for the SEND only would drop it silently.
            let (ni, source, record) = try outgoing(&state, md: md, to: target, offset: offset, events: ackRequested ? 2 : 1,
                                                    needs: "a PUT with an ACK needs 2 (SEND and ACK)",
                                                    remedy: ", or pass ackRequested: false")
            var sweep: ContinuousClock.Instant?
            if let timeout {
                // Before the PUT goes: its ACK can come before its own completion.
                let deadline = ContinuousClock.now + timeout
                record.ackWaits.append(AckWait(initiator: source, target: target, portal: portal, matchBits: matchBits))
                state.ackTracker.track(record, deadline: deadline)
                if !state.ackTracker.sweepArmed {
                    state.ackTracker.sweepArmed = true
                    sweep = deadline
                }
            }
            let header = LNetHeader(type: .put, source: source, destination: target, payloadLength: UInt32(record.length),
                                    portal: portal, matchBits: matchBits, offset: UInt64(offset), headerData: headerData,
                                    mdCookie: md.cookie, ackRequested: ackRequested, hints: hints)
            return (LNetMessage(id: nextMessageID(), header: header, direction: .outgoing,
                                payload: record.window(offset: 0, length: record.length), ni: ni,
                                completion: .init(md: md, event: .send, initiator: source, target: target, offset: 0,
                                                  userHeaderData: headerData),
                                requestedLength: record.length, matchedLength: record.length), sweep)
        }
        if let sweep { armAckSweep(at: sweep) }
        perform(Effects(.send(message.ni, message)))
    }

    /// One timer entry at a time serves every ACK wait: at `deadline` (the oldest tracked MD's), the sweep.
    private func armAckSweep(at deadline: ContinuousClock.Instant) {
        _ = DeadlineTimer.shared.schedule(at: deadline) { [weak self] in self?.sweepAckWaits() }
    }

    /// Ends the waits whose deadline passed: each gets an ACK event with status `.timeout` on its MD (and uses the
    /// threshold unit the ACK would have); their ACKs, if they still come, are dropped. Re-arms for the next.
    private func sweepAckWaits() {
        var effects = Effects()
        var expired = 0
        let next = state.withLock { state -> ContinuousClock.Instant? in
            let now = ContinuousClock.now
            while let record = state.ackTracker.oldest, let deadline = record.ackDeadline, deadline <= now {
                state.ackTracker.remove(record)
                while let wait = record.ackWaits.popFirst() {
                    guard state.mds[record.handle.cookie] === record, record.isActive else { continue }
                    expired += 1
                    record.lateAcks += 1
                    if let remaining = record.remaining { record.remaining = remaining - 1 }
                    let unlinked = record.isUnlinkable
                    if unlinked { state.remove(record) }
                    if let queue = record.eventQueue {
                        let event = LNetEvent(kind: .ack, status: .timeout, initiator: wait.initiator, target: wait.target,
                                              portal: wait.portal, matchBits: wait.matchBits, requestedLength: 0, matchedLength: 0,
                                              offset: 0, headerData: 0, hints: .none, md: record.handle, userInfo: record.userInfo,
                                              unlinked: unlinked)
                        if queue.post(event) { effects.inline.append((queue, event)) }
                    }
                }
            }
            let next = state.ackTracker.oldest?.ackDeadline
            state.ackTracker.sweepArmed = next != nil
            return next
        }
        if let next { armAckSweep(at: next) }
        if expired > 0 { logger.warning("no ACK within the transaction timeout", metadata: ["puts": "\(expired)"]) }
        perform(effects)
    }

    /// The ACK for `record` came, or its PUT failed (no ACK will come): its oldest wait ends. False when the ACK
    /// came after its timeout (its MD had the timeout event instead).
    func endAckWait(_ state: inout State, record: MDRecord) -> Bool {
        if record.ackWaits.popFirst() != nil {
            if record.ackWaits.isEmpty { state.ackTracker.remove(record) }
            return true
        }
        guard record.lateAcks > 0 else { return true }
        record.lateAcks -= 1
        return false
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

    func nextMessageID() -> UInt64 {
        messageIDs.add(1, ordering: .relaxed).newValue
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
            // A PUT that failed gets no ACK: its wait ends (its MD keeps the ACK's threshold unit, as before).
            if !status.isOK, message.direction == .outgoing, message.type == .put, message.header.ackRequested,
               let handle = completion.md, let record = state.mds[handle.cookie] {
                _ = endAckWait(&state, record: record)
            }
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
                                          md: handle, userInfo: record.userInfo, unlinked: unlinked,
                                          placementCookie: message.header.givenCookie)
                    if queue.post(event) { effects.inline.append((queue, event)) }
                }
            }
        }
        if completion.sendsAck {
            effects.actions.append(.send(ni, makeAck(ni: ni, request: message.header, matched: message.matchedLength,
                                                     offset: completion.offset, status: eventStatus,
                                                     partition: completion.partition)))
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

    func perform(_ effects: Effects) {
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
            // Messages still on their way to a partition are matched now (dropped: the interface is stopping), by
            // the partitions' threads, which then end; what that hands the LND is swept below.
            ni.incoming?.shutdown()
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
                let event = record.unlinkEvent(status: .shutdown)
                if queue.post(event) { effects.inline.append((queue, event)) }
            }
            state.mds.removeAll()
            state.meToMD.removeAll()
            state.ackTracker.removeAll()
        }
        perform(effects)
        logger.info("LNet shut down")
    }
}
