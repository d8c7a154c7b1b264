import Dispatch
import Synchronization

/// One timer for every deadline in the process: bounded waits on event queues (``EventQueue/next(timeout:)``) and
/// the deadlines of awaitable operations (``LNet/put(_:to:portal:matchBits:offset:ackRequested:headerData:hints:deadline:)``).
///
/// A wait registers an entry (a deadline and an action) and removes it when it ends first; no `Task` and no
/// thread exist per wait. One dispatch timer source is armed for the earliest deadline; when it fires, the
/// actions of every entry that is due run on the timer's serial queue, outside its lock. Actions must be short
/// (resume a continuation, unlink an MD).
///
/// Cancelled entries stay in the heap until they surface or until they outnumber the live ones, when the heap is
/// rebuilt from the live entries: a wait costs O(log n), and memory stays proportional to the waits in progress.
final class DeadlineTimer: Sendable {
    /// The process-wide timer.
    static let shared = DeadlineTimer(label: "lnet.deadlines")

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
        var heap = MinHeap<Entry>()
        var actions: [UInt64: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 0
        /// The deadline the source is armed for (nil: disarmed).
        var armed: ContinuousClock.Instant?
        var fired = 0
    }

    private let state = Mutex(State())
    private let queue: DispatchQueue
    /// The dispatch timer source. Dispatch sources are thread-safe; it is only re-armed with the state lock held,
    /// so the last deadline set is the one in `State.armed`.
    nonisolated(unsafe) private let source: any DispatchSourceTimer

    init(label: String) {
        queue = DispatchQueue(label: label)
        source = DispatchSource.makeTimerSource(queue: queue)
        source.schedule(deadline: .distantFuture, leeway: .microseconds(200))
        source.setEventHandler { [weak self] in self?.fire() }
        source.activate()
    }

    /// Runs `action` on the timer's queue at `deadline` (at once if it has passed), unless cancelled first.
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> Token {
        state.withLock { state in
            state.nextID += 1
            let id = state.nextID
            state.actions[id] = action
            state.heap.insert(Entry(deadline: deadline, id: id))
            if state.armed.map({ deadline < $0 }) ?? true { arm(&state, for: deadline) }
            return Token(id: id)
        }
    }

    /// Removes an entry. Returns `false` when it had already fired (or was cancelled before).
    @discardableResult
    func cancel(_ token: Token) -> Bool {
        state.withLock { state in
            guard state.actions.removeValue(forKey: token.id) != nil else { return false }
            // Rebuild once cancelled entries dominate, so the heap tracks the waits in progress.
            if state.heap.count > 64, state.heap.count > 2 * state.actions.count {
                state.heap = MinHeap(state.heap.elements.filter { state.actions[$0.id] != nil })
            }
            return true
        }
    }

    /// Entries waiting to fire (for tests and diagnostics).
    var pendingCount: Int { state.withLock { $0.actions.count } }

    /// Entries that have fired so far.
    var firedCount: Int { state.withLock { $0.fired } }

    private func arm(_ state: inout State, for deadline: ContinuousClock.Instant) {
        state.armed = deadline
        let delay = ContinuousClock.now.duration(to: deadline)
        let nanoseconds = Int(max(delay, .zero).inNanoseconds)
        source.schedule(deadline: .now() + .nanoseconds(max(0, nanoseconds)), leeway: .microseconds(200))
    }

    private func fire() {
        let due = state.withLock { state -> [@Sendable () -> Void] in
            let now = ContinuousClock.now
            var due: [@Sendable () -> Void] = []
            while let first = state.heap.first, first.deadline <= now {
                state.heap.removeFirst()
                if let action = state.actions.removeValue(forKey: first.id) { due.append(action) }
            }
            state.fired += due.count
            while let first = state.heap.first, state.actions[first.id] == nil { state.heap.removeFirst() }
            if let next = state.heap.first {
                arm(&state, for: next.deadline)
            } else {
                state.armed = nil
                source.schedule(deadline: .distantFuture, leeway: .microseconds(200))
            }
            return due
        }
        for action in due { action() }
    }
}

/// A binary min-heap (just what the timer needs).
struct MinHeap<Element: Comparable> {
    private(set) var elements: [Element] = []

    init() {}

    init(_ elements: [Element]) {
        self.elements = elements
        guard elements.count > 1 else { return }
        for index in stride(from: elements.count / 2 - 1, through: 0, by: -1) { siftDown(index) }
    }

    var count: Int { elements.count }
    var first: Element? { elements.first }

    mutating func insert(_ element: Element) {
        elements.append(element)
        var child = elements.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard elements[child] < elements[parent] else { break }
            elements.swapAt(child, parent)
            child = parent
        }
    }

    @discardableResult
    mutating func removeFirst() -> Element {
        let first = elements[0]
        let last = elements.removeLast()
        if !elements.isEmpty {
            elements[0] = last
            siftDown(0)
        }
        return first
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < elements.count, elements[left] < elements[smallest] { smallest = left }
            if right < elements.count, elements[right] < elements[smallest] { smallest = right }
            if smallest == parent { return }
            elements.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
