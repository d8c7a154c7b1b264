extension EventQueue {
    /// The queue's events as an asynchronous sequence: `for try await event in queue.events { ... }`.
    ///
    /// - A waiting loop is handed each event as it is posted; several loops (or a loop and ``poll()``) over one
    ///   queue share its events, each event going to one of them.
    /// - Overflow policy: LNet never blocks the thread that completes an operation, so there is no back-pressure
    ///   on producers. While no loop waits, the queue keeps up to ``capacity`` events and discards the oldest
    ///   beyond that. A loop learns of it: its next step throws ``LNetError/eventsDropped(count:)`` (events
    ///   dropped since it last took one), before it returns the events that were kept. Iterate again to go on.
    /// - Cancelling the task that iterates ends the loop (the iterator returns `nil`); events not yet taken stay
    ///   in the queue.
    /// - The sequence never ends by itself (an event queue has no last event); break out of the loop, or cancel.
    /// - Only a polled queue can be iterated: on any other, the first step throws
    ///   ``LNetError/eventQueueNotPolled(label:delivery:)``.
    public var events: Events { Events(queue: self) }

    /// The events of a polled ``EventQueue``, as an `AsyncSequence` (see ``EventQueue/events``).
    public struct Events: AsyncSequence, Sendable {
        public typealias Element = LNetEvent
        public typealias Failure = LNetError

        let queue: EventQueue

        public func makeAsyncIterator() -> Iterator {
            Iterator(queue: queue, seenDrops: queue.overflowCount)
        }

        /// Takes events from the queue, one per step.
        public struct Iterator: AsyncIteratorProtocol {
            public typealias Element = LNetEvent
            public typealias Failure = LNetError

            let queue: EventQueue
            /// The queue's overflow count at the last step (drops after it are reported).
            var seenDrops: Int

            public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(LNetError) -> LNetEvent? {
                try queue.requirePolled()
                if let dropped = queue.takeDrops(since: &seenDrops) { throw dropped }
                switch await queue.waitForEvent(deadline: nil) {
                case .event(let event): return event
                case .cancelled, .timedOut: return nil
                }
            }

            public mutating func next() async throws(LNetError) -> LNetEvent? {
                try await next(isolation: nil)
            }
        }
    }
}
