/// The kinds of event LNet delivers to an MD's event queue.
public enum LNetEventKind: Sendable, Hashable, CustomStringConvertible {
    /// Initiator: a PUT or GET left (its send completed, successfully or not).
    case send
    /// Initiator: the target acknowledged a PUT (or reported failure in its ACK).
    case ack
    /// Target: an incoming PUT landed in the MD.
    case put
    /// Target: an incoming GET was served from the MD (the REPLY's send completed).
    case get
    /// Initiator: the REPLY to a GET landed in the MD (or reported failure).
    case reply
    /// The MD was unlinked explicitly while nothing was in flight on it.
    case unlink

    public var description: String {
        switch self {
        case .send: return "SEND"
        case .ack: return "ACK"
        case .put: return "PUT"
        case .get: return "GET"
        case .reply: return "REPLY"
        case .unlink: return "UNLINK"
        }
    }
}

/// One event on an MD (`struct lnet_event`).
public struct LNetEvent: Sendable, CustomStringConvertible {
    public var kind: LNetEventKind
    /// Whether the operation succeeded; for ACK and REPLY, the status the target reported.
    public var status: LNetStatus
    /// On an ACK or REPLY event: the placement cookie the target gave (``LNet/Configuration/placementCookies``);
    /// echo it with ``LNetHints/init(cookie:)`` to be placed where the target matched this operation. (Declared
    /// here, it sits in padding: the event is no larger for it.)
    public var placementCookie: LNetPlacementCookie?
    /// The process that started the operation (the Put/Get caller).
    public var initiator: ProcessID
    /// The process the operation was aimed at.
    public var target: ProcessID
    public var portal: UInt32
    public var matchBits: UInt64
    /// Bytes the operation asked to move (Lustre's `rlength`).
    public var requestedLength: Int
    /// Bytes actually moved (Lustre's `mlength`); smaller than ``requestedLength`` after truncation.
    public var matchedLength: Int
    /// Offset within the MD where the data went (PUT/REPLY) or came from (GET).
    public var offset: Int
    /// The initiator's 64-bit header data (PUT).
    public var headerData: UInt64
    /// The placement hints the initiator sent.
    public var hints: LNetHints
    /// The MD the event is about.
    public var md: MDHandle
    /// The MD's ``MemoryDescriptor/userInfo``.
    public var userInfo: (any Sendable)?
    /// `true` on the MD's last event: the MD is unlinked and its memory is no longer used by LNet.
    public var unlinked: Bool

    public init(kind: LNetEventKind, status: LNetStatus, initiator: ProcessID, target: ProcessID, portal: UInt32,
                matchBits: UInt64, requestedLength: Int, matchedLength: Int, offset: Int, headerData: UInt64,
                hints: LNetHints, md: MDHandle, userInfo: (any Sendable)?, unlinked: Bool,
                placementCookie: LNetPlacementCookie? = nil) {
        self.placementCookie = placementCookie
        self.kind = kind
        self.status = status
        self.initiator = initiator
        self.target = target
        self.portal = portal
        self.matchBits = matchBits
        self.requestedLength = requestedLength
        self.matchedLength = matchedLength
        self.offset = offset
        self.headerData = headerData
        self.hints = hints
        self.md = md
        self.userInfo = userInfo
        self.unlinked = unlinked
    }

    public var description: String {
        "\(kind)(\(status)) \(initiator) -> \(target) portal \(portal) bits 0x\(String(matchBits, radix: 16)) "
            + "len \(matchedLength)/\(requestedLength) off \(offset) \(md)\(unlinked ? " unlinked" : "")"
    }
}
