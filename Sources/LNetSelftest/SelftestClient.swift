import Dispatch
import LNet
import Logging
import Synchronization

/// What a self-test run does.
public struct SelftestConfiguration: Sendable {
    public var op: SelftestOp
    /// Bytes per operation, or with ``minSize`` the most bytes of one operation (ignored for ``SelftestOp/ping``,
    /// which moves a ``NodeInfo``).
    public var size: Int
    /// With mixed sizes, the fewest bytes of one operation: each operation then moves a length drawn log-uniformly
    /// from `minSize...size` (see ``OperationSizes``). `nil`: every operation moves ``size`` bytes.
    public var minSize: Int?
    /// Operations in flight at once (slots).
    public var concurrency: Int
    /// Stop after this many operations (all slots together).
    public var count: Int?
    /// Stop issuing after this long. With both `count` and `duration`, whichever comes first.
    public var duration: Duration?
    /// Check every operation's data (see ``SelftestClient``).
    public var verify: Bool
    /// An operation not complete after this long fails with a timeout (its MD is unlinked).
    public var operationTimeout: Duration
    /// How long session set-up and teardown may take.
    public var controlTimeout: Duration
    /// Stop issuing once this many operations have failed (`nil`: never).
    public var maxErrors: Int?
    /// How often ``progress`` is called.
    public var progressInterval: Duration
    /// Called about every ``progressInterval`` while the run is going (from a timer thread).
    public var progress: (@Sendable (SelftestProgress) -> Void)?
    /// When set, the run fails (after tearing the session down) unless the server reports this GET mode: a read's
    /// data moves the way the server's LND decides, so a run meant to measure one mode must check it.
    public var requiredServerGetMode: AdvertisedBulkMode?
    /// Test hooks (leave empty outside tests).
    public var testHooks: TestHooks

    public struct TestHooks: Sendable {
        /// Called for each completed read of a verified session with its sequence number; `true` flips a byte of
        /// the landed data before it is checked.
        public var corruptRead: (@Sendable (_ sequence: UInt64) -> Bool)?
        public init(corruptRead: (@Sendable (_ sequence: UInt64) -> Bool)? = nil) { self.corruptRead = corruptRead }
    }

    public init(op: SelftestOp, size: Int, minSize: Int? = nil, concurrency: Int = 1, count: Int? = nil,
                duration: Duration? = nil, verify: Bool = false, operationTimeout: Duration = .seconds(60), controlTimeout: Duration = .seconds(30),
                maxErrors: Int? = nil, progressInterval: Duration = .seconds(1),
                progress: (@Sendable (SelftestProgress) -> Void)? = nil, testHooks: TestHooks = TestHooks()) {
        self.op = op
        self.size = size
        self.minSize = minSize
        self.concurrency = concurrency
        self.count = count
        self.duration = duration
        self.verify = verify
        self.operationTimeout = operationTimeout
        self.controlTimeout = controlTimeout
        self.maxErrors = maxErrors
        self.progressInterval = progressInterval
        self.progress = progress
        self.testHooks = testHooks
    }

    /// The most bytes one operation moves (what each slot's buffer holds).
    public var bytesPerOperation: Int { op == .ping ? NodeInfo.encodedSize : size }

    /// The lengths operations have.
    public var sizes: OperationSizes {
        op == .ping ? OperationSizes(NodeInfo.encodedSize) : OperationSizes(minimum: minSize ?? size, maximum: size)
    }
}

/// Where a run is.
public struct SelftestProgress: Sendable, Equatable {
    public var elapsed: Duration
    public var attempted: Int
    public var succeeded: Int
    public var failed: Int
    public var bytes: Int
}

/// Why a run could not start or finish.
public enum SelftestError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidConfiguration(String)
    /// The target answered the set-up request with a failure status (nothing listens on the control portal).
    case noServer(target: ProcessID, status: LNetStatus)
    /// The server refused the session.
    case sessionRefused(status: SessionStatus, message: String)
    /// A control message could not be sent or understood.
    case controlFailed(String)
    case timeout(String)
    case lnet(LNetError)
    /// The server's LND moves reads in another mode than the run asked for.
    case serverModeMismatch(required: AdvertisedBulkMode, actual: AdvertisedBulkMode)

    public var description: String {
        switch self {
        case .invalidConfiguration(let reason): return "invalid self-test configuration: \(reason)"
        case .noServer(let target, let status):
            return "no self-test server at \(target): \(status) (is `lnetctl serve` running there?)"
        case .sessionRefused(let status, let message): return "the server refused the session (\(status)): \(message)"
        case .controlFailed(let reason): return "self-test control exchange failed: \(reason)"
        case .timeout(let what): return "timed out: \(what)"
        case .lnet(let error): return error.description
        case .serverModeMismatch(let required, let actual):
            return "the server's GET mode is \(actual) but \(required) was asked: the server (the GET's target) decides how a "
                + "read's data moves; start `lnetctl serve` with LND_GET_MODE=\(required)"
        }
    }
}

/// The outcome of a run. Every operation issued ended either in `succeeded` or `failed`.
public struct SelftestResult: Sendable, CustomStringConvertible {
    public var op: SelftestOp
    /// The most bytes of one operation (every operation's length with one size).
    public var size: Int
    /// The fewest bytes of one operation (equal to ``size`` with one size).
    public var minSize: Int
    public var concurrency: Int
    public var requestedCount: Int?
    public var requestedDuration: Duration?
    public var verifyRequested: Bool
    public var target: ProcessID
    public var session: UInt64
    /// Operations issued.
    public var attempted = 0
    public var succeeded = 0
    public var failed = 0
    /// Operations whose data was checked and found right.
    public var verifiedOperations = 0
    /// Operations whose data was checked and found wrong (counted in `failed` too).
    public var verificationFailures = 0
    /// Bytes moved by successful operations (each counted with its own length).
    public var bytes = 0
    /// First issue to last completion.
    public var elapsed: Duration = .zero
    /// Latency of successful operations (issue to completion, including the verdict of a verified write).
    public var latency = LatencyHistogram()
    /// Failed operations by reason.
    public var errors: [String: Int] = [:]
    public var firstError: String?
    /// Issuing stopped early because of ``SelftestConfiguration/maxErrors``.
    public var aborted = false
    /// The most operations that were in flight at once (at most the concurrency).
    public var peakInFlight = 0
    /// The server's "ready" and "closed" replies (nil for ping runs, or when teardown failed).
    public var ready: SessionReply?
    public var closed: SessionReply?
    public var teardownError: String?
    /// This process's CPU during the run, and its peak RSS.
    public var clientUsage = ResourceUsage(userNanoseconds: 0, systemNanoseconds: 0, maxRSSKiB: 0)

    /// True only when verification was asked for, at least one operation ran, every operation succeeded and was
    /// checked, and the server found no bad write.
    public var verified: Bool {
        verifyRequested && attempted > 0 && failed == 0 && verifiedOperations == attempted
            && (closed?.verificationFailures ?? 0) == 0 && (op == .ping || closed != nil)
    }

    public var description: String {
        "\(op) \(sizes) x\(concurrency): \(attempted) attempted, \(succeeded) ok, \(failed) failed \(errors), "
            + "verified \(verified), \(bytes) bytes in \(elapsedSeconds) s"
    }

    /// The lengths the run's operations had.
    public var sizes: OperationSizes { OperationSizes(minimum: minSize, maximum: size) }

    public var elapsedSeconds: Double { elapsed.inSeconds }

    /// Throughput in MB/s, where (as in perftest) a MB is 2^20 bytes.
    public var megabytesPerSecond: Double { elapsedSeconds > 0 ? Double(bytes) / 1_048_576 / elapsedSeconds : 0 }
    /// Successful operations per second.
    public var messagesPerSecond: Double { elapsedSeconds > 0 ? Double(succeeded) / elapsedSeconds : 0 }

    /// The summary object `lnetctl selftest --json` prints (plus `extra` members).
    public func json(mode: String, extra: [String: JSONValue] = [:]) -> JSONValue {
        func micros(_ nanos: UInt64) -> JSONValue { .number(Double(nanos) / 1000, decimals: 1) }
        var object: [String: JSONValue] = [
            "op": .string(op.rawValue),
            "mode": .string(mode),
            "size": .int(size),
            "size_min": .int(minSize),
            "size_max": .int(size),
            "concurrency": .int(concurrency),
            "count": .int(attempted),
            "requested_count": requestedCount.map { .int($0) } ?? .null,
            "requested_duration_s": requestedDuration.map { .number($0.inSeconds) } ?? .null,
            "attempted": .int(attempted),
            "succeeded": .int(succeeded),
            "failed": .int(failed),
            "errors": .int(failed),
            "error_kinds": .object(errors.mapValues { .int($0) }),
            "first_error": firstError.map { .string($0) } ?? .null,
            "aborted": .bool(aborted),
            "peak_in_flight": .int(peakInFlight),
            "verify": .bool(verifyRequested),
            "verified": .bool(verified),
            "verified_ops": .int(verifiedOperations),
            "verification_failures": .int(verificationFailures + Int(clamping: closed?.verificationFailures ?? 0)),
            "bytes": .int(bytes),
            "elapsed_s": .number(elapsedSeconds, decimals: 6),
            "mb_per_s": .number(megabytesPerSecond),
            "msgs_per_s": .number(messagesPerSecond),
            "latency_us": .object([
                "p50": micros(latency.percentile(50)),
                "p99": micros(latency.percentile(99)),
                "max": micros(latency.maximum),
                "min": micros(latency.count > 0 ? latency.minimum : 0),
                "mean": .number(latency.mean / 1000, decimals: 1),
            ]),
            "target": .string(target.description),
            "session": .string(String(session, radix: 16)),
            "cpu_s": .number(Double(clientUsage.cpuNanoseconds) / 1e9, decimals: 6),
            "cpu_user_s": .number(Double(clientUsage.userNanoseconds) / 1e9, decimals: 6),
            "cpu_system_s": .number(Double(clientUsage.systemNanoseconds) / 1e9, decimals: 6),
            "max_rss_kib": .uint(clientUsage.maxRSSKiB),
            "server": closed.map { closed in
                .object([
                    "operations": .uint(closed.operationsServed),
                    "bytes": .uint(closed.bytesServed),
                    "verification_failures": .uint(closed.verificationFailures),
                    "cpu_s": .number(Double(closed.serverCPUNanoseconds) / 1e9, decimals: 6),
                    "max_rss_kib": .uint(closed.serverMaxRSSKiB),
                    "get_mode": .string(closed.getMode.rawValue),
                    "put_mode": .string(closed.putMode.rawValue),
                ])
            } ?? .null,
            "teardown_error": teardownError.map { .string($0) } ?? .null,
        ]
        for (key, value) in extra { object[key] = value }
        return .object(object)
    }
}

/// The client side of the self-test.
///
/// A run sets up a session with the target's ``SelftestServer`` (not for ping), then keeps ``SelftestConfiguration/concurrency``
/// slots busy: each slot issues its next operation from the completion of its previous one (inline event handlers,
/// which re-enter LNet), until the count is reached or the duration is over. Then it tears the session down.
///
/// - Read: a GET of slot `i`'s part of the server's source into slot `i`'s sink. With verify the sink is zeroed
///   before the GET and compared with slot `i`'s pattern after the REPLY.
/// - Write: a PUT (ACK requested) of slot `i`'s source into slot `i`'s part of the server's sink, header data = the
///   operation's sequence number, which also fills the first 8 bytes. With verify the server checks the data and
///   sends a verdict; the write completes when both the ACK and the verdict are in.
/// - Ping: a GET of the server's ping MD; with verify the answer must name the target.
///
/// With mixed sizes (``SelftestConfiguration/minSize``) slots are sized for the largest operation and each read or
/// write moves only its own length (``OperationSizes/length(session:sequence:)``) from the start of its slot; the
/// checks above cover exactly those bytes, and a REPLY or ACK of another length fails the operation.
///
/// An operation completes on its MD's last event, so its memory is free for the next operation of its slot.
public final class SelftestClient: Sendable {
    public let lnet: LNet
    private let logger: Logger

    public init(lnet: LNet, logger: Logger? = nil) {
        self.lnet = lnet
        self.logger = logger ?? Logger(label: "lnet.selftest.client", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    /// Runs one session against `target` and returns its figures.
    public func run(_ configuration: SelftestConfiguration, target: ProcessID) async throws(SelftestError) -> SelftestResult {
        try validate(configuration)
        let usageBefore = ResourceUsage.current()
        var session: UInt64 = 0
        while session == 0 { session = UInt64.random(in: 1...SelftestProtocol.sessionMask) }
        var ready: SessionReply?
        if configuration.op != .ping {
            let reply = try await exchange(SessionRequest(kind: .setup, session: session, op: configuration.op, size: configuration.size,
                                                          minSize: configuration.minSize, concurrency: configuration.concurrency,
                                                          verify: configuration.verify),
                                           target: target, timeout: configuration.controlTimeout)
            guard reply.status == .ok else { throw .sessionRefused(status: reply.status, message: reply.message) }
            ready = reply
            if configuration.op == .read, let required = configuration.requiredServerGetMode, reply.getMode != .unknown,
               reply.getMode != required {
                _ = try? await teardown(session: session, configuration: configuration, target: target)
                throw .serverModeMismatch(required: required, actual: reply.getMode)
            }
        }
        let engine: RunEngine
        do {
            engine = try RunEngine(lnet: lnet, configuration: configuration, target: target, session: session, logger: logger)
        } catch {
            if ready != nil { _ = try? await teardown(session: session, configuration: configuration, target: target) }
            throw error
        }
        var result = await engine.run()
        engine.release()
        result.ready = ready
        if ready != nil {
            do {
                let closed = try await teardown(session: session, configuration: configuration, target: target)
                if closed.status == .ok {
                    result.closed = closed
                } else {
                    result.teardownError = "\(closed.status): \(closed.message)"
                }
            } catch {
                result.teardownError = error.description
            }
        }
        result.clientUsage = ResourceUsage.current().since(usageBefore)
        return result
    }

    private func validate(_ configuration: SelftestConfiguration) throws(SelftestError) {
        guard configuration.concurrency >= 1 else { throw .invalidConfiguration("concurrency must be at least 1") }
        guard configuration.op == .ping || (configuration.size >= 1 && configuration.size < Int(UInt32.max)) else {
            throw .invalidConfiguration("size \(configuration.size) is outside 1...\(UInt32.max - 1)")
        }
        if configuration.op != .ping, let minSize = configuration.minSize, minSize < 1 || minSize > configuration.size {
            throw .invalidConfiguration("minimum size \(minSize) is outside 1...\(configuration.size) (the size)")
        }
        guard configuration.count != nil || configuration.duration != nil else {
            throw .invalidConfiguration("give a count or a duration")
        }
        if let count = configuration.count, count < 1 { throw .invalidConfiguration("count must be at least 1") }
        if let duration = configuration.duration, duration <= .zero { throw .invalidConfiguration("duration must be positive") }
        let (_, overflow) = configuration.size.multipliedReportingOverflow(by: configuration.concurrency * 2)
        guard !overflow else { throw .invalidConfiguration("size x concurrency is too large") }
    }

    private func teardown(session: UInt64, configuration: SelftestConfiguration, target: ProcessID) async throws(SelftestError) -> SessionReply {
        try await exchange(SessionRequest(kind: .teardown, session: session, op: configuration.op, size: configuration.size,
                                          minSize: configuration.minSize, concurrency: configuration.concurrency,
                                          verify: configuration.verify),
                           target: target, timeout: configuration.controlTimeout)
    }

    /// Sends a control request (PUT with ACK) and waits for the server's reply PUT.
    func exchange(_ request: SessionRequest, target: ProcessID, timeout: Duration) async throws(SelftestError) -> SessionReply {
        let events = EventQueue(label: "lst-control-client", capacity: 64)
        let replyBuffer: LNetBuffer
        let requestBuffer: LNetBuffer
        let replyHandles: (me: MEHandle, md: MDHandle)
        let requestMD: MDHandle
        do {
            replyBuffer = try LNetBuffer(count: SelftestProtocol.replyBufferSize)
            requestBuffer = try LNetBuffer(copying: request.encoded())
            replyHandles = try lnet.attach(
                MatchEntry(portal: SelftestProtocol.replyPortal,
                           matchBits: SelftestProtocol.matchBits(.reply, session: request.session), unlink: .unlink),
                descriptor: MemoryDescriptor(buffer: replyBuffer, threshold: .count(1), options: [.put], eventQueue: events))
        } catch {
            throw .lnet(error)
        }
        do {
            requestMD = try lnet.bind(MemoryDescriptor(buffer: requestBuffer, threshold: .count(2), eventQueue: events))
        } catch {
            try? lnet.unlink(replyHandles.me)
            throw .lnet(error)
        }
        var replyLinked = true
        var requestLinked = true
        defer {
            if replyLinked { try? lnet.unlink(replyHandles.me) }
            if requestLinked { try? lnet.unlink(requestMD) }
        }
        do {
            try lnet.put(requestMD, to: target, portal: SelftestProtocol.controlPortal,
                         matchBits: SelftestProtocol.controlMatchBits, ackRequested: true)
        } catch {
            throw .lnet(error)
        }
        let deadline = ContinuousClock.now + timeout
        var reply: SessionReply?
        while true {
            if reply != nil && !requestLinked { break }
            let remaining = deadline - .now
            if remaining <= .zero {
                if let reply { return reply }
                throw .timeout("no answer from \(target) to the self-test \(request.kind == .setup ? "set-up" : "teardown") request")
            }
            let event: LNetEvent
            do { event = try await events.next(timeout: reply != nil ? min(remaining, .seconds(2)) : remaining) } catch {
                if let reply { return reply }
                continue
            }
            if event.md == replyHandles.md {
                if event.unlinked { replyLinked = false }
                guard event.kind == .put else { continue }
                guard event.status.isOK else { throw .controlFailed("the reply failed: \(event.status)") }
                do { reply = try SessionReply(decoding: replyBuffer.read(length: event.matchedLength)) } catch {
                    throw .controlFailed(error.description)
                }
            } else if event.md == requestMD {
                if event.unlinked { requestLinked = false }
                // A failed SEND (nobody listening, connection refused) or a negative ACK (no control portal there).
                if !event.status.isOK { throw .noServer(target: target, status: event.status) }
            }
        }
        guard let reply else { throw .controlFailed("no reply") }
        return reply
    }
}

/// The per-run machinery: slots, their buffers, the event handlers and the watchdog.
final class RunEngine: Sendable {
    struct Tag: Sendable {
        let slot: Int
        let sequence: UInt64
    }

    struct Slot {
        var active = false
        var sequence: UInt64 = 0
        /// The bytes this operation moves.
        var length = 0
        var md: MDHandle?
        var started = ContinuousClock.now
        var failure: String?
        var completeLength = -1
        var mdDone = false
        var verdict: Verdict?
        var verdictError: String?
        var timedOut = false
        var finished = true
    }

    struct State {
        var slots: [Slot]
        var nextSequence: UInt64 = 1
        var issued = 0
        var inFlight = 0
        var running: Int
        var stopIssuing = false
        var result: SelftestResult
        var firstIssue: ContinuousClock.Instant?
        var lastCompletion: ContinuousClock.Instant?
        var continuation: CheckedContinuation<SelftestResult, Never>?
        var done = false
        var lastProgress = ContinuousClock.now
    }

    let lnet: LNet
    let configuration: SelftestConfiguration
    let target: ProcessID
    let session: UInt64
    /// The lengths operations draw from.
    private let sizes: OperationSizes
    private let logger: Logger
    private let buffers: [LNetBuffer]
    private let expected: [LNetBuffer]
    private let verdictBuffer: LNetBuffer?
    private let verdictME = Mutex<MEHandle?>(nil)
    private let state: Mutex<State>
    private let queue = Mutex<EventQueue?>(nil)
    private let timer = Mutex<Task<Void, Never>?>(nil)
    private let deadline = Mutex<ContinuousClock.Instant?>(nil)

    init(lnet: LNet, configuration: SelftestConfiguration, target: ProcessID, session: UInt64, logger: Logger) throws(SelftestError) {
        self.lnet = lnet
        self.logger = logger
        self.configuration = configuration
        self.target = target
        self.session = session
        sizes = configuration.sizes
        // Slots are sized for the largest operation; each operation uses the first `length` bytes of its slot.
        let size = configuration.bytesPerOperation
        var buffers: [LNetBuffer] = []
        var expected: [LNetBuffer] = []
        do {
            for slot in 0..<configuration.concurrency {
                let buffer = try LNetBuffer(count: size)
                switch configuration.op {
                case .write:
                    SelftestPattern.fill(buffer.bytes, seed: SelftestPattern.writeSeed(session: session))
                case .read:
                    if configuration.verify {
                        let pattern = try LNetBuffer(count: size)
                        SelftestPattern.fill(pattern.bytes, seed: SelftestPattern.readSeed(session: session, slot: slot))
                        expected.append(pattern)
                    }
                case .ping:
                    break
                }
                buffers.append(buffer)
            }
            verdictBuffer = configuration.op == .write && configuration.verify
                ? try LNetBuffer(count: configuration.concurrency * SelftestProtocol.verdictSize) : nil
        } catch {
            throw .lnet(error)
        }
        self.buffers = buffers
        self.expected = expected
        let result = SelftestResult(op: configuration.op, size: size, minSize: sizes.minimum, concurrency: configuration.concurrency,
                                    requestedCount: configuration.count, requestedDuration: configuration.duration,
                                    verifyRequested: configuration.verify, target: target, session: session)
        state = Mutex(State(slots: Array(repeating: Slot(), count: configuration.concurrency), running: configuration.concurrency,
                            result: result))
        queue.withLock { $0 = EventQueue(label: "lst-data", delivery: .inline { [weak self] event in self?.handle(event) }) }
        if let verdictBuffer {
            let verdicts = EventQueue(label: "lst-verdict", delivery: .inline { [weak self] event in self?.handleVerdict(event) })
            do {
                let attached = try lnet.attach(
                    MatchEntry(portal: SelftestProtocol.replyPortal,
                               matchBits: SelftestProtocol.matchBits(.verdict, session: session), unlink: .retain),
                    descriptor: MemoryDescriptor(buffer: verdictBuffer, threshold: .infinite, options: [.put, .manageRemote],
                                                 eventQueue: verdicts))
                verdictME.withLock { $0 = attached.me }
            } catch {
                throw .lnet(error)
            }
        }
    }

    /// Detaches what the run attached.
    func release() {
        if let me = verdictME.withLock({ me -> MEHandle? in
            defer { me = nil }
            return me
        }) {
            try? lnet.unlink(me)
        }
        queue.withLock { $0 = nil }
    }

    func run() async -> SelftestResult {
        let start = ContinuousClock.now
        if let duration = configuration.duration { deadline.withLock { $0 = start + duration } }
        startWatchdog()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<SelftestResult, Never>) in
            state.withLock { $0.continuation = continuation }
            for slot in 0..<configuration.concurrency { issue(slot) }
        }
        timer.withLock { timer in
            timer?.cancel()
            timer = nil
        }
        return result
    }

    // MARK: - Issuing

    private func issue(_ slot: Int) {
        let now = ContinuousClock.now
        let pastDeadline = deadline.withLock { $0.map { now >= $0 } ?? false }
        let issued = state.withLock { state -> (sequence: UInt64, length: Int)? in
            let countReached = configuration.count.map { state.issued >= $0 } ?? false
            if state.stopIssuing || countReached || pastDeadline {
                state.slots[slot].active = false
                return nil
            }
            state.issued += 1
            state.inFlight += 1
            state.result.peakInFlight = max(state.result.peakInFlight, state.inFlight)
            defer { state.nextSequence += 1 }
            let length = sizes.length(session: session, sequence: state.nextSequence)
            state.slots[slot] = Slot(active: true, sequence: state.nextSequence, length: length, started: now, finished: false)
            if state.firstIssue == nil { state.firstIssue = now }
            return (state.nextSequence, length)
        }
        guard let (sequence, length) = issued else { return slotStopped() }
        let buffer = buffers[slot]
        switch configuration.op {
        case .read where configuration.verify:
            UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[..<length]).initializeMemory(as: UInt8.self, repeating: 0)
        case .write:
            SelftestPattern.stamp(UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[..<length]), sequence: sequence)
        default:
            break
        }
        guard let events = queue.withLock({ $0 }) else { return fail(slot, sequence, "run released") }
        let md: MDHandle
        do {
            // The operation moves the first `length` bytes of its slot's buffer.
            md = try lnet.bind(MemoryDescriptor(storage: .region(buffer, offset: 0, length: length), threshold: .count(2),
                                                eventQueue: events, userInfo: Tag(slot: slot, sequence: sequence)))
        } catch {
            return fail(slot, sequence, "bind: \(error)")
        }
        // The operation's latency runs from `now` (before its buffer is prepared and its MD bound) to its completion.
        state.withLock { state in state.slots[slot].md = md }
        let size = configuration.bytesPerOperation  // slot i's part of the server's buffer is at i x the largest size
        do {
            switch configuration.op {
            case .read:
                try lnet.get(md, from: target, portal: SelftestProtocol.dataPortal,
                             matchBits: SelftestProtocol.matchBits(.data, session: session), offset: slot * size)
            case .write:
                try lnet.put(md, to: target, portal: SelftestProtocol.dataPortal,
                             matchBits: SelftestProtocol.matchBits(.data, session: session), offset: slot * size,
                             ackRequested: true, headerData: sequence)
            case .ping:
                try lnet.get(md, from: target, portal: SelftestProtocol.pingPortal, matchBits: SelftestProtocol.pingMatchBits)
            }
        } catch {
            // The MD's unlink event completes the operation with this failure.
            state.withLock { state in
                if state.slots[slot].sequence == sequence, state.slots[slot].failure == nil {
                    state.slots[slot].failure = "issue: \(error)"
                }
            }
            try? lnet.unlink(md)
        }
    }

    /// A failure before any MD event can come: complete the operation now.
    private func fail(_ slot: Int, _ sequence: UInt64, _ reason: String) {
        let snapshot = state.withLock { state -> Slot? in
            guard state.slots[slot].sequence == sequence, !state.slots[slot].finished else { return nil }
            state.slots[slot].failure = reason
            state.slots[slot].finished = true
            return state.slots[slot]
        }
        if let snapshot { complete(slot, snapshot) }
    }

    private func slotStopped() {
        let finished = state.withLock { state -> (CheckedContinuation<SelftestResult, Never>, SelftestResult)? in
            state.running -= 1
            guard state.running == 0, !state.done else { return nil }
            state.done = true
            if let first = state.firstIssue, let last = state.lastCompletion { state.result.elapsed = last - first }
            state.result.attempted = state.issued
            guard let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.result)
        }
        if let (continuation, result) = finished { continuation.resume(returning: result) }
    }

    // MARK: - Completion

    private func handle(_ event: LNetEvent) {
        guard let tag = event.userInfo as? Tag else { return }
        var unlinkMD = false
        let snapshot = state.withLock { state -> Slot? in
            guard state.slots[tag.slot].sequence == tag.sequence, !state.slots[tag.slot].finished else { return nil }
            var slot = state.slots[tag.slot]
            defer { state.slots[tag.slot] = slot }
            if !event.status.isOK, slot.failure == nil {
                slot.failure = slot.timedOut ? "timeout" : "\(event.kind) \(event.status)"
            }
            if event.kind == .reply || event.kind == .ack { slot.completeLength = event.matchedLength }
            if event.unlinked {
                slot.mdDone = true
                if slot.timedOut, slot.failure == nil { slot.failure = "timeout" }
            } else if !event.status.isOK || slot.failure != nil {
                // A failed SEND means no ACK/REPLY will come: unlink so the MD's last event arrives.
                unlinkMD = true
            }
            guard slot.mdDone else { return nil }
            let needsVerdict = configuration.op == .write && configuration.verify && slot.failure == nil
            guard !needsVerdict || slot.verdict != nil || slot.verdictError != nil else { return nil }
            slot.finished = true
            return slot
        }
        if unlinkMD { try? lnet.unlink(event.md) }
        if let snapshot { complete(tag.slot, snapshot) }
    }

    private func handleVerdict(_ event: LNetEvent) {
        guard event.kind == .put else { return }
        let index = event.offset / SelftestProtocol.verdictSize
        guard index >= 0, index < configuration.concurrency, let verdictBuffer else { return }
        var verdict: Verdict?
        var verdictError: String?
        if !event.status.isOK {
            verdictError = "verdict \(event.status)"
        } else {
            do {
                let decoded = try Verdict(decoding: verdictBuffer.read(offset: event.offset, length: min(event.matchedLength, SelftestProtocol.verdictSize)))
                if decoded.session != session || decoded.slot != index || decoded.sequence != event.headerData {
                    verdictError = "verdict garbled (session \(decoded.session) slot \(decoded.slot) sequence \(decoded.sequence))"
                } else {
                    verdict = decoded
                }
            } catch {
                verdictError = "verdict: \(error)"
            }
        }
        let snapshot = state.withLock { state -> Slot? in
            guard state.slots[index].sequence == event.headerData, !state.slots[index].finished else { return nil }
            state.slots[index].verdict = verdict
            state.slots[index].verdictError = verdictError
            guard state.slots[index].mdDone else { return nil }
            state.slots[index].finished = true
            return state.slots[index]
        }
        if let snapshot { complete(index, snapshot) }
    }

    /// Checks a finished operation, records it, and issues the slot's next one.
    private func complete(_ index: Int, _ slot: Slot) {
        let now = ContinuousClock.now
        var failure = slot.failure
        var verification: String?
        var checked = false
        let length = slot.length
        if failure == nil {
            switch configuration.op {
            case .read:
                if slot.completeLength != length {
                    failure = "short reply (\(slot.completeLength) of \(length) bytes)"
                } else if configuration.verify {
                    // Exactly the bytes this GET asked for and got: the start of the slot's pattern.
                    let sink = buffers[index]
                    if configuration.testHooks.corruptRead?(slot.sequence) == true { sink.bytes[length / 2] ^= 0x5A }
                    if let offset = SelftestPattern.firstDifference(UnsafeRawBufferPointer(rebasing: sink.bytes[..<length]),
                                                                    UnsafeRawBufferPointer(rebasing: expected[index].bytes[..<length])) {
                        verification = "read data differs at byte \(offset)"
                    }
                    checked = true
                }
            case .write:
                if slot.completeLength != length {
                    failure = "short ACK (\(slot.completeLength) of \(length) bytes)"
                } else if configuration.verify {
                    if let error = slot.verdictError {
                        failure = error
                    } else if let verdict = slot.verdict, verdict.status == .failed {
                        failure = "server: the write failed there"
                    } else if let verdict = slot.verdict, verdict.status != .ok {
                        verification = "server: \(verdict.status)" + (verdict.status == .patternMismatch ? " at byte \(verdict.badOffset)" : "")
                    }
                    checked = true
                }
            case .ping:
                if slot.completeLength < NodeInfo.encodedSize {
                    failure = "short ping reply (\(slot.completeLength) bytes)"
                } else if configuration.verify {
                    do {
                        let node = try NodeInfo(decoding: buffers[index].read(length: NodeInfo.encodedSize))
                        if node.pid != target.pid || (node.nid != target.nid && target.nid.network != .loopback) {
                            verification = "ping answered by \(node.processID), not \(target)"
                        }
                    } catch {
                        verification = "ping reply: \(error)"
                    }
                    checked = true
                }
            }
        }
        let ok = failure == nil && verification == nil
        let stopNow = state.withLock { state -> Bool in
            state.lastCompletion = now
            state.inFlight -= 1
            if ok {
                state.result.succeeded += 1
                state.result.bytes += length
                state.result.latency.record(UInt64(clamping: (now - slot.started).inNanoseconds))
                if checked { state.result.verifiedOperations += 1 }
            } else {
                state.result.failed += 1
                let reason = verification.map { "verification: \($0)" } ?? failure ?? "failed"
                if verification != nil { state.result.verificationFailures += 1 }
                let kind = reason.split(separator: " (").first.map(String.init) ?? reason
                state.result.errors[kind, default: 0] += 1
                if state.result.firstError == nil { state.result.firstError = "op \(slot.sequence) (slot \(index)): \(reason)" }
                if let maxErrors = configuration.maxErrors, state.result.failed >= maxErrors, !state.stopIssuing {
                    state.stopIssuing = true
                    state.result.aborted = true
                }
            }
            return state.stopIssuing
        }
        if !ok {
            logger.debug("self-test operation failed", metadata: ["slot": "\(index)", "sequence": "\(slot.sequence)",
                                                                  "reason": "\(verification ?? failure ?? "")"])
        }
        if ok || stopNow {
            issue(index)
        } else {
            // Failures can complete synchronously inside put/get: issue the next one from elsewhere, not recursively.
            DispatchQueue.global().async { [self] in issue(index) }
        }
    }

    // MARK: - Watchdog

    private func startWatchdog() {
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                guard let self, !Task.isCancelled else { return }
                tick()
            }
        }
        timer.withLock { $0 = task }
    }

    private func tick() {
        let now = ContinuousClock.now
        var unlink: [MDHandle] = []
        var finished: [(Int, Slot)] = []
        let progress = state.withLock { state -> SelftestProgress? in
            for index in state.slots.indices where state.slots[index].active && !state.slots[index].finished {
                guard now - state.slots[index].started > configuration.operationTimeout else { continue }
                if !state.slots[index].mdDone {
                    if !state.slots[index].timedOut, let md = state.slots[index].md {
                        state.slots[index].timedOut = true
                        unlink.append(md)
                    }
                } else {
                    state.slots[index].verdictError = "timeout waiting for the verdict"
                    state.slots[index].finished = true
                    finished.append((index, state.slots[index]))
                }
            }
            guard configuration.progress != nil, now - state.lastProgress >= configuration.progressInterval else { return nil }
            state.lastProgress = now
            return SelftestProgress(elapsed: state.firstIssue.map { now - $0 } ?? .zero, attempted: state.issued,
                                    succeeded: state.result.succeeded, failed: state.result.failed, bytes: state.result.bytes)
        }
        for md in unlink { try? lnet.unlink(md) }
        for (index, slot) in finished { complete(index, slot) }
        if let progress { configuration.progress?(progress) }
    }
}
