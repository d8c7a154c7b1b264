import DequeModule
import LNet

/// What a SEND does once it completes.
enum SentAction: Sendable {
    case none
    /// An eager message (IMMEDIATE PUT or ACK, REPLY) is done once it is on the wire.
    case finalize(LNetMessage)
    /// The control message that ends a transaction has gone.
    case finishTransaction(UInt64)
    /// A NOOP has gone: another may follow.
    case noopSent
}

/// A message waiting to be posted.
struct Outgoing: Sendable {
    var body: WireBody
    /// The eager payload (IMMEDIATE, REPLY), copied into the transmit buffer when the message is encoded.
    var payload: LNetMDWindow? = nil
    var onSent: SentAction = .none
    /// The LNet message an eager send carries: failed if the connection closes before it goes.
    var message: LNetMessage? = nil
    /// The transaction a PUT_REQ or GET_REQ starts (it needs a transaction slot).
    var starts: UInt64? = nil
    /// It carries an LNet message: takes one of the interface's send credits (`LND_CREDITS`).
    var holdsCredit = false
    /// The peer answers it, so nothing waits for its completion: it is reaped when the answer comes, and the
    /// scheduler need not wake up for it.
    var answered = false
    var deadline: Tick

    /// Credited messages (IMMEDIATE, PUT_REQ, GET_REQ) take one of the peer's receive buffers.
    var credited: Bool { !body.type.isControl }
}

/// One RDMA transfer (a transaction's READs or WRITEs), and the control message that follows it.
struct RDMAJob: Sendable {
    var cookie: UInt64
    var steps: [TransferStep]
    var next = 0
    var read: Bool
    /// The last step's completion delivers something (a READ into our memory): it is signaled and awaited.
    var signalLast: Bool
    /// Posted right behind the last step, in the same chain (WRITEs only: a READ's DONE waits for its completion).
    var then: Outgoing?
}

/// A work request on the send queue, until its completion (or a later signaled one's) is reaped.
struct PostedWork: Sendable {
    enum Kind: Sendable {
        /// A SEND from transmit descriptor `slot`; `eagerCredit`: it holds an interface credit until it completes.
        case send(slot: Int, action: SentAction, eagerCredit: Bool)
        /// A step of transaction `cookie`'s RDMA; `delivers`: its completion finishes the transfer.
        case rdma(cookie: UInt64, delivers: Bool, read: Bool)
    }

    var sequence: UInt64
    var kind: Kind
    var signaled: Bool
    /// Its completion matters now (no answer from the peer will bring the scheduler back for it).
    var awaited: Bool
}

/// The send side of one connection, as data: what waits to be posted, what is posted, and the credits; no verbs
/// and no locks (its connection holds the lock, and posts what ``next(slot:)`` hands out), so unit tests drive it
/// without a device, as swift-nio's `PendingWritesManager` is driven.
///
/// Order:
/// - Control messages (PUT_ACK, PUT_NAK, PUT_DONE, PULL, GET_DONE, REPLY) go first, in the order queued: they take
///   no credit and never wait behind data.
/// - Then RDMA transfers, in the order queued, each followed by its control message.
/// - Then credited messages: eager ones (IMMEDIATE: small PUTs, ACKs) and requests (PUT_REQ, GET_REQ) in the
///   order they were queued, except that a request waiting for a transaction slot (at most queue-depth
///   transactions of ours are open) holds back only the requests behind it: eager messages pass it. Eager
///   messages keep their order among themselves, and so do requests.
/// - A NOOP when enough credits are owed and nothing else carries them.
///
/// Posted work is kept in posting order: an RC send queue completes in order, so a completion for work request
/// `n` completes every unsignaled request before it too.
struct SendQueue: Sendable {
    struct Limits: Sendable, Equatable {
        /// SENDs posted at once (`LND_CONCURRENT_SENDS`).
        var sends: Int
        /// RDMA work requests posted at once.
        var rdma: Int
    }

    enum Work: Sendable {
        case send(Outgoing, slot: Int, credits: UInt8, sequence: UInt64, fence: Bool)
        case rdma(TransferStep, read: Bool, sequence: UInt64, signaled: Bool)
    }

    var credits: Credits
    let limits: Limits
    private(set) var control: Deque<Outgoing> = []
    private(set) var eager: Deque<(arrival: UInt64, outgoing: Outgoing)> = []
    private(set) var requests: Deque<(arrival: UInt64, outgoing: Outgoing)> = []
    private(set) var rdma: Deque<RDMAJob> = []
    private(set) var posted: Deque<PostedWork> = []
    private(set) var sendsPosted = 0
    private(set) var rdmaPosted = 0
    private(set) var awaitedPosted = 0
    private(set) var noopInFlight = false
    private var keepaliveDue = false
    private var arrivals: UInt64 = 0
    private var nextSequence: UInt64 = 1
    /// The LND timeout in seconds (`LND_TIMEOUT`): how long a queue may stand still with messages waiting.
    let timeoutSeconds: Int
    /// When each queue last moved (posted its head): the new head's wait counts from then, not from when it was
    /// queued, so a burst the link takes longer than the timeout to carry is not a timeout while it moves.
    private var moved = Moved()

    private struct Moved {
        var control: Tick?
        var eager: Tick?
        var requests: Tick?
        var rdma: Tick?
    }

    init(queueDepth: Int, limits: Limits, timeoutSeconds: Int = 0) {
        self.credits = Credits(queueDepth: queueDepth)
        self.limits = limits
        self.timeoutSeconds = timeoutSeconds
    }

    /// Messages waiting to be posted (not RDMA steps).
    var queuedCount: Int { control.count + eager.count + requests.count + rdma.count }
    /// Requests waiting to be posted.
    var queuedRequests: Int { requests.count }
    /// Whether posted work's completion matters now: work whose completion finishes something (see
    /// ``PostedWork/awaited``), a NOOP in flight (the next NOOP waits for its completion: without it, owed credits
    /// could never go back once the peer has none left, and both sides would wait forever), or a full send queue
    /// with messages waiting for room.
    var awaitsCompletions: Bool { awaitedPosted > 0 || noopInFlight || (sendsPosted >= limits.sends && queuedCount > 0) }
    var isIdle: Bool { queuedCount == 0 && posted.isEmpty }

    /// When the connection times out for what it has not posted yet: the earliest of each queue's head deadline,
    /// where a head waits at most the timeout from when it was queued or from when its queue last moved,
    /// whichever is later (o2iblnd counts from the queueing, but LNet there keeps a peer's messages beyond its
    /// credits out of the LND; here the LND holds them all, so a long burst moving steadily must not expire).
    var oldestQueuedDeadline: Tick? {
        func due(_ head: Tick?, _ moved: Tick?) -> Tick? {
            guard let head else { return nil }
            guard let moved else { return head }
            return max(head, moved + timeoutSeconds)
        }
        return [due(control.first?.deadline, moved.control), due(eager.first?.outgoing.deadline, moved.eager),
                due(requests.first?.outgoing.deadline, moved.requests), due(rdma.first?.then?.deadline, moved.rdma)]
            .compactMap { $0 }.min()
    }

    mutating func enqueue(_ outgoing: Outgoing) {
        if !outgoing.credited {
            control.append(outgoing)
        } else {
            arrivals += 1
            if outgoing.starts != nil {
                requests.append((arrivals, outgoing))
            } else {
                eager.append((arrivals, outgoing))
            }
        }
    }

    mutating func enqueue(_ job: RDMAJob) {
        rdma.append(job)
    }

    /// Asks for a NOOP now, owed credits or not (a keepalive), unless one is in flight.
    mutating func keepalive() {
        keepaliveDue = !noopInFlight
    }

    /// The next piece of work to post, or nil when nothing may go now. `slot(credit)` hands out a transmit
    /// descriptor (taking an interface credit when `credit` is set), or nil when there is none (the caller then
    /// waits to be woken).
    mutating func next(now: Tick = .coarse, slot: (_ credit: Bool) -> Int?) -> Work? {
        // Without a transmit descriptor no SEND can go this round, but RDMA steps (which need none) still may.
        var sendRoom = sendsPosted < limits.sends
        // 1. Control messages.
        if sendRoom, !control.isEmpty {
            if let index = slot(false) {
                let outgoing = control.removeFirst()
                moved.control = now
                return postSend(outgoing, slot: index, credits: credits.takeOwed(), fence: false)
            }
            sendRoom = false
        }
        // 2. RDMA steps, and the control message behind the last one.
        while let job = rdma.first, job.next == job.steps.count, job.then == nil { rdma.removeFirst() }
        if let job = rdma.first {
            if job.next < job.steps.count {
                if rdmaPosted < limits.rdma {
                    moved.rdma = now
                    return postStep()
                }
            } else if sendRoom, let then = job.then {
                if let index = slot(false) {
                    rdma.removeFirst()
                    moved.rdma = now
                    return postSend(then, slot: index, credits: credits.takeOwed(), fence: false)
                }
                sendRoom = false
            }
        }
        // 3. Credited messages, oldest first; a request without a transaction slot lets eager messages pass.
        if sendRoom, credits.canSendCredited {
            let requestReady = !requests.isEmpty && credits.canStartTransaction
            let takeRequest: Bool
            switch (eager.first, requestReady ? requests.first : nil) {
            case (nil, nil): takeRequest = false
            case (nil, _?): takeRequest = true
            case (_?, nil): takeRequest = false
            case (let e?, let r?): takeRequest = r.arrival < e.arrival
            }
            if takeRequest || !eager.isEmpty {
                let holdsCredit = takeRequest ? requests[0].outgoing.holdsCredit : eager[0].outgoing.holdsCredit
                if let index = slot(holdsCredit) {
                    let outgoing = takeRequest ? requests.removeFirst().outgoing : eager.removeFirst().outgoing
                    if takeRequest {
                        credits.startTransaction()
                        moved.requests = now
                    } else {
                        moved.eager = now
                    }
                    return postSend(outgoing, slot: index, credits: credits.takeCredited(), fence: false)
                }
                // No descriptor, or no interface credit: a NOOP (which needs no credit) may still go.
            }
        }
        // 4. A NOOP to return credits nothing else carries.
        if credits.needsNoop || keepaliveDue, !noopInFlight, sendRoom, let index = slot(false) {
            noopInFlight = true
            keepaliveDue = false
            let noop = Outgoing(body: .noop, onSent: .noopSent, answered: true, deadline: Tick.coarse)
            return postSend(noop, slot: index, credits: credits.takeOwed(), fence: false)
        }
        return nil
    }

    private mutating func postSend(_ outgoing: Outgoing, slot: Int, credits returned: UInt8, fence: Bool) -> Work {
        let sequence = take()
        let eagerCredit = outgoing.holdsCredit && outgoing.starts == nil
        let awaited: Bool
        switch outgoing.onSent {
        case .finalize, .finishTransaction: awaited = !outgoing.answered
        case .none, .noopSent: awaited = false
        }
        record(PostedWork(sequence: sequence, kind: .send(slot: slot, action: outgoing.onSent, eagerCredit: eagerCredit),
                          signaled: true, awaited: awaited))
        sendsPosted += 1
        return .send(outgoing, slot: slot, credits: returned, sequence: sequence, fence: fence)
    }

    private mutating func postStep() -> Work {
        let step = rdma[0].steps[rdma[0].next]
        rdma[0].next += 1
        let last = rdma[0].next == rdma[0].steps.count
        let delivers = last && rdma[0].signalLast
        // Signaled: a step whose completion delivers, a last step with nothing behind it, or the last step the
        // budget lets us post now (its completion frees the budget).
        let signaled = delivers || (last && rdma[0].then == nil) || rdmaPosted + 1 == limits.rdma
        let sequence = take()
        record(PostedWork(sequence: sequence, kind: .rdma(cookie: rdma[0].cookie, delivers: delivers, read: rdma[0].read),
                          signaled: signaled, awaited: signaled))
        rdmaPosted += 1
        return .rdma(step, read: rdma[0].read, sequence: sequence, signaled: signaled)
    }

    private mutating func take() -> UInt64 {
        defer { nextSequence += 1 }
        return nextSequence
    }

    private mutating func record(_ work: PostedWork) {
        posted.append(work)
        if work.awaited { awaitedPosted += 1 }
    }

    private mutating func forget(_ work: PostedWork) {
        switch work.kind {
        case .send(_, let action, _):
            sendsPosted -= 1
            if case .noopSent = action { noopInFlight = false }
        case .rdma:
            rdmaPosted -= 1
        }
        if work.awaited { awaitedPosted -= 1 }
    }

    /// A completion for work request `sequence`: removes it and every request posted before it (unsignaled ones,
    /// done by the time a later one completes), oldest first, handing each to `each`. False if `sequence` was
    /// not posted (nothing is removed then).
    mutating func completed(through sequence: UInt64, _ each: (PostedWork) -> Void) -> Bool {
        guard let first = posted.first, first.sequence <= sequence, let last = posted.last, sequence <= last.sequence else {
            return false
        }
        while let work = posted.first, work.sequence <= sequence {
            posted.removeFirst()
            forget(work)
            each(work)
        }
        return true
    }

    /// The newest `count` posted requests never reached the queue pair (its post failed part-way): removes them,
    /// newest first.
    mutating func unpost(last count: Int, _ each: (PostedWork) -> Void) {
        for _ in 0..<min(count, posted.count) {
            let work = posted.removeLast()
            forget(work)
            each(work)
        }
    }

    /// Removes everything not yet posted (the connection is closing), handing over each queued message.
    mutating func removeQueued(_ each: (Outgoing) -> Void) {
        for outgoing in control { each(outgoing) }
        for (_, outgoing) in eager { each(outgoing) }
        for (_, outgoing) in requests { each(outgoing) }
        for job in rdma { if let then = job.then { each(then) } }
        control.removeAll()
        eager.removeAll()
        requests.removeAll()
        rdma.removeAll()
    }

    /// Removes every posted entry (the queue pair is gone), handing each over.
    mutating func removePosted(_ each: (PostedWork) -> Void) {
        while let work = posted.popFirst() {
            forget(work)
            each(work)
        }
    }

    /// The action of each posted SEND is dropped (its message has been failed already); the entries stay until
    /// the flush completes them, so their transmit descriptors come back.
    mutating func disarmPosted() {
        for index in posted.indices {
            if case .send(let slot, let action, let credit) = posted[index].kind {
                if case .noopSent = action { continue }
                posted[index].kind = .send(slot: slot, action: .none, eagerCredit: credit)
            }
        }
    }

    /// The LNet messages of posted SENDs that finalize on completion (failed at once when the connection closes).
    func postedMessages(_ each: (LNetMessage) -> Void) {
        for work in posted {
            if case .send(_, .finalize(let message), _) = work.kind { each(message) }
        }
    }
}
