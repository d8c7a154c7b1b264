import LNet

/// A transfer that outlives one message: a PUT or GET whose data moves by RDMA (or, for a small GET, comes back
/// in a REPLY), named on the wire by its cookie. Only touched under its connection's lock.
final class Transaction: @unchecked Sendable {
    enum Kind: Sendable, Hashable, CustomStringConvertible {
        /// We PUT: pull (the sink READs our source, then PUT_DONE) or push (PUT_ACK, we WRITE, PUT_DONE).
        case putSource
        /// A peer PUTs to us: pull (we READ, PUT_DONE) or push (we PUT_ACK, it WRITEs, PUT_DONE).
        case putSink
        /// We GET: REPLY (small), PULL then we READ and GET_DONE, or the target WRITEs and GET_DONE.
        case getRequester
        /// A peer GETs from us: REPLY, PULL (it READs, GET_DONE), or we WRITE then GET_DONE.
        case getTarget

        var description: String {
            switch self {
            case .putSource: "PUT source"
            case .putSink: "PUT sink"
            case .getRequester: "GET requester"
            case .getTarget: "GET target"
            }
        }
    }

    let cookie: UInt64
    let kind: Kind
    /// Started by this side: counts against the transaction limit and holds an interface credit once posted.
    let initiated: Bool
    var message: LNetMessage?
    /// The transfer's memory, until `revokeGrant()`. (Held as an Optional in this class, so "revoked once" is
    /// `take()` at run time here: the compiler cannot follow a value stored in a class.)
    var grant: MemoryGrant?
    var peerCookie: UInt64 = 0
    /// Bytes the transfer moves (for a GET requester: the sink's length until the target says how much came).
    var length = 0
    var deadline: Tick
    /// Its request (PUT_REQ, GET_REQ) was posted: it holds a transaction slot and an interface credit, and the
    /// peer may answer it. A control message for an unposted request is a protocol error.
    var requestPosted = false
    /// Whether the transfer is a pull: the side holding the data exposes it and the other READs it (a PUT source
    /// or sink, a GET target).
    var pull = false
    /// A GET requester whose sink went undescribed (it fits one message): the data comes in a REPLY.
    var eager = false
    /// The control message (PUT_DONE, GET_DONE) that goes once this side's READ has completed.
    var afterRead: Outgoing?

    init(cookie: UInt64, kind: Kind, initiated: Bool, message: LNetMessage?, deadline: Tick) {
        self.cookie = cookie
        self.kind = kind
        self.initiated = initiated
        self.message = message
        self.deadline = deadline
    }

    /// Revokes the transfer's memory, if it still has any.
    func revokeGrant() {
        grant.take()?.revoke()
    }

    /// One line for the timeout log.
    var summary: String {
        "\(kind)#\(cookie)(\(length) B, request \(requestPosted || !initiated ? "posted" : "unposted"), "
            + "\(eager ? "reply" : pull ? "pull" : "push"))"
    }
}
