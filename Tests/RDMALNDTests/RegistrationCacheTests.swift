import Foundation
import Synchronization
import Testing
import Verbs
@testable import RDMALND

/// A registration that registers nothing: it records itself in a ledger, and "deregisters" when it goes away.
final class FakeRegistration: CacheableRegistration {
    let address: UInt64
    let length: Int
    let access: MemoryAccess
    let lkey: UInt32
    private let ledger: FakeRegistrar

    init(address: UInt64, length: Int, access: MemoryAccess, lkey: UInt32, ledger: FakeRegistrar) {
        self.address = address
        self.length = length
        self.access = access
        self.lkey = lkey
        self.ledger = ledger
    }

    deinit { ledger.deregistered(address: address, length: length) }
}

/// Counts registrations and deregistrations, and can be told to fail.
final class FakeRegistrar: Sendable {
    struct Ledger {
        var registrations: [(address: UInt64, length: Int, access: MemoryAccess)] = []
        var deregistrations: [(address: UInt64, length: Int)] = []
        var failAt: UInt64?
        /// Registrations fail with ENOMEM when the bytes registered and not yet deregistered would pass this, as
        /// the kernel refuses to pin past RLIMIT_MEMLOCK.
        var pinLimit: Int?
        var pinned: Int {
            registrations.reduce(0) { $0 + $1.length } - deregistrations.reduce(0) { $0 + $1.length }
        }
    }

    let ledger = Mutex(Ledger())

    func table(capacity: Int) -> RegistrationTable<FakeRegistration> {
        RegistrationTable(capacity: capacity, pageSize: 4096) { [self] bytes, access throws(VerbsError) in
            let address = UInt64(UInt(bitPattern: bytes.baseAddress))
            let lkey: UInt32? = ledger.withLock { ledger in
                if ledger.failAt == address { return nil }
                if let limit = ledger.pinLimit, ledger.pinned + bytes.count > limit { return nil }
                ledger.registrations.append((address, bytes.count, access))
                return UInt32(ledger.registrations.count)
            }
            guard let lkey else { throw VerbsError(call: "ibv_reg_mr", errno: ENOMEM) }
            return FakeRegistration(address: address, length: bytes.count, access: access, lkey: lkey, ledger: self)
        }
    }

    func deregistered(address: UInt64, length: Int) { ledger.withLock { $0.deregistrations.append((address, length)) } }

    var registered: Int { ledger.withLock { $0.registrations.count } }
    var deregistered: Int { ledger.withLock { $0.deregistrations.count } }
    var live: Int { ledger.withLock { $0.registrations.count - $0.deregistrations.count } }
    func wasDeregistered(_ address: UInt64) -> Bool { ledger.withLock { $0.deregistrations.contains { $0.address == address } } }
}

/// Memory that is never touched: the fake registers addresses only.
func fakeBytes(_ address: UInt, _ count: Int) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: count)
}

@Suite struct RegistrationCacheTests {
    static let page = 4096
    static let base: UInt = 0x7F00_0000_0000

    func page(_ n: Int) -> UInt { Self.base + UInt(n * Self.page) }

    @Test func rangesRoundOutToWholePages() {
        typealias Table = RegistrationTable<FakeRegistration>
        #expect(Table.pageRange(address: 0x1000, length: 1, pageSize: 4096)! == (0x1000, 0x2000))
        #expect(Table.pageRange(address: 0x1000, length: 4096, pageSize: 4096)! == (0x1000, 0x2000))
        #expect(Table.pageRange(address: 0x1001, length: 4096, pageSize: 4096)! == (0x1000, 0x3000))
        #expect(Table.pageRange(address: 0x1FFF, length: 2, pageSize: 4096)! == (0x1000, 0x3000))
        #expect(Table.pageRange(address: 0x2FFF, length: 1, pageSize: 4096)! == (0x2000, 0x3000))
        #expect(Table.pageRange(address: 0x1000, length: 0, pageSize: 4096) == nil)
        #expect(Table.pageRange(address: UInt.max - 10, length: 100, pageSize: 4096) == nil, "wraps around")
        #expect(Table.pageRange(address: UInt.max - 4095, length: 4096, pageSize: 4096) == nil, "the end does not fit")
        #expect(Table.pageRange(address: 0x10_0000, length: 3 * 65536 + 1, pageSize: 65536)! == (0x10_0000, 0x14_0000))
    }

    @Test func aRepeatedRequestHitsAndRegistersOnce() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        let first = try table.acquire(fakeBytes(page(0) + 100, 1000), access: [.localWrite])
        let second = try table.acquire(fakeBytes(page(0) + 100, 1000), access: [.localWrite])
        #expect(first === second)
        #expect(fake.registered == 1)
        #expect(first.address == UInt64(page(0)) && first.length == Self.page, "registered whole pages")
        let stats = table.statistics
        #expect(stats.hits == 1 && stats.misses == 1 && stats.entries == 1 && stats.entriesInUse == 1)
        #expect(stats.cachedBytes == Self.page)
    }

    @Test func coversAnswersWhatAcquireWouldHitWithoutRegisteringOrCounting() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        #expect(!table.covers(fakeBytes(page(0), 100), access: []), "nothing cached yet")
        let held = try table.acquire(fakeBytes(page(0), 2 * Self.page), access: [.localWrite])
        #expect(table.covers(fakeBytes(page(0) + 10, 100), access: []))
        #expect(table.covers(fakeBytes(page(1), Self.page), access: [.localWrite]))
        #expect(!table.covers(fakeBytes(page(1), 2 * Self.page), access: []), "runs past the cached pages")
        #expect(!table.covers(fakeBytes(page(0), 100), access: [.localWrite, .remoteWrite]), "needs more rights")
        let stats = table.statistics
        #expect(fake.registered == 1 && stats.hits == 0 && stats.misses == 1, "a look registers and counts nothing")
        #expect(!fake.table(capacity: 0).covers(fakeBytes(page(0), 100), access: []), "no cache covers nothing")
        _ = held
    }

    @Test func nearbyBuffersShareAPageAndContainedRangesHit() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        let a = try table.acquire(fakeBytes(page(0) + 16, 100), access: [])
        let b = try table.acquire(fakeBytes(page(0) + 2048, 100), access: [])
        #expect(a === b)
        let big = try table.acquire(fakeBytes(page(10) + 1, 4 * Self.page), access: [])
        #expect(big.length == 5 * Self.page)
        let inside = try table.acquire(fakeBytes(page(12), 2 * Self.page), access: [])
        #expect(inside === big)
        let straddling = try table.acquire(fakeBytes(page(14), 2 * Self.page), access: [])
        #expect(straddling !== big, "reaches past the cached range")
        #expect(table.statistics.hits == 2 && table.statistics.misses == 3)
    }

    @Test func onlyASupersetOfTheAccessHits() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        let readOnly = try table.acquire(fakeBytes(page(0), 64), access: [])
        let writable = try table.acquire(fakeBytes(page(0), 64), access: [.localWrite])
        #expect(readOnly !== writable, "local read does not serve local write")
        let windowed = try table.acquire(fakeBytes(page(0), 64), access: [.localWrite, .memoryWindowBind])
        #expect(windowed !== writable)
        let again = try table.acquire(fakeBytes(page(0), 64), access: [.localWrite])
        #expect(again === writable || again === windowed)
        let any = try table.acquire(fakeBytes(page(0), 64), access: [])
        #expect([readOnly, writable, windowed].contains { $0 === any })
        #expect(fake.registered == 3)
        #expect(table.statistics.hits == 2)
    }

    @Test func aMissCoversTheCachedRangesItOverlaps() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        // Two fragments of one buffer whose pages overlap: the second registration covers both.
        var first: FakeRegistration? = try table.acquire(fakeBytes(page(0) + 8, Self.page + 100), access: [.localWrite])
        let second = try table.acquire(fakeBytes(page(1) + 200, 2 * Self.page), access: [.localWrite])
        #expect(second.address == UInt64(page(0)) && second.length == 4 * Self.page, "pages 0-3")
        #expect(try table.acquire(fakeBytes(page(0), 10), access: []) === second, "the old entry is superseded")
        #expect(first != nil)
        #expect(fake.live == 2, "the superseded one stays while in use")
        first = nil
        let stats = table.statistics
        #expect(fake.live == 1 && stats.entries == 1 && stats.cachedBytes == 4 * Self.page)
        #expect(stats.misses == 2 && stats.hits == 1)
    }

    @Test func mergingRespectsRightsAndCapacityAndFallsBack() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 3 * Self.page)
        // A cached entry with more rights is not merged into a request with fewer.
        let writable = try table.acquire(fakeBytes(page(0), 2 * Self.page), access: [.localWrite])
        let readOnly = try table.acquire(fakeBytes(page(1), 2 * Self.page), access: [])
        #expect(readOnly.address == UInt64(page(1)) && readOnly.length == 2 * Self.page)
        // A union larger than the cache is not attempted: [page 0, page 5) would be 5 pages.
        let far = try table.acquire(fakeBytes(page(2), 3 * Self.page), access: [.localWrite])
        #expect(far.address == UInt64(page(2)) && far.length == 3 * Self.page)
        withExtendedLifetime((writable, readOnly, far)) {}

        // When the union cannot be registered (say, a neighbour's pages are read-only), the request alone is.
        let other = FakeRegistrar()
        let table2 = other.table(capacity: 1 << 20)
        let sourceOnly = try table2.acquire(fakeBytes(page(10), 2 * Self.page), access: [])
        other.ledger.withLock { $0.failAt = UInt64(page(10)) }
        let sink = try table2.acquire(fakeBytes(page(11), 2 * Self.page), access: [.localWrite])
        #expect(sink.address == UInt64(page(11)) && sink.length == 2 * Self.page)
        withExtendedLifetime((sourceOnly, sink)) {}
    }

    @Test func leastRecentlyUsedUnusedEntryIsEvicted() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 3 * Self.page)
        for n in 0..<3 { _ = try table.acquire(fakeBytes(page(n), 10), access: []) }   // released at once
        _ = try table.acquire(fakeBytes(page(0), 10), access: [])                      // page 0 is recent again
        _ = try table.acquire(fakeBytes(page(3), 10), access: [])                      // evicts page 1
        #expect(fake.wasDeregistered(UInt64(page(1))))
        #expect(!fake.wasDeregistered(UInt64(page(0))) && !fake.wasDeregistered(UInt64(page(2))))
        var stats = table.statistics
        #expect(stats.evictions == 1 && stats.entries == 3 && stats.cachedBytes == 3 * Self.page)
        _ = try table.acquire(fakeBytes(page(1), 10), access: [])                      // a miss now; evicts page 2
        stats = table.statistics
        #expect(stats.misses == 5 && stats.evictions == 2)
        #expect(fake.wasDeregistered(UInt64(page(2))))
        #expect(fake.live == 3)
    }

    @Test func entriesInUseAreNeverEvictedAndOverflowGoesUncached() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 2 * Self.page)
        var a: FakeRegistration? = try table.acquire(fakeBytes(page(0), 10), access: [])
        let b = try table.acquire(fakeBytes(page(1), 10), access: [])
        var c: FakeRegistration? = try table.acquire(fakeBytes(page(2), 10), access: [])
        var stats = table.statistics
        #expect(stats.entries == 2 && stats.entriesInUse == 2 && stats.uncachedRegistrations == 1 && stats.evictions == 0)
        #expect(fake.deregistered == 0)
        #expect(c != nil)
        c = nil
        #expect(fake.wasDeregistered(UInt64(page(2))), "an uncached registration goes with its last holder")
        // Another request for page 2 misses again: it was never cached.
        _ = try table.acquire(fakeBytes(page(2), 10), access: [])
        stats = table.statistics
        #expect(stats.misses == 4 && stats.uncachedRegistrations == 2)
        // Once `a` is released it is the one to go.
        #expect(a != nil)
        a = nil
        let d = try table.acquire(fakeBytes(page(3), 10), access: [])
        stats = table.statistics
        #expect(stats.evictions == 1 && stats.uncachedRegistrations == 2 && stats.entries == 2 && stats.entriesInUse == 2)
        #expect(fake.wasDeregistered(UInt64(page(0))))
        #expect(!fake.wasDeregistered(UInt64(page(1))))
        withExtendedLifetime((b, d)) {}
    }

    @Test func aRequestLargerThanTheCacheLeavesTheCacheAlone() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 2 * Self.page)
        _ = try table.acquire(fakeBytes(page(0), 10), access: [])
        _ = try table.acquire(fakeBytes(page(10), 3 * Self.page), access: [])
        let stats = table.statistics
        #expect(stats.uncachedRegistrations == 1 && stats.evictions == 0 && stats.entries == 1)
        #expect(fake.live == 1, "the large one is gone with its holder, the small one stays cached")
    }

    @Test func capacityZeroRegistersExactlyAndDeregistersOnRelease() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 0)
        var region: FakeRegistration? = try table.acquire(fakeBytes(page(0) + 100, 1000), access: [.localWrite])
        #expect(region?.address == UInt64(page(0) + 100) && region?.length == 1000, "no rounding without a cache")
        #expect(fake.live == 1)
        region = nil
        #expect(fake.live == 0)
        _ = try table.acquire(fakeBytes(page(0) + 100, 1000), access: [.localWrite])
        let stats = table.statistics
        #expect(stats.hits == 0 && stats.entries == 0 && stats.uncachedRegistrations == 2 && stats.bytesRegistered == 2000)
    }

    @Test func invalidatedEntriesAreNotHandedOutAndGoOnceUnused() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        _ = try table.acquire(fakeBytes(page(0), 10), access: [])
        var held: FakeRegistration? = try table.acquire(fakeBytes(page(5), 10), access: [])
        #expect(held != nil)
        table.invalidate(address: UInt(page(0)), length: 6 * Self.page)
        #expect(fake.wasDeregistered(UInt64(page(0))), "unused: deregistered at once")
        #expect(!fake.wasDeregistered(UInt64(page(5))), "in use: kept for its holder")
        let fresh = try table.acquire(fakeBytes(page(5), 10), access: [])
        #expect(fresh !== held, "a stale entry is never handed out")
        held = nil
        // The next miss sweeps the stale entry now that nobody holds it.
        _ = try table.acquire(fakeBytes(page(9), 10), access: [])
        #expect(fake.wasDeregistered(UInt64(page(5))))
        #expect(table.statistics.entries == 2)
        withExtendedLifetime(fresh) {}
    }

    @Test func purgeDropsOnlyUnusedEntries() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        let kept = try table.acquire(fakeBytes(page(0), 10), access: [])
        _ = try table.acquire(fakeBytes(page(1), 10), access: [])
        table.purge()
        #expect(fake.live == 1)
        #expect(table.statistics.entries == 1)
        withExtendedLifetime(kept) {}
    }

    @Test func aFailedRegistrationCachesNothing() throws {
        let fake = FakeRegistrar()
        let table = fake.table(capacity: 1 << 20)
        fake.ledger.withLock { $0.failAt = UInt64(page(0)) }
        #expect(throws: VerbsError.self) { try table.acquire(fakeBytes(page(0) + 8, 10), access: []) }
        #expect(table.statistics.entries == 0)
        #expect(throws: VerbsError.self) { try table.acquire(UnsafeMutableRawBufferPointer(start: nil, count: 0), access: []) }
    }

    @Test func concurrentUseStaysWithinCapacityAndLosesNothing() throws {
        let fake = FakeRegistrar()
        let capacity = 8 * Self.page
        let table = fake.table(capacity: capacity)
        let base = Self.base
        let overflow = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            var generator = SystemRandomNumberGenerator()
            var held: [FakeRegistration] = []
            for _ in 0..<2000 {
                let pageIndex = Int.random(in: 0..<16, using: &generator)
                let length = Int.random(in: 1...(2 * 4096), using: &generator)
                let address = base + UInt(pageIndex * 4096 + Int.random(in: 0..<4096, using: &generator))
                if let region = try? table.acquire(fakeBytes(address, length), access: worker % 2 == 0 ? [] : [.localWrite]) {
                    if region.address > UInt64(address) || region.address + UInt64(region.length) < UInt64(address) + UInt64(length) {
                        overflow.add(1, ordering: .relaxed)
                    }
                    held.append(region)
                }
                if held.count > 3 { held.removeFirst(Int.random(in: 1...held.count, using: &generator)) }
            }
        }
        #expect(overflow.load(ordering: .relaxed) == 0, "every answer covers its request")
        let stats = table.statistics
        #expect(stats.cachedBytes <= capacity)
        #expect(stats.entriesInUse == 0)
        #expect(fake.live == stats.entries, "every registration is either cached or deregistered")
        #expect(stats.hits + stats.misses == 16000)
    }
}
