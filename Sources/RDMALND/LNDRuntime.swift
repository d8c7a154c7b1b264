import Foundation
import LNet
import Logging
import Synchronization
import Verbs

/// What exists between start-up and shut-down: the device resources, threads and the peer table.
final class LNDRuntime: @unchecked Sendable {
    enum Admission {
        case accept(Connection)
        case reject(RejectReason, String)
    }

    private(set) var context: LNDContext!
    private var manager: ConnectionManager!
    private(set) var schedulers: [Scheduler] = []
    let peers = Mutex<[NID: Connection]>([:])
    /// Connection attempts to each peer that failed in a row (reset when one is established).
    private let failedAttempts = Mutex<[NID: Int]>([:])
    private let stopping = Atomic<Bool>(false)

    init(ni: LNetNI, tunables: LNDTunables, logger: Logger, expectedDevice: String?,
         observeArrival: (@Sendable (NID, LNetHeader) -> Void)? = nil) throws {
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
                             maxScatterGather: min(limits.maxScatterGather, 16), registrationWorker: worker,
                             observeArrival: observeArrival)
        for index in 0..<tunables.effectiveSchedulers {
            schedulers.append(try Scheduler(index: index, context: device, logger: logger, ni: ni, tunables: tunables))
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
