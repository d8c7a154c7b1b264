import DequeModule
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// Early placement of incoming messages (issue 14, seed 001): an LND hands each incoming PUT or GET to the core with
// ``LNetNI/parse(header:from:context:wantsRDMA:order:)``; under `hint` or `none` the core matches it on the CPU
// partition the policy names, on that partition's service thread (bound to the partition's CPUs), and the
// message's events are delivered there. The LND keeps its own per-peer work (credits, completions, the
// connection's state) on the peer's scheduler thread, as o2iblnd does.
//
// Order: one peer's messages are matched in the order they arrived, whatever partition handles each. A
// connection's ``LNetIncomingOrder`` lets a message go to partition P only when every earlier message of the peer
// still in flight went to P too and none waits; otherwise it waits behind them. When the last one in flight is
// matched, the next run of waiting messages bound for one partition is handed to that partition in one piece,
// before the gate's lock is released (so a message arriving meanwhile cannot get ahead of it).

/// Work on its way to a partition's thread: an incoming message to match, or the completion of an operation this
/// node started (``LNetNI/run(onPartitionOf:_:)``).
enum PlacedWork: Sendable {
    case message(PlacedMessage)
    case task(partition: Int, @Sendable () -> Void)

    var partition: Int {
        switch self {
        case .message(let message): message.partition
        case .task(let partition, _): partition
        }
    }

    func run() {
        switch self {
        case .message(let message): IncomingPlacement.match(message)
        case .task(_, let work): work()
        }
    }
}

/// A relaxed counter that can live in an array.
final class RelaxedCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// One incoming message on its way to its partition.
struct PlacedMessage: Sendable {
    let ni: LNetNI
    let header: LNetHeader
    let from: NID
    let context: (any LNDPrivate)?
    let wantsRDMA: Bool
    let order: LNetIncomingOrder
    let partition: Int

    /// Hands the message to the core's parse, on its partition.
    func parse() {
        _ = ni.lnet.parse(ni: ni, header: header, from: from, context: context, wantsRDMA: wantsRDMA, partition: partition)
    }
}

/// Counters of an interface's early placement (``LNetNI/placementStatistics``).
public struct LNetPlacementStatistics: Hashable, Sendable {
    /// The policy.
    public var policy: PlacementPolicy
    /// Messages matched on each partition (inline on the receiving thread, or by the partition's service thread).
    public var matchedPerPartition: [Int]
    /// Messages matched inline, on the LND thread that received them (their partition was that thread's and nothing
    /// of the peer's was ahead of them).
    public var inline: Int
    /// Messages handed to a partition other than the receiving thread's (cross-partition hand-offs).
    public var crossPartition: Int
    /// Messages that waited behind an earlier message of their peer handled on another partition (to keep order).
    public var heldForOrder: Int
    /// Completions of operations this node started (a GET's REPLY over RDMA) handed to the partition that sent
    /// the GET (``LNetNI/run(onPartitionOf:_:)``).
    public var completionsHandedHome: Int
    /// The queuelets that carried messages to the partitions' threads (hand-offs, batch sizes).
    public var queuelets: QueueletStatistics
}

/// The thread an LND receives on: its partition, and its private queuelets towards the partitions' threads. Make one
/// per receiving thread with ``LNetNI/makePlacementProducer(partition:)`` and call ``flush()`` when the thread has
/// handled what it found (before it sleeps), so a message never waits for a queuelet to fill.
public final class LNetPlacementProducer: Sendable {
    /// The partition of the receiving thread (`nil`: none; every message is handed to its partition's thread).
    public let partition: Int?
    let producer: QueueletProducer<PlacedWork>
    let placement: IncomingPlacement

    init(partition: Int?, placement: IncomingPlacement) {
        self.partition = partition
        self.placement = placement
        self.producer = placement.scheduler.makeProducer()
    }

    /// Hands the partial queuelets to their partitions now.
    public func flush() { producer.flush() }

    /// Keeps one peer's incoming messages in arrival order: make one per connection (``LNetIncomingOrder``).
    public func makeOrder() -> LNetIncomingOrder { LNetIncomingOrder(producer: self) }
}

/// The arrival order of one peer's (one connection's) incoming messages, kept across partitions. An LND makes one
/// per connection (``LNetPlacementProducer/makeOrder()``) and passes it to every
/// ``LNetNI/parse(header:from:context:wantsRDMA:order:)`` of that connection, from one thread at a time.
public final class LNetIncomingOrder: Sendable {
    struct State {
        /// The partition the in-flight messages went to.
        var partition = 0
        /// Messages handed to `partition` and not matched yet.
        var inFlight = 0
        /// Messages waiting for the in-flight ones (their partition differs, or others wait before them).
        var waiting = Deque<PlacedMessage>()
    }

    let producer: LNetPlacementProducer
    let state = Mutex(State())

    init(producer: LNetPlacementProducer) { self.producer = producer }

    /// Messages of this peer waiting for an earlier one to be matched.
    public var waitingCount: Int { state.withLock { $0.waiting.count } }
}

/// The core's side of early placement: the partitions' service threads and the counters.
final class IncomingPlacement: Sendable {
    let policy: PlacementPolicy
    let partitions: CPUPartitionTable
    let scheduler: QueueletScheduler<PlacedWork>
    /// Set before the scheduler shuts down, which waits for the hand-offs in progress (`handingOff`): from then on
    /// a run released by a gate, or a task, runs on the thread that released it, since the partitions' threads may
    /// have ended.
    private let closed = Atomic<Bool>(false)
    private let handingOff = Atomic<Int>(0)
    private let nextRoundRobin = Atomic<Int>(0)
    private let inlineCounts: [RelaxedCounter]
    private let crossPartition = Atomic<Int>(0)
    private let held = Atomic<Int>(0)
    private let tasks = Atomic<Int>(0)
    /// The orders with messages waiting (so shutdown finds them; the lock is taken only when an order starts or
    /// stops having waiting messages, inside the order's lock).
    private let waitingOrders = Mutex<[ObjectIdentifier: LNetIncomingOrder]>([:])

    init(policy: PlacementPolicy, partitions: CPUPartitionTable, name: String) throws(LNetError) {
        self.policy = policy
        self.partitions = partitions
        self.inlineCounts = (0..<partitions.count).map { _ in RelaxedCounter() }
        // One thread per partition: a partition's queuelets are handled in hand-off order, which the gates rely
        // on. Batches are flushed by their producer after every pass, so the delay bound is a backstop.
        let configuration = QueueletConfiguration(partitions: partitions, threadsPerPartition: 1, batchSize: 32,
                                                  maxBatchDelay: .microseconds(200), orderedPerPeer: false)
        self.scheduler = try QueueletScheduler(
            configuration: configuration, name: name, placement: { $0.partition },
            orderingKey: { work in if case .message(let message) = work { message.from.rawValue } else { 0 } },
            bindThreads: true,
            // Work submitted after shutdown runs on the submitting thread (the interface is stopping: a message
            // is dropped with status `shutdown`, and the LND learns it).
            discard: { $0.run() },
            handler: { work, _ in work.run() })
    }

    /// The partition for an incoming message from `from` with `header`: an ACK or REPLY goes to the partition
    /// that sent its request (named in the MD cookie it echoes), a message with a placement cookie of ours to the
    /// partition the cookie names, anything else where the policy says.
    func partition(for header: LNetHeader, from: NID) -> Int {
        if header.type == .ack || header.type == .reply, let home = LNet.homePartition(ofMDCookie: header.mdCookie),
           home < partitions.count {
            return home
        }
        if let cookie = header.hints.cookie, cookie.partition < partitions.count { return cookie.partition }
        switch policy {
        case .roundRobin:
            return Int(UInt(bitPattern: nextRoundRobin.add(1, ordering: .relaxed).newValue) % UInt(partitions.count))
        case .peerHash, .hints:
            return partitions.partition(peer: from, hints: header.hints, policy: policy)
        }
    }

    /// Places one incoming message: matched here (inline), handed to its partition, or held behind its peer's
    /// earlier messages.
    func place(ni: LNetNI, header: LNetHeader, from: NID, context: (any LNDPrivate)?, wantsRDMA: Bool,
               order: LNetIncomingOrder) {
        let target = partition(for: header, from: from)
        let message = PlacedMessage(ni: ni, header: header, from: from, context: context, wantsRDMA: wantsRDMA,
                                    order: order, partition: target)
        enum Decision { case inline, queue, held }
        let here = order.producer.partition
        let decision = order.state.withLock { state -> Decision in
            if state.waiting.isEmpty {
                if state.inFlight == 0 {
                    state.partition = target
                    state.inFlight = 1
                    return target == here ? .inline : .queue
                }
                if state.partition == target {
                    state.inFlight += 1
                    return .queue
                }
            }
            if state.waiting.isEmpty { waitingOrders.withLock { $0[ObjectIdentifier(order)] = order } }
            state.waiting.append(message)
            return .held
        }
        if decision != .inline, target != here { crossPartition.add(1, ordering: .relaxed) }
        switch decision {
        case .inline:
            inlineCounts[target].value.add(1, ordering: .relaxed)
            Self.match(message)
        case .queue:
            order.producer.producer.submit(.message(message))
        case .held:
            held.add(1, ordering: .relaxed)
        }
    }

    /// Matches a message (on its partition's thread, or inline), then lets its peer's next waiting run go.
    static func match(_ message: PlacedMessage) {
        var next: PlacedMessage? = message
        // Runs released after shutdown began are matched here, one after another (not recursively).
        var released: Deque<PlacedMessage> = []
        while let current = next ?? released.popFirst() {
            next = nil
            current.parse()
            if let run = current.ni.incoming?.matched(current.order) { released.append(contentsOf: run) }
        }
    }

    /// One of `order`'s in-flight messages was matched. When it was the last, hands the next run of waiting
    /// messages (those bound for one partition) to that partition before the gate's lock is released; returns the
    /// run instead when the partitions' threads are stopping (the caller matches it).
    func matched(_ order: LNetIncomingOrder) -> [PlacedMessage]? {
        order.state.withLock { state -> [PlacedMessage]? in
            state.inFlight -= 1
            guard state.inFlight == 0, let first = state.waiting.first else { return nil }
            var run: [PlacedMessage] = []
            while let candidate = state.waiting.first, candidate.partition == first.partition {
                run.append(candidate)
                state.waiting.removeFirst()
            }
            state.partition = first.partition
            state.inFlight = run.count
            if state.waiting.isEmpty { _ = waitingOrders.withLock { $0.removeValue(forKey: ObjectIdentifier(order)) } }
            return handOff(run.map { .message($0) }, to: first.partition) ? nil : run
        }
    }

    /// Hands `work` to `partition`'s thread at once; `false` (nothing handed) once the threads are stopping.
    private func handOff(_ work: [PlacedWork], to partition: Int) -> Bool {
        // Announce the hand-off, then look at `closed` (shutdown sets it, then waits for announced hand-offs):
        // sequentially consistent, so either this sees `closed` or shutdown sees this hand-off and waits for it.
        handingOff.add(1, ordering: .sequentiallyConsistent)
        defer { handingOff.subtract(1, ordering: .sequentiallyConsistent) }
        guard !closed.load(ordering: .sequentiallyConsistent) else { return false }
        return scheduler.handOffDirectly(work, to: partition)
    }

    /// Runs `work` on the partition that sent the operation whose MD cookie is `mdCookie`: here, when the caller
    /// serves that partition or the cookie names none; else handed to the partition's thread (or, once it is
    /// stopping, here).
    func run(onPartitionOf mdCookie: UInt64, _ work: @escaping @Sendable () -> Void) {
        guard let home = LNet.homePartition(ofMDCookie: mdCookie), home < partitions.count,
              CPUPartitionTable.servedByCurrentThread != home,
              handOff([.task(partition: home, work)], to: home) else {
            work()
            return
        }
        tasks.add(1, ordering: .relaxed)
    }

    /// Producer for the thread of `partition` (`nil`: a thread of no partition).
    func makeProducer(partition: Int?) -> LNetPlacementProducer {
        LNetPlacementProducer(partition: partition.map { $0 % partitions.count }, placement: self)
    }

    var statistics: LNetPlacementStatistics {
        let queuelets = scheduler.statistics
        let inline = inlineCounts.map { $0.value.load(ordering: .relaxed) }
        return LNetPlacementStatistics(
            policy: policy,
            matchedPerPartition: zip(inline, queuelets.handledPerPartition).map { $0 + $1 },
            inline: inline.reduce(0, +), crossPartition: crossPartition.load(ordering: .relaxed),
            heldForOrder: held.load(ordering: .relaxed), completionsHandedHome: tasks.load(ordering: .relaxed),
            queuelets: queuelets)
    }

    /// Lets the partitions' threads match everything handed to them and stops them; runs released from then on,
    /// and messages submitted afterwards, are matched on the thread that releases or submits them.
    func shutdown() {
        closed.store(true, ordering: .sequentiallyConsistent)
        while handingOff.load(ordering: .sequentiallyConsistent) > 0 { sched_yield() }
        scheduler.shutdown()
        // Messages still waiting behind one in flight: that one may be the message whose handler called this (it
        // is matched, so releases them, only when the handler returns). The interface is stopping, so order no
        // longer matters: they are taken out of their order (which then releases nothing) and dropped here.
        let orders = waitingOrders.withLock { orders -> [LNetIncomingOrder] in
            defer { orders.removeAll() }
            return Array(orders.values)
        }
        for order in orders {
            let waiting = order.state.withLock { state -> Deque<PlacedMessage> in
                defer { state.waiting.removeAll() }
                return state.waiting
            }
            for message in waiting { message.parse() }
        }
    }
}
