import DequeModule

/// The MDs whose PUTs wait for ACKs, in deadline order (``LNet/Configuration/ackTimeout``), as Lustre's LNet keeps
/// its response trackers: one per MD, on a list ordered by deadline, checked by one timer.
///
/// Every PUT of one LNet instance waits for the same timeout, so deadlines come in the order PUTs are sent: an MD
/// that sends another PUT moves to the tail with the new deadline, and the head always has the earliest. A PUT
/// and its ACK cost O(1) here (no hashing, no allocation while the MD has one PUT in flight), and one timer entry
/// is armed at a time, for the head. When the head's deadline passes, every PUT of that MD still waiting gets its
/// ACK event with status `timeout`: so a PUT waits at most `ackTimeout` after its MD's newest PUT (with one PUT in
/// flight per MD, as is usual, after itself). Only touched with the core lock held.
struct AckTracker {
    /// The oldest tracked MD (it holds the next ones, newer first).
    private(set) var oldest: MDRecord?
    private unowned(unsafe) var newest: MDRecord?
    /// Whether a timer entry is armed for the sweep (at the head's deadline, or earlier).
    var sweepArmed = false

    /// Starts or refreshes `record`'s deadline: it becomes the newest.
    mutating func track(_ record: MDRecord, deadline: ContinuousClock.Instant) {
        record.ackDeadline = deadline
        if record.isAckTracked {
            guard newest !== record else { return }
            remove(record)
        }
        record.isAckTracked = true
        record.ackOlder = newest
        record.ackNewer = nil
        if let newest { newest.ackNewer = record } else { oldest = record }
        newest = record
    }

    /// Stops tracking every MD (shutdown), one at a time: the list's strong links freed as a chain would recurse
    /// once per MD.
    mutating func removeAll() {
        while let record = oldest { remove(record) }
    }

    /// Stops tracking `record` (its last ACK came, its PUTs failed, it timed out, or it went away).
    mutating func remove(_ record: MDRecord) {
        guard record.isAckTracked else { return }
        record.isAckTracked = false
        let older = record.ackOlder
        let newer = record.ackNewer
        if let older { older.ackNewer = newer } else { oldest = newer }
        if let newer { newer.ackOlder = older } else { newest = older }
        record.ackOlder = nil
        record.ackNewer = nil
    }
}

/// A PUT waiting for its ACK: what its timeout event says.
struct AckWait {
    let initiator: ProcessID
    let target: ProcessID
    let portal: UInt32
    let matchBits: UInt64
}

/// An MD's PUTs waiting for ACKs, oldest first: the first inline (an MD with one PUT in flight allocates
/// nothing), any more in a deque.
struct AckWaits {
    private var first: AckWait?
    private var more: Deque<AckWait> = []

    var isEmpty: Bool { first == nil }

    mutating func append(_ wait: AckWait) {
        if first == nil { first = wait } else { more.append(wait) }
    }

    mutating func popFirst() -> AckWait? {
        guard let wait = first else { return nil }
        first = more.popFirst()
        return wait
    }
}
