import LNet
import Verbs

/// Why the RDMA LND did not start, when the cause is the host's set-up rather than a verbs call.
public enum LNDStartupError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `RLIMIT_MEMLOCK` is below what the LND pins.
    case memoryLockLimit(MemoryLockBudget)
    /// Binding the service port was refused: it is below 1024 and the process may not bind such ports.
    case privilegedPort(port: Int, cause: VerbsError)

    public var description: String {
        switch self {
        case .memoryLockLimit(let budget):
            let limit = budget.limit ?? 0
            var text = "the memlock limit (RLIMIT_MEMLOCK, ulimit -l) is \(formatBytes(limit)), but the o2ib LND pins "
                + "\(formatBytes(budget.need)): \(formatBytes(budget.transmitBuffers)) of transmit buffers (LND_NTX=\(budget.ntx)), "
                + "\(formatBytes(budget.receiveBuffersPerConnection)) of receive buffers per connection (LND_PEER_CREDITS=\(budget.peerCredits)) "
                + "and up to \(formatBytes(budget.registrationCache)) of cached registrations (LND_REGISTRATION_CACHE_SIZE). "
                + "Raise the limit (ulimit -l unlimited in the shell that starts it, a memlock line in /etc/security/limits.conf, "
                + "or LimitMEMLOCK= in a systemd unit)"
            let room = limit - budget.transmitBuffers - budget.receiveBuffersPerConnection
            if room >= 0 {
                text += ", or make the cache fit: LND_REGISTRATION_CACHE_SIZE=\(room >> 10)K or less (0: no cache)"
            } else {
                text += ", or pin less: a smaller LND_NTX or LND_PEER_CREDITS, and LND_REGISTRATION_CACHE_SIZE=0"
            }
            return text
        case .privilegedPort(let port, let cause):
            return "\(cause): port \(port) is privileged (below 1024) and this process may not bind it (it is not root and "
                + "has no CAP_NET_BIND_SERVICE). Set LND_SERVICE_PORT to a port from 1024 to 65535, the same on every node "
                + "of the network, or run as root"
        }
    }
}
