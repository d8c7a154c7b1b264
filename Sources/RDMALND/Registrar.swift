import LNet
import Verbs

/// Makes memory reachable for a transfer.
protocol Registrar: Sendable {
    /// Registers `segments` with `access` (local write for a READ sink, remote read for a pull source,
    /// remote write for a push sink). The caller keeps the memory alive until the grant is revoked.
    func grant(_ segments: [UnsafeMutableRawBufferPointer], access: MemoryAccess) throws(VerbsError) -> MemoryGrant
}

/// The LND's registrar: local access to `LNetBuffer` memory comes from the registration cache (which LNet tells
/// when a buffer is freed, so a reused address never hits a stale registration); remote access, and any memory
/// the caller owns, is registered for the one transfer and deregistered when it ends.
final class LNDRegistrar: Registrar, @unchecked Sendable {
    let cache: RegistrationCache
    let direct: PerTransferRegistrar
    /// The memlock limit and what the LND pins, for the advice a registration refused for it carries.
    let memoryLock: MemoryLockBudget
    private let token: UInt64

    init(protectionDomain: ProtectionDomain, tunables: LNDTunables, memoryLock: MemoryLockBudget) {
        let cache = RegistrationCache(protectionDomain: protectionDomain, tunables: tunables)
        self.cache = cache
        self.memoryLock = memoryLock
        self.direct = PerTransferRegistrar(protectionDomain: protectionDomain)
        self.token = LNetBuffer.releaseObservers.add { base, length in
            cache.invalidate(address: UnsafeRawPointer(base), length: length)
        }
    }

    deinit {
        LNetBuffer.releaseObservers.remove(token)
        cache.purge()
    }

    func grant(_ segments: [UnsafeMutableRawBufferPointer], access: MemoryAccess) throws(VerbsError) -> MemoryGrant {
        try withinMemoryLock { () throws(VerbsError) in try direct.grant(segments, access: access) }
    }

    /// Grants access to a window of an MD, through the cache when that is safe.
    func grant(_ window: LNetMDWindow, access: MemoryAccess) throws(VerbsError) -> MemoryGrant {
        if cacheable(window, access: access) {
            return try withinMemoryLock { () throws(VerbsError) in try cache.grant(window.segments, access: access) }
        }
        return try withinMemoryLock { () throws(VerbsError) in try direct.grant(window.segments, access: access) }
    }

    /// A registration that the memlock limit refuses even with the cache's idle registrations dropped fails
    /// with the limit and the fix in its detail.
    private func withinMemoryLock(_ register: () throws(VerbsError) -> MemoryGrant) throws(VerbsError) -> MemoryGrant {
        do {
            return try cache.reclaiming(register)
        } catch {
            throw memoryLock.annotated(error)
        }
    }

    private func cacheable(_ window: LNetMDWindow, access: MemoryAccess) -> Bool {
        let remote = !access.isDisjoint(with: [.remoteRead, .remoteWrite, .remoteAtomic])
        return window.isBufferBacked && !remote && cache.capacity > 0
    }

    /// The bytes `grant(window, access:)` would register now: 0 for the segments the cache holds a registration
    /// for, all of them for remote access (registered per transfer) and for memory the cache does not take. (The
    /// cache may change before the grant is made: then the grant registers, or not, all the same.)
    func bytesToRegister(_ window: LNetMDWindow, access: MemoryAccess) -> Int {
        guard cacheable(window, access: access) else { return window.length }
        // The rights the cache registers for a local-only grant (see `RegistrationCache.register`).
        let local = access.intersection([.localWrite])
        var bytes = 0
        for segment in window.segments where segment.count > 0 && !cache.table.covers(segment, access: local) {
            bytes += segment.count
        }
        return bytes
    }
}

/// Registers every transfer's memory afresh and deregisters it when the transfer ends.
struct PerTransferRegistrar: Registrar {
    let protectionDomain: ProtectionDomain

    func grant(_ segments: [UnsafeMutableRawBufferPointer], access: MemoryAccess) throws(VerbsError) -> MemoryGrant {
        var pieces: [LocalPiece] = []
        var fragments: [RDMAFragment] = []
        var regions: [MemoryRegion] = []
        for segment in segments where segment.count > 0 {
            let region = try MemoryRegion(protectionDomain: protectionDomain, bytes: segment, access: access)
            regions.append(region)
            pieces.append(LocalPiece(address: region.address, length: region.length, lkey: region.lkey))
            fragments.append(RDMAFragment(address: region.address, length: UInt32(region.length), rkey: region.rkey))
        }
        let remote = access.contains(.remoteRead) || access.contains(.remoteWrite)
        return MemoryGrant(pieces: pieces, descriptor: RDMADescriptor(fragments: remote ? fragments : []), regions: regions)
    }
}
