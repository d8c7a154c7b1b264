import CShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An rdma_cm event channel: address and route resolution, connection requests, establishment, rejects and
/// disconnects of every `CMID` made on it arrive here.
///
/// Its descriptor is non-blocking; each event is copied (private data included) and acknowledged at once, so
/// destroying an id never waits on an unacknowledged event. Destroyed after all its ids (they hold it).
public final class CMEventChannel: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<rdma_event_channel>
    private let ids = Mutex<[UInt: WeakID]>([:])

    private struct WeakID { weak var id: CMID? }

    public init() throws(VerbsError) {
        self.pointer = try VerbsError.unwrap("rdma_create_event_channel", rdma_create_event_channel())
        do {
            try FileDescriptorWait.makeNonBlocking(pointer.pointee.fd)
        } catch {
            rdma_destroy_event_channel(pointer)
        Release.record("rdma_destroy_event_channel", 0)
            throw error
        }
    }

    deinit {
        rdma_destroy_event_channel(pointer)
        Release.record("rdma_destroy_event_channel", 0)
    }

    /// The descriptor to poll for readability.
    public var fileDescriptor: Int32 { pointer.pointee.fd }

    /// A new id on this channel, for the TCP-like (reliable connected) port space.
    public func createID() throws(VerbsError) -> CMID {
        var raw: UnsafeMutablePointer<rdma_cm_id>?
        try VerbsError.check("rdma_create_id", rdma_create_id(pointer, &raw, nil, RDMA_PS_TCP))
        guard let raw else { throw VerbsError(call: "rdma_create_id", errno: ENOMEM) }
        return adopt(raw)
    }

    private func adopt(_ raw: UnsafeMutablePointer<rdma_cm_id>) -> CMID {
        let id = CMID(pointer: raw, channel: self)
        ids.withLock { $0[UInt(bitPattern: raw)] = WeakID(id: id) }
        return id
    }

    func forget(_ raw: UnsafeMutablePointer<rdma_cm_id>) {
        _ = ids.withLock { $0.removeValue(forKey: UInt(bitPattern: raw)) }
    }

    /// Reads one pending event without blocking, or nil when none is pending.
    public func nextEvent() throws(VerbsError) -> CMEvent? {
        while true {
            var raw: UnsafeMutablePointer<rdma_cm_event>?
            guard try SystemCall.retryingInterrupts("rdma_get_cm_event", { rdma_get_cm_event(pointer, &raw) }) == .done else { return nil }
            guard let raw else { return nil }
            let event = raw.pointee
            let kind = CMEvent.Kind(event.event)
            let conn = event.param.conn
            var privateData: [UInt8] = []
            if let data = conn.private_data, conn.private_data_len > 0 {
                privateData = Array(UnsafeRawBufferPointer(start: data, count: Int(conn.private_data_len)))
            }
            let id: CMID?
            if kind == .connectRequest {
                id = adopt(event.id)
            } else {
                id = ids.withLock { $0[UInt(bitPattern: event.id)]?.id }
            }
            let listener = event.listen_id.flatMap { listen in ids.withLock { $0[UInt(bitPattern: listen)]?.id } }
            rdma_ack_cm_event(raw)
            // An event for an id nobody holds any more (being destroyed): nothing to hand out.
            guard let id else { continue }
            return CMEvent(kind: kind, id: id, listener: listener, status: event.status, privateData: privateData,
                           responderResources: conn.responder_resources, initiatorDepth: conn.initiator_depth)
        }
    }

    /// Waits up to `timeout` (forever when nil) for an event; nil on timeout.
    public func waitForEvent(timeout: Duration?) throws(VerbsError) -> CMEvent? {
        if let event = try nextEvent() { return event }
        try FileDescriptorWait.readable(fileDescriptor, timeout: timeout, call: "poll(rdma_cm channel)")
        return try nextEvent()
    }
}

/// One rdma_cm event, copied out of the library's buffer.
public struct CMEvent: Sendable {
    public enum Kind: Hashable, Sendable, CustomStringConvertible {
        case addressResolved, addressError, routeResolved, routeError, connectRequest, connectResponse,
             connectError, unreachable, rejected, established, disconnected, deviceRemoval, timeWaitExit,
             addressChange, other(UInt32)

        init(_ raw: rdma_cm_event_type) {
            switch raw {
            case RDMA_CM_EVENT_ADDR_RESOLVED: self = .addressResolved
            case RDMA_CM_EVENT_ADDR_ERROR: self = .addressError
            case RDMA_CM_EVENT_ROUTE_RESOLVED: self = .routeResolved
            case RDMA_CM_EVENT_ROUTE_ERROR: self = .routeError
            case RDMA_CM_EVENT_CONNECT_REQUEST: self = .connectRequest
            case RDMA_CM_EVENT_CONNECT_RESPONSE: self = .connectResponse
            case RDMA_CM_EVENT_CONNECT_ERROR: self = .connectError
            case RDMA_CM_EVENT_UNREACHABLE: self = .unreachable
            case RDMA_CM_EVENT_REJECTED: self = .rejected
            case RDMA_CM_EVENT_ESTABLISHED: self = .established
            case RDMA_CM_EVENT_DISCONNECTED: self = .disconnected
            case RDMA_CM_EVENT_DEVICE_REMOVAL: self = .deviceRemoval
            case RDMA_CM_EVENT_TIMEWAIT_EXIT: self = .timeWaitExit
            case RDMA_CM_EVENT_ADDR_CHANGE: self = .addressChange
            default: self = .other(raw.rawValue)
            }
        }

        public var description: String {
            switch self {
            case .addressResolved: "address resolved"
            case .addressError: "address error"
            case .routeResolved: "route resolved"
            case .routeError: "route error"
            case .connectRequest: "connect request"
            case .connectResponse: "connect response"
            case .connectError: "connect error"
            case .unreachable: "unreachable"
            case .rejected: "rejected"
            case .established: "established"
            case .disconnected: "disconnected"
            case .deviceRemoval: "device removal"
            case .timeWaitExit: "time-wait exit"
            case .addressChange: "address change"
            case .other(let raw): "event \(raw)"
            }
        }
    }

    public let kind: Kind
    /// The id the event is for; for `.connectRequest` a new id for the incoming connection, to accept or reject.
    public let id: CMID
    /// The listening id, for `.connectRequest`.
    public let listener: CMID?
    /// 0, or an errno / reject reason (for `.rejected`, the IB CM reason; 28 is a consumer reject).
    public let status: Int32
    /// The peer's private data (connect request, accept, reject), as the library delivered it: it may be
    /// zero-padded to the transport's size, so the upper protocol carries its own length.
    public let privateData: [UInt8]
    public let responderResources: UInt8
    public let initiatorDepth: UInt8
}
