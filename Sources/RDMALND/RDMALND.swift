import Foundation
import LNet
import Logging
import Synchronization
import Verbs

/// The RDMA LND (`o2ib`): carries LNet messages over RC queue pairs set up with rdma_cm.
///
/// Small messages go eagerly (IMMEDIATE, one SEND into a pre-posted buffer). Bulk PUT and GET move by RDMA:
/// pull (the default, "transmit-first": the side holding the data registers it and tells the other side to
/// RDMA READ it) or push (RDMA WRITE into the other side's sink). A GET request always carries the requester's
/// sink descriptor. Tuned by `LND_*` environment variables (`LNDTunables`).
public final class RDMALND: LNetLND {
    public let networkType = LNetNetworkType.o2ib
    public let tunables: LNDTunables
    private let baseLogger: Logger
    private let runtime = Mutex<LNDRuntime?>(nil)
    /// Called with each incoming LNet header, in arrival order per connection, on the scheduler thread, before the
    /// message is handed to LNet (tests: to check what LNet matched against what arrived).
    let observeArrival: (@Sendable (NID, LNetHeader) -> Void)?

    /// An LND with these tunables.
    public convenience init(tunables: LNDTunables, logger: Logger = Logger(label: "lnet.o2ib")) {
        self.init(tunables: tunables, logger: logger, observeArrival: nil)
    }

    init(tunables: LNDTunables, logger: Logger, observeArrival: (@Sendable (NID, LNetHeader) -> Void)?) {
        self.tunables = tunables
        self.baseLogger = logger
        self.observeArrival = observeArrival
    }

    /// An LND tuned by the environment (`LND_*`); a bad value is an error naming the variable and its range.
    public convenience init(environment: [String: String] = ProcessInfo.processInfo.environment,
                            logger: Logger = Logger(label: "lnet.o2ib")) throws(TunableError) {
        self.init(tunables: try LNDTunables.fromEnvironment(environment), logger: logger)
    }

    /// The device this LND uses: the tunable, else the interface named in the network configuration.
    private func deviceName(for configuration: NetworkInterfaceConfiguration) -> String? {
        if !tunables.device.isEmpty { return tunables.device }
        return configuration.interfaceName
    }

    /// `o2ib(rxe0)` names no address: use the first IPv4 address among the device's GIDs.
    public func resolveAddress(for configuration: NetworkInterfaceConfiguration) throws(LNetError) -> UInt32 {
        if let address = configuration.address { return address }
        guard let name = deviceName(for: configuration) else {
            throw LNetError.lndStartupFailed(network: configuration.network, reason: "no device or address in \(configuration)")
        }
        do {
            let port = try DeviceContext(deviceName: name).port(1)
            guard let text = port.gids.compactMap(\.gid.ipv4Address).first, let address = parseIPv4(text) else {
                throw LNetError.lndStartupFailed(network: configuration.network, reason: "device \(name) has no IPv4 address")
            }
            return address
        } catch let error as LNetError {
            throw error
        } catch {
            throw LNetError.lndStartupFailed(network: configuration.network, reason: "\(error)", cause: .init(error))
        }
    }

    public func startup(ni: LNetNI) throws(LNetError) {
        do {
            let started = try LNDRuntime(ni: ni, tunables: tunables, logger: baseLogger, expectedDevice: deviceName(for: ni.configuration),
                                         observeArrival: observeArrival)
            runtime.withLock { $0 = started }
        } catch {
            throw LNetError.lndStartupFailed(network: ni.network, reason: "\(error)", cause: .init(error))
        }
    }

    public func shutdown(ni: LNetNI) {
        let stopping = runtime.withLock { runtime -> LNDRuntime? in
            defer { runtime = nil }
            return runtime
        }
        stopping?.stop()
    }

    public func send(ni: LNetNI, message: LNetMessage) {
        guard let runtime = runtime.withLock({ $0 }) else {
            ni.finalize(message, status: .shutdown)
            return
        }
        if message.type == .reply {
            guard let context = message.privateContext as? ReceiveContext, case .getRequest(let cookie, let sink) = context.kind else {
                ni.logger.error("REPLY without the GET it answers", metadata: ["message": "\(message)"])
                (message.privateContext as? ReceiveContext)?.releaseBuffer()
                ni.finalize(message, status: .protocolError)
                return
            }
            context.connection.serveGet(message, requesterCookie: cookie, sink: sink)
            return
        }
        runtime.connection(to: message.header.destination.nid).send(message)
    }

    public func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        guard let context = context as? ReceiveContext else {
            ni.logger.error("receive without an o2ib context", metadata: ["message": "\(message)"])
            ni.finalize(message, status: .protocolError)
            return
        }
        switch context.kind {
        case .immediate(_, let payload):
            window.copy(from: payload)
            context.releaseBuffer()
            ni.finalize(message, status: .ok)
        case .copied(let buffer, let length):
            window.copy(from: UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
            ni.finalize(message, status: .ok)
        case .putRequest(let cookie, let source):
            context.connection.receivePut(message, window: window, sourceCookie: cookie, source: source)
        case .getRequest:
            ni.logger.error("receive for a GET request", metadata: ["message": "\(message)"])
            ni.finalize(message, status: .protocolError)
        }
    }

    public func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        guard let context = context as? ReceiveContext else { return }
        switch context.kind {
        case .immediate:
            context.releaseBuffer()
        case .copied:
            break
        case .putRequest(let cookie, let source):
            context.connection.dropPut(sourceCookie: cookie, pull: !source.fragments.isEmpty, status: status)
        case .getRequest:
            // The core answers a GET with a REPLY even when nothing matched; nothing to do here.
            break
        }
    }

    public func eagerReceive(ni: LNetNI, header: LNetHeader, context: (any LNDPrivate)?) throws(LNetError) -> (any LNDPrivate)? {
        guard let context = context as? ReceiveContext, case .immediate(_, let payload) = context.kind else { return context }
        let copy = try LNetBuffer(count: max(1, payload.count))
        copy.bytes.copyMemory(from: payload)
        context.releaseBuffer()
        return ReceiveContext(connection: context.connection, kind: .copied(copy, length: payload.count))
    }

    /// The LND's counters (zero before start-up).
    public var counters: LNDCountersSnapshot? {
        runtime.withLock { $0?.context.counters.snapshot }
    }

    /// The registration cache's figures (zero before start-up).
    public var registrationStatistics: RegistrationCacheStatistics? {
        runtime.withLock { $0?.context.registrar.cache.statistics }
    }

    /// The connections in the peer table.
    public var connections: [LNDConnectionInfo] {
        runtime.withLock { $0?.connectionInfos ?? [] }
    }

    /// Each connection's send state (``Connection/sendState``), for tests that report a stall.
    var connectionSendStates: [String] {
        runtime.withLock { runtime in runtime.map { $0.peers.withLock { Array($0.values) }.map(\.sendState) } ?? [] }
    }

    /// The CPUs each scheduler thread may run on (read back from the kernel after it bound itself to its CPU
    /// partition), by scheduler index; empty before start-up.
    public var schedulerCPUs: [[Int]] {
        runtime.withLock { $0?.schedulerCPUs ?? [] }
    }

    /// LNet messages (PUT, GET, eager ACK) each CPU partition's scheduler threads received and handed to LNet, by
    /// partition; empty before start-up. Under `LNET_PLACEMENT=nid` they are matched there too.
    public var receivedPerPartition: [Int] {
        runtime.withLock { runtime -> [Int] in
            guard let runtime else { return [] }
            var counts = Array(repeating: 0, count: runtime.context.ni.partitions.count)
            for scheduler in runtime.schedulers { counts[scheduler.partition] += scheduler.received.load(ordering: .relaxed) }
            return counts
        }
    }

    /// The verbs device the interface is on (nil before start-up).
    public var deviceName: String? {
        runtime.withLock { $0?.context.protectionDomain.context.name }
    }

    /// Connections currently in the peer table, by peer.
    public var connectionCount: Int {
        runtime.withLock { $0?.connectionCount ?? 0 }
    }
}
