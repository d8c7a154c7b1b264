import LNet

/// What the control socket shows of the RDMA LND (`lnetctl net show`, `peer show`, `conns show`, `stats show`):
/// its device and tunables, its connection counters, its registration cache and each connection. Read from the
/// counters the LND keeps (``LNDCountersSnapshot``, ``RegistrationCacheStatistics``, ``LNDConnectionInfo``).
extension RDMALND: LNetLNDStatusReporting {
    public func controlStatus(ni: LNetNI) -> LNDStatus {
        var properties: [String: String] = [:]
        if let device = deviceName { properties["device"] = device }
        let cpus = schedulerCPUs
        properties["schedulers"] = "\(cpus.count)"
        properties["scheduler_cpus"] = cpus.map { $0.map(String.init).joined(separator: ",") }.joined(separator: " ")
        for tunable in tunables.report(environment: [:]) { properties[tunable.variable] = tunable.value }

        let connections = self.connections
        let metrics = Self.metrics(connections: connections, counters: counters, cache: registrationStatistics)
        let reported = connections.sorted { ($0.peer, $0.role) < ($1.peer, $1.role) }.map { info in
            var details = ["scheduler": info.scheduler]
            if let mtu = info.pathMTU { details["path_mtu"] = mtu }
            if let ackTimeout = info.ackTimeout { details["ack_timeout"] = ackTimeout }
            if let retryCount = info.retryCount { details["retry_count"] = retryCount }
            return LNDConnectionStatus(
                peer: info.peer.description, state: info.phase, role: info.role, queueDepth: info.queueDepth, credits: info.credits,
                creditsOwed: info.creditsOwed, waiting: info.waiting, queuedControl: info.queuedControl, queuedEager: info.queuedEager,
                queuedRequests: info.queuedRequests, queuedRdma: info.queuedRDMA, posted: info.posted,
                transactions: info.transactions, transactionsInitiated: info.transactionsInitiated,
                msSinceReceive: Int(info.sinceReceive.inMilliseconds),
                msSinceSend: Int(info.sinceSend.inMilliseconds),
                details: details)
        }
        return LNDStatus(properties: properties, metrics: metrics, connections: reported)
    }

    /// The metrics: the connections gauge, then the LND's counters and the registration cache's figures (each when known).
    static func metrics(connections: [LNDConnectionInfo], counters: LNDCountersSnapshot?, cache: RegistrationCacheStatistics?) -> [LNDMetric] {
        var metrics: [LNDMetric] = []
        metrics.append(LNDMetric("connections", .gauge, connections.filter { $0.phase == "established" }.count,
                                 help: "Connections established now."))
        if let counters {
            metrics += [
                LNDMetric("connections_established", .counter, counters.connectionsEstablished, help: "Connections established."),
                LNDMetric("connections_closed", .counter, counters.connectionsClosed, help: "Established connections that closed."),
                LNDMetric("connect_attempts_failed", .counter, counters.connectAttemptsFailed,
                          help: "Connection attempts (ours or a peer's) that ended before the connection was established."),
                LNDMetric("reconnects", .counter, counters.reconnects, help: "Connection attempts retried with the limits a peer's reject asked for."),
                LNDMetric("rejects_sent", .counter, counters.rejectsSent, help: "Connection requests this side rejected."),
                LNDMetric("timeouts", .counter, counters.timeouts, help: "Connections closed because a message or transaction outlived LND_TIMEOUT."),
                LNDMetric("protocol_errors", .counter, counters.protocolErrors, help: "Connections closed for breaking the protocol."),
                LNDMetric("rdma_reads", .counter, counters.rdmaReads, help: "RDMA READs posted."),
                LNDMetric("rdma_writes", .counter, counters.rdmaWrites, help: "RDMA WRITEs posted."),
                LNDMetric("noops", .counter, counters.noops, help: "NOOPs sent (credit returns and keepalives)."),
                LNDMetric("registrations_offloaded", .counter, counters.registrationsOffloaded,
                          help: "Registrations made on the registration thread instead of a scheduler thread (LND_REGISTRATION_OFFLOAD)."),
            ]
            for (kind, count) in counters.protocolErrorsByKind.sorted(by: { $0.key < $1.key }) {
                metrics.append(LNDMetric("protocol_errors_by_kind", .counter, count, help: "Connections closed for a protocol violation, by kind.",
                                         labels: ["kind": kind]))
            }
        }
        if let cache {
            metrics += [
                LNDMetric("registration_cache_hits", .counter, cache.hits, help: "Registration cache lookups answered by a cached registration."),
                LNDMetric("registration_cache_misses", .counter, cache.misses, help: "Registration cache lookups that had to register."),
                LNDMetric("registration_cache_evictions", .counter, cache.evictions, help: "Cached registrations dropped to make room."),
                LNDMetric("registration_reclaims", .counter, cache.reclaims,
                          help: "Registrations the memlock limit refused that went through once idle cached registrations were dropped."),
                LNDMetric("registrations_uncached", .counter, cache.uncachedRegistrations, help: "Registrations made outside the cache."),
                LNDMetric("remote_grants", .counter, cache.remoteGrants, help: "Remote-access registrations made for transfers."),
                LNDMetric("registered_bytes", .counter, cache.bytesRegistered,
                          help: "Bytes registered: cached, uncached and remote grants."),
                LNDMetric("registration_cache_entries", .gauge, cache.entries, help: "Registrations the cache holds now."),
                LNDMetric("registration_cache_entries_in_use", .gauge, cache.entriesInUse, help: "Cached registrations a transfer is using now."),
                LNDMetric("registration_cache_bytes", .gauge, cache.cachedBytes, help: "Bytes the cache holds registered now."),
                LNDMetric("registration_cache_capacity_bytes", .gauge, cache.capacity, help: "Bytes the cache may keep registered."),
            ]
        }
        return metrics
    }
}
