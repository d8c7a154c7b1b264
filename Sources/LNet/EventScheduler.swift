import Logging

extension LNetEvent {
    /// The remote process of the event: the initiator for PUT and GET (target side), the target otherwise.
    public var peer: ProcessID {
        switch kind {
        case .put, .get: return initiator
        case .send, .ack, .reply, .unlink: return target
        }
    }

    /// The ordering key of the event's peer (one key per NID + pid).
    public var peerKey: UInt64 {
        CPUPartitionTable.mix(peer.nid.rawValue ^ (UInt64(peer.pid) << 7))
    }
}

extension QueueletScheduler where Item == LNetEvent {
    /// A scheduler for LNet events (use with ``EventQueue/Delivery/scheduler(_:)``): events are placed on a
    /// partition by `placement` (the peer's NID hash, or the initiator's hints), handled in order per peer, and
    /// different peers in parallel.
    public convenience init(events configuration: QueueletConfiguration, placement: PlacementPolicy = .peerHash,
                            name: String = "lnet-eq", logger: Logger? = nil,
                            handler: @escaping @Sendable (LNetEvent, _ partition: Int) -> Void) throws(LNetError) {
        let table = configuration.partitions
        try self.init(configuration: configuration, name: name, logger: logger,
                      placement: { event in table.partition(peer: event.peer.nid, hints: event.hints, policy: placement) },
                      orderingKey: { $0.peerKey }, handler: handler)
    }
}
