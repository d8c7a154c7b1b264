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
        var metrics = [LNDMetric("connections", .gauge, connections.filter { $0.phase == "established" }.count, help: "Connections established now.")]
        if let counters {
            metrics += counterMetrics.map { LNDMetric($0.name, .counter, counters[keyPath: $0.figure], help: $0.help) }
            for (kind, count) in counters.protocolErrorsByKind.sorted(by: { $0.key < $1.key }) {
                metrics.append(LNDMetric("protocol_errors_by_kind", .counter, count, help: "Connections closed for a protocol violation, by kind.",
                                         labels: ["kind": kind]))
            }
        }
        if let cache {
            metrics += cacheMetrics.map { LNDMetric($0.name, $0.kind, cache[keyPath: $0.figure], help: $0.help) }
        }
        return metrics
    }

    /// The LND's counters, in the order they are reported: the metric's name, the figure, its help.
    static let counterMetrics: [(name: String, figure: KeyPath<LNDCountersSnapshot, Int> & Sendable, help: String)] = [
        ("connections_established", \.connectionsEstablished, "Connections established."),
        ("connections_closed", \.connectionsClosed, "Established connections that closed."),
        ("connect_attempts_failed", \.connectAttemptsFailed,
         "Connection attempts (ours or a peer's) that ended before the connection was established."),
        ("reconnects", \.reconnects, "Connection attempts retried with the limits a peer's reject asked for."),
        ("rejects_sent", \.rejectsSent, "Connection requests this side rejected."),
        ("timeouts", \.timeouts, "Connections closed because a message or transaction outlived LND_TIMEOUT."),
        ("protocol_errors", \.protocolErrors, "Connections closed for breaking the protocol."),
        ("rdma_reads", \.rdmaReads, "RDMA READs posted."),
        ("rdma_writes", \.rdmaWrites, "RDMA WRITEs posted."),
        ("noops", \.noops, "NOOPs sent (credit returns and keepalives)."),
        ("registrations_offloaded", \.registrationsOffloaded,
         "Registrations made on the registration thread instead of a scheduler thread (LND_REGISTRATION_OFFLOAD)."),
    ]

    /// The registration cache's figures, in the order they are reported: the metric's name, counter or gauge, the
    /// figure, its help.
    static let cacheMetrics: [(name: String, kind: LNDMetric.Kind, figure: KeyPath<RegistrationCacheStatistics, Int> & Sendable, help: String)] = [
        ("registration_cache_hits", .counter, \.hits, "Registration cache lookups answered by a cached registration."),
        ("registration_cache_misses", .counter, \.misses, "Registration cache lookups that had to register."),
        ("registration_cache_evictions", .counter, \.evictions, "Cached registrations dropped to make room."),
        ("registration_reclaims", .counter, \.reclaims,
         "Registrations the memlock limit refused that went through once idle cached registrations were dropped."),
        ("registrations_uncached", .counter, \.uncachedRegistrations, "Registrations made outside the cache."),
        ("remote_grants", .counter, \.remoteGrants, "Remote-access registrations made for transfers."),
        ("registered_bytes", .counter, \.bytesRegistered, "Bytes registered: cached, uncached and remote grants."),
        ("registration_cache_entries", .gauge, \.entries, "Registrations the cache holds now."),
        ("registration_cache_entries_in_use", .gauge, \.entriesInUse, "Cached registrations a transfer is using now."),
        ("registration_cache_bytes", .gauge, \.cachedBytes, "Bytes the cache holds registered now."),
        ("registration_cache_capacity_bytes", .gauge, \.capacity, "Bytes the cache may keep registered."),
    ]
}
