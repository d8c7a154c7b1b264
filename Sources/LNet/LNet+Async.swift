import Synchronization

/// What an awaited ``LNet/put(_:to:portal:matchBits:offset:ackRequested:headerData:hints:deadline:)`` or
/// ``LNet/get(into:from:portal:matchBits:offset:hints:deadline:)`` did. By the time it is returned, the
/// operation's MD is unlinked and LNet no longer touches its memory.
public struct LNetCompletion: Sendable {
    /// The MD the operation used (already unlinked).
    public var md: MDHandle
    /// The outcome: always ``LNetStatus/ok`` (a failed operation throws instead).
    public var status: LNetStatus
    /// Bytes the operation asked to move: the source's length for a PUT, the sink's for a GET.
    public var requestedLength: Int
    /// Bytes that moved: for a PUT with an ACK, what the target's MD took (less than requested when it truncated);
    /// without an ACK, what was sent; for a GET, what landed in the sink.
    public var matchedLength: Int
    /// For a PUT with an ACK, the offset in the target's MD where the data went; for a GET, where it came from.
    public var offset: Int
    /// Every event of the operation's MD in delivery order: SEND, then ACK or REPLY (their order is the LND's),
    /// the last one with `unlinked == true`.
    public var events: [LNetEvent]

    public init(md: MDHandle, status: LNetStatus, requestedLength: Int, matchedLength: Int, offset: Int, events: [LNetEvent]) {
        self.md = md
        self.status = status
        self.requestedLength = requestedLength
        self.matchedLength = matchedLength
        self.offset = offset
        self.events = events
    }
}

extension LNet {
    /// Sends `source` to `target` and waits until the operation is over: until the target's ACK when
    /// `ackRequested` (the default), else until the SEND completed. Returns the completion's figures; throws
    /// ``LNetError/operationFailed(status:event:)`` when the SEND failed or the ACK reports a failure (for example
    /// ``LNetStatus/noMatch``), and the errors of ``bind(_:unlink:)`` and ``put(_:to:portal:matchBits:offset:ackRequested:headerData:hints:)``.
    ///
    /// The memory is bound as an MD for this call only (threshold: SEND, plus ACK when asked for) with its events
    /// on a private inline event queue; the existing delivery modes are untouched.
    ///
    /// - Cancelling the calling task unlinks the MD. The call then returns once LNet has let go of the MD: at
    ///   once unless the PUT itself is still in the LND (then when the LND finishes with it, within its timeout).
    ///   It throws ``LNetError/cancelled``, unless the operation had already completed.
    /// - `deadline`: when it passes first, the MD is unlinked the same way and the call throws
    ///   ``LNetError/timeout``. Without one, a PUT whose ACK never comes (the target's MD disables ACKs, or the
    ///   ACK was lost) waits until the task is cancelled. Deadlines are kept by one timer for the whole process:
    ///   waits cost no `Task` each.
    /// - ``shutdown()`` ends a waiting call with ``LNetError/shutdown`` (within a second).
    ///
    /// Every message of the operation is finalized exactly once, and the call resumes exactly once, whichever of
    /// completion, cancellation, deadline and shutdown comes first.
    public func put(_ source: MemoryDescriptor.Storage, to target: ProcessID, portal: UInt32, matchBits: UInt64,
                    offset: Int = 0, ackRequested: Bool = true, headerData: UInt64 = 0, hints: LNetHints = .none,
                    deadline: ContinuousClock.Instant? = nil) async throws(LNetError) -> LNetCompletion {
        try await awaitOperation(storage: source, terminal: ackRequested ? .ack : .send, threshold: ackRequested ? 2 : 1,
                                 deadline: deadline) { md throws(LNetError) in
            try put(md, to: target, portal: portal, matchBits: matchBits, offset: offset, ackRequested: ackRequested,
                    headerData: headerData, hints: hints)
        }
    }

    /// Fetches `sink.length` bytes from `target` into `sink` and waits for the REPLY. Returns the completion's
    /// figures (``LNetCompletion/matchedLength`` bytes landed); throws ``LNetError/operationFailed(status:event:)``
    /// when the SEND failed or the REPLY reports a failure (``LNetStatus/noMatch``, ``LNetStatus/tooLarge``, ...).
    ///
    /// Cancellation, `deadline` and shutdown behave as for
    /// ``put(_:to:portal:matchBits:offset:ackRequested:headerData:hints:deadline:)``: the MD is unlinked (a REPLY
    /// that comes later finds nothing and is dropped) and the call returns once LNet has let go of the sink.
    public func get(into sink: MemoryDescriptor.Storage, from target: ProcessID, portal: UInt32, matchBits: UInt64,
                    offset: Int = 0, hints: LNetHints = .none,
                    deadline: ContinuousClock.Instant? = nil) async throws(LNetError) -> LNetCompletion {
        try await awaitOperation(storage: sink, terminal: .reply, threshold: 2, deadline: deadline) { md throws(LNetError) in
            try get(md, from: target, portal: portal, matchBits: matchBits, offset: offset, hints: hints)
        }
    }

    private func awaitOperation(storage: MemoryDescriptor.Storage, terminal: LNetEventKind, threshold: Int,
                                deadline: ContinuousClock.Instant?,
                                start: (MDHandle) throws(LNetError) -> Void) async throws(LNetError) -> LNetCompletion {
        if Task.isCancelled { throw LNetError.cancelled }
        let operation = AwaitedOperation(lnet: self, terminal: terminal, deadline: deadline)
        let queue = EventQueue(label: "await", delivery: .inline { [operation] event in operation.record(event) })
        let md = try bind(MemoryDescriptor(storage: storage, threshold: .count(threshold), eventQueue: queue))
        operation.started(md, queue: queue)
        do {
            try start(md)
        } catch {
            operation.abandon()
            try? unlink(md)
            throw error
        }
        operation.watch()
        await withTaskCancellationHandler {
            await operation.wait()
        } onCancel: {
            operation.stop(.cancelled)
        }
        return try operation.result()
    }
}

/// One awaited PUT or GET: collects its MD's events (from an inline event queue), and ends when the MD's last
/// event (`unlinked == true`) and every event posted before it have come, or when LNet shut down under it.
/// Whatever ends it - completion, cancellation, the deadline, shutdown - it resumes its caller exactly once.
///
/// (Inline handlers run on the threads that finalized the messages: an LND that finalizes one MD's messages on
/// two threads may run the `unlinked` event's handler before an earlier event's, so the queue's post count, not
/// the `unlinked` flag alone, says when every event is in.)
final class AwaitedOperation: Sendable {
    enum Stop: Sendable {
        case cancelled, timedOut, shutdown
    }

    private struct State {
        var md = MDHandle.invalid
        /// The operation's event queue (held by the awaiting call for as long as it waits).
        weak var queue: EventQueue?
        var events: [LNetEvent] = []
        var sawUnlinked = false
        var finished = false
        var abandoned = false
        var stop: Stop?
        var continuation: CheckedContinuation<Void, Never>?
        var timer: DeadlineTimer.Token?
    }

    /// How often a waiting operation checks that its LNet is still up. (``LNet/shutdown()`` gives every MD still
    /// linked its last event, with status ``LNetStatus/shutdown``, which ends the wait at once; the check is a
    /// safety net.)
    static let shutdownCheckInterval = Duration.seconds(1)

    let lnet: LNet
    let terminal: LNetEventKind
    let deadline: ContinuousClock.Instant?
    private let state = Mutex(State())

    init(lnet: LNet, terminal: LNetEventKind, deadline: ContinuousClock.Instant?) {
        self.lnet = lnet
        self.terminal = terminal
        self.deadline = deadline
    }

    func started(_ md: MDHandle, queue: EventQueue) {
        state.withLock { state in
            state.md = md
            state.queue = queue
        }
    }

    /// The operation never started (its put/get threw): its MD's unlink event is not the caller's business.
    func abandon() {
        state.withLock { $0.abandoned = true }
    }

    /// An event of the operation's MD (on the thread that completed it, no LNet lock held).
    func record(_ event: LNetEvent) {
        var unlinkNow: MDHandle?
        let (waiter, timer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, DeadlineTimer.Token?) in
            guard !state.finished, !state.abandoned else { return (nil, nil) }
            state.events.append(event)
            if event.unlinked { state.sawUnlinked = true }
            // LNet shut down under the operation: its MD's last event says so.
            if event.kind == .unlink, event.status == .shutdown, state.stop == nil { state.stop = .shutdown }
            if state.sawUnlinked, state.events.count >= state.queue?.postedCount ?? 0 {
                state.finished = true
                defer { state.continuation = nil; state.timer = nil }
                return (state.continuation, state.timer)
            }
            // A failed SEND gets no ACK or REPLY: let go of the MD now instead of waiting for one.
            if event.kind == .send, !event.status.isOK { unlinkNow = state.md }
            return (nil, nil)
        }
        if let timer { DeadlineTimer.shared.cancel(timer) }
        waiter?.resume()
        if let unlinkNow { try? lnet.unlink(unlinkNow) }
    }

    /// Starts the deadline / shutdown watch.
    func watch() {
        state.withLock { state in
            guard !state.finished else { return }
            state.timer = scheduleCheck()
        }
    }

    private func scheduleCheck() -> DeadlineTimer.Token {
        let check = ContinuousClock.now + Self.shutdownCheckInterval
        let at = deadline.map { min($0, check) } ?? check
        return DeadlineTimer.shared.schedule(at: at) { [weak self] in self?.check() }
    }

    /// The timer fired: the deadline passed, or it is time to see whether LNet is still up.
    private func check() {
        if let deadline, ContinuousClock.now >= deadline {
            stop(.timedOut)
            return
        }
        if lnet.interfaces.isEmpty {
            // Shut down: the MD is gone without its last event, and none will come.
            finish(.shutdown)
            return
        }
        state.withLock { state in
            guard !state.finished else { return }
            state.timer = scheduleCheck()
        }
    }

    /// Ends the operation early: unlinks its MD, whose last event then ends the wait.
    func stop(_ reason: Stop) {
        let md = state.withLock { state -> MDHandle? in
            guard !state.finished, state.stop == nil else { return nil }
            state.stop = reason
            return state.md
        }
        guard let md else { return }
        do {
            try lnet.unlink(md)
        } catch {
            // Already unlinked: its last event is on its way - unless LNet shut down and took the MD with it.
            if lnet.interfaces.isEmpty { finish(.shutdown) }
        }
    }

    /// Ends the wait without the MD's last event (LNet shut down).
    private func finish(_ reason: Stop) {
        let (waiter, timer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, DeadlineTimer.Token?) in
            guard !state.finished else { return (nil, nil) }
            state.finished = true
            if state.stop == nil { state.stop = reason }
            defer { state.continuation = nil; state.timer = nil }
            return (state.continuation, state.timer)
        }
        if let timer { DeadlineTimer.shared.cancel(timer) }
        waiter?.resume()
    }

    /// Waits until the operation is finished.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.finished { return true }
                state.continuation = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// The outcome, once finished.
    func result() throws(LNetError) -> LNetCompletion {
        let (md, events, stop) = state.withLock { ($0.md, $0.events, $0.stop) }
        if let failed = events.first(where: { !$0.status.isOK && $0.kind != .unlink }) {
            throw LNetError.operationFailed(status: failed.status, event: failed.kind)
        }
        guard let last = events.first(where: { $0.kind == terminal }) else {
            switch stop {
            case .cancelled?: throw LNetError.cancelled
            case .timedOut?: throw LNetError.timeout
            case .shutdown?: throw LNetError.shutdown
            case nil: throw LNetError.operationFailed(status: .aborted, event: events.last?.kind ?? .unlink)
            }
        }
        let requested = events.first(where: { $0.kind == .send })?.requestedLength ?? last.requestedLength
        return LNetCompletion(md: md, status: .ok, requestedLength: requested, matchedLength: last.matchedLength,
                              offset: last.offset, events: events)
    }
}
