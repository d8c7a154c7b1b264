/// What an LND hands LNet with an incoming message and gets back in `receive`, `drop`, `eagerReceive` and a REPLY's
/// ``LNetMessage/privateContext``: its own per-message state (o2iblnd's `private` pointer). An object, so passing
/// it through the core costs a reference count, not an existential copy.
public typealias LNDPrivate = AnyObject & Sendable

/// The protocol an LND (LNet network driver) implements so the core can use it: the transport side of LNet.
///
/// The core calls the LND:
/// - ``startup(ni:)`` / ``shutdown(ni:)`` to bring an interface up and down. On shutdown the LND must finalize every
///   message it still holds (with an error such as ``LNetStatus/shutdown``); the core finalizes leftovers itself
///   and logs them as LND bugs.
/// - ``send(ni:message:)`` for PUT, GET, ACK and REPLY.
/// - ``receive(ni:message:window:context:)`` to move an incoming PUT/REPLY payload into the matched MD window (ACKs
///   come here too, with an empty window, so the LND can release its receive resources).
/// - ``drop(ni:header:status:context:)`` when an incoming message matched nothing.
/// - ``eagerReceive(ni:header:context:)`` when the core must hold a message (a lazy portal with no match yet), so the
///   LND can copy the payload out and recycle its receive buffer.
///
/// The LND calls the core through its ``LNetNI``: ``LNetNI/parse(header:from:context:wantsRDMA:)`` for every
/// incoming message, ``LNetNI/finalize(_:status:)`` exactly once for every message handed to it, and
/// ``LNetNI/createReply(for:)`` + ``LNetNI/setReplyLength(_:_:)`` when it completes a GET's REPLY itself by RDMA.
///
/// Threading: the core never holds a lock while calling the LND. It may call ``send(ni:message:)``,
/// ``receive(ni:message:window:context:)`` and ``drop(ni:header:status:context:)`` on the thread that is inside
/// ``LNetNI/parse(header:from:context:wantsRDMA:)`` or ``LNetNI/finalize(_:status:)``, so those paths must not hold
/// LND locks that `send` takes. The LND may finalize synchronously (inside `send`/`receive`) or later from any thread.
public protocol LNetLND: AnyObject, Sendable {
    /// The network type this LND drives.
    var networkType: LNetNetworkType { get }

    /// The address for an interface whose configuration names none (e.g. the IPv4 address of `rxe0`).
    /// The default uses the configured address and fails when there is none.
    func resolveAddress(for configuration: NetworkInterfaceConfiguration) throws(LNetError) -> UInt32

    /// Brings the interface up. `ni.nid` and `ni.logger` are set.
    func startup(ni: LNetNI) throws(LNetError)

    /// Brings the interface down, finalizing every message still pending with an error.
    func shutdown(ni: LNetNI)

    /// Sends a message. For a GET, ``LNetMessage/sink`` is the requester's MD; for a REPLY answering a GET this
    /// LND parsed, ``LNetMessage/privateContext`` is that receive's context. Finalize it once it is done.
    func send(ni: LNetNI, message: LNetMessage)

    /// Receives an incoming message: move the first `window.length` bytes of its payload into `window` (consuming
    /// ``LNetMessage/requestedLength`` bytes from the wire), then finalize it. May complete asynchronously.
    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?)

    /// An incoming message matched nothing (or could not be accepted): release its resources and, if the
    /// transport has a way, tell the peer. There is no message to finalize.
    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?)

    /// The core will hold this message for a while: copy what is needed out of the receive buffer and return
    /// the context to use for the later ``receive(ni:message:window:context:)`` or ``drop(ni:header:status:context:)``.
    /// Throwing drops the message. The default keeps the original context.
    func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)?
}

extension LNetLND {
    public func resolveAddress(for configuration: NetworkInterfaceConfiguration) throws(LNetError) -> UInt32 {
        guard let address = configuration.address else {
            throw LNetError.lndStartupFailed(network: configuration.network,
                                             reason: "no address configured for \(configuration)")
        }
        return address
    }

    public func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)? {
        context
    }
}
