import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How incoming work is placed on a CPU partition (`LNET_PLACEMENT` in `lnetctl`: `nid`, `hint` or `none`).
public enum PlacementPolicy: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// By the hash of the peer NID (`nid`, client affinity): one peer's LNet-level work stays on one partition
    /// (Lustre's default). An incoming message is matched on the scheduler thread that received it.
    case peerHash = "nid"
    /// By the hints in the message header (`hint`, object affinity: object id, offset in GiB) when present, so one
    /// object's work stays on one partition whatever peer sends it; messages without hints fall back to
    /// ``peerHash``.
    case hints = "hint"
    /// Round robin over the partitions (`none`), message by message: the baseline that keeps neither peer nor
    /// object on one CPU. (Where a placement must be a pure function, as for events, it falls back to ``peerHash``.)
    case roundRobin = "none"

    /// The policy for its `LNET_PLACEMENT` name (`nid`, `hint` or `none`).
    public init?(name: String) {
        self.init(rawValue: String(name.filter { !$0.isWhitespace }).lowercased())
    }

    public var description: String { rawValue }
}

/// CPU partitions (Lustre's CPTs): the CPUs split into groups, each with its own service threads and queues.
///
/// Placement is a pure function of the NID or the hints, using a fixed mixing function (not Swift's seeded
/// `Hasher`), so every layer and every process places the same peer or object on the same partition.
public struct CPUPartitionTable: Hashable, Sendable, CustomStringConvertible {
    /// The CPUs in each partition. The RDMA LND's scheduler threads bind themselves to their partition's CPUs
    /// (a queuelet scheduler's service threads do not, yet).
    public let cpus: [[Int]]

    /// The number of partitions.
    public var count: Int { cpus.count }

    /// Splits `cpuCount` CPUs (default: the online CPUs) into `count` partitions (default: one per CPU).
    public init(count: Int? = nil, cpuCount: Int? = nil) {
        let online = max(1, cpuCount ?? Self.onlineCPUs)
        let partitions = max(1, count ?? online)
        var cpus = Array(repeating: [Int](), count: partitions)
        for cpu in 0..<online { cpus[cpu % partitions].append(cpu) }
        self.cpus = cpus
    }

    /// The number of online CPUs.
    public static var onlineCPUs: Int {
        let value = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return value > 0 ? Int(value) : 1
    }

    /// A 64-bit finalizer (from MurmurHash3) that spreads nearby values across the whole range.
    public static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 33
        x &*= 0xFF51_AFD7_ED55_8CCD
        x ^= x >> 33
        x &*= 0xC4CE_B9FE_1A85_EC53
        x ^= x >> 33
        return x
    }

    /// The partition for a peer.
    public func partition(forPeer nid: NID) -> Int {
        Int(Self.mix(nid.rawValue) % UInt64(count))
    }

    /// The partition for hints (`major` and `minor` are mixed so one object's extents can spread over partitions
    /// while each extent stays on one).
    public func partition(forHints hints: LNetHints) -> Int {
        Int(Self.mix(Self.mix(hints.major) ^ hints.minor) % UInt64(count))
    }

    /// The partition for a message from `peer` carrying `hints`, under `policy`.
    /// A server's placement cookie in `hints` counts as no hint here (only the node that gave it knows what it
    /// names; that node's early placement honours it).
    public func partition(peer: NID, hints: LNetHints, policy: PlacementPolicy) -> Int {
        if policy == .hints, !hints.isNone, !hints.isCookie { return partition(forHints: hints) }
        return partition(forPeer: peer)
    }

    /// The partition CPU `cpu` belongs to.
    public func partition(ofCPU cpu: Int) -> Int {
        if let index = cpus.firstIndex(where: { $0.contains(cpu) }) { return index }
        return cpu >= 0 ? cpu % count : 0
    }

    /// The partition the calling thread works for: the one a service thread serves (an LND scheduler or a
    /// placement thread), else the one of the CPU it runs on now.
    public func partitionOfCurrentThread() -> Int {
        if let own = Self.servedByCurrentThread { return own % count }
        return partition(ofCPU: Int(CSystemShims_current_cpu()))
    }

    /// The partition the calling thread serves, if it is a service thread of one.
    public static var servedByCurrentThread: Int? {
        let own = Int(CSystemShims_thread_partition())
        return own >= 0 ? own : nil
    }

    /// Marks the calling thread as serving `partition` (`nil`: none). Service threads do it themselves.
    package static func setServedByCurrentThread(_ partition: Int?) {
        CSystemShims_set_thread_partition(Int32(partition ?? -1))
    }

    public var description: String {
        cpus.enumerated().map { "cpt\($0.offset)=\($0.element)" }.joined(separator: " ")
    }
}
