import Foundation
import LNet
import Testing
import Verbs
@testable import RDMALND

/// Running without root: start-up compares RLIMIT_MEMLOCK with what the LND pins and says what to change; a
/// registration the limit refuses goes through once the cache drops what nobody uses.
@Suite struct MemoryLockBudgetTests {
    let tunables = LNDTunables()

    @Test func theNeedIsTheTransmitBuffersOneConnectionAndTheCache() {
        let budget = MemoryLockBudget(tunables: tunables, limit: 64 << 10)
        let messageSize = WireFormat.maxMessageSize(immediateSize: tunables.immediateSize, maxFragments: tunables.maxFragments)
        #expect(budget.transmitBuffers >= tunables.ntx * messageSize && budget.transmitBuffers % 4096 == 0)
        #expect(budget.receiveBuffersPerConnection >= Credits.receiveBuffers(queueDepth: tunables.peerCredits) * messageSize)
        #expect(budget.need == budget.transmitBuffers + budget.receiveBuffersPerConnection + tunables.registrationCacheSize)
        #expect(!budget.suffices && budget.connectionsThatFit == 0)
        #expect(MemoryLockBudget(tunables: tunables, limit: budget.need).suffices)
        #expect(!MemoryLockBudget(tunables: tunables, limit: budget.need - 1).suffices)
        #expect(MemoryLockBudget(tunables: tunables, limit: nil).suffices)
        let roomy = MemoryLockBudget(tunables: tunables, limit: budget.need + 3 * budget.receiveBuffersPerConnection)
        #expect(roomy.connectionsThatFit == 4)
    }

    /// The refusal names the limit, the need and every way out; with room for the fixed part, the cache size that fits.
    @Test func aLowLimitStopsStartUpSayingWhatToChange() throws {
        let low = MemoryLockBudget(tunables: tunables, limit: 64 << 10)
        #expect(throws: LNDStartupError.memoryLockLimit(low)) { try low.check() }
        let text = LNDStartupError.memoryLockLimit(low).description
        for needle in ["RLIMIT_MEMLOCK", "ulimit -l", "64 KiB", formatBytes(low.need), "limits.conf", "LND_REGISTRATION_CACHE_SIZE", "LND_NTX"] {
            #expect(text.contains(needle), "\(needle) not in: \(text)")
        }
        // 8 MiB (a common default): the transmit and receive buffers fit, the default 256 MiB cache does not.
        let eight = MemoryLockBudget(tunables: tunables, limit: 8 << 20)
        let room = (8 << 20) - eight.transmitBuffers - eight.receiveBuffersPerConnection
        let advice = LNDStartupError.memoryLockLimit(eight).description
        #expect(advice.contains("LND_REGISTRATION_CACHE_SIZE=\(room >> 10)K"), "\(advice)")
        var fitted = tunables
        fitted.registrationCacheSize = (room >> 10) << 10
        #expect(throws: Never.self) { try MemoryLockBudget(tunables: fitted, limit: 8 << 20).check() }
    }

    @Test func aPrivilegedPortNamesTheTunable() {
        let cause = VerbsError(call: "rdma_bind_addr", errno: EACCES, detail: "192.0.2.1:987")
        let text = LNDStartupError.privilegedPort(port: 987, cause: cause).description
        #expect(text.contains("rdma_bind_addr") && text.contains("987") && text.contains("privileged") && text.contains("LND_SERVICE_PORT"), "\(text)")
    }

    @Test func aRefusedRegistrationCarriesTheLimit() {
        let budget = MemoryLockBudget(tunables: tunables, limit: 64 << 10)
        let refused = budget.annotated(VerbsError(call: "ibv_reg_mr", errno: ENOMEM, detail: "2179072 bytes"))
        #expect(refused.detail?.contains("2179072 bytes") == true && refused.detail?.contains("RLIMIT_MEMLOCK") == true, "\(refused)")
        let other = VerbsError(call: "ibv_reg_mr", errno: EINVAL)
        #expect(budget.annotated(other) == other)
        #expect(MemoryLockBudget(tunables: tunables, limit: nil).annotated(VerbsError(call: "ibv_reg_mr", errno: ENOMEM)).detail == nil)
    }

    /// The cache holds 8 idle pages under a 10-page limit: a 4-page registration outside it is refused at first,
    /// then goes through once the idle registrations are dropped. With the pages in use, nothing can be dropped and
    /// the refusal stands.
    @Test func idleCachedRegistrationsMakeRoomUnderTheLimit() throws {
        let registrar = FakeRegistrar()
        let table = registrar.table(capacity: 8 * 4096)
        registrar.ledger.withLock { $0.pinLimit = 10 * 4096 }
        var held: [FakeRegistration] = []
        for page in 0..<8 { held.append(try table.acquire(fakeBytes(0x10_0000 + UInt(page) * 0x10000, 4096), access: [])) }
        let direct = { () throws(VerbsError) -> FakeRegistration in
            try registrar.table(capacity: 0).acquire(fakeBytes(0x90_0000, 4 * 4096), access: [.localWrite])
        }
        // In use: reclaiming drops nothing, and the refusal comes through.
        #expect(throws: VerbsError.self) { _ = try table.reclaiming(direct) }
        #expect(table.statistics.reclaims == 0 && table.statistics.entries == 8)
        held.removeAll()
        let region = try table.reclaiming(direct)
        #expect(region.length == 4 * 4096)
        let statistics = table.statistics
        #expect(statistics.reclaims == 1 && statistics.entries == 0 && statistics.evictions == 8, "\(statistics)")
        // Other errors are not retried.
        registrar.ledger.withLock { $0.pinLimit = nil }
        var calls = 0
        #expect(throws: VerbsError.self) {
            _ = try table.reclaiming { () throws(VerbsError) -> Int in calls += 1; throw VerbsError(call: "ibv_reg_mr", errno: EFAULT) }
        }
        #expect(calls == 1)
    }
}
