#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Errors thrown by the LNet API. Each case describes itself in plain words.
///
/// A failure that came from below LNet (a verbs call, an LND's tunables, the OS) keeps that error as its
/// ``cause``: `error.cause(as: VerbsError.self)?.errno` reads the failed call's errno without parsing text.
public enum LNetError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Text that should have been a NID was not.
    case invalidNID(text: String, reason: String)
    /// Text that should have been a network name (`o2ib`, `tcp1`, `lo`) was not.
    case invalidNetwork(text: String, reason: String)
    /// Text that should have been a process id (`12345-0@lo`) was not.
    case invalidProcessID(text: String, reason: String)
    /// A network list (`o2ib(rxe0:192.0.2.1),tcp(eth0)`) could not be parsed.
    case invalidNetworkList(text: String, reason: String)
    /// There is no network interface for the destination's network.
    case networkUnreachable(destination: NID)
    /// Two interfaces were configured on one network.
    case duplicateNetwork(LNetNetwork)
    /// An LND could not be made or failed to start; `cause` is the error it threw, when it threw one (a
    /// `VerbsError` from the RDMA LND, a `TunableError` from its configuration).
    case lndStartupFailed(network: LNetNetwork, reason: String, cause: Cause? = nil)
    /// A handle named an MD or ME that does not exist (never did, or already unlinked).
    case invalidHandle(String)
    /// The MD cannot take part in another operation: its threshold is used up.
    case mdExhausted(MDHandle)
    /// The MD is not valid for this use (zero-length fragment, bad offset, ...).
    case invalidMemoryDescriptor(String)
    /// An argument was out of range.
    case invalidArgument(String)
    /// A system call LNet made for a resource failed (a thread, its eventfd, page-aligned memory): `errno` is
    /// what the call returned or set, `detail` what it was for.
    case systemCallFailed(call: String, errno: Int32, detail: String)
    /// The instance or interface is shutting down.
    case shutdown
    /// A bounded wait ended before the thing waited for happened.
    case timeout
    /// The task waiting was cancelled (an awaitable operation's MD was unlinked first).
    case cancelled
    /// An operation completed with a failure: `status` is what its `event` (SEND for a local or transport
    /// failure, ACK or REPLY for the target's answer) reported.
    case operationFailed(status: LNetStatus, event: LNetEventKind)
    /// Events were lost: a polled queue was full and discarded its oldest `count` events since the consumer's
    /// last take (``EventQueue/events``).
    case eventsDropped(count: Int)
    /// ``EventQueue/poll()``, ``EventQueue/next(timeout:)`` or ``EventQueue/events`` on a queue that hands its
    /// events to a handler: taking them there would steal them from it.
    case eventQueueNotPolled(label: String, delivery: String)

    public var description: String {
        switch self {
        case .invalidNID(let text, let reason): return "invalid NID '\(text)': \(reason)"
        case .invalidNetwork(let text, let reason): return "invalid network '\(text)': \(reason)"
        case .invalidProcessID(let text, let reason): return "invalid process id '\(text)': \(reason)"
        case .invalidNetworkList(let text, let reason): return "invalid network list '\(text)': \(reason)"
        case .networkUnreachable(let nid):
            return "no network interface for network '\(nid.network)' (destination \(nid)); LNet routing is not supported: "
                + "a destination must be on a network this node has an interface on"
        case .duplicateNetwork(let net): return "network '\(net)' is configured more than once"
        case .lndStartupFailed(let net, let reason, _): return "LND for '\(net)' failed to start: \(reason)"
        case .invalidHandle(let what): return "invalid handle: \(what)"
        case .mdExhausted(let handle): return "memory descriptor \(handle) has no threshold left"
        case .invalidMemoryDescriptor(let reason): return "invalid memory descriptor: \(reason)"
        case .invalidArgument(let reason): return "invalid argument: \(reason)"
        case .systemCallFailed(let call, let errno, let detail):
            return "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))\(detail.isEmpty ? "" : " [\(detail)]")"
        case .shutdown: return "LNet is shutting down"
        case .timeout: return "timed out"
        case .cancelled: return "cancelled"
        case .operationFailed(let status, let event): return "the operation failed: its \(event) event reported '\(status)'"
        case .eventsDropped(let count): return "\(count) event\(count == 1 ? " was" : "s were") dropped: the event queue was full"
        case .eventQueueNotPolled(let label, let delivery):
            return "event queue '\(label)' delivers its events to a \(delivery) handler; only a polled queue can be polled or iterated"
        }
    }

    /// The error underneath an ``LNetError``: what an LND, a driver or a configuration reader threw.
    ///
    /// Two causes are equal when they hold errors of the same type that describe themselves alike.
    public struct Cause: Sendable, Equatable, CustomStringConvertible {
        /// The error as thrown.
        public let error: any Error

        public init(_ error: any Error) { self.error = error }

        public var description: String { "\(error)" }

        public static func == (a: Cause, b: Cause) -> Bool {
            ObjectIdentifier(type(of: a.error)) == ObjectIdentifier(type(of: b.error)) && "\(a.error)" == "\(b.error)"
        }
    }

    /// The error this one wraps, if any.
    public var cause: (any Error)? {
        if case .lndStartupFailed(_, _, let cause?) = self { return cause.error }
        return nil
    }

    /// The first error of type `type` along the chain of causes (this error's cause, its cause's cause, ...):
    /// `error.cause(as: VerbsError.self)` gives the verbs call and errno behind a failed start-up.
    public func cause<T: Error>(as type: T.Type) -> T? {
        var next = cause
        while let error = next {
            if let match = error as? T { return match }
            next = (error as? LNetError)?.cause
        }
        return nil
    }

    /// Wraps an error an LND (or its factory) threw for `network`: an ``LNetError`` stays as it is, anything else
    /// becomes ``lndStartupFailed(network:reason:cause:)`` with the error as its cause.
    public init(lndFailure error: any Error, network: LNetNetwork) {
        if let error = error as? LNetError {
            self = error
        } else {
            self = .lndStartupFailed(network: network, reason: "\(error)", cause: Cause(error))
        }
    }
}

/// The outcome of a message, as carried in events, in finalize, and on the wire (ACK/REPLY status field).
public enum LNetStatus: UInt32, Sendable, Hashable, CustomStringConvertible {
    /// Success.
    case ok = 0
    /// The target had no match entry (or no live MD) for the message.
    case noMatch = 1
    /// The message was larger than the matched MD and the MD does not allow truncation.
    case tooLarge = 2
    /// The operation did not complete in time.
    case timeout = 3
    /// The connection carrying the message closed.
    case connectionClosed = 4
    /// The operation was aborted (e.g. its MD was unlinked).
    case aborted = 5
    /// The interface shut down before the message completed.
    case shutdown = 6
    /// The LND or the peer ran out of a resource (buffers, credits, registrations).
    case noResources = 7
    /// The peer broke the protocol or sent an undecodable message.
    case protocolError = 8
    /// No route to the destination network.
    case unreachable = 9
    /// Any failure that has no better code, including a status code this build does not know.
    case failed = 10

    /// Decodes a wire status; unknown codes from a newer peer become ``failed``.
    public init(wire value: UInt32) { self = LNetStatus(rawValue: value) ?? .failed }

    public var isOK: Bool { self == .ok }

    public var description: String {
        switch self {
        case .ok: return "ok"
        case .noMatch: return "no match"
        case .tooLarge: return "too large"
        case .timeout: return "timeout"
        case .connectionClosed: return "connection closed"
        case .aborted: return "aborted"
        case .shutdown: return "shutdown"
        case .noResources: return "no resources"
        case .protocolError: return "protocol error"
        case .unreachable: return "unreachable"
        case .failed: return "failed"
        }
    }
}
