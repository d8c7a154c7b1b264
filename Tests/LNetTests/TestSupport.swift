import Dispatch
import Synchronization
import Testing

@testable import LNet

/// Waits until `condition` holds, checking every millisecond, for at most `timeout`. Returns whether it held.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// A thread-safe list, for collecting events from handlers.
final class Collector<T: Sendable>: Sendable {
    private let storage = Mutex<[T]>([])
    func append(_ item: T) { storage.withLock { $0.append(item) } }
    var items: [T] { storage.withLock { $0 } }
    var count: Int { storage.withLock { $0.count } }
}

/// A one-shot gate that blocking code (handlers on other threads) can wait on with a deadline.
final class Gate: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let opened = Atomic<Bool>(false)
    func open() {
        guard !opened.exchange(true, ordering: .acquiringAndReleasing) else { return }
        semaphore.signal()
    }
    /// Waits up to `seconds`; returns whether the gate opened.
    @discardableResult
    func wait(seconds: Double = 5) -> Bool {
        if opened.load(ordering: .acquiring) { return true }
        let result = semaphore.wait(timeout: .now() + seconds) == .success
        if result { semaphore.signal() }
        return result
    }
    var isOpen: Bool { opened.load(ordering: .acquiring) }
}

/// An LNet instance with a loopback interface.
func makeLoopbackNode(pid: UInt32 = 12345) throws -> (LNet, ProcessID) {
    let lnet = LNet(configuration: .init(pid: pid, partitions: CPUPartitionTable(count: 2)))
    let ni = try lnet.addLoopback()
    return (lnet, ni.processID)
}

func bytes(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
}

/// A test LND that connects two LNet instances on a `tcp` network (in memory). With `rdmaGet`, it serves GETs the
/// way an RDMA LND does: the target writes the REPLY data straight into the requester's sink, and the requester's
/// LND completes the GET with `createReply` + `setReplyLength`.
final class PairLND: LNetLND {
    final class Context: Sendable {
        let sent: LNetMessage
        init(sent: LNetMessage) { self.sent = sent }
    }

    let networkType = LNetNetworkType.tcp
    let rdmaGet: Bool
    private let peer = Mutex<PairLND?>(nil)
    private let myNI = Mutex<LNetNI?>(nil)
    private let wire = DispatchQueue(label: "pair")
    let dropped = Collector<LNetStatus>()

    init(rdmaGet: Bool = false) { self.rdmaGet = rdmaGet }

    static func connect(_ a: PairLND, _ b: PairLND) {
        a.peer.withLock { $0 = b }
        b.peer.withLock { $0 = a }
    }

    func startup(ni: LNetNI) throws(LNetError) { myNI.withLock { $0 = ni } }
    func shutdown(ni: LNetNI) { myNI.withLock { $0 = nil } }

    func send(ni: LNetNI, message: LNetMessage) {
        if debugPair { print("PAIR send \(message)") }
        wire.async { [self] in
            guard let peer = peer.withLock({ $0 }), let peerNI = peer.myNI.withLock({ $0 }) else {
                ni.finalize(message, status: .unreachable)
                return
            }
            if rdmaGet, message.type == .reply, let context = message.privateContext as? Context,
               context.sent.type == .get, let sink = context.sent.sink {
                // "RDMA WRITE" into the requester's sink, then "GET_DONE".
                let landed = message.header.status.isOK ? sink.slice(offset: 0, length: message.payload.length).copy(from: message.payload) : 0
                let get = context.sent
                if let reply = get.ni.createReply(for: get) {
                    get.ni.setReplyLength(reply, landed)
                    get.ni.finalize(get, status: .ok)
                    get.ni.finalize(reply, status: message.header.status)
                } else {
                    get.ni.finalize(get, status: .ok)
                }
                ni.finalize(message, status: .ok)
                return
            }
            let context = Context(sent: message)
            let outcome = peerNI.parse(header: message.header, from: ni.nid, context: context,
                         wantsRDMA: rdmaGet && message.type == .get)
            if debugPair { print("PAIR parsed \(message.type) -> \(outcome)") }
            if message.type == .get && !rdmaGet { ni.finalize(message, status: .ok) }
        }
    }

    func receive(ni: LNetNI, message: LNetMessage, window: LNetMDWindow, context: (any LNDPrivate)?) {
        guard let context = context as? Context else {
            ni.finalize(message, status: .protocolError)
            return
        }
        window.copy(from: context.sent.payload)
        ni.finalize(message, status: .ok)
        context.sent.ni.finalize(context.sent, status: .ok)
    }

    func drop(ni: LNetNI, header: LNetHeader, status: LNetStatus, context: (any LNDPrivate)?) {
        dropped.append(status)
        if let context = context as? Context { context.sent.ni.finalize(context.sent, status: status) }
    }
}

/// Two instances joined by a `PairLND` on `tcp`: 10.0.0.1@tcp and 10.0.0.2@tcp.
func makePair(rdmaGet: Bool = false) throws -> (a: LNet, b: LNet, aID: ProcessID, bID: ProcessID) {
    let a = LNet(configuration: .init(pid: 1, partitions: CPUPartitionTable(count: 2)))
    let b = LNet(configuration: .init(pid: 2, partitions: CPUPartitionTable(count: 2)))
    let lndA = PairLND(rdmaGet: rdmaGet)
    let lndB = PairLND(rdmaGet: rdmaGet)
    PairLND.connect(lndA, lndB)
    let niA = try a.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth0:10.0.0.1)"), lnd: lndA)
    let niB = try b.addInterface(try NetworkInterfaceConfiguration(parsing: "tcp(eth0:10.0.0.2)"), lnd: lndB)
    return (a, b, niA.processID, niB.processID)
}

let debugPair = false
