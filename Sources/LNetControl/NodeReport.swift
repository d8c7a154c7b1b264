import LNet
import LNetSelftest
import RDMALND

/// What a node did, taken when a command shuts it down: LNet's message accounting per interface (every message
/// handed to an LND must be finalized exactly once) and the o2ib LND's connection counters. Printed by
/// `selftest` and `serve` (`"lnet"` and `"lnd"` in their JSON) so that fault tests can check nothing was lost.
struct NodeReport: Sendable {
    var interfaces: [LNetInterfaceCounters]
    var lndCounters: LNDCountersSnapshot?
    /// The LND's registration cache just before shutdown.
    var registration: RegistrationCacheStatistics?
    /// The LND's connections just before shutdown.
    var connectionsAtEnd: [LNDConnectionInfo]
    /// Where incoming messages were matched (`LNET_PLACEMENT`), just before shutdown.
    var placement: PlacementReport?

    var handed: Int { interfaces.reduce(0) { $0 + $1.messagesHandedToLND } }
    var finalizedOK: Int { interfaces.reduce(0) { $0 + $1.finalizedOK } }
    var finalizedWithError: Int { interfaces.reduce(0) { $0 + $1.finalizedWithError } }
    var doubleFinalizations: Int { interfaces.reduce(0) { $0 + $1.doubleFinalizations } }
    var unfinalizedAtShutdown: Int { interfaces.reduce(0) { $0 + $1.unfinalizedAtShutdown } }
    var pending: Int { interfaces.reduce(0) { $0 + $1.pendingMessages } }
    var finalizedExactlyOnce: Bool { interfaces.allSatisfy(\.finalizedExactlyOnce) }

    /// Why the accounting does not add up, or nil.
    var accountingProblem: String? {
        guard !finalizedExactlyOnce else { return nil }
        return "message accounting: \(handed) handed to the LND, \(finalizedOK) finalized ok, \(finalizedWithError) with an error, "
            + "\(doubleFinalizations) finalized twice, \(unfinalizedAtShutdown) left unfinalized by the LND at shutdown, \(pending) pending"
    }

    var lnetJSON: JSONValue {
        .object([
            "handed_to_lnd": .int(handed),
            "finalized_ok": .int(finalizedOK),
            "finalized_error": .int(finalizedWithError),
            "finalized_twice": .int(doubleFinalizations),
            "unfinalized_at_shutdown": .int(unfinalizedAtShutdown),
            "pending": .int(pending),
            "exactly_once": .bool(finalizedExactlyOnce),
        ])
    }

    var lndJSON: JSONValue {
        guard let counters = lndCounters else { return .null }
        return .object([
            "connections_established": .int(counters.connectionsEstablished),
            "connections_closed": .int(counters.connectionsClosed),
            "connect_attempts_failed": .int(counters.connectAttemptsFailed),
            "reconnects": .int(counters.reconnects),
            "timeouts": .int(counters.timeouts),
            "protocol_errors": .int(counters.protocolErrors),
            "rejects_sent": .int(counters.rejectsSent),
            "rdma_reads": .int(counters.rdmaReads),
            "rdma_writes": .int(counters.rdmaWrites),
            "noops": .int(counters.noops),
            "registration": registration.map { cache in
                .object(["capacity": .int(cache.capacity), "hits": .int(cache.hits), "misses": .int(cache.misses),
                         "evictions": .int(cache.evictions), "reclaims": .int(cache.reclaims), "remote_grants": .int(cache.remoteGrants),
                         "uncached": .int(cache.uncachedRegistrations), "cached_bytes": .int(cache.cachedBytes)])
            } ?? .null,
            "connections_at_end": .array(connectionsAtEnd.map { connection in
                .object(["peer": .string(connection.peer.description), "role": .string(connection.role),
                         "phase": .string(connection.phase), "ack_timeout": connection.ackTimeout.map { .int($0) } ?? .null,
                         "retry_count": connection.retryCount.map { .int($0) } ?? .null])
            }),
        ])
    }

    var placementJSON: JSONValue { placement?.json ?? .null }

    /// One line for the human summary.
    var summaryLine: String {
        var line = "  messages  \(handed) handed to the LND, \(finalizedOK) ok, \(finalizedWithError) failed, "
            + (finalizedExactlyOnce ? "each finalized exactly once" : "NOT finalized exactly once (\(doubleFinalizations) twice, \(unfinalizedAtShutdown) left, \(pending) pending)")
        if let counters = lndCounters {
            line += "; connections \(counters.connectionsEstablished) made, \(counters.connectionsClosed) closed, \(connectionsAtEnd.count) at end, "
                + "\(counters.connectAttemptsFailed) failed attempts"
        }
        return line
    }
}

/// Where a node matched the messages it received (`LNET_PLACEMENT`): per CPU partition, what its LND's scheduler
/// threads received and what was matched there, and how messages moved between partitions.
struct PlacementReport: Sendable {
    var policy: PlacementPolicy
    /// Messages the LND's scheduler threads of each partition received.
    var receivedPerPartition: [Int]
    /// Messages matched on each partition (under `nid`: where they were received).
    var matchedPerPartition: [Int]
    /// Messages handed to another partition than the receiving thread's.
    var crossPartition: Int
    /// Messages that waited behind an earlier one of their peer on another partition.
    var heldForOrder: Int
    /// GET completions handed to the partition that sent the GET.
    var completionsHandedHome: Int
    /// Queuelets handed to the partitions' threads, and their mean size.
    var queueletHandoffs: Int
    var meanBatch: Double

    init(policy: PlacementPolicy, receivedPerPartition: [Int], statistics: LNetPlacementStatistics?) {
        self.policy = policy
        self.receivedPerPartition = receivedPerPartition
        self.matchedPerPartition = statistics?.matchedPerPartition ?? receivedPerPartition
        self.crossPartition = statistics?.crossPartition ?? 0
        self.heldForOrder = statistics?.heldForOrder ?? 0
        self.completionsHandedHome = statistics?.completionsHandedHome ?? 0
        self.queueletHandoffs = statistics?.queuelets.handoffs ?? 0
        self.meanBatch = statistics?.queuelets.meanBatch ?? 0
    }

    var json: JSONValue {
        .object([
            "policy": .string(policy.description),
            "received_per_partition": .array(receivedPerPartition.map { .int($0) }),
            "matched_per_partition": .array(matchedPerPartition.map { .int($0) }),
            "cross_partition": .int(crossPartition),
            "held_for_order": .int(heldForOrder),
            "completions_handed_home": .int(completionsHandedHome),
            "queuelet_handoffs": .int(queueletHandoffs),
            "mean_batch": .number(meanBatch, decimals: 2),
        ])
    }

    var line: String {
        "  placement \(policy): matched per partition \(matchedPerPartition) (received \(receivedPerPartition)), "
            + "\(crossPartition) handed to another partition, \(heldForOrder) held for order, "
            + "\(queueletHandoffs) queuelets (mean \(format(meanBatch, 1)))"
    }
}
