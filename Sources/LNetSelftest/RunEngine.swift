import LNet
import Logging
import Synchronization

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
            let hints = configuration.hint.hints(slot: slot, sequence: sequence)
            switch configuration.op {
            case .read:
                try lnet.get(md, from: target, portal: SelftestProtocol.dataPortal,
                             matchBits: SelftestProtocol.matchBits(.data, session: session), offset: slot * size, hints: hints)
            case .write:
                try lnet.put(md, to: target, portal: SelftestProtocol.dataPortal,
                             matchBits: SelftestProtocol.matchBits(.data, session: session), offset: slot * size,
                             ackRequested: true, headerData: sequence, hints: hints)
            case .ping:
                try lnet.get(md, from: target, portal: SelftestProtocol.pingPortal, matchBits: SelftestProtocol.pingMatchBits,
                             hints: hints)
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
            Task { [self] in issue(index) }
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
