import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

/// What the registration cache has done, for `lnetctl`.
public struct RegistrationCacheStatistics: Sendable, Hashable {
    /// Bytes the cache may keep registered (`LND_REGISTRATION_CACHE_SIZE`; 0: no caching).
    public var capacity: Int
    /// Lookups answered by a cached registration.
    public var hits: Int
    /// Lookups that had to register.
    public var misses: Int
    /// Cached registrations dropped to make room (or because their memory was invalidated).
    public var evictions: Int
    /// Registrations made outside the cache (caching off, larger than the cache, or the cache full of
    /// registrations in use), deregistered when their transfer releases them.
    public var uncachedRegistrations: Int
    /// Remote-access grants made (one per fragment: a registration or a window bind).
    public var remoteGrants: Int
    /// Registrations the cache holds now, and how many of them a transfer is using.
    public var entries: Int
    public var entriesInUse: Int
    /// Bytes the cache holds registered now (whole pages).
    public var cachedBytes: Int
    /// Bytes registered over the cache's life: cached, uncached and remote grants.
    public var bytesRegistered: Int
    /// Registrations the memlock limit (`RLIMIT_MEMLOCK`) refused that went through once the cache dropped the
    /// registrations nobody was using.
    public var reclaims: Int

    public init(capacity: Int = 0, hits: Int = 0, misses: Int = 0, evictions: Int = 0, uncachedRegistrations: Int = 0,
                remoteGrants: Int = 0, entries: Int = 0, entriesInUse: Int = 0, cachedBytes: Int = 0, bytesRegistered: Int = 0,
                reclaims: Int = 0) {
        self.capacity = capacity
        self.hits = hits
        self.misses = misses
        self.evictions = evictions
        self.uncachedRegistrations = uncachedRegistrations
        self.remoteGrants = remoteGrants
        self.entries = entries
        self.reclaims = reclaims
        self.entriesInUse = entriesInUse
        self.cachedBytes = cachedBytes
        self.bytesRegistered = bytesRegistered
    }
}

/// How a transfer's remote access is granted on top of the cache's local-only registrations.
public enum RemoteAccessStrategy: String, Sendable, CaseIterable {
    /// A registration of exactly the fragment's bytes with the remote right, deregistered on release. Costs a
    /// registration per transfer; exposes exactly the transfer's bytes; no window verbs involved.
    case registration
    /// A type 2 memory window bound over the cached registration, deallocated on release. No registration per
    /// transfer, but on rxe (Linux 6.1) the window's range is not enforced (the peer reaches the whole cached
    /// registration, whole pages and any neighbouring buffers in them) and a peer's SEND_WITH_INV naming an
    /// invalid window panics the kernel: see `Verbs.MemoryWindow`. Only for devices that get windows right.
    case memoryWindow
}

/// A bounded cache of memory registrations for the RDMA LND, so repeated transfers of the same buffers do not
/// register again.
///
/// **Local access only.** Cached registrations carry local rights only (local write when asked for, and
/// memory-window bind when remote access goes through windows): a cached registration has no rkey a peer could
/// use, however long it stays cached. Remote access is granted per transfer on top of it, by a registration of
/// exactly the transfer's bytes or by a memory window (see `RemoteAccessStrategy`), and revoked when the transfer
/// releases its `RegisteredTransfer`.
///
/// **Keys.** A request is rounded out to whole pages, so nearby buffers share a registration; a request is answered
/// by any cached registration that contains its pages and has at least its rights. A miss registers the union of
/// its pages and the cached registrations it overlaps (those with no more rights than it asks for), so the
/// fragments of one buffer end up under one registration; the overlapped ones go once unused.
///
/// **Bounds.** The cache keeps at most `capacity` bytes registered (whole pages). A registration is in use while
/// a transfer holds it (a `RegisteredTransfer` or a `MemoryGrant` not yet released); those are never evicted. To
/// make room the least recently used registrations not in use go first; when everything is in use, or a request
/// alone is larger than the cache, the request is registered outside the cache and deregistered on release rather
/// than failing. Capacity 0 turns caching off: every request registers and every release deregisters.
///
/// **Memory safety: the caller's contract.**
/// - The memory of a transfer stays allocated and mapped until its `release()`: the NIC reads or writes it until
///   then (the cache cannot check this; it deals in addresses).
/// - A cached registration outlives the transfer and pins the physical pages that backed its addresses when it was
///   made. If that memory is freed and the addresses are later reused for other memory, a hit would hand out a key
///   for the *old* pages: a READ would land in pages nobody sees, a source would send stale bytes (silent data
///   loss, never a write into the new memory). So memory passed here must either live as long as the cache (the
///   LND's and LNet's long-lived buffers) or be invalidated with `invalidate(address:length:)` before it is freed.
///   Remote access never depends on this: remote grants are made afresh per transfer.
/// - Registration pins pages against `RLIMIT_MEMLOCK`; the capacity bounds what the cache itself pins.
public final class RegistrationCache: @unchecked Sendable {
    public let protectionDomain: ProtectionDomain
    public let remoteAccess: RemoteAccessStrategy
    let table: RegistrationTable<MemoryRegion>
    private let remoteCounts = Mutex<(grants: Int, bytes: Int)>((0, 0))

    /// A cache of at most `capacity` registered bytes (0: no caching) in `protectionDomain`.
    public init(protectionDomain: ProtectionDomain, capacity: Int, remoteAccess: RemoteAccessStrategy = .registration) {
        self.protectionDomain = protectionDomain
        self.remoteAccess = remoteAccess
        self.table = RegistrationTable(capacity: capacity, pageSize: Int(sysconf(Int32(_SC_PAGESIZE)))) { bytes, access throws(VerbsError) in
            try MemoryRegion(protectionDomain: protectionDomain, bytes: bytes, access: access)
        }
    }

    /// A cache sized by `LND_REGISTRATION_CACHE_SIZE`.
    public convenience init(protectionDomain: ProtectionDomain, tunables: LNDTunables, remoteAccess: RemoteAccessStrategy = .registration) {
        self.init(protectionDomain: protectionDomain, capacity: tunables.registrationCacheSize, remoteAccess: remoteAccess)
    }

    public var capacity: Int { table.capacity }

    /// Makes `fragments` (an MD window's segments) reachable for one transfer with `access`:
    /// - `[]`: a local source (SEND or RDMA WRITE gather list): lkeys only;
    /// - `[.localWrite]`: a local sink (RDMA READ scatter list, receive): lkeys only;
    /// - `[.remoteRead]`: a pull source the peer RDMA READs: lkeys and rkeys;
    /// - `[.localWrite, .remoteWrite]` (or `[.remoteWrite]`): a push sink the peer RDMA WRITEs: lkeys and rkeys.
    ///
    /// Local rights come from the cache; remote rights are granted for this transfer only, with `strategy` (the
    /// cache's `remoteAccess` unless given). With `.memoryWindow`, post the result's `bindRequests` on the
    /// connection's queue pair (in this cache's PD) before advertising the rkeys.
    ///
    /// The memory must stay allocated and mapped until the result is released (see the type's notes).
    /// Zero-length fragments are left out; a fragment longer than `UInt32.max` is an error.
    public func register(_ fragments: [(base: UnsafeMutableRawPointer, length: Int)], access: MemoryAccess,
                         strategy: RemoteAccessStrategy? = nil) throws(VerbsError) -> RegisteredTransfer {
        let remote = access.intersection([.remoteRead, .remoteWrite, .remoteAtomic])
        var local = access.intersection([.localWrite])
        if !remote.isDisjoint(with: [.remoteWrite, .remoteAtomic]) { local.insert(.localWrite) }
        let strategy = remote.isEmpty ? nil : (strategy ?? remoteAccess)
        if strategy == .memoryWindow { local.insert(.memoryWindowBind) }

        var result: [RegisteredFragment] = []
        var regions: [MemoryRegion] = []
        var windows: [Verbs.MemoryWindow] = []
        var bindings: [MemoryWindowBinding] = []
        for (base, length) in fragments where length != 0 {
            guard length > 0, length <= Int(UInt32.max) else {
                throw VerbsError(call: "ibv_reg_mr", errno: EINVAL, detail: "fragment of \(length) bytes")
            }
            let address = UInt64(UInt(bitPattern: base))
            let bytes = UnsafeMutableRawBufferPointer(start: base, count: length)
            switch strategy {
            case nil:
                let region = try table.acquire(bytes, access: local)
                regions.append(region)
                result.append(RegisteredFragment(address: address, length: UInt32(length), lkey: region.lkey, rkey: 0))
            case .registration?:
                // Exactly the fragment's bytes: the peer can reach nothing else, and only until release.
                let region = try MemoryRegion(protectionDomain: protectionDomain, bytes: bytes, access: local.union(remote))
                regions.append(region)
                result.append(RegisteredFragment(address: address, length: UInt32(length), lkey: region.lkey, rkey: region.rkey))
                remoteCounts.withLock { $0.grants += 1; $0.bytes += length }
            case .memoryWindow?:
                let region = try table.acquire(bytes, access: local)
                regions.append(region)
                let window = try Verbs.MemoryWindow(protectionDomain: protectionDomain)
                let binding = try window.binding(region: region, offset: Int(address - region.address), length: length, access: remote)
                windows.append(window)
                bindings.append(binding)
                result.append(RegisteredFragment(address: address, length: UInt32(length), lkey: region.lkey, rkey: binding.rkey))
                remoteCounts.withLock { $0.grants += 1 }
            }
        }
        return RegisteredTransfer(fragments: result, access: access, regions: regions, windows: windows, bindings: bindings)
    }

    /// `register(_:access:strategy:)` for buffer pointers (an `LNetMDWindow`'s `segments`).
    public func register(_ segments: [UnsafeMutableRawBufferPointer], access: MemoryAccess,
                         strategy: RemoteAccessStrategy? = nil) throws(VerbsError) -> RegisteredTransfer {
        try register(segments.compactMap { segment in segment.baseAddress.map { (base: $0, length: segment.count) } },
                     access: access, strategy: strategy)
    }

    /// Forgets cached registrations that overlap `[address, address + length)`: call before freeing memory that
    /// was registered through the cache. Registrations not in use are deregistered now; those in use are no longer
    /// handed out and are deregistered when their last transfer releases them.
    public func invalidate(address: UnsafeRawPointer, length: Int) {
        table.invalidate(address: UInt(bitPattern: address), length: length)
    }

    /// Deregisters every cached registration not in use (e.g. at shutdown or under memory pressure).
    public func purge() {
        table.purge()
    }

    /// Runs `register`; when the kernel refuses it for the memlock limit (`ENOMEM`: pinning more would pass
    /// `RLIMIT_MEMLOCK`), drops the cached registrations nobody is using and runs it once more. So the cache's
    /// idle registrations never make a transfer fail that would fit without them.
    public func reclaiming<T: ~Copyable>(_ register: () throws(VerbsError) -> T) throws(VerbsError) -> T {
        try table.reclaiming(register)
    }

    public var statistics: RegistrationCacheStatistics {
        var statistics = table.statistics
        let remote = remoteCounts.withLock { $0 }
        statistics.remoteGrants = remote.grants
        statistics.bytesRegistered += remote.bytes
        return statistics
    }
}

/// The LND's registrar interface, answered from the cache. A `MemoryGrant` holds regions only, so remote access is
/// always granted by per-transfer registration here (never by windows); the grant's cached regions stay in use
/// until `revoke()`.
extension RegistrationCache: Registrar {
    func grant(_ segments: [UnsafeMutableRawBufferPointer], access: MemoryAccess) throws(VerbsError) -> MemoryGrant {
        let transfer = try register(segments, access: access, strategy: .registration)
        let remote = !access.isDisjoint(with: [.remoteRead, .remoteWrite, .remoteAtomic])
        let pieces = transfer.fragments.map { LocalPiece(address: $0.address, length: Int($0.length), lkey: $0.lkey) }
        let descriptor = RDMADescriptor(fragments: remote ? transfer.fragments.map {
            RDMAFragment(address: $0.address, length: $0.length, rkey: $0.rkey)
        } : [])
        return MemoryGrant(pieces: pieces, descriptor: descriptor, regions: transfer.takeRegions())
    }
}
