import Foundation
import LNet
import Verbs

/// What the LND pins against `RLIMIT_MEMLOCK`, and what the process may pin.
///
/// Every memory registration pins its pages, and the kernel counts them against the process's memlock limit
/// unless the process has `CAP_IPC_LOCK` (root has it). The LND pins, for as long as it runs:
/// - the transmit descriptors (`LND_NTX` buffers of one wire message each), at start-up;
/// - each connection's receive buffers (3 x `LND_PEER_CREDITS` + 2 wire messages), when it connects;
/// - up to `LND_REGISTRATION_CACHE_SIZE` of cached registrations of LNet buffers;
/// and, while a bulk transfer is in flight, the registration that gives the peer access to its memory.
///
/// Start-up refuses a limit below the first three (one connection's worth): such a node would fail later, on its
/// first connections or transfers, with nothing but `ibv_reg_mr: Cannot allocate memory`.
public struct MemoryLockBudget: Sendable, Equatable {
    /// The soft `RLIMIT_MEMLOCK` in bytes; nil when nothing limits registration (no limit, or `CAP_IPC_LOCK`).
    public var limit: Int?
    /// Why nothing limits registration, when `limit` is nil: "unlimited" or "CAP_IPC_LOCK".
    public var unlimitedBecause: String?
    /// The transmit descriptors' buffers (pinned at start-up).
    public var transmitBuffers: Int
    /// One connection's receive buffers (pinned when it connects).
    public var receiveBuffersPerConnection: Int
    /// The registration cache's bound.
    public var registrationCache: Int
    public var ntx: Int
    public var peerCredits: Int

    /// What start-up needs: the transmit buffers, one connection's receive buffers and the registration cache.
    public var need: Int { transmitBuffers + receiveBuffersPerConnection + registrationCache }

    /// Whether the limit covers `need`.
    public var suffices: Bool { limit.map { $0 >= need } ?? true }

    /// Connections whose receive buffers fit in the limit beside the transmit buffers and a full cache (nil: no limit).
    public var connectionsThatFit: Int? {
        guard let limit else { return nil }
        return max(0, (limit - transmitBuffers - registrationCache) / max(1, receiveBuffersPerConnection))
    }

    /// The budget for `tunables` under `limit` (bytes; nil: unlimited).
    public init(tunables: LNDTunables, limit: Int?, unlimitedBecause: String? = nil) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        func pages(_ bytes: Int) -> Int { (bytes + page - 1) / page * page }
        let messageSize = WireFormat.maxMessageSize(immediateSize: tunables.immediateSize, maxFragments: tunables.maxFragments)
        self.limit = limit
        self.unlimitedBecause = limit == nil ? (unlimitedBecause ?? "unlimited") : nil
        self.transmitBuffers = pages(tunables.ntx * messageSize)
        self.receiveBuffersPerConnection = pages(Credits.receiveBuffers(queueDepth: tunables.peerCredits) * messageSize)
        self.registrationCache = tunables.registrationCacheSize
        self.ntx = tunables.ntx
        self.peerCredits = tunables.peerCredits
    }

    /// The budget for `tunables` under this process's limit.
    public static func current(tunables: LNDTunables) -> MemoryLockBudget {
        if MemoryLockLimit.hasIPCLock { return MemoryLockBudget(tunables: tunables, limit: nil, unlimitedBecause: "CAP_IPC_LOCK") }
        return MemoryLockBudget(tunables: tunables, limit: MemoryLockLimit.soft)
    }

    /// The limit as `ulimit -l` shows it, e.g. `64 KiB` or `unlimited (CAP_IPC_LOCK)`.
    public var limitText: String {
        guard let limit else { return unlimitedBecause == "CAP_IPC_LOCK" ? "unlimited (CAP_IPC_LOCK)" : "unlimited" }
        return formatBytes(limit)
    }

    /// Throws `LNDStartupError.memoryLockLimit` when the limit does not cover `need`.
    public func check() throws(LNDStartupError) {
        if !suffices { throw .memoryLockLimit(self) }
    }

    /// `error` with the limit and the fix in its detail when it is a registration refused for the limit (`ENOMEM`
    /// under a memlock limit); else `error` itself.
    func annotated(_ error: VerbsError) -> VerbsError {
        guard error.errno == ENOMEM, let limit else { return error }
        let advice = "the memlock limit (RLIMIT_MEMLOCK) is \(formatBytes(limit)): raise it (ulimit -l) or lower LND_REGISTRATION_CACHE_SIZE"
        return VerbsError(call: error.call, errno: error.errno, detail: error.detail.map { "\($0); \(advice)" } ?? advice)
    }
}

/// This process's memlock limit.
enum MemoryLockLimit {
    /// The soft `RLIMIT_MEMLOCK` in bytes; nil when unlimited.
    static var soft: Int? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    /// Whether the process has `CAP_IPC_LOCK` in its effective set (then the kernel does not count registrations).
    static var hasIPCLock: Bool {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
        return mask & (1 << 14) != 0  // CAP_IPC_LOCK
    }
}
