import LNet

/// Where the self-test and ping protocol lives: its portals and match bits, in one place.
///
/// Portals (reserved for this protocol on every node that runs it):
///
/// | portal | on | what is attached there |
/// | -----: | -- | ---------------------- |
/// | ``ping`` (60) | server | the ping MD: a small node description GETs read (match bits ``pingMatchBits``) |
/// | ``control`` (61) | server | single-use request buffers for session set-up and teardown (lazy portal) |
/// | ``reply`` (62) | client | per-session buffers for the server's "ready"/"closed" replies and write verdicts |
/// | ``data`` (63) | server | per-session bulk MDs: the write sink or the read source |
///
/// Match bits: the top byte is a ``MatchKind``, the low 56 bits the session id. Ping uses fixed bits.
public enum SelftestProtocol {
    /// The portal of the ping MD (server side).
    public static let pingPortal: UInt32 = 60
    /// The portal of the session control buffers (server side).
    public static let controlPortal: UInt32 = 61
    /// The portal of session replies and write verdicts (client side).
    public static let replyPortal: UInt32 = 62
    /// The portal of session bulk MDs (server side).
    public static let dataPortal: UInt32 = 63

    /// Match bits of the ping MD ("LNETPING").
    public static let pingMatchBits: UInt64 = 0x4C4E_4554_5049_4E47
    /// Match bits of the control buffers ("LSTCTRL\0").
    public static let controlMatchBits: UInt64 = 0x4C53_5443_5452_4C00

    /// Session ids are 56-bit: the top byte of the match bits says what the MD is for.
    public static let sessionMask: UInt64 = (1 << 56) - 1

    /// What a session MD is for (the top byte of its match bits).
    public enum MatchKind: UInt8, Sendable {
        /// Server: the session's bulk sink (write) or source (read).
        case data = 1
        /// Client: the server's reply to set-up and teardown.
        case reply = 2
        /// Client: the server's per-op verdicts of a verified write session.
        case verdict = 3
    }

    /// The match bits of `kind` for `session`.
    public static func matchBits(_ kind: MatchKind, session: UInt64) -> UInt64 {
        UInt64(kind.rawValue) << 56 | (session & sessionMask)
    }

    /// Control buffers the server keeps posted (each takes one request, then is re-posted).
    public static let controlBufferCount = 16
    /// Size of one control buffer (the largest control message).
    public static let controlBufferSize = 256
    /// Size of one session reply buffer.
    public static let replyBufferSize = 256
    /// Size of one write verdict (one slot of the client's verdict MD).
    public static let verdictSize = 64
}
