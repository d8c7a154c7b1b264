/// Errors thrown by the LNet API. Each case describes itself in plain words.
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
    /// An LND failed to start.
    case lndStartupFailed(network: LNetNetwork, reason: String)
    /// A handle named an MD or ME that does not exist (never did, or already unlinked).
    case invalidHandle(String)
    /// The MD cannot take part in another operation: its threshold is used up.
    case mdExhausted(MDHandle)
    /// The MD is not valid for this use (zero-length fragment, bad offset, ...).
    case invalidMemoryDescriptor(String)
    /// An argument was out of range.
    case invalidArgument(String)
    /// The instance or interface is shutting down.
    case shutdown
    /// A bounded wait ended before the thing waited for happened.
    case timeout

    public var description: String {
        switch self {
        case .invalidNID(let text, let reason): return "invalid NID '\(text)': \(reason)"
        case .invalidNetwork(let text, let reason): return "invalid network '\(text)': \(reason)"
        case .invalidProcessID(let text, let reason): return "invalid process id '\(text)': \(reason)"
        case .invalidNetworkList(let text, let reason): return "invalid network list '\(text)': \(reason)"
        case .networkUnreachable(let nid): return "no network interface for network '\(nid.network)' (destination \(nid))"
        case .duplicateNetwork(let net): return "network '\(net)' is configured more than once"
        case .lndStartupFailed(let net, let reason): return "LND for '\(net)' failed to start: \(reason)"
        case .invalidHandle(let what): return "invalid handle: \(what)"
        case .mdExhausted(let handle): return "memory descriptor \(handle) has no threshold left"
        case .invalidMemoryDescriptor(let reason): return "invalid memory descriptor: \(reason)"
        case .invalidArgument(let reason): return "invalid argument: \(reason)"
        case .shutdown: return "LNet is shutting down"
        case .timeout: return "timed out"
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
