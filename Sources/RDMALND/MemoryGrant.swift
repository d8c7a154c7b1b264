import LNet
import Verbs

/// Memory reachable by the NIC for one transfer: local keys for our own work requests and, when remote access
/// was granted, the descriptor the peer uses. Revoked (the keys stop working) when released: after that a
/// stale rkey fails with a remote access error.
///
/// One owner: noncopyable, so no second holder keeps using the keys of a grant another revoked, and `revoke()`
/// consumes it, so the compiler refuses a use after it or a second one. A grant that is dropped unrevoked (a
/// closure's Optional that never got one, say) deregisters all the same, as its regions go with it.
struct MemoryGrant: ~Copyable, Sendable {
    let pieces: [LocalPiece]
    let descriptor: RDMADescriptor
    private let regions: [MemoryRegion]

    init(pieces: [LocalPiece], descriptor: RDMADescriptor, regions: [MemoryRegion]) {
        self.pieces = pieces
        self.descriptor = descriptor
        self.regions = regions
    }

    var length: Int { pieces.reduce(0) { $0 + $1.length } }

    /// Drops the registrations: deregistration invalidates their keys.
    consuming func revoke() {
        // Consuming `self` ends it here: its regions go, and with the last reference to each its registration.
    }
}

extension Optional where Wrapped == MemoryGrant {
    /// The grant's descriptor; nil without a grant. A borrowing read: `grant?.descriptor` would consume the grant.
    var descriptor: RDMADescriptor? {
        switch self {
        case .some(let grant): grant.descriptor
        case .none: nil
        }
    }
}
