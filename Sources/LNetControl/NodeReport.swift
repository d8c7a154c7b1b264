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
