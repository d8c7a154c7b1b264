import DequeModule

/// One match entry on a portal's list.
struct PortalEntry {
    let handle: MEHandle
    let entry: MatchEntry
    let md: MDRecord
}

/// A message held on a lazy portal until a match entry for it is attached.
struct DelayedMessage {
    let ni: LNetNI
    let header: LNetHeader
    let context: (any LNDPrivate)?
    let wantsRDMA: Bool
}

/// A portal: its ordered match list, and messages held while it is lazy.
struct Portal {
    var entries: [PortalEntry] = []
    var lazy = false
    var delayed: Deque<DelayedMessage> = []

    /// The result of matching an incoming PUT or GET.
    enum MatchOutcome {
        /// Deliver to `md` at `offset`, moving `length` bytes.
        case matched(MDRecord, offset: Int, length: Int)
        /// No entry accepted the message.
        case none
        /// An entry matched but cannot take the message (too large without truncation): stop, and drop.
        case rejected(LNetStatus)
    }

    /// Finds the first entry, in list order, whose filters accept the message and whose MD is live, allows the
    /// operation, and has room (or truncates). Does not change anything.
    func match(type: LNetMessageType, initiator: ProcessID, matchBits: UInt64, offset requestedOffset: Int,
               length: Int) -> MatchOutcome {
        let operation: MemoryDescriptor.Options = type == .get ? .get : .put
        for candidate in entries {
            guard candidate.entry.accepts(matchBits: matchBits, from: initiator) else { continue }
            let md = candidate.md
            guard md.isActive, md.options.contains(operation) else { continue }
            let offset = min(md.options.contains(.manageRemote) ? requestedOffset : md.localOffset, md.length)
            let available = md.length - offset
            if length <= available { return .matched(md, offset: offset, length: length) }
            if md.options.contains(.truncate) { return .matched(md, offset: offset, length: available) }
            return .rejected(.tooLarge)
        }
        return .none
    }

    /// Inserts an entry at `position`.
    mutating func insert(_ entry: PortalEntry, at position: MatchEntryPosition) throws(LNetError) {
        switch position {
        case .head:
            entries.insert(entry, at: 0)
        case .tail:
            entries.append(entry)
        case .before(let other):
            guard let index = entries.firstIndex(where: { $0.handle == other }) else {
                throw LNetError.invalidHandle("\(other) is not on portal \(entry.entry.portal)")
            }
            entries.insert(entry, at: index)
        case .after(let other):
            guard let index = entries.firstIndex(where: { $0.handle == other }) else {
                throw LNetError.invalidHandle("\(other) is not on portal \(entry.entry.portal)")
            }
            entries.insert(entry, at: index + 1)
        }
    }

    mutating func remove(_ handle: MEHandle) {
        entries.removeAll { $0.handle == handle }
    }
}
