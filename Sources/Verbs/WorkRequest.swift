import CShims

/// A send-queue work request: SEND (with immediate or invalidate), RDMA WRITE (with or without immediate),
/// RDMA READ, and the local memory-window operations bind and invalidate.
public struct SendWorkRequest: Sendable {
    public enum Operation: Sendable, Hashable {
        case send
        case sendWithImmediate(UInt32)
        /// A SEND that also invalidates `rkey` (a type 2 memory window's key) at the receiver.
        case sendWithInvalidate(rkey: UInt32)
        case rdmaWrite(remoteAddress: UInt64, rkey: UInt32)
        case rdmaWriteWithImmediate(remoteAddress: UInt64, rkey: UInt32, immediate: UInt32)
        case rdmaRead(remoteAddress: UInt64, rkey: UInt32)
        /// Binds a type 2 memory window (no scatter/gather list). The window takes the binding's rkey once posted.
        case bindMemoryWindow(MemoryWindowBinding)
        /// Invalidates a memory window's rkey on this side (no scatter/gather list).
        case localInvalidate(rkey: UInt32)
    }

    /// Comes back as `WorkCompletion.id`.
    public var id: UInt64
    public var operation: Operation
    /// Local buffers: the gather list for SEND and WRITE, the scatter list for READ.
    public var scatterGather: [ScatterGatherElement]
    /// Ask for a completion (always true unless the QP was created with `signalAll: false` batching in mind).
    public var signaled: Bool
    /// Copy the payload into the work request (up to the QP's `maxInlineData`); the buffer needs no key.
    public var inline: Bool
    /// Wait for earlier RDMA READs on this QP to finish before starting (for a DONE after a READ).
    public var fence: Bool

    public init(id: UInt64, operation: Operation, scatterGather: [ScatterGatherElement],
                signaled: Bool = true, inline: Bool = false, fence: Bool = false) {
        self.id = id
        self.operation = operation
        self.scatterGather = scatterGather
        self.signaled = signaled
        self.inline = inline
        self.fence = fence
    }

    func fill(_ wr: inout ibv_send_wr, sges: UnsafeMutablePointer<ibv_sge>) {
        for (i, element) in scatterGather.enumerated() {
            sges[i] = ibv_sge(addr: element.address, length: element.length, lkey: element.lkey)
        }
        wr.wr_id = id
        wr.sg_list = scatterGather.isEmpty ? nil : sges
        wr.num_sge = Int32(scatterGather.count)
        var flags: UInt32 = 0
        if signaled { flags |= IBV_SEND_SIGNALED.rawValue }
        if inline { flags |= IBV_SEND_INLINE.rawValue }
        if fence { flags |= IBV_SEND_FENCE.rawValue }
        wr.send_flags = flags
        switch operation {
        case .send:
            wr.opcode = IBV_WR_SEND
        case .sendWithImmediate(let imm):
            wr.opcode = IBV_WR_SEND_WITH_IMM
            wr.imm_data = imm.bigEndian
        case .rdmaWrite(let address, let rkey):
            wr.opcode = IBV_WR_RDMA_WRITE
            wr.wr.rdma.remote_addr = address
            wr.wr.rdma.rkey = rkey
        case .rdmaWriteWithImmediate(let address, let rkey, let imm):
            wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM
            wr.wr.rdma.remote_addr = address
            wr.wr.rdma.rkey = rkey
            wr.imm_data = imm.bigEndian
        case .rdmaRead(let address, let rkey):
            wr.opcode = IBV_WR_RDMA_READ
            wr.wr.rdma.remote_addr = address
            wr.wr.rdma.rkey = rkey
        case .sendWithInvalidate(let rkey):
            wr.opcode = IBV_WR_SEND_WITH_INV
            wr.invalidate_rkey = rkey
        case .bindMemoryWindow(let binding):
            wr.opcode = IBV_WR_BIND_MW
            wr.bind_mw.mw = binding.window.pointer
            wr.bind_mw.rkey = binding.rkey
            wr.bind_mw.bind_info = ibv_mw_bind_info(mr: binding.region.pointer, addr: binding.address,
                                                    length: UInt64(binding.length),
                                                    mw_access_flags: UInt32(bitPattern: binding.access.rawValue))
        case .localInvalidate(let rkey):
            wr.opcode = IBV_WR_LOCAL_INV
            wr.invalidate_rkey = rkey
        }
    }
}

/// A receive-queue work request: where the next incoming SEND lands.
public struct ReceiveWorkRequest: Sendable {
    public var id: UInt64
    public var scatterGather: [ScatterGatherElement]

    public init(id: UInt64, scatterGather: [ScatterGatherElement]) {
        self.id = id
        self.scatterGather = scatterGather
    }
}
