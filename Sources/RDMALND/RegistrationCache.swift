import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Public types

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

/// One fragment of a registered transfer, ready for a work request or an RDMA descriptor.
public struct RegisteredFragment: Sendable, Hashable {
    /// The fragment's virtual address (what both the local SGE and the peer's RDMA address use).
    public var address: UInt64
    public var length: UInt32
    /// For our own work requests on this memory.
    public var lkey: UInt32
    /// For the peer; 0 when the transfer granted no remote access.
    public var rkey: UInt32

    public init(address: UInt64, length: UInt32, lkey: UInt32, rkey: UInt32) {
        self.address = address
        self.length = length
        self.lkey = lkey
        self.rkey = rkey
    }
}

/// The memory of one transfer, made reachable by the NIC: what it holds (cached registrations in use,
/// per-transfer registrations, bound windows) is given back by `release()`, which also revokes any remote access.
/// Releasing is idempotent, and happens at the latest when the object goes away.
///
/// After `release()` a peer using one of the fragments' rkeys gets a remote access error. Release only once the
/// transfer is over: every work request on this memory completed (or was flushed), and the peer was told it is done.
public final class RegisteredTransfer: @unchecked Sendable {
    /// The fragments, in the order given (zero-length fragments left out).
    public let fragments: [RegisteredFragment]
    /// What was asked for.
    public let access: MemoryAccess

    private struct Held {
        var regions: [MemoryRegion]
        var windows: [Verbs.MemoryWindow]
        var bindings: [MemoryWindowBinding]
    }

    private let held: Mutex<Held?>

    init(fragments: [RegisteredFragment], access: MemoryAccess, regions: [MemoryRegion],
         windows: [Verbs.MemoryWindow] = [], bindings: [MemoryWindowBinding] = []) {
        self.fragments = fragments
        self.access = access
        self.held = Mutex(Held(regions: regions, windows: windows, bindings: bindings))
    }

    deinit {
        release()
    }

    /// For a window-backed grant: the window binds to post on the connection's queue pair *before* (or chained
    /// ahead of) the message that advertises the rkeys. Work requests run in order, so the keys are valid by the
    /// time the peer can know them. Unsignaled; post them once, and keep no copy (a copy keeps the windows, and
    /// so the grant, alive past `release()`). Empty when no windows are involved, and after `release()`.
    public var bindRequests: [SendWorkRequest] {
        held.withLock { held in
            (held?.bindings ?? []).map { SendWorkRequest(id: 0, operation: .bindMemoryWindow($0), scatterGather: [], signaled: false) }
        }
    }

    /// Whether `release()` has run.
    public var isReleased: Bool { held.withLock { $0 == nil } }

    /// Revokes remote access (windows are deallocated, per-transfer registrations deregistered) and gives the
    /// cached registrations back to the cache, which may keep them for the next transfer.
    public func release() {
        guard var taken = held.withLock({ held -> Held? in
            let taken = held
            held = nil
            return taken
        }) else { return }
        // Windows first: deallocating one revokes its key before its region can go.
        taken.bindings.removeAll()
        for index in taken.windows.indices {
            assert(isKnownUniquelyReferenced(&taken.windows[index]),
                   "a copy of the bind requests keeps a memory window (and its rkey) alive after release")
        }
        taken.windows.removeAll()
        taken.regions.removeAll()
    }

    /// Hands the registrations to another holder (a `MemoryGrant`) instead of releasing them.
    func takeRegions() -> [MemoryRegion] {
        held.withLock { held in
            let regions = held?.regions ?? []
            held?.regions = []
            return regions
        }
    }
}

// MARK: - The cache

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
    public func reclaiming<T>(_ register: () throws(VerbsError) -> T) throws(VerbsError) -> T {
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

// MARK: - The table: ranges, LRU, in-use (no verbs; unit-tested with a fake region)

/// A registered range: something with a local key whose registration ends when the last reference goes away.
protocol CacheableRegistration: AnyObject, Sendable {
    var lkey: UInt32 { get }
    var address: UInt64 { get }
    var length: Int { get }
}

extension MemoryRegion: CacheableRegistration {}

/// The cache's bookkeeping, generic over the registration so tests can use a fake.
///
/// "In use" is Swift's reference count: `acquire` hands out a reference to the cached registration, and a
/// registration is in use exactly while anyone but the table holds one (`isKnownUniquelyReferenced`). New
/// references are only made under the table's lock, so a registration the table sees as unreferenced cannot be
/// picked up concurrently, and dropping a reference needs no call back into the table. Deregistration (dropping
/// the table's reference) happens outside the lock.
final class RegistrationTable<Region: CacheableRegistration>: @unchecked Sendable {
    typealias Register = @Sendable (UnsafeMutableRawBufferPointer, MemoryAccess) throws(VerbsError) -> Region

    struct Entry {
        var start: UInt
        var end: UInt
        var access: MemoryAccess
        var region: Region
        var lastUse: UInt64
        /// Invalidated: never handed out again, removed once unreferenced.
        var stale = false
        var size: Int { Int(end - start) }
    }

    struct State {
        /// Sorted by `start`.
        var entries: [Entry] = []
        /// The longest entry, bounding how far back a containment search looks.
        var maxSize = 0
        var tick: UInt64 = 0
        var cachedBytes = 0
        var staleEntries = 0
        var hits = 0
        var misses = 0
        var evictions = 0
        var uncached = 0
        var bytesRegistered = 0
        var reclaims = 0
    }

    let capacity: Int
    let pageSize: Int
    private let register: Register
    private let state = Mutex(State())

    init(capacity: Int, pageSize: Int, register: @escaping Register) {
        precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
        self.capacity = max(0, capacity)
        self.pageSize = pageSize
        self.register = register
    }

    /// `[address, address + length)` rounded out to whole pages; nil if it wraps around the address space.
    static func pageRange(address: UInt, length: Int, pageSize: Int) -> (start: UInt, end: UInt)? {
        guard length > 0 else { return nil }
        let mask = UInt(pageSize - 1)
        let (last, overflow) = address.addingReportingOverflow(UInt(length) - 1)
        guard !overflow else { return nil }
        let (end, overflowEnd) = (last | mask).addingReportingOverflow(1)
        guard !overflowEnd else { return nil }
        return (address & ~mask, end)
    }

    /// A registration covering `bytes` with at least `access`, cached or not. Holding the result keeps it in use.
    func acquire(_ bytes: UnsafeMutableRawBufferPointer, access: MemoryAccess) throws(VerbsError) -> Region {
        guard let base = bytes.baseAddress,
              let (start, end) = Self.pageRange(address: UInt(bitPattern: base), length: bytes.count, pageSize: pageSize) else {
            throw VerbsError(call: "ibv_reg_mr", errno: EINVAL, detail: "\(bytes.count) bytes at \(String(describing: bytes.baseAddress))")
        }
        if capacity == 0 {
            let region = try register(bytes, access)
            state.withLock { $0.uncached += 1; $0.bytesRegistered += bytes.count }
            return region
        }
        let lookup = state.withLock { state -> (hit: Region?, merged: (start: UInt, end: UInt)) in
            guard let index = Self.find(start: start, end: end, access: access, in: &state) else {
                state.misses += 1
                return (nil, Self.mergedRange(start: start, end: end, access: access, capacity: capacity, in: state))
            }
            state.hits += 1
            state.tick += 1
            state.entries[index].lastUse = state.tick
            return (state.entries[index].region, (start, end))
        }
        if let hit = lookup.hit { return hit }

        // A miss: register whole pages outside the lock (with the cached ranges this one overlaps, so that one
        // registration serves them all from now on), then cache it if it fits.
        var range = lookup.merged
        let fresh: Region
        do {
            fresh = try register(Self.buffer(range), access)
        } catch where range != (start, end) {
            // The neighbours' pages may not allow this access (read-only memory): register just this request.
            range = (start, end)
            fresh = try register(Self.buffer(range), access)
        }
        var dropped: [Region] = []
        let region = state.withLock { state -> Region in
            let size = Int(range.end - range.start)
            state.bytesRegistered += size
            // Someone else registered a covering range meanwhile: use theirs, drop ours.
            if let index = Self.find(start: start, end: end, access: access, in: &state) {
                state.tick += 1
                state.entries[index].lastUse = state.tick
                dropped.append(fresh)
                return state.entries[index].region
            }
            guard size <= capacity else {
                state.uncached += 1
                return fresh
            }
            // Entries the new one covers with at least their rights are superseded: dropped once unused.
            for index in state.entries.indices {
                let entry = state.entries[index]
                if !entry.stale && range.start <= entry.start && entry.end <= range.end && access.isSuperset(of: entry.access) {
                    state.entries[index].stale = true
                    state.staleEntries += 1
                }
            }
            dropped += Self.sweep(&state, all: false)
            dropped += Self.evict(toFit: size, capacity: capacity, in: &state)
            guard state.cachedBytes + size <= capacity else {
                state.uncached += 1
                return fresh
            }
            state.tick += 1
            let entry = Entry(start: range.start, end: range.end, access: access, region: fresh, lastUse: state.tick)
            state.entries.insert(entry, at: Self.firstIndex(startingAfter: range.start, in: state.entries))
            state.cachedBytes += size
            state.maxSize = max(state.maxSize, size)
            return fresh
        }
        dropped.removeAll()   // deregistered here, outside the lock
        return region
    }

    private static func buffer(_ range: (start: UInt, end: UInt)) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: range.start), count: Int(range.end - range.start))
    }

    /// Whether `acquire(bytes, access:)` would find a cached registration now (nothing is registered, counted
    /// or marked as used: a cheap look before deciding where a registration should run).
    func covers(_ bytes: UnsafeMutableRawBufferPointer, access: MemoryAccess) -> Bool {
        guard capacity > 0, let base = bytes.baseAddress,
              let (start, end) = Self.pageRange(address: UInt(bitPattern: base), length: bytes.count, pageSize: pageSize) else { return false }
        return state.withLock { state in Self.find(start: start, end: end, access: access, in: &state) != nil }
    }

    /// Drops cached registrations overlapping `[address, address + length)` (now if unused, else when released).
    func invalidate(address: UInt, length: Int) {
        guard let (start, end) = Self.pageRange(address: address, length: length, pageSize: pageSize) else { return }
        var dropped: [Region] = []
        state.withLock { state in
            for index in state.entries.indices where state.entries[index].start < end && start < state.entries[index].end {
                if !state.entries[index].stale {
                    state.entries[index].stale = true
                    state.staleEntries += 1
                }
            }
            dropped = Self.sweep(&state, all: false)
        }
        dropped.removeAll()
    }

    /// Drops every cached registration not in use.
    func purge() {
        var dropped: [Region] = []
        state.withLock { state in dropped = Self.sweep(&state, all: true) }
        dropped.removeAll()
    }

    /// Runs `register`; when it fails with ENOMEM (the memlock limit), deregisters every registration not in use
    /// and, if that dropped any, runs it once more (counted in `reclaims` when it then succeeds).
    func reclaiming<T>(_ register: () throws(VerbsError) -> T) throws(VerbsError) -> T {
        do throws(VerbsError) {
            return try register()
        } catch {
            guard error.errno == ENOMEM else { throw error }
            var dropped: [Region] = []
            state.withLock { state in dropped = Self.sweep(&state, all: true) }
            guard !dropped.isEmpty else { throw error }
            dropped.removeAll()
            let result = try register()
            state.withLock { $0.reclaims += 1 }
            return result
        }
    }

    var statistics: RegistrationCacheStatistics {
        var dropped: [Region] = []
        defer { dropped.removeAll() }
        return state.withLock { state in
            dropped = Self.sweep(&state, all: false)
            var inUse = 0
            for index in state.entries.indices where !isKnownUniquelyReferenced(&state.entries[index].region) { inUse += 1 }
            return RegistrationCacheStatistics(
                capacity: capacity, hits: state.hits, misses: state.misses, evictions: state.evictions,
                uncachedRegistrations: state.uncached, entries: state.entries.count, entriesInUse: inUse,
                cachedBytes: state.cachedBytes, bytesRegistered: state.bytesRegistered, reclaims: state.reclaims)
        }
    }

    // MARK: Under the lock

    /// The index of the first entry whose start is after `start`.
    private static func firstIndex(startingAfter start: UInt, in entries: [Entry]) -> Int {
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].start <= start { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// A live entry containing `[start, end)` with at least `access`. Also sweeps stale entries if any.
    private static func find(start: UInt, end: UInt, access: MemoryAccess, in state: inout State) -> Int? {
        var index = firstIndex(startingAfter: start, in: state.entries) - 1
        let reach = UInt(state.maxSize)
        while index >= 0 {
            let entry = state.entries[index]
            // Entries further back start too early to reach `end`, however long.
            if entry.start < end && end - entry.start > reach { break }
            if entry.end >= end && !entry.stale && entry.access.isSuperset(of: access) { return index }
            index -= 1
        }
        return nil
    }

    /// `[start, end)` grown to cover the live entries it overlaps whose rights `access` includes, unless that
    /// would not fit in the cache.
    private static func mergedRange(start: UInt, end: UInt, access: MemoryAccess, capacity: Int,
                                    in state: borrowing State) -> (start: UInt, end: UInt) {
        var merged = (start: start, end: end)
        for entry in state.entries where !entry.stale && entry.start < end && start < entry.end && access.isSuperset(of: entry.access) {
            merged = (min(merged.start, entry.start), max(merged.end, entry.end))
        }
        return Int(merged.end - merged.start) <= capacity ? merged : (start, end)
    }

    /// Evicts unreferenced entries, least recently used first, until `size` more bytes fit. Returns their regions.
    private static func evict(toFit size: Int, capacity: Int, in state: inout State) -> [Region] {
        guard state.cachedBytes + size > capacity else { return [] }
        var candidates: [(lastUse: UInt64, size: Int, id: ObjectIdentifier)] = []
        for index in state.entries.indices where isKnownUniquelyReferenced(&state.entries[index].region) {
            let entry = state.entries[index]
            candidates.append((entry.lastUse, entry.size, ObjectIdentifier(entry.region)))
        }
        candidates.sort { $0.lastUse < $1.lastUse }
        var victims = Set<ObjectIdentifier>()
        var freed = 0
        for candidate in candidates where state.cachedBytes - freed + size > capacity {
            victims.insert(candidate.id)
            freed += candidate.size
        }
        return remove(&state) { victims.contains(ObjectIdentifier($0.region)) }
    }

    /// Removes stale entries no longer in use (every unused entry when `all`).
    private static func sweep(_ state: inout State, all: Bool) -> [Region] {
        guard all || state.staleEntries > 0 else { return [] }
        var unused = Set<ObjectIdentifier>()
        for index in state.entries.indices where (all || state.entries[index].stale)
            && isKnownUniquelyReferenced(&state.entries[index].region) {
            unused.insert(ObjectIdentifier(state.entries[index].region))
        }
        return remove(&state) { unused.contains(ObjectIdentifier($0.region)) }
    }

    /// Removes the entries matching `victim`; counts them as evictions.
    private static func remove(_ state: inout State, where victim: (Entry) -> Bool) -> [Region] {
        var removed: [Region] = []
        var kept: [Entry] = []
        kept.reserveCapacity(state.entries.count)
        for entry in state.entries {
            if victim(entry) {
                removed.append(entry.region)
                state.cachedBytes -= entry.size
                if entry.stale { state.staleEntries -= 1 }
                state.evictions += 1
            } else {
                kept.append(entry)
            }
        }
        if !removed.isEmpty {
            state.entries = kept
            state.maxSize = kept.reduce(0) { max($0, $1.size) }
        }
        return removed
    }
}
