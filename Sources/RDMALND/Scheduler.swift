import LNet
import Logging
import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// One scheduler thread (o2iblnd's `kib_sched`): it owns a completion channel, and every connection placed on it
/// (by the hash of its peer NID) has its two completion queues on that channel. The thread reaps completions and
/// finishes the work they start (decode, match, post the answer, deliver the event) without handing off, and
/// runs each connection's timers.
///
/// How it waits (`LND_POLL`):
/// - `events` (default): once the connections it serves are quiet it arms their receive queues (and a send queue
///   only while this node has work requests on it whose completion matters) and sleeps in poll(2) on the channel
///   and its eventfd. While such work requests are in flight it first polls for them for up to `LND_POLL_US`, so
///   a message usually costs one wake-up: the one for its arrival.
/// - `adaptive`: as `events`, but it keeps polling for `LND_POLL_US` after the last completion even with nothing
///   of its own in flight, to catch the next message without a wake-up.
/// - `busy`: it never sleeps while it has connections; it polls every connection's queues in turn and checks its
///   wake-up flag and timers on every pass.
/// Either way the thread serves wake-ups, timers and its other connections: a burst on one connection is served
/// for at most 2 ms before the thread looks at the rest.
final class Scheduler: @unchecked Sendable {
    let index: Int
    /// The CPU partition this scheduler serves; its thread is bound to that partition's CPUs.
    let partition: Int
    let channel: CompletionChannel
    let thread: ServiceThread
    /// The thread's queuelets towards LNet's partitions, when incoming messages are placed (`LNET_PLACEMENT`
    /// `hint` or `none`); flushed whenever the thread has handled what it found.
    let placement: LNetPlacementProducer?
    /// LNet messages this thread received and handed to LNet.
    let received = Atomic<Int>(0)
    private let mode: PollMode
    private let window: UInt64
    private let vectors: Int
    private let logger: Logger

    private struct Members {
        var list: [Connection] = []
        var byQueue: [ObjectIdentifier: Connection] = [:]
        var version: UInt64 = 0
    }
    private let members = Mutex(Members())
    private let kicked = Mutex<[Connection]>([])
    /// Work handed to the thread (``submit(_:)``); `stopped` once ``stop()`` ran what was left.
    private let submitted = Mutex<(tasks: [@Sendable () -> Void], stopped: Bool)>(([], false))

    // Only the scheduler thread touches these.
    private var snapshot: [Connection] = []
    private var snapshotVersion: UInt64 = .max
    private var lastTimers = Tick.coarse

    static let timerInterval: UInt64 = 100_000_000
    /// How long one burst is served before the thread looks at its other connections and timers.
    static let burstLimit: UInt64 = 2_000_000

    init(index: Int, context: DeviceContext, logger: Logger, ni: LNetNI, tunables: LNDTunables) throws {
        let partitions = ni.partitions
        self.index = index
        self.partition = index % max(1, partitions.count)
        self.placement = ni.makePlacementProducer(partition: partition)
        self.vectors = max(1, context.completionVectorCount)
        self.channel = try CompletionChannel(context: context)
        self.thread = try ServiceThread(name: "o2ib-sched-\(index)", cpus: partitions.count > 0 ? partitions.cpus[partition] : [],
                                        partition: partition)
        self.mode = tunables.poll
        self.window = UInt64(tunables.pollMicroseconds) * 1000
        var logger = logger
        logger[metadataKey: "scheduler"] = "\(index)"
        self.logger = logger
    }

    func start() throws(LNetError) {
        try thread.start { [self] thread in run(thread) }
    }

    /// Stops the thread and waits for it to end (unless called from it), then runs the work still submitted
    /// (``submit(_:)``) on the caller's thread.
    func stop() {
        thread.stop()
        while true {
            let tasks = submitted.withLock { submitted -> [@Sendable () -> Void] in
                if submitted.tasks.isEmpty { submitted.stopped = true }
                defer { submitted.tasks.removeAll() }
                return submitted.tasks
            }
            if tasks.isEmpty { return }
            for task in tasks { task() }
        }
    }

    /// Runs `task` on the scheduler thread, before it next looks at its connections (once the scheduler has
    /// stopped: here, at once). The registration thread hands a transfer back to its connection this way.
    func submit(_ task: @escaping @Sendable () -> Void) {
        let inline = submitted.withLock { submitted -> Bool in
            if submitted.stopped { return true }
            submitted.tasks.append(task)
            return false
        }
        if inline { task() } else { thread.wake() }
    }

    /// The submitted work, run on the thread.
    private func runSubmitted() {
        let tasks = submitted.withLock { submitted -> [@Sendable () -> Void] in
            defer { submitted.tasks.removeAll(keepingCapacity: true) }
            return submitted.tasks
        }
        for task in tasks { task() }
    }

    /// Places a connection here; completions on `queues` are its.
    func register(_ connection: Connection, queues: [CompletionQueue]) {
        members.withLock { members in
            members.list.append(connection)
            for queue in queues { members.byQueue[ObjectIdentifier(queue)] = connection }
            members.version &+= 1
        }
        if mode == .busy { thread.wake() }
    }

    /// The connection is gone (closed, and its posted work flushed).
    func closed(_ connection: Connection) {
        members.withLock { members in
            guard let index = members.list.firstIndex(where: { $0 === connection }) else { return }
            members.list.remove(at: index)
            members.byQueue = members.byQueue.filter { $0.value !== connection }
            members.version &+= 1
        }
    }

    var connectionCount: Int { members.withLock { $0.list.count } }

    /// The CPUs the scheduler thread may run on (after binding to its partition).
    var affinity: [Int] { thread.affinity }

    /// Asks the thread to poll `connection` even without a completion event.
    func kick(_ connection: Connection) {
        kicked.withLock { $0.append(connection) }
        thread.wake()
    }

    /// Whether the caller is this scheduler's thread (work it posts needs no arming: it arms before sleeping).
    var isCurrentThread: Bool { thread.isCurrent }

    /// The completion vector for a peer's CQs: hashed from its NID, like the scheduler.
    func completionVector(for peer: NID) -> Int {
        Int(CPUPartitionTable.mix(peer.rawValue ^ 0x5EED) % UInt64(vectors))
    }

    // MARK: - The thread

    private func run(_ thread: ServiceThread) {
        var ready: [Connection] = []
        var carry: [Connection] = []
        // The channel is read only when poll(2) said it is readable (reading it otherwise is a system call that
        // finds nothing); an event that comes while the thread is awake keeps it readable for the next sleep.
        var channelReadable = false
        ready.reserveCapacity(16)
        carry.reserveCapacity(16)
        while thread.isRunning {
            swap(&ready, &carry)
            carry.removeAll(keepingCapacity: true)
            runSubmitted()
            // A busy thread never arms a queue, so the channel has nothing to say (and reading it is a system call).
            collect(into: &ready, channel: channelReadable)
            channelReadable = false
            if mode == .busy {
                refreshSnapshot()
                ready.removeAll(keepingCapacity: true)
                ready.append(contentsOf: snapshot)
            }
            if !ready.isEmpty { serve(ready, thread) }
            placement?.flush()
            let now = Tick.coarse
            if now.since(lastTimers) >= Self.timerInterval {
                lastTimers = now
                runTimers(now)
                // Events raised while the thread was awake (a busy thread never arms, but set-up may have).
                channelReadable = true
            }
            // A busy scheduler with no connection has nothing to poll: it sleeps until one is placed on it.
            if mode == .busy, !snapshot.isEmpty { continue }
            // Arm what we served, and look once more: a completion that came before the arming raises no event.
            for connection in ready where connection.prepareToSleep() { carry.append(connection) }
            if !carry.isEmpty { continue }
            let untilTimers = Self.timerInterval - min(Self.timerInterval, Tick.coarse.since(lastTimers))
            channelReadable = thread.sleep(watching: channel.fileDescriptor, timeoutNanoseconds: Int64(untilTimers / 1_000_000 + 1) * 1_000_000)
        }
    }

    /// The connections kicked, and those whose queues the channel says fired (each once).
    private func collect(into ready: inout [Connection], channel readChannel: Bool) {
        for connection in kicked.withLock({ list -> [Connection] in
            defer { list.removeAll(keepingCapacity: true) }
            return list
        }) where !ready.contains(where: { $0 === connection }) {
            ready.append(connection)
        }
        guard readChannel else { return }
        do {
            // One event per wake-up, usually all there is; reading on to "would block" is another system call.
            // Any other pending event keeps the channel readable: the next sleep returns at once for it.
            if let queue = try channel.nextEvent(), let connection = members.withLock({ $0.byQueue[ObjectIdentifier(queue)] }) {
                connection.queueFired(queue)
                if !ready.contains(where: { $0 === connection }) { ready.append(connection) }
            }
        } catch {
            logger.error("completion channel failed: \(error)")
        }
    }

    private func refreshSnapshot() {
        let version = members.withLock { $0.version }
        guard version != snapshotVersion else { return }
        snapshot = members.withLock { $0.list }
        snapshotVersion = version
    }

    /// Polls `ready` until it is quiet (see the type's comment for what quiet means in each mode).
    private func serve(_ ready: [Connection], _ thread: ServiceThread) {
        let started = Tick.coarse
        var idleSince: Tick?
        var idlePasses = 0
        var passes = 0
        while true {
            var handled = 0
            var awaiting = false
            for connection in ready {
                handled += connection.poll()
                if connection.awaitsLocalCompletions { awaiting = true }
            }
            passes += 1
            if passes & 63 == 0, Tick.coarse.since(started) >= Self.burstLimit { return }
            if handled > 0 {
                idlePasses = 0
                idleSince = nil
                continue
            }
            // The first quiet pass hands the messages placed on other partitions over (a partial queuelet), so
            // they do not wait while this thread polls for its own completions.
            if idlePasses == 0 { placement?.flush() }
            switch mode {
            case .busy: return
            case .events: if !awaiting || window == 0 { return }
            case .adaptive: if window == 0 { return }
            }
            if thread.wakeRequested { return }
            idlePasses += 1
            // The precise clock only every 16 empty passes: in a guest whose clock source traps, each read costs.
            if idlePasses & 15 == 1 {
                let now = Tick.precise
                if let since = idleSince {
                    if now.since(since) >= window { return }
                } else {
                    idleSince = now
                }
            }
        }
    }

    /// Every connection's timers (and a poll of its queues: a completion is never left waiting past a tick).
    private func runTimers(_ now: Tick) {
        refreshSnapshot()
        for connection in snapshot {
            connection.poll()
            connection.checkTimers(now: now)
        }
    }
}
