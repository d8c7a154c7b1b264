import CShims

/// The status of a work completion (`ibv_wc_status`). Its description is the verbs library's own text.
public struct WorkCompletionStatus: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ raw: ibv_wc_status) { self.rawValue = raw.rawValue }

    public static let success = Self(IBV_WC_SUCCESS)
    public static let localLengthError = Self(IBV_WC_LOC_LEN_ERR)
    public static let localQueuePairOperationError = Self(IBV_WC_LOC_QP_OP_ERR)
    public static let localProtectionError = Self(IBV_WC_LOC_PROT_ERR)
    public static let flushed = Self(IBV_WC_WR_FLUSH_ERR)
    public static let remoteInvalidRequest = Self(IBV_WC_REM_INV_REQ_ERR)
    public static let remoteAccessError = Self(IBV_WC_REM_ACCESS_ERR)
    public static let remoteOperationError = Self(IBV_WC_REM_OP_ERR)
    public static let retryExceeded = Self(IBV_WC_RETRY_EXC_ERR)
    public static let receiverNotReadyRetryExceeded = Self(IBV_WC_RNR_RETRY_EXC_ERR)

    public var isSuccess: Bool { self == .success }

    public var description: String {
        String(cString: ibv_wc_status_str(ibv_wc_status(rawValue: rawValue)))
    }
}

/// What a successful work completion finished (`ibv_wc_opcode`). Not meaningful for a failed one.
public enum WorkCompletionOpcode: Hashable, Sendable {
    case send, rdmaWrite, rdmaRead, receive, receiveWithImmediate, bindMemoryWindow, localInvalidate, other(UInt32)

    init(_ raw: ibv_wc_opcode) {
        switch raw {
        case IBV_WC_SEND: self = .send
        case IBV_WC_RDMA_WRITE: self = .rdmaWrite
        case IBV_WC_RDMA_READ: self = .rdmaRead
        case IBV_WC_RECV: self = .receive
        case IBV_WC_RECV_RDMA_WITH_IMM: self = .receiveWithImmediate
        case IBV_WC_BIND_MW: self = .bindMemoryWindow
        case IBV_WC_LOCAL_INV: self = .localInvalidate
        default: self = .other(raw.rawValue)
        }
    }
}

/// One completed (or failed) work request.
public struct WorkCompletion: Sendable {
    /// The id the work request was posted with.
    public let id: UInt64
    public let status: WorkCompletionStatus
    public let opcode: WorkCompletionOpcode
    /// Bytes received (receive completions).
    public let byteLength: UInt32
    /// Immediate data, in host order, when the sender attached some.
    public let immediateData: UInt32?
    public let queuePairNumber: UInt32
    public let vendorError: UInt32

    init(_ wc: ibv_wc) {
        self.id = wc.wr_id
        self.status = WorkCompletionStatus(wc.status)
        self.opcode = WorkCompletionOpcode(wc.opcode)
        self.byteLength = wc.byte_len
        self.immediateData = wc.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 ? UInt32(bigEndian: wc.imm_data) : nil
        self.queuePairNumber = wc.qp_num
        self.vendorError = wc.vendor_err
    }
}
