import LNet
import Logging
import Verbs

/// What every connection of one interface shares: the interface, the tunables, our incarnation stamp, the
/// protection domain, memory registration, and the counters.
final class LNDContext: Sendable {
    let ni: LNetNI
    let tunables: LNDTunables
    /// This instance's incarnation: a restarted node has a new one, so its peers can tell.
    let stamp: UInt64
    let logger: Logger
    let protectionDomain: ProtectionDomain
    let registrar: LNDRegistrar
    /// Transmit descriptors and interface send credits.
    let pool: TransmitPool
    /// What this side proposes and accepts at most.
    let localLimits: ConnectionLimits
    /// READs in flight per connection each way (initiator depth / responder resources).
    let readDepth: UInt8
    let maxScatterGather: Int
    /// Where slow registrations run (`LND_REGISTRATION_OFFLOAD`).
    let registrationWorker: RegistrationWorker
    let counters = LNDCounters()
    /// See ``RDMALND/observeArrival``.
    let observeArrival: (@Sendable (NID, LNetHeader) -> Void)?

    init(ni: LNetNI, tunables: LNDTunables, stamp: UInt64, logger: Logger, protectionDomain: ProtectionDomain,
         registrar: LNDRegistrar, pool: TransmitPool, readDepth: UInt8, maxScatterGather: Int, registrationWorker: RegistrationWorker,
         observeArrival: (@Sendable (NID, LNetHeader) -> Void)? = nil) {
        self.observeArrival = observeArrival
        self.ni = ni
        self.tunables = tunables
        self.stamp = stamp
        self.logger = logger
        self.protectionDomain = protectionDomain
        self.registrar = registrar
        self.pool = pool
        self.readDepth = readDepth
        self.maxScatterGather = maxScatterGather
        self.registrationWorker = registrationWorker
        self.localLimits = ConnectionLimits(
            queueDepth: UInt16(tunables.peerCredits), maxFragments: UInt16(tunables.maxFragments),
            maxMessageSize: UInt32(WireFormat.maxMessageSize(immediateSize: tunables.immediateSize, maxFragments: tunables.maxFragments)))
    }

    var nid: NID { ni.nid }
}
