import DequeModule
import Dispatch
import Synchronization

/// An event queue: where an MD's events go (`lnet_eq`).
///
/// Each queue has its own lock, so many queues take and deliver events concurrently; no LNet-wide lock is ever held
/// while application code runs. A queue delivers in one of four ways:
///
/// - ``Delivery/polled``: events wait in the queue for ``poll()`` or ``next(timeout:)``.
/// - ``Delivery/callback(_:)``: the handler runs on the queue's own serial dispatch queue, in event order, never on
///   the thread that moves messages. A slow handler delays only this queue's later events.
/// - ``Delivery/inline(_:)``: opt-in low latency. The handler runs on the thread that completed the operation (an
///   LND thread, or the caller of `put`/`get`), after every LNet lock has been released. A slow inline handler ties
///   down that thread, so use it only for handlers that just record a status.
/// - ``Delivery/scheduler(_:)``: events are handed to a ``QueueletScheduler`` in batches, placed on CPU partitions
///   by peer NID hash or by the hints the initiator sent, and handled in per-peer order by service threads.
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
    }

    private struct State {
        var events: Deque<LNetEvent> = []
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
        var drainScheduled = false
        var overflowed = 0
        var posted = 0
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

    /// Takes the oldest waiting event of a polled queue, if any.
    public func poll() -> LNetEvent? {
        state.withLock { $0.events.popFirst() }
    }

    /// Waits up to `timeout` for the next event of a polled queue.
    public func next(timeout: Duration) async throws(LNetError) -> LNetEvent {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let event = poll() { return event }
            if ContinuousClock.now >= deadline { throw LNetError.timeout }
            let id = state.withLock { state -> UInt64 in
                state.nextWaiter += 1
                return state.nextWaiter
            }
            let timer = Task { [weak self] in
                try? await Task.sleep(until: deadline, clock: .continuous)
                self?.wake(id)
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { state -> Bool in
                    guard state.events.isEmpty else { return false }
                    state.waiters[id] = continuation
                    return true
                }
                if !parked { continuation.resume() }
            }
            timer.cancel()
        }
    }

    private func wake(_ id: UInt64) {
        let continuation = state.withLock { $0.waiters.removeValue(forKey: id) }
        continuation?.resume()
    }

    /// Adds an event. Called by the core, possibly while it holds its own lock (lock order: core, then queue), so
    /// it never runs application code: it returns `true` when the caller must call ``runInline(_:)`` after
    /// releasing its locks.
    func post(_ event: LNetEvent) -> Bool {
        switch delivery {
        case .polled:
            let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.posted += 1
                if state.events.count >= capacity {
                    state.events.removeFirst()
                    state.overflowed += 1
                }
                state.events.append(event)
                guard !state.waiters.isEmpty else { return [] }
                let all = Array(state.waiters.values)
                state.waiters.removeAll()
                return all
            }
            for waiter in waiters { waiter.resume() }
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
