/// A handle to a match entry. Handles are never reused.
public struct MEHandle: Hashable, Sendable, CustomStringConvertible {
    public let cookie: UInt64
    public init(cookie: UInt64) { self.cookie = cookie }
    public var description: String { "me#\(cookie)" }
}

/// Where a new match entry goes in its portal's list.
public enum MatchEntryPosition: Hashable, Sendable {
    /// Before every other entry on the portal (`LNET_INS_BEFORE` on the portal).
    case head
    /// After every other entry on the portal (`LNET_INS_AFTER` on the portal).
    case tail
    /// Immediately before an existing entry (`LNetMEInsert(..., LNET_INS_BEFORE)`).
    case before(MEHandle)
    /// Immediately after an existing entry (`LNetMEInsert(..., LNET_INS_AFTER)`).
    case after(MEHandle)
}

/// What an incoming PUT or GET must carry to be delivered to an MD: the portal it is sent to, match bits (with bits
/// to ignore) and the initiator it comes from.
///
/// A message matches when it targets ``portal``, `(message.matchBits ^ matchBits) & ~ignoreBits == 0`, and
/// ``source`` admits the initiator (``ProcessID/any`` admits everyone). Entries on a portal are tried in list
/// order; the first entry whose MD accepts the message wins.
public struct MatchEntry: Hashable, Sendable {
    public var portal: UInt32
    public var matchBits: UInt64
    public var ignoreBits: UInt64
    /// Which initiators may match; wildcards in the NID and/or pid admit anyone.
    public var source: ProcessID
    /// Whether the entry and its MD are unlinked once the MD is exhausted.
    public var unlink: LNetUnlinkPolicy

    public init(portal: UInt32, matchBits: UInt64, ignoreBits: UInt64 = 0, source: ProcessID = .any,
                unlink: LNetUnlinkPolicy = .unlink) {
        self.portal = portal
        self.matchBits = matchBits
        self.ignoreBits = ignoreBits
        self.source = source
        self.unlink = unlink
    }

    /// Whether a message from `initiator` with `bits` passes this entry's filters.
    public func accepts(matchBits bits: UInt64, from initiator: ProcessID) -> Bool {
        (bits ^ matchBits) & ~ignoreBits == 0 && source.admits(initiator)
    }
}
