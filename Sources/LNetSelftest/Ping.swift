#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import LNet
import Synchronization

/// Answers pings: a small MD describing this node (``NodeInfo``), attached on ``SelftestProtocol/pingPortal`` for
/// GETs from anyone. A ping is one GET of it.
public final class PingService: Sendable {
    public let lnet: LNet
    /// The node the MD describes.
    public let info: NodeInfo
    private let handles = Mutex<(me: MEHandle, md: MDHandle)?>(nil)
    private let served = Atomic<Int>(0)

    /// A service describing `nid` (the pid is the instance's).
    public init(lnet: LNet, nid: NID) {
        self.lnet = lnet
        self.info = NodeInfo(nid: nid, pid: lnet.pid, startedNanoseconds: wallClockNanoseconds())
    }

    /// Pings answered so far.
    public var pingsServed: Int { served.load(ordering: .relaxed) }

    /// Attaches the ping MD. Idempotent.
    public func start() throws(LNetError) {
        guard handles.withLock({ $0 == nil }) else { return }
        let buffer = try LNetBuffer(copying: info.encoded())
        let counter = EventQueue(label: "ping-served", delivery: .inline { [weak self] event in
            if event.kind == .get, event.status.isOK { self?.served.add(1, ordering: .relaxed) }
        })
        let attached = try lnet.attach(
            MatchEntry(portal: SelftestProtocol.pingPortal, matchBits: SelftestProtocol.pingMatchBits, unlink: .retain),
            descriptor: MemoryDescriptor(buffer: buffer, threshold: .infinite, options: [.get, .manageRemote, .truncate], eventQueue: counter))
        let previous = handles.withLock { state -> (me: MEHandle, md: MDHandle)? in
            defer { if state == nil { state = attached } }
            return state
        }
        if previous != nil { try? lnet.unlink(attached.me) }
    }

    /// Detaches the ping MD.
    public func stop() {
        if let attached = handles.withLock({ state -> (me: MEHandle, md: MDHandle)? in
            defer { state = nil }
            return state
        }) {
            try? lnet.unlink(attached.me)
        }
    }
}

/// One answered ping.
public struct PingReply: Sendable, Equatable {
    /// Round-trip time: from the GET call until the REPLY landed.
    public var roundTrip: Duration
    /// Who answered.
    public var node: NodeInfo
}

/// A failed ping.
public struct PingError: Error, Sendable, Equatable, CustomStringConvertible {
    public var target: ProcessID
    public var status: LNetStatus?
    public var reason: String

    public var description: String { "ping \(target): \(reason)" }
}

/// Pings `target` once: a GET of its ping MD. Fails with the LNet status (e.g. `no match` when the target runs no
/// ping service), a timeout, or a decode error.
public func ping(_ lnet: LNet, target: ProcessID, timeout: Duration = .seconds(10)) async throws(PingError) -> PingReply {
    let buffer: LNetBuffer
    do { buffer = try LNetBuffer(count: NodeInfo.encodedSize) } catch {
        throw PingError(target: target, status: nil, reason: error.description)
    }
    let operation = SingleOperation(lnet: lnet)
    let outcome = await operation.run(storage: .buffer(buffer), threshold: 2, timeout: timeout) { md throws(LNetError) in
        try lnet.get(md, from: target, portal: SelftestProtocol.pingPortal, matchBits: SelftestProtocol.pingMatchBits)
    }
    if let error = outcome.error {
        throw PingError(target: target, status: outcome.status, reason: error)
    }
    guard outcome.status.isOK else {
        let hint = outcome.status == .noMatch ? " (the target runs no ping service)" : ""
        throw PingError(target: target, status: outcome.status, reason: "\(outcome.status)\(hint)")
    }
    guard let reply = outcome.reply, reply.matchedLength >= NodeInfo.encodedSize else {
        throw PingError(target: target, status: .ok, reason: "short ping reply (\(outcome.reply?.matchedLength ?? 0) bytes)")
    }
    let node: NodeInfo
    do { node = try NodeInfo(decoding: buffer.read(length: reply.matchedLength)) } catch {
        throw PingError(target: target, status: .ok, reason: error.description)
    }
    return PingReply(roundTrip: outcome.replyTime ?? outcome.elapsed, node: node)
}

/// Pings a target `count` times, one after the other, as fast as the round trips allow: each ping (a GET of the
/// target's ping MD) is issued from the completion of the one before, on the thread that delivered it (an inline
/// event handler), so a ping costs the network's round trip and nothing else: no task, timer or queue per ping.
/// One watchdog task for the whole series unlinks a ping that takes longer than `timeout` (it then fails with a
/// timeout).
public final class PingSeries: Sendable {
    public let lnet: LNet
    public let target: ProcessID
    public let count: Int
    public let timeout: Duration

    private struct State {
        var results: [Result<PingReply, PingError>] = []
        var sequence = 0
        var md: MDHandle?
        var started = ContinuousClock.now
        var replyTime: Duration?
        var status: LNetStatus = .ok
        var matched = 0
        var timedOut = false
        var continuation: CheckedContinuation<[Result<PingReply, PingError>], Never>?
    }

    private let state = Mutex(State())
    private let buffer: LNetBuffer
    private let queue = Mutex<EventQueue?>(nil)

    public init(lnet: LNet, target: ProcessID, count: Int, timeout: Duration = .seconds(10)) throws(LNetError) {
        self.lnet = lnet
        self.target = target
        self.count = max(1, count)
        self.timeout = timeout
        self.buffer = try LNetBuffer(count: NodeInfo.encodedSize)
    }

    /// Runs the series; one result per ping, in order.
    public func run() async -> [Result<PingReply, PingError>] {
        let events = EventQueue(label: "ping", delivery: .inline { [weak self] event in self?.handle(event) })
        queue.withLock { $0 = events }
        let watchdog = Task { [weak self] in
            let tick = min(.milliseconds(100), self?.timeout ?? .zero)
            while !Task.isCancelled, let self {
                try? await Task.sleep(for: tick)
                self.checkTimeout()
            }
        }
        let results = await withCheckedContinuation { continuation in
            state.withLock { $0.continuation = continuation }
            issue()
        }
        watchdog.cancel()
        queue.withLock { $0 = nil }
        return results
    }

    private func issue() {
        guard let events = queue.withLock({ $0 }) else { return }
        let md: MDHandle
        do {
            md = try lnet.bind(MemoryDescriptor(buffer: buffer, threshold: .count(2), eventQueue: events))
        } catch {
            return finish(.failure(PingError(target: target, status: nil, reason: error.description)))
        }
        state.withLock { state in
            state.md = md
            state.started = .now
            state.replyTime = nil
            state.status = .ok
            state.matched = 0
            state.timedOut = false
        }
        do {
            try lnet.get(md, from: target, portal: SelftestProtocol.pingPortal, matchBits: SelftestProtocol.pingMatchBits)
        } catch {
            state.withLock { $0.status = .failed }
            try? lnet.unlink(md)
        }
    }

    private func handle(_ event: LNetEvent) {
        let now = ContinuousClock.now
        var unlinkNow = false
        let outcome = state.withLock { state -> (status: LNetStatus, rtt: Duration, matched: Int)? in
            guard event.md == state.md else { return nil }
            if !event.status.isOK, state.status.isOK { state.status = event.status }
            if event.kind == .reply {
                state.replyTime = now - state.started
                state.matched = event.matchedLength
            }
            guard event.unlinked else {
                // A failed SEND means no REPLY will come: unlink so the MD's last event arrives.
                unlinkNow = !event.status.isOK
                return nil
            }
            state.md = nil
            let status = state.timedOut && state.status.isOK ? .timeout : state.status
            return (status, state.replyTime ?? now - state.started, state.matched)
        }
        if unlinkNow { try? lnet.unlink(event.md) }
        guard let outcome else { return }
        guard outcome.status.isOK else {
            let hint = outcome.status == .noMatch ? " (the target runs no ping service)" : ""
            return finish(.failure(PingError(target: target, status: outcome.status, reason: "\(outcome.status)\(hint)")))
        }
        guard outcome.matched >= NodeInfo.encodedSize else {
            return finish(.failure(PingError(target: target, status: .ok, reason: "short ping reply (\(outcome.matched) bytes)")))
        }
        do {
            let node = try NodeInfo(decoding: buffer.read(length: outcome.matched))
            finish(.success(PingReply(roundTrip: outcome.rtt, node: node)))
        } catch {
            finish(.failure(PingError(target: target, status: .ok, reason: error.description)))
        }
    }

    /// Records one ping's result and issues the next (or ends the series).
    private func finish(_ result: Result<PingReply, PingError>) {
        let ended = state.withLock { state -> (CheckedContinuation<[Result<PingReply, PingError>], Never>?, [Result<PingReply, PingError>])? in
            state.results.append(result)
            state.sequence += 1
            guard state.sequence >= count else { return nil }
            defer { state.continuation = nil }
            return (state.continuation, state.results)
        }
        if let (continuation, results) = ended {
            continuation?.resume(returning: results)
        } else if case .failure = result {
            // A failure can come back inside the call that issued the ping: issue the next one from elsewhere.
            Task { self.issue() }
        } else {
            issue()
        }
    }

    private func checkTimeout() {
        let expired = state.withLock { state -> MDHandle? in
            guard let md = state.md, !state.timedOut, ContinuousClock.now - state.started > timeout else { return nil }
            state.timedOut = true
            return md
        }
        if let expired { try? lnet.unlink(expired) }
    }
}

/// Nanoseconds since the Unix epoch.
func wallClockNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return UInt64(max(0, spec.tv_sec)) * 1_000_000_000 + UInt64(max(0, spec.tv_nsec))
}
