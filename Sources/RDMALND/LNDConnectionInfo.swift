import LNet

/// One connection as `lnetctl` shows it.
public struct LNDConnectionInfo: Sendable, Hashable {
    public var peer: NID
    public var role: String
    public var phase: String
    public var queueDepth: Int
    /// The QP's path MTU in bytes (LND_IB_MTU, or the port's).
    public var pathMTU: Int?
    /// The QP's local ACK timeout exponent (LND_ACK_TIMEOUT) and retry count (LND_RETRY_COUNT), as the QP reports them.
    public var ackTimeout: Int?
    public var retryCount: Int?
    public var credits: Int
    public var pending: Int
    /// The scheduler (thread) the connection is placed on.
    public var scheduler: Int
    /// Credits this side owes the peer (returned in its next message, or a NOOP at the high-water mark).
    public var creditsOwed = 0
    /// LNet messages waiting for the connection (to be established, or behind earlier ones).
    public var waiting = 0
    /// The send queue: control messages, eager messages, bulk requests waiting for a transaction slot, RDMA
    /// transfers; and work requests posted, not yet completed.
    public var queuedControl = 0
    public var queuedEager = 0
    public var queuedRequests = 0
    public var queuedRDMA = 0
    public var posted = 0
    /// Transactions open on the connection (either side's), and those this side started (at most the queue depth).
    public var transactions = 0
    public var transactionsInitiated = 0
    /// Time since a message last arrived on the connection, and since one was last sent (coarse clock).
    public var sinceReceive: Duration = .zero
    public var sinceSend: Duration = .zero
}
