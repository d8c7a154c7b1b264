import CShims

/// A reusable chain of send-queue work requests, posted with one `ibv_post_send` (one doorbell, which on rxe is
/// one system call however many requests the chain holds).
///
/// Its storage (work requests and scatter/gather lists) is allocated once, with room for `capacity` requests of
/// at most `maxScatterGather` elements each, so building and posting a chain allocates nothing. Not thread-safe:
/// the owner (a connection, under its lock) builds, posts and resets it.
public final class SendChain: @unchecked Sendable {
    public let capacity: Int
    public let maxScatterGather: Int
    private let requests: UnsafeMutablePointer<ibv_send_wr>
    private let elements: UnsafeMutablePointer<ibv_sge>
    /// Requests in the chain now.
    public private(set) var count = 0

    public init(capacity: Int, maxScatterGather: Int) {
        self.capacity = max(1, capacity)
        self.maxScatterGather = max(1, maxScatterGather)
        requests = .allocate(capacity: self.capacity)
        requests.initialize(repeating: ibv_send_wr(), count: self.capacity)
        elements = .allocate(capacity: self.capacity * self.maxScatterGather)
        elements.initialize(repeating: ibv_sge(), count: self.capacity * self.maxScatterGather)
    }

    deinit {
        requests.deallocate()
        elements.deallocate()
    }

    public var isEmpty: Bool { count == 0 }
    public var isFull: Bool { count == capacity }

    /// Empties the chain (after a post, or to abandon it).
    public func reset() { count = 0 }

    /// Appends a SEND of one local buffer.
    public func appendSend(id: UInt64, _ element: ScatterGatherElement, signaled: Bool = true, fence: Bool = false) {
        let wr = next(id: id, signaled: signaled, fence: fence)
        wr.pointee.opcode = IBV_WR_SEND
        wr.pointee.num_sge = 1
        wr.pointee.sg_list.pointee = ibv_sge(addr: element.address, length: element.length, lkey: element.lkey)
    }

    /// Appends an RDMA READ (remote into `local`) or WRITE (`local` into remote) of one contiguous remote range.
    public func appendRDMA(id: UInt64, read: Bool, remoteAddress: UInt64, rkey: UInt32, local: [ScatterGatherElement],
                           signaled: Bool = true) {
        precondition(local.count <= maxScatterGather, "more scatter/gather elements than the chain was made for")
        let wr = next(id: id, signaled: signaled, fence: false)
        wr.pointee.opcode = read ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE
        wr.pointee.wr.rdma.remote_addr = remoteAddress
        wr.pointee.wr.rdma.rkey = rkey
        wr.pointee.num_sge = Int32(local.count)
        for (i, element) in local.enumerated() {
            wr.pointee.sg_list[i] = ibv_sge(addr: element.address, length: element.length, lkey: element.lkey)
        }
        if local.isEmpty { wr.pointee.sg_list = nil }
    }

    private func next(id: UInt64, signaled: Bool, fence: Bool) -> UnsafeMutablePointer<ibv_send_wr> {
        precondition(count < capacity, "send chain full")
        let wr = requests + count
        wr.pointee = ibv_send_wr()
        wr.pointee.wr_id = id
        wr.pointee.sg_list = elements + count * maxScatterGather
        var flags: UInt32 = 0
        if signaled { flags |= IBV_SEND_SIGNALED.rawValue }
        if fence { flags |= IBV_SEND_FENCE.rawValue }
        wr.pointee.send_flags = flags
        if count > 0 { (wr - 1).pointee.next = wr }
        count += 1
        return wr
    }

    /// Posts the chain on `queuePair` and empties it. Returns how many requests the queue pair took (all of them,
    /// unless it refused one: then the ones ahead of it) and the error, if any.
    public func post(on queuePair: QueuePair) -> (accepted: Int, error: VerbsError?) {
        guard count > 0 else { return (0, nil) }
        let total = count
        count = 0
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = ibv_post_send(queuePair.pointer, requests, &bad)
        guard rc != 0 else { return (total, nil) }
        let accepted = bad.map { $0 - requests } ?? 0
        return (accepted, VerbsError(call: "ibv_post_send", errno: rc, detail: "\(accepted) of \(total) work requests accepted"))
    }
}
