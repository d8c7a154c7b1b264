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
            guard try SystemCall.retryingInterrupts("ibv_get_cq_event", { ibv_get_cq_event(pointer, &cq, &cqContext) }) == .done else {
                return nil
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
