import Foundation
import LNet
import Logging
import Synchronization
import Verbs

/// The RDMA LND (`o2ib`): carries LNet messages over RC queue pairs set up with rdma_cm.
///
/// Small messages go eagerly (IMMEDIATE, one SEND into a pre-posted buffer). Bulk PUT and GET move by RDMA:
/// pull (the default, "transmit-first": the side holding the data registers it and tells the other side to
/// RDMA READ it) or push (RDMA WRITE into the other side's sink). A GET request always carries the requester's
/// sink descriptor. Tuned by `LND_*` environment variables (`LNDTunables`).
public final class RDMALND: LNetLND {
    public let networkType = LNetNetworkType.o2ib
    public let tunables: LNDTunables
    private let baseLogger: Logger
    private let runtime = Mutex<LNDRuntime?>(nil)

    /// An LND with these tunables.
    public init(tunables: LNDTunables, logger: Logger = Logger(label: "lnet.o2ib")) {
        self.tunables = tunables
        self.baseLogger = logger
    }

    /// An LND tuned by the environment (`LND_*`); a bad value is an error naming the variable and its range.
    public convenience init(environment: [String: String] = ProcessInfo.processInfo.environment,
                            logger: Logger = Logger(label: "lnet.o2ib")) throws(TunableError) {
        self.init(tunables: try LNDTunables.fromEnvironment(environment), logger: logger)
    }

    /// The device this LND uses: the tunable, else the interface named in the network configuration.
    private func deviceName(for configuration: NetworkInterfaceConfiguration) -> String? {
        if !tunables.device.isEmpty { return tunables.device }
        return configuration.interfaceName
    }

    /// `o2ib(rxe0)` names no address: use the first IPv4 address among the device's GIDs.
    public func resolveAddress(for configuration: NetworkInterfaceConfiguration) throws(LNetError) -> UInt32 {
        if let address = configuration.address { return address }
        guard let name = deviceName(for: configuration) else {
            throw LNetError.lndStartupFailed(network: configuration.network, reason: "no device or address in \(configuration)")
        }
        do {
            let port = try DeviceContext(deviceName: name).port(1)
            guard let text = port.gids.compactMap(\.gid.ipv4Address).first, let address = parseIPv4(text) else {
                throw LNetError.lndStartupFailed(network: configuration.network, reason: "device \(name) has no IPv4 address")
            }
            return address
        } catch let error as LNetError {
            throw error
        } catch {
            throw LNetError.lndStartupFailed(network: configuration.network, reason: "\(error)", cause: .init(error))
        }
    }

    public func startup(ni: LNetNI) throws(LNetError) {
        do {
            let started = try LNDRuntime(ni: ni, tunables: tunables, logger: baseLogger, expectedDevice: deviceName(for: ni.configuration))
            runtime.withLock { $0 = started }
        } catch {
            throw LNetError.lndStartupFailed(network: ni.network, reason: "\(error)", cause: .init(error))
        }
    }

    public func shutdown(ni: LNetNI) {
        let stopping = runtime.withLock { runtime -> LNDRuntime? in
            defer { runtime = nil }
            return runtime
        }
        stopping?.stop()
    }

    public func send(ni: LNetNI, message: LNetMessage) {
        guard let runtime = runtime.withLock({ $0 }) else {
            ni.finalize(message, status: .shutdown)
            return
        }
        if message.type == .reply {
            guard let context = message.privateContext as? ReceiveContext, case .getRequest(let cookie, let sink) = context.kind else {
                ni.logger.error("REPLY without the GET it answers", metadata: ["message": "\(message)"])
                (message.privateContext as? ReceiveContext)?.releaseBuffer()
                ni.finalize(message, status: .protocolError)
                return
            }
            context.connection.serveGet(message, requesterCookie: cookie, sink: sink)
            return
        }
        runtime.connection(to: message.header.destination.nid).send(message)
    }

    public func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        guard let context = context as? ReceiveContext else {
            ni.logger.error("receive without an o2ib context", metadata: ["message": "\(message)"])
            ni.finalize(message, status: .protocolError)
            return
        }
        switch context.kind {
        case .immediate(_, let payload):
            window.copy(from: payload)
            context.releaseBuffer()
            ni.finalize(message, status: .ok)
        case .copied(let buffer, let length):
            window.copy(from: UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
            ni.finalize(message, status: .ok)
        case .putRequest(let cookie, let source):
            context.connection.receivePut(message, window: window, sourceCookie: cookie, source: source)
        case .getRequest:
            ni.logger.error("receive for a GET request", metadata: ["message": "\(message)"])
            ni.finalize(message, status: .protocolError)
        }
    }

    public func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        guard let context = context as? ReceiveContext else { return }
        switch context.kind {
        case .immediate:
            context.releaseBuffer()
        case .copied:
            break
        case .putRequest(let cookie, let source):
            context.connection.dropPut(sourceCookie: cookie, pull: !source.fragments.isEmpty, status: status)
        case .getRequest:
            // The core answers a GET with a REPLY even when nothing matched; nothing to do here.
            break
        }
    }

    public func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)? {
        guard let context = context as? ReceiveContext, case .immediate(_, let payload) = context.kind else { return context }
        let copy = try LNetBuffer(count: max(1, payload.count))
        copy.bytes.copyMemory(from: payload)
        context.releaseBuffer()
        return ReceiveContext(connection: context.connection, kind: .copied(copy, length: payload.count))
    }

    /// The LND's counters (zero before start-up).
    public var counters: LNDCountersSnapshot? {
        runtime.withLock { $0?.context.counters.snapshot }
    }

    /// The registration cache's figures (zero before start-up).
    public var registrationStatistics: RegistrationCacheStatistics? {
        runtime.withLock { $0?.context.registrar.cache.statistics }
    }

    /// The connections in the peer table.
    public var connections: [LNDConnectionInfo] {
        runtime.withLock { $0?.connectionInfos ?? [] }
    }

    /// The CPUs each scheduler thread may run on (read back from the kernel after it bound itself to its CPU
    /// partition), by scheduler index; empty before start-up.
    public var schedulerCPUs: [[Int]] {
        runtime.withLock { $0?.schedulerCPUs ?? [] }
    }

    /// The verbs device the interface is on (nil before start-up).
    public var deviceName: String? {
        runtime.withLock { $0?.context.protectionDomain.context.name }
    }

    /// Connections currently in the peer table, by peer.
    public var connectionCount: Int {
        runtime.withLock { $0?.connectionCount ?? 0 }
    }
}

/// What exists between start-up and shut-down: the device resources, threads and the peer table.
final class LNDRuntime: @unchecked Sendable {
    enum Admission {
        case accept(Connection)
        case reject(RejectReason, String)
    }

    private(set) var context: LNDContext!
    private var manager: ConnectionManager!
    private var schedulers: [Scheduler] = []
    private let peers = Mutex<[NID: Connection]>([:])
    /// Connection attempts to each peer that failed in a row (reset when one is established).
    private let failedAttempts = Mutex<[NID: Int]>([:])
    private let stopping = Atomic<Bool>(false)

    init(ni: LNetNI, tunables: LNDTunables, logger: Logger, expectedDevice: String?) throws {
        var logger = logger
        logger[metadataKey: "ni"] = "\(ni.nid)"
        let budget = MemoryLockBudget.current(tunables: tunables)
        try budget.check()
        let channel = try CMEventChannel()
        let listener = try channel.createID()
        do throws(VerbsError) {
            try listener.bind(IPv4Endpoint(formatIPv4(ni.nid.address), port: UInt16(tunables.servicePort)))
        } catch {
            guard error.errno == EACCES, tunables.servicePort < 1024 else { throw error }
            throw LNDStartupError.privilegedPort(port: tunables.servicePort, cause: error)
        }
        guard let device = listener.deviceContext else {
            throw VerbsError(call: "rdma_bind_addr", errno: ENODEV, detail: "\(formatIPv4(ni.nid.address)) is on no RDMA device")
        }
        if let expectedDevice, expectedDevice != device.name, !tunables.device.isEmpty {
            throw VerbsError(call: "rdma_bind_addr", errno: ENODEV,
                             detail: "\(formatIPv4(ni.nid.address)) is on \(device.name), LND_DEVICE says \(expectedDevice)")
        }
        let limits = try device.limits()
        let protectionDomain = try ProtectionDomain(context: device)
        let readDepth = UInt8(clamping: min(limits.maxInitiatorDepth, limits.maxResponderResources, 16))
        let stamp = UInt64(Date().timeIntervalSince1970 * 1_000_000_000)
        let messageSize = WireFormat.maxMessageSize(immediateSize: tunables.immediateSize, maxFragments: tunables.maxFragments)
        let pool: TransmitPool
        do throws(VerbsError) {
            pool = try TransmitPool(protectionDomain: protectionDomain, count: tunables.ntx, messageSize: messageSize, credits: tunables.credits)
        } catch {
            throw budget.annotated(error)
        }
        let worker = try RegistrationWorker()
        context = LNDContext(ni: ni, tunables: tunables, stamp: stamp, logger: logger, protectionDomain: protectionDomain,
                             registrar: LNDRegistrar(protectionDomain: protectionDomain, tunables: tunables, memoryLock: budget), pool: pool, readDepth: readDepth,
                             maxScatterGather: min(limits.maxScatterGather, 16), registrationWorker: worker)
        for index in 0..<tunables.effectiveSchedulers {
            schedulers.append(try Scheduler(index: index, context: device, logger: logger, partitions: ni.partitions, tunables: tunables))
        }
        manager = try ConnectionManager(channel: channel, listener: listener, runtime: self)
        try listener.listen()
        do {
            try worker.start()
            for scheduler in schedulers { try scheduler.start() }
            try manager.start()
        } catch {
            worker.stop()
            for scheduler in schedulers { scheduler.stop() }
            throw error
        }
        logger.info("o2ib up on \(device.name)", metadata: [
            "address": "\(formatIPv4(ni.nid.address)):\(tunables.servicePort)", "schedulers": "\(schedulers.count)",
            "readDepth": "\(readDepth)", "limits": "\(context.localLimits)",
        ])
    }

    var connectionCount: Int { peers.withLock { $0.values.filter { $0.phase != .closed }.count } }

    var connectionInfos: [LNDConnectionInfo] { peers.withLock { Array($0.values) }.map(\.info) }

    var schedulerCPUs: [[Int]] { schedulers.map(\.affinity) }

    /// The scheduler of a peer: the CPU partition LNet places the peer on (by the hash of its NID), then one of
    /// that partition's schedulers, so one peer's completions always land on one thread.
    func scheduler(for peer: NID) -> Scheduler {
        let partition = context.ni.partitions.partition(forPeer: peer)
        let candidates = schedulers.filter { $0.partition == partition }
        let pool = candidates.isEmpty ? schedulers : candidates
        return pool[Int(CPUPartitionTable.mix(peer.rawValue) % UInt64(pool.count))]
    }

    /// The connection to `peer`, starting one if there is none.
    func connection(to peer: NID) -> Connection {
        let (connection, fresh) = peers.withLock { table -> (Connection, Bool) in
            if let existing = table[peer], existing.phase != .closed { return (existing, false) }
            let made = Connection(context: context, peer: peer, role: .active, scheduler: scheduler(for: peer))
            table[peer] = made
            return (made, true)
        }
        if fresh {
            if stopping.load(ordering: .acquiring) {
                connection.close(reason: "shutting down", status: .shutdown)
            } else {
                manager.connect(connection, after: reconnectDelay(for: peer))
            }
        }
        return connection
    }

    /// How long a new connection to `peer` waits before it tries: nothing at first, then 50 ms doubling to 1 s
    /// while attempts keep failing (as o2iblnd defers reconnects to once a second), so a peer that cannot be
    /// reached (a link down) is not hammered. Messages wait meanwhile, within LND_TIMEOUT.
    func reconnectDelay(for peer: NID) -> Duration {
        let failures = failedAttempts.withLock { $0[peer] ?? 0 }
        guard failures > 0 else { return .zero }
        return .milliseconds(min(1000, 50 << min(failures - 1, 5)))
    }

    /// A connection attempt to `peer` failed (`false`) or one was established (`true`).
    func attempt(to peer: NID, succeeded: Bool) {
        failedAttempts.withLock { table in
            if succeeded { table[peer] = nil } else { table[peer, default: 0] += 1 }
        }
    }

    /// A replacement attempt for `old` (rejected, to retry): takes over its waiting messages.
    func replace(_ old: Connection) -> Connection {
        let fresh = Connection(context: context, peer: old.peer, role: .active, scheduler: scheduler(for: old.peer), created: old.created)
        peers.withLock { table in
            if table[old.peer] === old || table[old.peer] == nil { table[old.peer] = fresh }
        }
        old.supersede(by: fresh, reason: "superseded by a new attempt")
        if stopping.load(ordering: .acquiring) { fresh.close(reason: "shutting down", status: .shutdown) }
        return fresh
    }

    /// Drops a failed connection from the peer table.
    func forget(_ connection: Connection) {
        peers.withLock { table in
            if table[connection.peer] === connection { table[connection.peer] = nil }
        }
    }

    /// Decides on a connection request from `peer` (incarnation `stamp`) against the connection we have.
    func admit(peer: NID, stamp: UInt64) -> Admission {
        if stopping.load(ordering: .acquiring) { return .reject(.shuttingDown, "shutting down") }
        var superseded: Connection?
        var restarted: Connection?
        let decision = peers.withLock { table -> Admission in
            let fresh = Connection(context: context, peer: peer, role: .passive, scheduler: scheduler(for: peer))
            guard let existing = table[peer], existing.phase != .closed else {
                table[peer] = fresh
                return .accept(fresh)
            }
            if existing.phase == .established {
                let known = existing.peerStamp
                if stamp < known { return .reject(.staleIncarnation, "\(peer) incarnation \(stamp) is older than \(known)") }
                if stamp > known {
                    restarted = existing
                    table[peer] = fresh
                    return .accept(fresh)
                }
            }
            if existing.role == .active && context.nid > peer {
                return .reject(.connectionRace, "connection race with \(peer): ours wins")
            }
            if existing.role == .active && existing.phase == .connecting {
                superseded = existing
            } else {
                restarted = existing  // the peer reconnects: it no longer has the old connection
            }
            table[peer] = fresh
            return .accept(fresh)
        }
        if case .accept(let fresh) = decision {
            if let restarted {
                restarted.close(reason: "replaced by a new connection from \(peer)", status: .connectionClosed)
            }
            if let superseded {
                superseded.supersede(by: fresh, reason: "lost the connection race to \(peer)'s connection")
            }
        }
        return decision
    }

    /// Stops accepting, closes every connection (finalizing what they hold with `.shutdown`), stops the threads.
    func stop() {
        stopping.store(true, ordering: .releasing)
        // The CM thread first: no connection is made, accepted or replaced after the sweep below.
        manager.stop()
        let all = peers.withLock { table -> [Connection] in
            defer { table.removeAll() }
            return Array(table.values)
        }
        for connection in all { connection.close(reason: "shutting down", status: .shutdown) }
        // Registrations in flight finish (or, queued, find their connection closed) and hand their transfers to
        // the schedulers, which finalize them: the worker stops first, then the schedulers run what they were
        // handed (on this thread once they have stopped).
        context.registrationWorker.stop()
        for scheduler in schedulers { scheduler.stop() }
    }
}

/// One connection as `lnetctl` shows it.
public struct LNDConnectionInfo: Sendable, Hashable {
    public var peer: NID
    public var role: String
    public var phase: String
    public var queueDepth: Int
    /// The QP's path MTU in bytes (LND_IB_MTU, or the port's).
    public var pathMTU: Int?
    /// The QP's local ACK timeout exponent (LND_ACK_TIMEOUT) and retry count (LND_RETRY_COUNT), as the QP reports them.
    public var ackTimeout: Int?
    public var retryCount: Int?
    public var credits: Int
    public var pending: Int
    /// The scheduler (thread) the connection is placed on.
    public var scheduler: Int
    /// Credits this side owes the peer (returned in its next message, or a NOOP at the high-water mark).
    public var creditsOwed = 0
    /// LNet messages waiting for the connection (to be established, or behind earlier ones).
    public var waiting = 0
    /// The send queue: control messages, eager messages, bulk requests waiting for a transaction slot, RDMA
    /// transfers; and work requests posted, not yet completed.
    public var queuedControl = 0
    public var queuedEager = 0
    public var queuedRequests = 0
    public var queuedRDMA = 0
    public var posted = 0
    /// Transactions open on the connection (either side's), and those this side started (at most the queue depth).
    public var transactions = 0
    public var transactionsInitiated = 0
    /// Time since a message last arrived on the connection, and since one was last sent (coarse clock).
    public var sinceReceive: Duration = .zero
    public var sinceSend: Duration = .zero
}
