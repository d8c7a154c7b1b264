import DequeModule
import Logging
import Synchronization

/// Moves work from producers (LND or event-delivery threads) to per-partition service threads in queuelets.
///
/// - Producers (``QueueletProducer``) fill one queuelet per partition privately and hand a queuelet to its partition
///   whole when it is full, when it is older than ``QueueletConfiguration/maxBatchDelay`` (a background ticker
///   enforces the bound for idle producers), or on ``QueueletProducer/flush()``.
/// - Each partition keeps a staging list of handed-over queuelets; its service threads take one whole queuelet per
///   lock acquisition.
/// - With ``QueueletConfiguration/orderedPerPeer`` and two or more threads per partition, a service thread splits a
///   queuelet into per-peer runs. A peer is owned by at most one thread at a time, so one peer's items are handled
///   in order; other peers' runs are offered to the partition's other threads, so a slow handler for one peer does
///   not stall the rest. With one thread per partition, queuelets are handled whole, in hand-off order (which keeps
///   per-peer order, but a slow handler holds up its partition).
///
/// The handler runs on a service thread with no scheduler lock held; it may submit more work.
public final class QueueletScheduler<Item: Sendable>: Sendable {
    /// A run of one peer's items, handled by one thread.
    private struct Run {
        var key: UInt64
        var items: [Item]
    }

    private struct LocalState {
        var ready: Deque<Run> = []
        /// Peers owned by some thread; the value holds items that arrived for the peer meanwhile.
        var owned: [UInt64: [Item]] = [:]
    }

    /// The queuelet a service thread is handling and how far it got: only that thread touches it, or the same
    /// thread again when a handler calls ``shutdown()`` (which then finishes it).
    private final class Cursor: @unchecked Sendable {
        var batch: [Item] = []
        var next = 0
    }

    private final class Partition: Sendable {
        let index: Int
        let staging = Mutex(Deque<[Item]>())
        let local = Mutex(LocalState())
        /// The partition's service threads (set once, before any item can be submitted), and their cursors.
        nonisolated(unsafe) var threads: [ServiceThread] = []
        nonisolated(unsafe) var cursors: [Cursor] = []
        let handled = Atomic<Int>(0)
        init(index: Int) { self.index = index }

        /// Wakes one sleeping thread of the partition, as a semaphore's signal would: the wake-up claims that
        /// thread's sleep, so the next call wakes another sleeper. When none sleeps, every thread is told to look
        /// again before it next sleeps (a flag, no system call), so a thread that was about to sleep cannot miss
        /// the work while the others are busy.
        func wakeOne() {
            for thread in threads where thread.wakeIfSleeping() { return }
            for thread in threads { thread.wake() }
        }
    }

    private final class WeakProducer: @unchecked Sendable {
        weak var producer: QueueletProducer<Item>?
        init(_ producer: QueueletProducer<Item>) { self.producer = producer }
    }

    public let configuration: QueueletConfiguration
    let placement: @Sendable (Item) -> Int
    private let orderingKey: @Sendable (Item) -> UInt64
    private let handler: @Sendable (Item, Int) -> Void
    private let discard: (@Sendable (Item) -> Void)?
    private let partitions: [Partition]
    private let producers = Mutex<[WeakProducer]>([])
    private let threads = Mutex<[ServiceThread]>([])
    private let stopping = Atomic<Bool>(false)
    /// The deadline ticker (only when batches hold more than one item).
    private let ticker: ServiceThread?
    private let stopped = Atomic<Bool>(false)
    private let submitted = Atomic<Int>(0)
    private let handoffs = Atomic<Int>(0)
    private let partialHandoffs = Atomic<Int>(0)
    private let deadlineHandoffs = Atomic<Int>(0)
    private let lateHandoffs = Atomic<Int>(0)
    private let discarded = Atomic<Int>(0)
    private let defaultProducer = Mutex<QueueletProducer<Item>?>(nil)
    private let logger: Logger

    /// Starts the service threads (and the ticker that bounds how long a partial queuelet waits).
    ///
    /// - Parameters:
    ///   - configuration: the partitions, threads per partition, batch size and batch delay.
    ///   - name: the prefix of the service threads' names.
    ///   - logger: where the scheduler logs (nothing when `nil`).
    ///   - placement: the partition for an item (reduced modulo the partition count).
    ///   - orderingKey: the peer an item belongs to; items with one key are handled in submission order.
    ///   - bindThreads: bind each service thread to its partition's CPUs (``CPUPartitionTable/cpus``).
    ///   - discard: called with an item submitted after ``shutdown()`` (which is not handled), so an owner that
    ///     must finish every item can finish it itself.
    ///   - handler: handles one item on a service thread of the given partition.
    public init(configuration: QueueletConfiguration, name: String = "queuelet", logger: Logger? = nil,
                placement: @escaping @Sendable (Item) -> Int, orderingKey: @escaping @Sendable (Item) -> UInt64,
                bindThreads: Bool = false, discard: (@Sendable (Item) -> Void)? = nil,
                handler: @escaping @Sendable (Item, _ partition: Int) -> Void) throws(LNetError) {
        self.configuration = configuration
        self.placement = placement
        self.orderingKey = orderingKey
        self.handler = handler
        self.discard = discard
        self.logger = logger ?? Logger(label: "lnet.queuelet", factory: { _ in SwiftLogNoOpLogHandler() })
        self.partitions = (0..<configuration.partitions.count).map { Partition(index: $0) }
        // The ticker's first pass is due one tick from now: no producer exists yet, so none of its queuelets can
        // be overdue before then, however late the ticker thread gets to run.
        let firstPass = ContinuousClock.now + configuration.deadlineTick
        // Every thread is made before any starts, so a partition's list is complete before its threads run.
        for partition in partitions {
            partition.threads = try (0..<configuration.threadsPerPartition).map { (thread) throws(LNetError) in
                try ServiceThread(name: "\(name.prefix(8))\(partition.index).\(thread)",
                                  cpus: bindThreads ? configuration.partitions.cpus[partition.index] : [],
                                  partition: bindThreads ? partition.index : nil)
            }
            partition.cursors = partition.threads.map { _ in Cursor() }
        }
        ticker = configuration.batchSize > 1 ? try ServiceThread(name: "\(name.prefix(8))-tick") : nil
        var started: [ServiceThread] = []
        do throws(LNetError) {
            for partition in partitions {
                for (thread, cursor) in zip(partition.threads, partition.cursors) {
                    try thread.start { [self] thread in serviceLoop(partition, thread, cursor) }
                    started.append(thread)
                }
            }
            if let ticker {
                try ticker.start { [self] thread in tickLoop(firstPass: firstPass, thread) }
                started.append(ticker)
            }
        } catch {
            stopping.store(true, ordering: .releasing)
            for thread in started { thread.stop() }
            throw error
        }
        threads.withLock { $0 = started }
    }

    /// A producer: one per producing thread or event queue, so producers never share a partial queuelet.
    public func makeProducer() -> QueueletProducer<Item> {
        let producer = QueueletProducer(scheduler: self)
        producers.withLock { list in
            list.removeAll { $0.producer == nil }
            list.append(WeakProducer(producer))
        }
        return producer
    }

    /// Submits through a shared producer (convenient; threads that submit a lot should own a producer).
    public func submit(_ item: Item) {
        let producer = defaultProducer.withLock { shared -> QueueletProducer<Item> in
            if let shared { return shared }
            let made = makeProducer()
            shared = made
            return made
        }
        producer.submit(item)
    }

    /// Hands every producer's partial queuelets to the partitions now.
    public func flush() {
        for producer in liveProducers() { producer.flush() }
    }

    /// Current counters.
    public var statistics: QueueletStatistics {
        QueueletStatistics(
            submitted: submitted.load(ordering: .relaxed),
            handled: partitions.reduce(0) { $0 + $1.handled.load(ordering: .relaxed) },
            handoffs: handoffs.load(ordering: .relaxed),
            partialHandoffs: partialHandoffs.load(ordering: .relaxed),
            deadlineHandoffs: deadlineHandoffs.load(ordering: .relaxed),
            lateHandoffs: lateHandoffs.load(ordering: .relaxed),
            handledPerPartition: partitions.map { $0.handled.load(ordering: .relaxed) },
            discarded: discarded.load(ordering: .relaxed))
    }

    /// Hands over all partial queuelets, lets the service threads finish every item, and stops them.
    /// Items submitted afterwards are discarded (and counted; see `discard`). Called from a handler, it stops the
    /// other threads, then finishes on the calling thread what is left: the rest of its queuelet and whatever
    /// any partition still holds, so everything handed over is handled before it returns.
    public func shutdown() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        flush()
        stopping.store(true, ordering: .releasing)
        let all = threads.withLock { list -> [ServiceThread] in
            let all = list
            list.removeAll()
            return all
        }
        // The ticker first, then a last flush: a submit that raced the stop (it passed the acceptance check
        // before it) may have filled a queuelet since, and no ticker pass may hand one over once the partitions'
        // threads are gone. Each thread then finishes what its partition holds before it ends.
        ticker?.stop()
        flush()
        for thread in all where thread !== ticker { thread.stop() }
        // From a handler: this thread was only told to stop; finish here what no thread will.
        for partition in partitions {
            for (thread, cursor) in zip(partition.threads, partition.cursors) where thread.isCurrent {
                drainHere(partition, cursor)
            }
        }
    }

    /// The rest of `cursor`'s queuelet, then every queuelet and run any partition still holds, on this thread.
    private func drainHere(_ own: Partition, _ cursor: Cursor) {
        handleRest(of: cursor, own)
        var found = true
        while found {
            found = false
            for partition in [own] + partitions.filter({ $0 !== own }) {
                while let batch = partition.staging.withLock({ $0.popFirst() }) {
                    found = true
                    cursor.batch = batch
                    cursor.next = 0
                    handleRest(of: cursor, partition)
                }
                while let run = partition.local.withLock({ $0.ready.popFirst() }) {
                    found = true
                    process(run, partition)
                }
            }
        }
    }

    /// Handles the items of the cursor's queuelet not handled yet, one at a time (a handler that shuts the
    /// scheduler down finishes them itself).
    private func handleRest(of cursor: Cursor, _ partition: Partition) {
        while cursor.next < cursor.batch.count {
            let item = cursor.batch[cursor.next]
            cursor.next += 1
            handler(item, partition.index)
            partition.handled.add(1, ordering: .relaxed)
        }
        cursor.batch = []
        cursor.next = 0
    }

    private func liveProducers() -> [QueueletProducer<Item>] {
        producers.withLock { list in list.compactMap { $0.producer } }
    }

    // MARK: - Producer side

    func partitionIndex(for item: Item) -> Int {
        let value = placement(item) % partitions.count
        return value < 0 ? value + partitions.count : value
    }

    var isAcceptingWork: Bool { !stopped.load(ordering: .acquiring) }

    func noteSubmitted() { submitted.add(1, ordering: .relaxed) }

    func noteDiscarded(_ item: Item) {
        discarded.add(1, ordering: .relaxed)
        discard?(item)
    }

    /// Hands `items` to `partition` as one queuelet at once, bypassing producers (the caller keeps their order
    /// against its other hand-offs itself); the partition's thread is woken. Returns `false`, handing nothing,
    /// once the scheduler no longer accepts work.
    func handOffDirectly(_ items: [Item], to partition: Int) -> Bool {
        guard isAcceptingWork, !items.isEmpty else { return false }
        submitted.add(items.count, ordering: .relaxed)
        handOff(items, to: partition, partial: true)
        wake(partition)
        return true
    }

    /// Appends a queuelet to a partition's staging list. Called with the producer's lock held so one producer's
    /// queuelets reach a partition in the order they were filled.
    func handOff(_ items: [Item], to partition: Int, partial: Bool) {
        partitions[partition].staging.withLock { $0.append(items) }
        handoffs.add(1, ordering: .relaxed)
        if partial { partialHandoffs.add(1, ordering: .relaxed) }
    }

    /// Counts a partial queuelet the deadline ticker handed over (see ``QueueletStatistics/lateHandoffs``).
    func noteDeadlineHandoff(late: Bool) {
        deadlineHandoffs.add(1, ordering: .relaxed)
        if late { lateHandoffs.add(1, ordering: .relaxed) }
    }

    func wake(_ partition: Int) {
        partitions[partition].wakeOne()
    }

    // MARK: - Service side

    private func serviceLoop(_ partition: Partition, _ thread: ServiceThread, _ cursor: Cursor) {
        while true {
            if let run = partition.local.withLock({ $0.ready.popFirst() }) {
                process(run, partition)
                continue
            }
            // With one thread per partition, handling queuelets in hand-off order already keeps each peer in
            // order; per-peer runs are only needed to let a partition's threads work on different peers at once.
            if configuration.orderedPerPeer && configuration.threadsPerPartition > 1 {
                if claimNextQueuelet(partition) { continue }
            } else if let batch = partition.staging.withLock({ $0.popFirst() }) {
                cursor.batch = batch
                cursor.next = 0
                handleRest(of: cursor, partition)
                continue
            }
            if stopping.load(ordering: .acquiring) {
                let idle = partition.staging.withLock { $0.isEmpty } && partition.local.withLock { $0.ready.isEmpty }
                if idle { return }
            }
            thread.sleep()
        }
    }

    /// Takes the next queuelet and splits it into per-peer runs, claiming idle peers and parking items of busy
    /// ones. Taking the queuelet and claiming its peers happen under the partition-local lock, so two threads that
    /// take consecutive queuelets cannot claim one peer's items out of order. Returns `false` if there was none.
    private func claimNextQueuelet(_ partition: Partition) -> Bool {
        let claimed = partition.local.withLock { state -> (found: Bool, mine: Run?, offered: Int) in
            guard let batch = partition.staging.withLock({ $0.popFirst() }) else { return (false, nil, 0) }
            var runs: [Run] = []
            var runIndex: [UInt64: Int] = [:]
            for item in batch {
                let key = orderingKey(item)
                if let index = runIndex[key] {
                    runs[index].items.append(item)
                } else if state.owned[key] != nil {
                    state.owned[key]?.append(item)
                } else {
                    state.owned[key] = []
                    runIndex[key] = runs.count
                    runs.append(Run(key: key, items: [item]))
                }
            }
            guard let first = runs.first else { return (true, nil, 0) }
            state.ready.append(contentsOf: runs.dropFirst())
            return (true, first, runs.count - 1)
        }
        for _ in 0..<min(claimed.offered, configuration.threadsPerPartition - 1) { partition.wakeOne() }
        if let run = claimed.mine { process(run, partition) }
        return claimed.found
    }

    private func process(_ run: Run, _ partition: Partition) {
        for item in run.items { handler(item, partition.index) }
        partition.handled.add(run.items.count, ordering: .relaxed)
        // Release the peer, or queue its next run at the back (fair to other peers; ownership is kept).
        partition.local.withLock { state in
            guard let pending = state.owned[run.key], !pending.isEmpty else {
                state.owned[run.key] = nil
                return
            }
            state.owned[run.key] = []
            state.ready.append(Run(key: run.key, items: pending))
        }
    }

    /// Every pass hands over the partial queuelets older than the bound, and schedules the next pass one tick
    /// after the moment it took as "now" (not after its own work), so that a queuelet it left - not yet overdue
    /// then - is overdue no earlier than one tick before the next pass is due. A pass that hands over a queuelet
    /// whose deadline came more than a tick before the pass was due counts it late: that is the scheduler's
    /// fault (an overdue queuelet left behind, or passes scheduled too far apart), while the ticker thread
    /// running late, as on a loaded machine, is not.
    private func tickLoop(firstPass: ContinuousClock.Instant, _ thread: ServiceThread) {
        let delay = configuration.maxBatchDelay
        let tick = configuration.deadlineTick
        var due = firstPass
        while !stopping.load(ordering: .acquiring) {
            // Shutdown wakes the thread, so a long tick never delays it.
            let wait = due - ContinuousClock.now
            if wait > .zero { thread.sleep(timeout: wait) }
            let now = ContinuousClock.now
            for producer in liveProducers() { producer.flush(startedBefore: now - delay, passDue: due, tick: tick) }
            due = now + tick
        }
    }
}

/// Fills queuelets for a ``QueueletScheduler`` and hands them over whole.
///
/// Its lock is private to the producer (uncontended except against the scheduler's deadline ticker), so the
/// only cross-partition lock a producer takes is the partition staging lock, once per queuelet.
public final class QueueletProducer<Item: Sendable>: Sendable {
    private let scheduler: QueueletScheduler<Item>
    private let pending: Mutex<[Queuelet<Item>]>

    init(scheduler: QueueletScheduler<Item>) {
        self.scheduler = scheduler
        let count = scheduler.configuration.partitions.count
        let capacity = scheduler.configuration.batchSize
        self.pending = Mutex((0..<count).map { Queuelet(partition: $0, capacity: capacity) })
    }

    /// Adds an item to its partition's queuelet, handing the queuelet over when it is full.
    public func submit(_ item: Item) {
        guard scheduler.isAcceptingWork else {
            scheduler.noteDiscarded(item)
            return
        }
        scheduler.noteSubmitted()
        let partition = scheduler.partitionIndex(for: item)
        let batchSize = scheduler.configuration.batchSize
        let handedOff = pending.withLock { queuelets -> Bool in
            if queuelets[partition].items.isEmpty { queuelets[partition].startedAt = .now }
            queuelets[partition].items.append(item)
            guard queuelets[partition].items.count >= batchSize else { return false }
            let full = queuelets[partition].items
            queuelets[partition].items = []
            queuelets[partition].items.reserveCapacity(batchSize)
            scheduler.handOff(full, to: partition, partial: false)
            return true
        }
        if handedOff { scheduler.wake(partition) }
    }

    /// Hands over every partial queuelet now.
    public func flush() {
        flush(startedBefore: nil)
    }

    /// Hands over partial queuelets whose first item arrived before `cutoff` (all of them when `nil`). The
    /// deadline ticker also passes when the pass was due and its tick, to count late hand-offs.
    func flush(startedBefore cutoff: ContinuousClock.Instant?, passDue: ContinuousClock.Instant? = nil,
               tick: Duration = .zero) {
        let delay = scheduler.configuration.maxBatchDelay
        let woken = pending.withLock { queuelets -> [Int] in
            var woken: [Int] = []
            for index in queuelets.indices where !queuelets[index].items.isEmpty {
                if let cutoff, queuelets[index].startedAt >= cutoff { continue }
                let items = queuelets[index].items
                let deadline = queuelets[index].startedAt + delay
                queuelets[index].items = []
                scheduler.handOff(items, to: index, partial: true)
                if let passDue { scheduler.noteDeadlineHandoff(late: passDue - deadline > tick) }
                woken.append(index)
            }
            return woken
        }
        for index in woken { scheduler.wake(index) }
    }
}
