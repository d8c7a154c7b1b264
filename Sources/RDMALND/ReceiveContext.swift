import LNet
import Synchronization

/// The private context the LND gives LNet's parse for one incoming message.
final class ReceiveContext: Sendable {
    enum Kind: @unchecked Sendable {
        case immediate(slot: Int, payload: UnsafeRawBufferPointer)
        case copied(LNetBuffer, length: Int)
        case putRequest(cookie: UInt64, source: RDMADescriptor)
        /// A GET; its sink has no fragments when it fits one message (the answer is a REPLY).
        case getRequest(cookie: UInt64, sink: RDMADescriptor)
    }

    let connection: Connection
    let kind: Kind
    private let released = Atomic<Bool>(false)

    init(connection: Connection, kind: Kind) {
        self.connection = connection
        self.kind = kind
    }

    var wantsRDMA: Bool {
        switch kind {
        case .immediate, .copied: false
        case .putRequest, .getRequest: true
        }
    }

    /// Returns an IMMEDIATE's receive buffer, once.
    func releaseBuffer() {
        guard case .immediate(let slot, _) = kind, !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        connection.release(slot: slot)
    }
}
