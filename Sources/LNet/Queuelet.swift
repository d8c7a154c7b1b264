/// A queuelet: a batch of work for one CPU partition, filled by one producer and handed to the partition whole,
/// so cross-CPU locking happens once per batch rather than once per message.
public struct Queuelet<Item: Sendable>: Sendable {
    /// The partition the batch is for.
    public let partition: Int
    /// The work, in submission order.
    public internal(set) var items: [Item]
    /// When the first item went in: the batch is handed over by the deadline ticker's first pass after
    /// `startedAt + maxBatchDelay` (see ``QueueletConfiguration/maxBatchDelay``).
    public internal(set) var startedAt: ContinuousClock.Instant

    init(partition: Int, capacity: Int) {
        self.partition = partition
        self.items = []
        self.items.reserveCapacity(capacity)
        self.startedAt = .now
    }

    public var isEmpty: Bool { items.isEmpty }
    public var count: Int { items.count }
}

/// Tunables of a ``QueueletScheduler``.
public struct QueueletConfiguration: Hashable, Sendable {
    /// The partitions work is spread over.
    public var partitions: CPUPartitionTable
    /// Service threads per partition. With two or more, a slow handler for one peer does not stall the
    /// partition's other peers.
    public var threadsPerPartition: Int
    /// Items per queuelet; `1` hands off every message on its own (the baseline the batches are measured against).
    public var batchSize: Int
    /// The longest a partial queuelet waits before it is handed over anyway: a ticker thread hands it over at its
    /// first pass after this, and passes are ``deadlineTick`` apart, so a queuelet waits at most
    /// `maxBatchDelay + deadlineTick` plus any time the ticker thread itself is kept from running.
    public var maxBatchDelay: Duration
    /// Deliver one peer's items in order (a peer is handled by at most one thread at a time).
    public var orderedPerPeer: Bool

    /// How far apart the deadline ticker's passes are scheduled: half of ``maxBatchDelay`` (at least 50 us).
    public var deadlineTick: Duration { max(maxBatchDelay / 2, .microseconds(50)) }

    public init(partitions: CPUPartitionTable = CPUPartitionTable(), threadsPerPartition: Int = 2, batchSize: Int = 64,
                maxBatchDelay: Duration = .microseconds(500), orderedPerPeer: Bool = true) {
        self.partitions = partitions
        self.threadsPerPartition = max(1, threadsPerPartition)
        self.batchSize = max(1, batchSize)
        self.maxBatchDelay = maxBatchDelay
        self.orderedPerPeer = orderedPerPeer
    }
}

/// Counters of a ``QueueletScheduler``.
public struct QueueletStatistics: Hashable, Sendable {
    /// Items submitted.
    public var submitted: Int
    /// Items handled.
    public var handled: Int
    /// Queuelets handed to partitions (cross-partition lock acquisitions by producers).
    public var handoffs: Int
    /// Handoffs forced by ``QueueletConfiguration/maxBatchDelay`` (or an explicit flush) before the batch was full.
    public var partialHandoffs: Int
    /// Partial handoffs made by the deadline ticker (the rest of ``partialHandoffs`` were flushes).
    public var deadlineHandoffs: Int
    /// Deadline handoffs the scheduler made late by its own fault: by a ticker pass that was due more than
    /// ``QueueletConfiguration/deadlineTick`` after the queuelet's deadline (an earlier pass found it overdue and
    /// left it, or the passes were scheduled too far apart). A pass that runs late because the ticker thread
    /// was not given a CPU is not counted, so a correct scheduler keeps this at 0 on any machine, loaded or not.
    public var lateHandoffs: Int
    /// Items handled per partition.
    public var handledPerPartition: [Int]
    /// Items submitted after shutdown, which were discarded.
    public var discarded: Int

    /// Mean items per handoff.
    public var meanBatch: Double { handoffs == 0 ? 0 : Double(submitted - discarded) / Double(handoffs) }
}
