/// Why a connection was closed for breaking the protocol (the peer's fault, or a bug), counted by kind.
enum ProtocolViolation: String, CaseIterable, Sendable {
    /// The message does not decode, or is addressed to another node or incarnation.
    case malformedMessage = "malformed message"
    /// The peer returned more credits than it could owe.
    case creditOverflow = "credit overflow"
    /// A control message names a transfer that does not exist.
    case unknownTransfer = "unknown transfer"
    /// A message the transfer's state does not allow (a PUT_DONE for a pull, an LNet GET in an IMMEDIATE, ...).
    case unexpectedMessage = "unexpected message"
    /// A descriptor or length that does not fit the transfer (checked before any RDMA is posted).
    case badDescriptor = "bad descriptor"
    /// A completion for work this side never posted (a bug in this LND).
    case unknownCompletion = "unknown completion"
}
