/// The core's record of a live MD. Only touched with the core lock held.
final class MDRecord {
    let handle: MDHandle
    let storage: MDStorage
    /// Operations left; `nil` means no limit.
    var remaining: Int?
    let options: MemoryDescriptor.Options
    let eventQueue: EventQueue?
    let userInfo: (any Sendable)?
    let unlinkPolicy: LNetUnlinkPolicy
    /// The running offset used when the MD does not manage remote offsets.
    var localOffset = 0
    /// Messages attached to the MD and not yet finalized.
    var pending = 0
    /// Unlink requested; the MD matches nothing and goes away when `pending` reaches zero.
    var zombie = false
    /// The match entry the MD hangs off, if any.
    var matchEntry: (portal: UInt32, handle: MEHandle, entry: MatchEntry)?
    /// Its PUTs that wait for an ACK, and when the newest's wait ends (``AckTracker``).
    var ackWaits = AckWaits()
    var ackDeadline: ContinuousClock.Instant?
    /// ACKs that timed out: one that still comes is dropped.
    var lateAcks = 0
    /// Its place in the ``AckTracker`` list.
    var isAckTracked = false
    var ackNewer: MDRecord?
    unowned(unsafe) var ackOlder: MDRecord?

    init(handle: MDHandle, storage: MDStorage, descriptor: MemoryDescriptor, unlinkPolicy: LNetUnlinkPolicy) {
        self.handle = handle
        self.storage = storage
        switch descriptor.threshold {
        case .infinite: remaining = nil
        case .count(let count): remaining = count
        }
        self.options = descriptor.options
        self.eventQueue = descriptor.eventQueue
        self.userInfo = descriptor.userInfo
        self.unlinkPolicy = unlinkPolicy
    }

    var length: Int { storage.length }

    /// Whether the MD may take part in one more operation.
    var isActive: Bool { !zombie && remaining != 0 }

    /// Whether the MD should be unlinked now.
    var isUnlinkable: Bool { pending == 0 && (zombie || (unlinkPolicy == .unlink && remaining == 0)) }

    /// Takes one operation: uses one unit of threshold and pins the MD until the message is finalized.
    func attach() {
        if let remaining { self.remaining = remaining - 1 }
        pending += 1
    }

    /// The MD's last event: it was unlinked (by the user, its threshold, or shutdown).
    func unlinkEvent(status: LNetStatus) -> LNetEvent {
        LNetEvent(kind: .unlink, status: status, initiator: .any, target: .any, portal: matchEntry?.portal ?? 0,
                  matchBits: matchEntry?.entry.matchBits ?? 0, requestedLength: 0, matchedLength: 0, offset: 0, headerData: 0,
                  hints: .none, md: handle, userInfo: userInfo, unlinked: true)
    }

    func window(offset: Int, length: Int) -> LNetMDWindow {
        LNetMDWindow(storage: storage, offset: offset, length: length)
    }
}
