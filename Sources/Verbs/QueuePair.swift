import CShims

/// The sizes a queue pair is created with.
public struct QueuePairCapabilities: Sendable, Hashable {
    public var maxSendWorkRequests: Int
    public var maxReceiveWorkRequests: Int
    public var maxSendScatterGather: Int
    public var maxReceiveScatterGather: Int
    public var maxInlineData: Int

    public init(maxSendWorkRequests: Int, maxReceiveWorkRequests: Int, maxSendScatterGather: Int = 1,
                maxReceiveScatterGather: Int = 1, maxInlineData: Int = 0) {
        self.maxSendWorkRequests = maxSendWorkRequests
        self.maxReceiveWorkRequests = maxReceiveWorkRequests
        self.maxSendScatterGather = maxSendScatterGather
        self.maxReceiveScatterGather = maxReceiveScatterGather
        self.maxInlineData = maxInlineData
    }

    var raw: ibv_qp_cap {
        ibv_qp_cap(max_send_wr: UInt32(maxSendWorkRequests), max_recv_wr: UInt32(maxReceiveWorkRequests),
                   max_send_sge: UInt32(maxSendScatterGather), max_recv_sge: UInt32(maxReceiveScatterGather),
                   max_inline_data: UInt32(maxInlineData))
    }
}

/// A queue pair's state (`ibv_qp_state`).
public enum QueuePairState: String, Sendable {
    case reset, initialized = "init", readyToReceive = "rtr", readyToSend = "rts", sendQueueDrain = "sqd",
         sendQueueError = "sqe", error, unknown

    init(_ raw: ibv_qp_state) {
        switch raw {
        case IBV_QPS_RESET: self = .reset
        case IBV_QPS_INIT: self = .initialized
        case IBV_QPS_RTR: self = .readyToReceive
        case IBV_QPS_RTS: self = .readyToSend
        case IBV_QPS_SQD: self = .sendQueueDrain
        case IBV_QPS_SQE: self = .sendQueueError
        case IBV_QPS_ERR: self = .error
        default: self = .unknown
        }
    }
}

/// What the other end of a reliable connection must tell us to reach RTR without rdma_cm.
public struct RemoteQueuePair: Sendable, Hashable {
    public var number: UInt32
    public var packetSequenceNumber: UInt32
    public var gid: GID
    public var lid: UInt16

    public init(number: UInt32, packetSequenceNumber: UInt32, gid: GID, lid: UInt16 = 0) {
        self.number = number
        self.packetSequenceNumber = packetSequenceNumber
        self.gid = gid
        self.lid = lid
    }
}

/// A reliable-connected queue pair (`ibv_qp`, type RC).
///
/// Made either directly (`init(protectionDomain:...)`, then walked through INIT -> RTR -> RTS with the explicit
/// transitions below) or by rdma_cm on a `CMID` (which then drives the transitions on connect/accept).
/// Destroyed exactly once, before its CQs and PD (it holds them).
public final class QueuePair: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_qp>
    /// Set when rdma_cm made this QP: destroyed through `rdma_destroy_qp`, before the id.
    private let cmID: CMID?
    public let protectionDomain: ProtectionDomain
    public let sendQueue: CompletionQueue
    public let receiveQueue: CompletionQueue
    /// What the device actually gave (at least what was asked).
    public let capabilities: QueuePairCapabilities

    /// The QP number the peer addresses.
    public var number: UInt32 { pointer.pointee.qp_num }

    static func initAttributes(sendQueue: CompletionQueue, receiveQueue: CompletionQueue,
                               capabilities: QueuePairCapabilities) -> ibv_qp_init_attr {
        var attr = ibv_qp_init_attr()
        attr.send_cq = sendQueue.pointer
        attr.recv_cq = receiveQueue.pointer
        attr.cap = capabilities.raw
        attr.qp_type = IBV_QPT_RC
        attr.sq_sig_all = 0
        return attr
    }

    /// Creates an RC QP in the RESET state.
    public init(protectionDomain: ProtectionDomain, sendQueue: CompletionQueue, receiveQueue: CompletionQueue,
                capabilities: QueuePairCapabilities) throws(VerbsError) {
        var attr = Self.initAttributes(sendQueue: sendQueue, receiveQueue: receiveQueue, capabilities: capabilities)
        self.pointer = try VerbsError.unwrap("ibv_create_qp", ibv_create_qp(protectionDomain.pointer, &attr))
        self.cmID = nil
        self.protectionDomain = protectionDomain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.capabilities = Self.capabilities(attr.cap)
    }

    init(cmID: CMID, pointer: UnsafeMutablePointer<ibv_qp>, protectionDomain: ProtectionDomain,
         sendQueue: CompletionQueue, receiveQueue: CompletionQueue, granted: ibv_qp_cap) {
        self.pointer = pointer
        self.cmID = cmID
        self.protectionDomain = protectionDomain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.capabilities = Self.capabilities(granted)
    }

    private static func capabilities(_ cap: ibv_qp_cap) -> QueuePairCapabilities {
        QueuePairCapabilities(maxSendWorkRequests: Int(cap.max_send_wr), maxReceiveWorkRequests: Int(cap.max_recv_wr),
                              maxSendScatterGather: Int(cap.max_send_sge), maxReceiveScatterGather: Int(cap.max_recv_sge),
                              maxInlineData: Int(cap.max_inline_data))
    }

    deinit {
        if let cmID {
            rdma_destroy_qp(cmID.pointer)
            Release.record("rdma_destroy_qp", 0)
        } else {
            Release.record("ibv_destroy_qp", ibv_destroy_qp(pointer))
        }
    }

    // MARK: State

    /// The current state, as the device reports it.
    public func state() throws(VerbsError) -> QueuePairState {
        var attr = ibv_qp_attr()
        var initAttr = ibv_qp_init_attr()
        try VerbsError.check("ibv_query_qp", ibv_query_qp(pointer, &attr, Int32(IBV_QP_STATE.rawValue), &initAttr))
        return QueuePairState(attr.qp_state)
    }

    /// The path MTU the QP uses (set on the way to RTR).
    public func pathMTU() throws(VerbsError) -> PathMTU? {
        var attr = ibv_qp_attr()
        var initAttr = ibv_qp_init_attr()
        try VerbsError.check("ibv_query_qp", ibv_query_qp(pointer, &attr, Int32(IBV_QP_PATH_MTU.rawValue), &initAttr))
        return PathMTU(attr.path_mtu)
    }

    /// The QP's local ACK timeout exponent (4.096 us x 2^n; 0: no retransmission timer) and retry count.
    public func retransmission() throws(VerbsError) -> (ackTimeout: UInt8, retryCount: UInt8) {
        var attr = ibv_qp_attr()
        var initAttr = ibv_qp_init_attr()
        let mask = IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue
        try VerbsError.check("ibv_query_qp", ibv_query_qp(pointer, &attr, Int32(bitPattern: mask), &initAttr))
        return (attr.timeout, attr.retry_cnt)
    }

    private func modify(_ attr: inout ibv_qp_attr, _ mask: ibv_qp_attr_mask, to state: String) throws(VerbsError) {
        try VerbsError.check("ibv_modify_qp", ibv_modify_qp(pointer, &attr, Int32(bitPattern: mask.rawValue)), detail: "to \(state)")
    }

    /// RESET -> INIT: the port, and what the remote side may do to our memory through this QP.
    public func moveToInit(port: UInt8, remoteAccess: MemoryAccess) throws(VerbsError) {
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_INIT
        attr.pkey_index = 0
        attr.port_num = port
        attr.qp_access_flags = UInt32(remoteAccess.rawValue)
        let mask = IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue | IBV_QP_ACCESS_FLAGS.rawValue
        try modify(&attr, ibv_qp_attr_mask(mask), to: "INIT")
    }

    /// INIT -> RTR: whom we talk to. On RoCE the path needs a GRH with our source GID index.
    /// `maxDestinationReads` bounds the RDMA READs the peer may have outstanding against us.
    public func moveToReadyToReceive(remote: RemoteQueuePair, port: UInt8, sourceGIDIndex: Int, mtu: PathMTU,
                                     maxDestinationReads: Int, minRNRTimer: UInt8 = 12) throws(VerbsError) {
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_RTR
        attr.path_mtu = mtu.raw
        attr.dest_qp_num = remote.number
        attr.rq_psn = remote.packetSequenceNumber
        attr.max_dest_rd_atomic = UInt8(clamping: maxDestinationReads)
        attr.min_rnr_timer = minRNRTimer
        attr.ah_attr.is_global = 1
        attr.ah_attr.grh.dgid = remote.gid.raw
        attr.ah_attr.grh.sgid_index = UInt8(clamping: sourceGIDIndex)
        attr.ah_attr.grh.hop_limit = 64
        attr.ah_attr.dlid = remote.lid
        attr.ah_attr.sl = 0
        attr.ah_attr.src_path_bits = 0
        attr.ah_attr.port_num = port
        let mask = IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            | IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
        try modify(&attr, ibv_qp_attr_mask(mask), to: "RTR")
    }

    /// RTR -> RTS: our send side. `timeout` is the IB exponent (4.096 us * 2^timeout);
    /// `maxReads` bounds the RDMA READs we may have outstanding.
    public func moveToReadyToSend(packetSequenceNumber: UInt32, timeout: UInt8 = 14, retryCount: UInt8 = 7,
                                  rnrRetry: UInt8 = 7, maxReads: Int) throws(VerbsError) {
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_RTS
        attr.sq_psn = packetSequenceNumber
        attr.timeout = timeout
        attr.retry_cnt = retryCount
        attr.rnr_retry = rnrRetry
        attr.max_rd_atomic = UInt8(clamping: maxReads)
        let mask = IBV_QP_STATE.rawValue | IBV_QP_SQ_PSN.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue
            | IBV_QP_RNR_RETRY.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
        try modify(&attr, ibv_qp_attr_mask(mask), to: "RTS")
    }

    /// Any state -> ERROR: every posted work request completes with a flush error.
    public func moveToError() throws(VerbsError) {
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        try modify(&attr, IBV_QP_STATE, to: "ERROR")
    }

    // MARK: Posting

    /// Posts one send-queue work request.
    public func post(_ request: SendWorkRequest) throws(VerbsError) {
        try post([request])
    }

    /// Posts send-queue work requests as one chain (one doorbell).
    public func post(_ requests: [SendWorkRequest]) throws(VerbsError) {
        guard !requests.isEmpty else { return }
        let sgeCount = requests.reduce(0) { $0 + $1.scatterGather.count }
        // On failure `posted` is how many requests went in ahead of the one the provider refused.
        let (rc, posted): (Int32, Int) = withUnsafeTemporaryAllocation(of: ibv_send_wr.self, capacity: requests.count) { wrs in
            withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: max(1, sgeCount)) { sges in
                var sgeIndex = 0
                for (i, request) in requests.enumerated() {
                    var wr = ibv_send_wr()
                    request.fill(&wr, sges: sges.baseAddress! + sgeIndex)
                    sgeIndex += request.scatterGather.count
                    wr.next = i + 1 < requests.count ? wrs.baseAddress! + i + 1 : nil
                    (wrs.baseAddress! + i).initialize(to: wr)
                }
                var bad: UnsafeMutablePointer<ibv_send_wr>?
                let rc = ibv_post_send(pointer, wrs.baseAddress, &bad)
                return (rc, rc == 0 ? requests.count : bad.map { $0 - wrs.baseAddress! } ?? 0)
            }
        }
        // A window bound by a posted request has the binding's key from now on (the next bind must name it).
        for request in requests.prefix(posted) {
            if case .bindMemoryWindow(let binding) = request.operation { binding.window.didPostBind(binding) }
        }
        try VerbsError.check("ibv_post_send", rc, detail: "\(requests.count) work requests")
    }

    /// Posts one receive buffer.
    public func post(_ request: ReceiveWorkRequest) throws(VerbsError) {
        try post([request])
    }

    /// Posts one receive buffer of one element, allocating nothing (the data path's repost).
    public func postReceive(id: UInt64, _ element: ScatterGatherElement) throws(VerbsError) {
        var sge = ibv_sge(addr: element.address, length: element.length, lkey: element.lkey)
        let rc = withUnsafeMutablePointer(to: &sge) { sgePointer -> Int32 in
            var wr = ibv_recv_wr(wr_id: id, next: nil, sg_list: sgePointer, num_sge: 1)
            var bad: UnsafeMutablePointer<ibv_recv_wr>?
            return ibv_post_recv(pointer, &wr, &bad)
        }
        try VerbsError.check("ibv_post_recv", rc, detail: "1 receive buffer")
    }

    /// Posts receive buffers as one chain.
    public func post(_ requests: [ReceiveWorkRequest]) throws(VerbsError) {
        guard !requests.isEmpty else { return }
        let sgeCount = requests.reduce(0) { $0 + $1.scatterGather.count }
        let rc: Int32 = withUnsafeTemporaryAllocation(of: ibv_recv_wr.self, capacity: requests.count) { wrs in
            withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: max(1, sgeCount)) { sges in
                var sgeIndex = 0
                for (i, request) in requests.enumerated() {
                    let list = sges.baseAddress! + sgeIndex
                    for (j, element) in request.scatterGather.enumerated() {
                        list[j] = ibv_sge(addr: element.address, length: element.length, lkey: element.lkey)
                    }
                    sgeIndex += request.scatterGather.count
                    let next = i + 1 < requests.count ? wrs.baseAddress! + i + 1 : nil
                    (wrs.baseAddress! + i).initialize(to: ibv_recv_wr(
                        wr_id: request.id, next: next, sg_list: request.scatterGather.isEmpty ? nil : list,
                        num_sge: Int32(request.scatterGather.count)))
                }
                var bad: UnsafeMutablePointer<ibv_recv_wr>?
                return ibv_post_recv(pointer, wrs.baseAddress, &bad)
            }
        }
        try VerbsError.check("ibv_post_recv", rc, detail: "\(requests.count) receive buffers")
    }
}
