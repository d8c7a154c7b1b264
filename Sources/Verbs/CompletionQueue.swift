import CShims

/// A completion queue (`ibv_cq`), optionally tied to a completion channel for event-driven waiting.
///
/// Polling is meant for one thread at a time (the scheduler that owns the CQ); the verbs calls themselves are
/// thread-safe. Destroyed exactly once, after every queue pair using it (they hold it).
public final class CompletionQueue: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_cq>
    public let context: DeviceContext
    public let channel: CompletionChannel?
    /// The number of entries the device actually gave (at least what was asked).
    public let capacity: Int

    /// Creates a CQ of at least `capacity` entries; with a channel, `requestNotification` arms it.
    public init(context: DeviceContext, capacity: Int, channel: CompletionChannel? = nil, vector: Int = 0) throws(VerbsError) {
        guard capacity > 0, capacity <= Int(Int32.max) else {
            throw VerbsError(call: "ibv_create_cq", errno: EINVAL, detail: "capacity \(capacity)")
        }
        let cq = try VerbsError.unwrap(
            "ibv_create_cq",
            ibv_create_cq(context.pointer, Int32(capacity), nil, channel?.pointer, Int32(vector)),
            detail: "\(context.name), \(capacity) entries")
        self.pointer = cq
        self.context = context
        self.channel = channel
        self.capacity = Int(cq.pointee.cqe)
        channel?.register(self)
    }

    deinit {
        channel?.unregister(pointer)
        Release.record("ibv_destroy_cq", ibv_destroy_cq(pointer))
    }

    /// Arms the CQ: the channel gets one event at the next completion (or next solicited one).
    public func requestNotification(solicitedOnly: Bool = false) throws(VerbsError) {
        try VerbsError.check("ibv_req_notify_cq", ibv_req_notify_cq(pointer, solicitedOnly ? 1 : 0))
    }

    /// Polls up to `max` completions, handing each to `body`; returns how many there were.
    @discardableResult
    public func poll(max: Int = 16, _ body: (WorkCompletion) throws -> Void) throws -> Int {
        try withUnsafeTemporaryAllocation(of: ibv_wc.self, capacity: max) { buffer -> Int in
            let n = ibv_poll_cq(pointer, Int32(max), buffer.baseAddress)
            if n < 0 { throw VerbsError(call: "ibv_poll_cq", errno: -n) }
            for i in 0..<Int(n) { try body(WorkCompletion(buffer[i])) }
            return Int(n)
        }
    }

    /// Polls up to `max` completions into an array.
    public func poll(max: Int = 16) throws(VerbsError) -> [WorkCompletion] {
        var result: [WorkCompletion] = []
        do {
            try poll(max: max) { result.append($0) }
        } catch let error as VerbsError {
            throw error
        } catch {
            fatalError("unreachable: the body does not throw")
        }
        return result
    }
}
