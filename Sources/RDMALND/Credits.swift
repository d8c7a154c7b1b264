/// Credit flow control of one connection (this side's sending, and what it owes the other).
///
/// - Each side posts `3 x queueDepth + 2` receive buffers: `queueDepth` for credited messages (IMMEDIATE,
///   PUT_REQ, GET_REQ), `2 x queueDepth` for control replies, and 2 for NOOPs.
/// - A side starts with `queueDepth` credits. A credited message takes one; the receiver owes it back once it
///   has re-posted the buffer, and every message header carries what is owed.
/// - Control replies (PUT_ACK, PUT_NAK, PUT_DONE, PULL, GET_DONE) take no credit: each transaction this side
///   starts causes at most one control message at each end, and a side has at most `queueDepth` transactions
///   (requests awaiting completion) of its own, so the reply buffers can never run out. Replies therefore never
///   wait behind data.
/// - A NOOP takes no credit either, and its buffer is re-posted without owing anything (so NOOPs never answer
///   NOOPs). It goes out when what is owed reaches the high-water mark (or as a keepalive), at most one at a
///   time, into the 2 buffers kept for NOOPs. Since a NOOP needs no credit, two sides that owe each other can
///   always return credits: no credit deadlock.
struct Credits: Sendable, Equatable {
    let queueDepth: Int
    /// Credits this side holds: credited messages it may still send.
    private(set) var available: Int
    /// Credits this side owes the peer (buffers re-posted since its last message).
    private(set) var owed = 0
    /// Transactions this side started that have not finished.
    private(set) var transactions = 0

    init(queueDepth: Int) {
        self.queueDepth = queueDepth
        self.available = queueDepth
    }

    /// Receive buffers each side posts.
    static func receiveBuffers(queueDepth: Int) -> Int { 3 * queueDepth + 2 }

    var highWater: Int { max(1, (queueDepth + 1) / 2) }

    /// Whether a credited message may go now.
    var canSendCredited: Bool { available > 0 }

    /// Whether a new transaction (PUT_REQ, GET_REQ) may start.
    var canStartTransaction: Bool { transactions < queueDepth }

    /// Whether enough is owed that a NOOP should carry it back.
    var needsNoop: Bool { owed >= highWater }

    /// Takes a credit for a credited message; returns the credits to put in its header.
    mutating func takeCredited() -> UInt8 {
        precondition(available > 0, "credited send without a credit")
        available -= 1
        return takeOwed()
    }

    /// The credits a control message or NOOP carries (it takes none).
    mutating func takeOwed() -> UInt8 {
        let returned = UInt8(clamping: owed)
        owed -= Int(returned)
        return returned
    }

    /// A message arrived carrying `credits`; returns false if the peer returned more than it could owe.
    mutating func received(credits: UInt8) -> Bool {
        available += Int(credits)
        return available <= queueDepth
    }

    /// A receive buffer was re-posted after a credited message: the peer gets that credit back.
    mutating func reposted() {
        owed += 1
    }

    mutating func startTransaction() { transactions += 1 }

    /// Returns false (and changes nothing) when no transaction is open: the caller's accounting is wrong.
    mutating func finishTransaction() -> Bool {
        guard transactions > 0 else { return false }
        transactions -= 1
        return true
    }
}
