import DequeModule
import Dispatch
import Synchronization

/// An event queue: where an MD's events go (`lnet_eq`).
///
/// Each queue has its own lock, so many queues take and deliver events concurrently; no LNet-wide lock is ever held
/// while application code runs. A queue delivers in one of four ways:
///
/// - ``Delivery/polled``: events wait in the queue for ``poll()``, ``next(timeout:)`` or a `for try await` loop
///   over ``events``. A waiting consumer is handed the next event directly; when nobody waits, up to ``capacity``
///   events are kept and, on overflow, the oldest is discarded and counted (``overflowCount``).
/// - ``Delivery/callback(_:)``: the handler runs on the queue's own serial dispatch queue, in event order, never on
///   the thread that moves messages. A slow handler delays only this queue's later events.
/// - ``Delivery/inline(_:)``: opt-in low latency. The handler runs on the thread that completed the operation (an
///   LND thread, or the caller of `put`/`get`), after every LNet lock has been released. A slow inline handler ties
///   down that thread, so use it only for handlers that just record a status.
/// - ``Delivery/scheduler(_:)``: events are handed to a ``QueueletScheduler`` in batches, placed on CPU partitions
///   by peer NID hash or by the hints the initiator sent, and handled in per-peer order by service threads.
///
/// Only a polled queue can be polled or iterated: on any other, ``poll()``, ``next(timeout:)`` and ``events`` throw
/// ``LNetError/eventQueueNotPolled(label:delivery:)`` rather than take events from under its handler.
///
/// Handlers are for notification, but may re-enter LNet (unlink an MD, start a Put, drop the last reference to a
/// request) without deadlock.
public final class EventQueue: Sendable {
    /// How the queue hands events to the application.
    public enum Delivery: Sendable {
        case polled
        case callback(@Sendable (LNetEvent) -> Void)
        case inline(@Sendable (LNetEvent) -> Void)
        case scheduler(QueueletScheduler<LNetEvent>)

        var name: String {
            switch self {
            case .polled: "polled"
            case .callback: "callback"
            case .inline: "inline"
            case .scheduler: "scheduler"
            }
        }
    }

    /// How a wait for an event ended.
    enum WaitOutcome: Sendable {
        case event(LNetEvent)
        case timedOut
        case cancelled
    }

    private struct State {
        var events: Deque<LNetEvent> = []
        /// Consumers parked for an event (only while `events` is empty), and their arrival order; ids of waiters
        /// that left early stay in `order` until they surface or are compacted away.
        var waiters: [UInt64: CheckedContinuation<WaitOutcome, Never>] = [:]
        var order: Deque<UInt64> = []
        /// Waiters whose task was cancelled before they parked.
        var cancelledEarly: Set<UInt64> = []
        var nextWaiter: UInt64 = 0
        var drainScheduled = false
        var overflowed = 0
        var posted = 0

        mutating func removeWaiter(_ id: UInt64) -> CheckedContinuation<WaitOutcome, Never>? {
            let waiter = waiters.removeValue(forKey: id)
            if order.count > 32, order.count > 2 * waiters.count { order = Deque(order.filter { waiters[$0] != nil }) }
            return waiter
        }
    }

    /// A label for logs.
    public let label: String
    /// Polled queues keep at most this many undelivered events; older ones are discarded on overflow.
    public let capacity: Int
    private let delivery: Delivery
    private let state = Mutex(State())
    private let dispatchQueue: DispatchQueue?
    private let producer: QueueletProducer<LNetEvent>?

    /// A polled queue that keeps up to `capacity` undelivered events.
    public convenience init(label: String = "eq", capacity: Int = 4096) {
        self.init(label: label, capacity: capacity, delivery: .polled)
    }

    /// A queue whose `handler` runs on the queue's own serial dispatch queue.
    public convenience init(label: String = "eq", handler: @escaping @Sendable (LNetEvent) -> Void) {
        self.init(label: label, delivery: .callback(handler))
    }

    public init(label: String = "eq", capacity: Int = 4096, delivery: Delivery) {
        self.label = label
        self.capacity = max(1, capacity)
        self.delivery = delivery
        switch delivery {
        case .callback:
            dispatchQueue = DispatchQueue(label: "lnet.eq.\(label)")
            producer = nil
        case .scheduler(let scheduler):
            dispatchQueue = nil
            producer = scheduler.makeProducer()
        case .polled, .inline:
            dispatchQueue = nil
            producer = nil
        }
    }

    /// Events posted so far (delivered or waiting).
    public var postedCount: Int { state.withLock { $0.posted } }
    /// Events a polled queue discarded because it was full.
    public var overflowCount: Int { state.withLock { $0.overflowed } }
    /// Events waiting in a polled (or not yet drained callback) queue.
    public var pendingCount: Int { state.withLock { $0.events.count } }
    /// Consumers parked in ``next(timeout:)`` or an ``events`` loop.
    var waiterCount: Int { state.withLock { $0.waiters.count } }

    /// Whether this queue is polled; throws the error that says why not.
    func requirePolled() throws(LNetError) {
        guard case .polled = delivery else {
            throw LNetError.eventQueueNotPolled(label: label, delivery: delivery.name)
        }
    }

    /// Takes the oldest waiting event of a polled queue, if any. Throws
    /// ``LNetError/eventQueueNotPolled(label:delivery:)`` on a queue that delivers to a handler.
    public func poll() throws(LNetError) -> LNetEvent? {
        try requirePolled()
        return state.withLock { $0.events.popFirst() }
    }

    /// Waits up to `timeout` for the next event of a polled queue. Throws ``LNetError/timeout`` when none came,
    /// ``LNetError/cancelled`` when the waiting task is cancelled, and
    /// ``LNetError/eventQueueNotPolled(label:delivery:)`` on a queue that delivers to a handler.
    ///
    /// The deadline is kept by one timer shared by every wait in the process: a wait costs no `Task`.
    public func next(timeout: Duration) async throws(LNetError) -> LNetEvent {
        try requirePolled()
        switch await waitForEvent(deadline: ContinuousClock.now + timeout) {
        case .event(let event): return event
        case .timedOut: throw LNetError.timeout
        case .cancelled: throw LNetError.cancelled
        }
    }

    /// Events dropped since `seen` (which it advances), as the error a sequence consumer gets.
    func takeDrops(since seen: inout Int) -> LNetError? {
        let overflowed = state.withLock { $0.overflowed }
        guard overflowed > seen else { return nil }
        defer { seen = overflowed }
        return LNetError.eventsDropped(count: overflowed - seen)
    }

    /// The next event of a polled queue, waiting until `deadline` (nil: for ever) or the task's cancellation.
    func waitForEvent(deadline: ContinuousClock.Instant?) async -> WaitOutcome {
        if let event = state.withLock({ $0.events.popFirst() }) { return .event(event) }
        if Task.isCancelled { return .cancelled }
        if let deadline, ContinuousClock.now >= deadline { return .timedOut }
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        var token: DeadlineTimer.Token?
        let outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<WaitOutcome, Never>) in
                let immediate = state.withLock { state -> WaitOutcome? in
                    if let event = state.events.popFirst() { return .event(event) }
                    if state.cancelledEarly.remove(id) != nil { return .cancelled }
                    state.waiters[id] = continuation
                    state.order.append(id)
                    return nil
                }
                if let immediate {
                    continuation.resume(returning: immediate)
                } else if let deadline {
                    token = DeadlineTimer.shared.schedule(at: deadline) { [weak self] in self?.wake(id, .timedOut) }
                }
            }
        } onCancel: {
            let parked = state.withLock { state -> CheckedContinuation<WaitOutcome, Never>? in
                if let waiter = state.removeWaiter(id) { return waiter }
                state.cancelledEarly.insert(id)
                return nil
            }
            parked?.resume(returning: .cancelled)
        }
        if let token { DeadlineTimer.shared.cancel(token) }
        state.withLock { _ = $0.cancelledEarly.remove(id) }
        return outcome
    }

    private func wake(_ id: UInt64, _ outcome: WaitOutcome) {
        let waiter = state.withLock { $0.removeWaiter(id) }
        waiter?.resume(returning: outcome)
    }

    /// Adds an event. Called by the core, possibly while it holds its own lock (lock order: core, then queue), so
    /// it never runs application code: it returns `true` when the caller must call ``runInline(_:)`` after
    /// releasing its locks.
    func post(_ event: LNetEvent) -> Bool {
        switch delivery {
        case .polled:
            // A parked consumer takes the event directly (consumers park only while no event waits).
            let waiter = state.withLock { state -> CheckedContinuation<WaitOutcome, Never>? in
                state.posted += 1
                while let id = state.order.popFirst() {
                    if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                }
                if state.events.count >= capacity {
                    state.events.removeFirst()
                    state.overflowed += 1
                }
                state.events.append(event)
                return nil
            }
            waiter?.resume(returning: .event(event))
            return false
        case .callback(let handler):
            let schedule = state.withLock { state -> Bool in
                state.posted += 1
                state.events.append(event)
                guard !state.drainScheduled else { return false }
                state.drainScheduled = true
                return true
            }
            if schedule, let dispatchQueue {
                dispatchQueue.async { [self] in drain(handler) }
            }
            return false
        case .inline:
            state.withLock { $0.posted += 1 }
            return true
        case .scheduler:
            state.withLock { $0.posted += 1 }
            producer?.submit(event)
            return false
        }
    }

    /// Runs an inline handler; the caller holds no LNet lock.
    func runInline(_ event: LNetEvent) {
        if case .inline(let handler) = delivery { handler(event) }
    }

    /// Pushes a scheduler-delivered queue's partial batches to the service threads now.
    public func flush() {
        producer?.flush()
    }

    private func drain(_ handler: @Sendable (LNetEvent) -> Void) {
        while true {
            let batch = state.withLock { state -> Deque<LNetEvent> in
                if state.events.isEmpty {
                    state.drainScheduled = false
                    return []
                }
                let batch = state.events
                state.events = []
                return batch
            }
            if batch.isEmpty { return }
            for event in batch { handler(event) }
        }
    }
}
