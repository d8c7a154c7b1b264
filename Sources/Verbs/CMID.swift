import CShims
#if canImport(Glibc)
import Glibc
#endif

/// What a connect or accept offers the other side.
public struct ConnectionParameters: Sendable, Hashable {
    /// At most 56 bytes on connect, 196 on accept (the transport's limits).
    public var privateData: [UInt8]
    /// RDMA READs the peer may have outstanding against us (our `max_dest_rd_atomic`).
    public var responderResources: UInt8
    /// RDMA READs we may have outstanding (our `max_rd_atomic`).
    public var initiatorDepth: UInt8
    /// Transport retries before a send fails (0-7; ignored on accept).
    public var retryCount: UInt8
    /// Receiver-not-ready retries (0-7, 7 is "forever").
    public var rnrRetryCount: UInt8

    public init(privateData: [UInt8] = [], responderResources: UInt8 = 1, initiatorDepth: UInt8 = 1,
                retryCount: UInt8 = 7, rnrRetryCount: UInt8 = 7) {
        self.privateData = privateData
        self.responderResources = responderResources
        self.initiatorDepth = initiatorDepth
        self.retryCount = retryCount
        self.rnrRetryCount = rnrRetryCount
    }

    func withRaw<R>(queuePairNumber: UInt32? = nil, _ body: (inout rdma_conn_param) -> R) -> R {
        privateData.withUnsafeBytes { data in
            var raw = rdma_conn_param()
            raw.private_data = data.isEmpty ? nil : data.baseAddress
            raw.private_data_len = UInt8(clamping: data.count)
            raw.responder_resources = responderResources
            raw.initiator_depth = initiatorDepth
            raw.flow_control = 1
            raw.retry_count = min(retryCount, 7)
            raw.rnr_retry_count = min(rnrRetryCount, 7)
            if let queuePairNumber { raw.qp_num = queuePairNumber }
            return body(&raw)
        }
    }
}

/// An rdma_cm identifier (`rdma_cm_id`): the rdma_cm equivalent of a socket. Listens, or resolves a peer and
/// connects; carries at most one queue pair, which rdma_cm moves through INIT -> RTR -> RTS on connect/accept.
///
/// Destroyed exactly once when the last reference goes away, after its queue pair (which holds it).
public final class CMID: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<rdma_cm_id>
    public let channel: CMEventChannel

    init(pointer: UnsafeMutablePointer<rdma_cm_id>, channel: CMEventChannel) {
        self.pointer = pointer
        self.channel = channel
    }

    deinit {
        channel.forget(pointer)
        Release.record("rdma_destroy_id", rdma_destroy_id(pointer))
    }

    /// The device the id is bound to (after bind to a device address, address resolution, or on a connect
    /// request). The context is rdma_cm's and lives as long as the process.
    public var deviceContext: DeviceContext? {
        pointer.pointee.verbs.map(CMDeviceContexts.context(for:))
    }

    /// The port on that device.
    public var portNumber: UInt8 { pointer.pointee.port_num }

    public var localEndpoint: IPv4Endpoint? { endpoint(rdma_get_local_addr(pointer)) }
    public var remoteEndpoint: IPv4Endpoint? { endpoint(rdma_get_peer_addr(pointer)) }

    private func endpoint(_ address: UnsafeMutablePointer<sockaddr>?) -> IPv4Endpoint? {
        guard let address, address.pointee.sa_family == sa_family_t(AF_INET) else { return nil }
        return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { IPv4Endpoint($0.pointee) }
    }

    /// Binds to a local address (port 0 picks one).
    public func bind(_ endpoint: IPv4Endpoint) throws(VerbsError) {
        var address = endpoint.sockaddr
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_bind_addr(pointer, $0) }
        }
        try VerbsError.check("rdma_bind_addr", rc, detail: endpoint.description)
    }

    /// Starts listening; connect requests arrive on the channel as `.connectRequest`.
    public func listen(backlog: Int32 = 128) throws(VerbsError) {
        try VerbsError.check("rdma_listen", rdma_listen(pointer, backlog))
    }

    /// Starts resolving `destination` (optionally from `source`); `.addressResolved` follows.
    public func resolveAddress(from source: IPv4Endpoint?, to destination: IPv4Endpoint, timeout: Duration) throws(VerbsError) {
        var src = source?.sockaddr ?? sockaddr_in()
        var dst = destination.sockaddr
        let ms = timeout.pollMilliseconds
        let rc = withUnsafeMutablePointer(to: &src) { srcPointer in
            withUnsafeMutablePointer(to: &dst) { dstPointer in
                srcPointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { s in
                    dstPointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { d in
                        rdma_resolve_addr(pointer, source == nil ? nil : s, d, ms)
                    }
                }
            }
        }
        try VerbsError.check("rdma_resolve_addr", rc, detail: "\(source?.description ?? "any") -> \(destination)")
    }

    /// Starts resolving the route; `.routeResolved` follows.
    public func resolveRoute(timeout: Duration) throws(VerbsError) {
        let ms = timeout.pollMilliseconds
        try VerbsError.check("rdma_resolve_route", rdma_resolve_route(pointer, ms))
    }

    /// The state of the port this id is bound to (nil before it is bound to a device, or if the query fails).
    public func portState() -> PortState? {
        guard let verbs = pointer.pointee.verbs else { return nil }
        var attr = ibv_port_attr()
        guard CShims_ibv_query_port(verbs, pointer.pointee.port_num, &attr) == 0 else { return nil }
        return PortState(attr.state)
    }

    /// Sets the QP's local ACK timeout exponent (4.096 us * 2^value) for connections made on this id.
    public func setAckTimeout(_ value: UInt8) throws(VerbsError) {
        var value = value
        try VerbsError.check("rdma_set_option(ACK_TIMEOUT)",
                             rdma_set_option(pointer, Int32(RDMA_OPTION_ID), Int32(RDMA_OPTION_ID_ACK_TIMEOUT), &value, 1))
    }

    /// Creates this id's RC queue pair on `protectionDomain` (which must be on `deviceContext`).
    public func createQueuePair(protectionDomain: ProtectionDomain, sendQueue: CompletionQueue,
                                receiveQueue: CompletionQueue, capabilities: QueuePairCapabilities) throws(VerbsError) -> QueuePair {
        var attr = QueuePair.initAttributes(sendQueue: sendQueue, receiveQueue: receiveQueue, capabilities: capabilities)
        try VerbsError.check("rdma_create_qp", rdma_create_qp(pointer, protectionDomain.pointer, &attr))
        guard let qp = pointer.pointee.qp else { throw VerbsError(call: "rdma_create_qp", errno: EINVAL) }
        return QueuePair(cmID: self, pointer: qp, protectionDomain: protectionDomain, sendQueue: sendQueue,
                         receiveQueue: receiveQueue, granted: attr.cap)
    }

    /// Connects (after route resolution, with the QP created); `.established` or `.rejected` follows.
    public func connect(_ parameters: ConnectionParameters) throws(VerbsError) {
        guard parameters.privateData.count <= Int(CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX) else {
            throw VerbsError(call: "rdma_connect", errno: EINVAL, detail: "private data over \(CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX) bytes")
        }
        let rc = parameters.withRaw { rdma_connect(pointer, &$0) }
        try VerbsError.check("rdma_connect", rc)
    }

    /// Accepts a connect request (on the request's id, with the QP created); `.established` follows.
    public func accept(_ parameters: ConnectionParameters) throws(VerbsError) {
        guard parameters.privateData.count <= Int(CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX) else {
            throw VerbsError(call: "rdma_accept", errno: EINVAL, detail: "private data over \(CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX) bytes")
        }
        let rc = parameters.withRaw { rdma_accept(pointer, &$0) }
        try VerbsError.check("rdma_accept", rc)
    }

    // MARK: A queue pair of our own

    /// Moves `queuePair` (made with `QueuePair.init`, not `createQueuePair`) to `state` with the attributes
    /// rdma_cm computed for this id (`rdma_init_qp_attr`): the way to use a QP rdma_cm does not manage, e.g.
    /// to lower the path MTU. `INIT` after route resolution or a connect request; `RTR` and `RTS` after a
    /// connect request (passive) or the connect response (active).
    public func transition(_ queuePair: QueuePair, to state: QueuePairState, pathMTU: PathMTU? = nil) throws(VerbsError) {
        var attr = ibv_qp_attr()
        switch state {
        case .initialized: attr.qp_state = IBV_QPS_INIT
        case .readyToReceive: attr.qp_state = IBV_QPS_RTR
        case .readyToSend: attr.qp_state = IBV_QPS_RTS
        default: throw VerbsError(call: "rdma_init_qp_attr", errno: EINVAL, detail: "state \(state)")
        }
        var mask: Int32 = 0
        try VerbsError.check("rdma_init_qp_attr", rdma_init_qp_attr(pointer, &attr, &mask), detail: "to \(state)")
        if state == .readyToReceive, let pathMTU, pathMTU.raw.rawValue < attr.path_mtu.rawValue {
            attr.path_mtu = pathMTU.raw
        }
        try VerbsError.check("ibv_modify_qp", ibv_modify_qp(queuePair.pointer, &attr, mask), detail: "to \(state)")
    }

    /// Connects with our own queue pair (its number goes in the request); `.connectResponse` follows, then
    /// move the QP to RTR and RTS and call `establish()`.
    public func connect(_ parameters: ConnectionParameters, queuePair: QueuePair) throws(VerbsError) {
        guard parameters.privateData.count <= Int(CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX) else {
            throw VerbsError(call: "rdma_connect", errno: EINVAL, detail: "private data over \(CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX) bytes")
        }
        let rc = parameters.withRaw(queuePairNumber: queuePair.number) { rdma_connect(pointer, &$0) }
        try VerbsError.check("rdma_connect", rc)
    }

    /// Accepts with our own queue pair, already moved to RTS.
    public func accept(_ parameters: ConnectionParameters, queuePair: QueuePair) throws(VerbsError) {
        guard parameters.privateData.count <= Int(CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX) else {
            throw VerbsError(call: "rdma_accept", errno: EINVAL, detail: "private data over \(CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX) bytes")
        }
        let rc = parameters.withRaw(queuePairNumber: queuePair.number) { rdma_accept(pointer, &$0) }
        try VerbsError.check("rdma_accept", rc)
    }

    /// Completes an active connect made with our own queue pair (sends the RTU); `.established` follows.
    public func establish() throws(VerbsError) {
        try VerbsError.check("rdma_establish", rdma_establish(pointer))
    }

    /// Rejects a connect request, telling the peer why in `privateData` (at most 148 bytes).
    public func reject(privateData: [UInt8] = []) throws(VerbsError) {
        guard privateData.count <= Int(CShims_RDMA_CM_REJECT_PRIVATE_DATA_MAX) else {
            throw VerbsError(call: "rdma_reject", errno: EINVAL, detail: "private data over \(CShims_RDMA_CM_REJECT_PRIVATE_DATA_MAX) bytes")
        }
        let rc = privateData.withUnsafeBytes { rdma_reject(pointer, $0.baseAddress, UInt8(clamping: $0.count)) }
        try VerbsError.check("rdma_reject", rc)
    }

    /// Starts a disconnect; the QP goes to ERROR (flushing posted work) and both sides get `.disconnected`.
    public func disconnect() throws(VerbsError) {
        try VerbsError.check("rdma_disconnect", rdma_disconnect(pointer))
    }
}
