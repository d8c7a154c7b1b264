import DequeModule
import Dispatch
import Synchronization

/// The loopback LND for `0@lo`: delivers messages to the same instance, so the whole core is testable without
/// hardware.
///
/// By default sends are queued and delivered on the LND's own serial dispatch queue (its "wire"), never on the
/// caller's thread, so a Put returns before the message is matched and nothing recurses. With
/// ``Delivery/inline`` a send is delivered on the sender's thread before `send` returns (the whole exchange, ACK or
/// REPLY included, runs on one thread: what instruction-count benchmarks need). Data is copied directly from the
/// sender's MD window into the receiver's. A dropped message finalizes the sender's message with the drop status,
/// which is how a loopback sender "hears" about a missing match even without an ACK.
public final class LoopbackLND: LNetLND {
    /// Where a sent message is delivered.
    public enum Delivery: Sendable {
        /// On the LND's own serial dispatch queue, after `send` returned.
        case queued
        /// On the sender's thread, inside `send`.
        case inline
    }

    /// The receive context the loopback hands to `parse`: the sent message (or an eager copy of its payload).
    final class ReceiveContext: Sendable {
        let sent: LNetMessage?
        let copy: LNetBuffer?
        private let done = Atomic<Bool>(false)

        init(sent: LNetMessage?, copy: LNetBuffer?) {
            self.sent = sent
            self.copy = copy
        }

        var source: LNetMDWindow {
            if let copy {
                return LNetMDWindow(storage: MDStorage(
                    fragments: copy.count > 0 ? [LNetFragment(baseAddress: copy.baseAddress, length: copy.count)] : [],
                    owners: [copy]), offset: 0, length: copy.count)
            }
            return sent?.payload ?? .empty
        }

        /// Finalizes the sent message once, however many paths reach here.
        func completeSend(_ ni: LNetNI, _ status: LNetStatus) {
            guard let sent, !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
            ni.finalize(sent, status: status)
        }
    }

    private struct State {
        var queue: Deque<(LNetNI, LNetMessage)> = []
        var draining = false
        var closed = false
    }

    public let networkType = LNetNetworkType.loopback
    public let delivery: Delivery
    private let state = Mutex(State())
    private let wire: DispatchQueue

    public init(label: String = "lnet.lo", delivery: Delivery = .queued) {
        self.delivery = delivery
        wire = DispatchQueue(label: label)
        wire.setSpecific(key: Self.onWire, value: ObjectIdentifier(self))
    }

    /// Marks the wire queue, so shutdown knows whether it runs on it.
    private static let onWire = DispatchSpecificKey<ObjectIdentifier>()

    public func resolveAddress(for configuration: NetworkInterfaceConfiguration) throws(LNetError) -> UInt32 { 0 }

    public func startup(ni: LNetNI) throws(LNetError) {
        state.withLock { $0.closed = false }
    }

    public func shutdown(ni: LNetNI) {
        let queued = state.withLock { state -> Deque<(LNetNI, LNetMessage)> in
            state.closed = true
            let queued = state.queue
            state.queue.removeAll()
            return queued
        }
        for (owner, message) in queued { owner.finalize(message, status: .shutdown) }
        // A message the wire is delivering right now is finalized by that delivery: wait for it, so nothing is
        // left for LNet to clean up. (Called from the wire itself - a handler inside a delivery - the delivery
        // in progress is the caller's own, and finishes as it returns.)
        if DispatchQueue.getSpecific(key: Self.onWire) != ObjectIdentifier(self) {
            wire.sync {}
        }
    }

    public func send(ni: LNetNI, message: LNetMessage) {
        if delivery == .inline {
            if state.withLock({ $0.closed }) {
                ni.finalize(message, status: .shutdown)
            } else {
                deliver(message, on: ni)
            }
            return
        }
        let schedule = state.withLock { state -> Bool? in
            guard !state.closed else { return nil }
            state.queue.append((ni, message))
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
        guard let schedule else {
            ni.finalize(message, status: .shutdown)
            return
        }
        if schedule { wire.async { [self] in drain() } }
    }

    private func drain() {
        while true {
            let next = state.withLock { state -> (LNetNI, LNetMessage)? in
                guard let next = state.queue.popFirst() else {
                    state.draining = false
                    return nil
                }
                return next
            }
            guard let (ni, message) = next else { return }
            deliver(message, on: ni)
        }
    }

    private func deliver(_ message: LNetMessage, on ni: LNetNI) {
        let context = ReceiveContext(sent: message, copy: nil)
        ni.parse(header: message.header, from: message.header.source.nid, context: context, wantsRDMA: false)
        // A GET carries no payload: once parsed it has arrived (the REPLY travels as its own message).
        if message.type == .get { context.completeSend(ni, .ok) }
    }

    public func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        guard let context = context as? ReceiveContext else {
            ni.logger.error("loopback receive without a loopback context", metadata: ["message": "\(message)"])
            ni.finalize(message, status: .protocolError)
            return
        }
        window.copy(from: context.source)
        // The sender's message is done first: once the receiver's event fires, the application may shut down,
        // and nothing of this transfer may be left unfinalized then.
        context.completeSend(ni, .ok)
        ni.finalize(message, status: .ok)
    }

    public func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        (context as? ReceiveContext)?.completeSend(ni, status)
    }

    public func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)? {
        guard let context = context as? ReceiveContext else { return context }
        let source = context.source
        let copy = try LNetBuffer(count: source.length)
        _ = LNetMDWindow(storage: MDStorage(fragments: copy.count > 0 ? [LNetFragment(baseAddress: copy.baseAddress, length: copy.count)] : [],
                                            owners: [copy]), offset: 0, length: copy.count).copy(from: source)
        // The payload is safe in the copy: the sender's operation is complete.
        context.completeSend(ni, .ok)
        return ReceiveContext(sent: nil, copy: copy)
    }
}
