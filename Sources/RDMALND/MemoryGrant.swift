import LNet
import Verbs

/// Memory reachable by the NIC for one transfer: local keys for our own work requests and, when remote access
/// was granted, the descriptor the peer uses. Revoked (the keys stop working) when released: after that a
/// stale rkey fails with a remote access error.
final class MemoryGrant: @unchecked Sendable {
    let pieces: [LocalPiece]
    let descriptor: RDMADescriptor
    private var regions: [MemoryRegion]

    init(pieces: [LocalPiece], descriptor: RDMADescriptor, regions: [MemoryRegion]) {
        self.pieces = pieces
        self.descriptor = descriptor
        self.regions = regions
    }

    var length: Int { pieces.reduce(0) { $0 + $1.length } }

    /// Drops the registrations: deregistration invalidates their keys.
    func revoke() {
        regions.removeAll()
    }
}
