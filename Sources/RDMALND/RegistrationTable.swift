import Synchronization
import Verbs
#if canImport(Glibc)
import Glibc
#endif

// The registration cache's bookkeeping: ranges, LRU, in-use (no verbs; unit-tested with a fake region).

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
    func reclaiming<T: ~Copyable>(_ register: () throws(VerbsError) -> T) throws(VerbsError) -> T {
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
