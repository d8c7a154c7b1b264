import HeapModule
import Synchronization

/// One timer for every deadline in the process: bounded waits on event queues (``EventQueue/next(timeout:)``) and
/// the deadlines of awaitable operations (``LNet/put(_:to:portal:matchBits:offset:ackRequested:headerData:hints:deadline:)``).
///
/// A wait registers an entry (a deadline and an action) and removes it when it ends first; no `Task` and no
/// thread exist per wait. One ``ServiceThread`` sleeps until the earliest deadline (a deadline earlier than the
/// one it sleeps until wakes it); then the actions of every entry that is due run on that thread, outside its
/// lock. Actions must be short (resume a continuation, unlink an MD).
///
/// Cancelled entries stay in the heap until they surface or until they outnumber the live ones, when the heap is
/// rebuilt from the live entries: a wait costs O(log n), and memory stays proportional to the waits in progress.
final class DeadlineTimer: Sendable {
    /// The process-wide timer.
    static let shared = DeadlineTimer(name: "lnet-deadline")

    /// A registered deadline; cancel it with ``cancel(_:)``.
    struct Token: Hashable, Sendable {
        fileprivate let id: UInt64
    }

    private struct Entry: Comparable {
        let deadline: ContinuousClock.Instant
        let id: UInt64
        static func < (a: Entry, b: Entry) -> Bool { (a.deadline, a.id) < (b.deadline, b.id) }
    }

    private struct State {
        var heap = Heap<Entry>()
        var actions: [UInt64: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 0
        /// The deadline the thread sleeps until (nil: no limit, or awake).
        var sleepsUntil: ContinuousClock.Instant?
        var fired = 0
    }

    private let state = Mutex(State())
    private let thread: ServiceThread

    /// Starts the timer's thread (`name`). A process that cannot make one more thread or eventfd cannot keep
    /// deadlines: that stops it, with the reason.
    init(name: String) {
        do {
            thread = try ServiceThread(name: name)
            // The loop holds the timer only while it runs due actions, not while it sleeps: a timer no one holds
            // any more ends (its deinit stops the thread).
            try thread.start { [weak self] thread in
                while thread.isRunning, let next = self?.pass(thread) {
                    thread.sleep(timeout: next.map { ContinuousClock.now.duration(to: $0) })
                }
            }
        } catch {
            fatalError("LNet cannot start its deadline thread: \(error)")
        }
    }

    deinit {
        thread.stop()
    }

    /// Runs `action` on the timer's thread at `deadline` (at once if it has passed), unless cancelled first.
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> Token {
        let (token, wake) = state.withLock { state -> (Token, Bool) in
            state.nextID += 1
            let id = state.nextID
            state.actions[id] = action
            state.heap.insert(Entry(deadline: deadline, id: id))
            // The thread sleeps past this deadline (or without one): it must look again.
            let wake = state.sleepsUntil.map { deadline < $0 } ?? true
            if wake { state.sleepsUntil = deadline }
            return (Token(id: id), wake)
        }
        if wake { thread.wake() }
        return token
    }

    /// Removes an entry. Returns `false` when it had already fired (or was cancelled before).
    @discardableResult
    func cancel(_ token: Token) -> Bool {
        state.withLock { state in
            guard state.actions.removeValue(forKey: token.id) != nil else { return false }
            // Rebuild once cancelled entries dominate, so the heap tracks the waits in progress.
            if state.heap.count > 64, state.heap.count > 2 * state.actions.count {
                state.heap = Heap(state.heap.unordered.filter { state.actions[$0.id] != nil })
            }
            return true
        }
    }

    /// Entries waiting to fire (for tests and diagnostics).
    var pendingCount: Int { state.withLock { $0.actions.count } }

    /// Entries that have fired so far.
    var firedCount: Int { state.withLock { $0.fired } }

    /// Runs the actions that are due, as long as some are; returns when the thread should wake next (nil: when
    /// woken).
    private func pass(_ thread: ServiceThread) -> ContinuousClock.Instant?? {
        while thread.isRunning {
            let (due, next) = state.withLock { state -> ([@Sendable () -> Void], ContinuousClock.Instant?) in
                let now = ContinuousClock.now
                var due: [@Sendable () -> Void] = []
                while let first = state.heap.min, first.deadline <= now {
                    state.heap.removeMin()
                    if let action = state.actions.removeValue(forKey: first.id) { due.append(action) }
                }
                state.fired += due.count
                while let first = state.heap.min, state.actions[first.id] == nil { state.heap.removeMin() }
                let next = state.heap.min?.deadline
                // While due actions run the thread is awake: a deadline scheduled meanwhile wakes it (a flag).
                state.sleepsUntil = due.isEmpty ? next : nil
                return (due, next)
            }
            if due.isEmpty { return .some(next) }
            for action in due { action() }
        }
        return nil
    }
}

