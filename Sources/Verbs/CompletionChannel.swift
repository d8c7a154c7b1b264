import CShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A completion channel (`ibv_comp_channel`): a file descriptor that becomes readable when an armed completion
/// queue gets a completion, so a thread can sleep instead of busy-polling.
///
/// Its descriptor is non-blocking. Poll `fileDescriptor` yourself (with other descriptors), or call
/// `waitForEvent(timeout:)`. Every event is acknowledged as soon as it is read, so destroying a CQ never waits.
public final class CompletionChannel: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_comp_channel>
    public let context: DeviceContext
    private let queues = Mutex<[UInt: WeakQueue]>([:])

    private struct WeakQueue { weak var queue: CompletionQueue? }

    public init(context: DeviceContext) throws(VerbsError) {
        self.pointer = try VerbsError.unwrap("ibv_create_comp_channel", ibv_create_comp_channel(context.pointer), detail: context.name)
        self.context = context
        do {
            try FileDescriptorWait.makeNonBlocking(pointer.pointee.fd)
        } catch {
            ibv_destroy_comp_channel(pointer)
            throw error
        }
    }

    deinit {
        Release.record("ibv_destroy_comp_channel", ibv_destroy_comp_channel(pointer))
    }

    /// The descriptor to poll for readability.
    public var fileDescriptor: Int32 { pointer.pointee.fd }

    func register(_ queue: CompletionQueue) {
        queues.withLock { $0[UInt(bitPattern: queue.pointer)] = WeakQueue(queue: queue) }
    }

    func unregister(_ pointer: UnsafeMutablePointer<ibv_cq>) {
        _ = queues.withLock { $0.removeValue(forKey: UInt(bitPattern: pointer)) }
    }

    /// Reads one pending event without blocking: the CQ that fired (re-arm it before polling it empty),
    /// or nil when none is pending.
    public func nextEvent() throws(VerbsError) -> CompletionQueue? {
        while true {
            var cq: UnsafeMutablePointer<ibv_cq>?
            var cqContext: UnsafeMutableRawPointer?
            if ibv_get_cq_event(pointer, &cq, &cqContext) != 0 {
                let code = VerbsError.current
                if code == EAGAIN || code == EWOULDBLOCK { return nil }
                if code == EINTR { continue }
                throw VerbsError(call: "ibv_get_cq_event", errno: code)
            }
            guard let cq else { return nil }
            ibv_ack_cq_events(cq, 1)
            if let queue = queues.withLock({ $0[UInt(bitPattern: cq)]?.queue }) { return queue }
            // An event for a queue that is being destroyed: nothing to hand out; look for another.
        }
    }

    /// Waits up to `timeout` (forever when nil) for an event; returns the CQ that fired, or nil on timeout.
    public func waitForEvent(timeout: Duration?) throws(VerbsError) -> CompletionQueue? {
        if let queue = try nextEvent() { return queue }
        try FileDescriptorWait.readable(fileDescriptor, timeout: timeout, call: "poll(completion channel)")
        return try nextEvent()
    }
}

/// `poll(2)` on one descriptor, retried on EINTR, with a Duration timeout; and making a channel's descriptor
/// non-blocking.
enum FileDescriptorWait {
    static func makeNonBlocking(_ fd: Int32) throws(VerbsError) {
        if fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 {
            throw VerbsError(call: "fcntl(O_NONBLOCK)", errno: VerbsError.current)
        }
    }

    /// Returns when the descriptor is readable or the timeout passed (the caller re-checks).
    static func readable(_ fd: Int32, timeout: Duration?, call: String) throws(VerbsError) {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds: Int32
        if let timeout {
            milliseconds = max(0, timeout.pollMilliseconds)
        } else {
            milliseconds = -1
        }
        while true {
            let rc = poll(&entry, 1, milliseconds)
            if rc >= 0 { return }
            if VerbsError.current == EINTR { continue }
            throw VerbsError(call: call, errno: VerbsError.current)
        }
    }
}

extension Duration {
    /// Whole milliseconds for poll(2) and rdma_cm's timeouts (truncated, clamped to `Int32`).
    var pollMilliseconds: Int32 {
        let (seconds, attoseconds) = components
        return Int32(clamping: seconds.multipliedReportingOverflow(by: 1000).overflow ? (seconds < 0 ? .min : .max)
                     : seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
