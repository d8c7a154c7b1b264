#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import LNet
import Synchronization

/// One operation on a freshly bound MD, awaited until the MD's last event (so its memory is free again), with a
/// timeout that unlinks the MD. Events are handled inline so timestamps are taken where the completion happens.
final class SingleOperation: Sendable {
    struct Outcome: Sendable {
        /// The first failure among the events (or `.timeout`), else `.ok`.
        var status: LNetStatus = .ok
        /// A failure before any event (the call threw).
        var error: String?
        var reply: LNetEvent?
        var ack: LNetEvent?
        /// Issue to REPLY (GET) or ACK (PUT).
        var replyTime: Duration?
        /// Issue to the last event.
        var elapsed: Duration = .zero
    }

    private struct State {
        var outcome = Outcome()
        var done = false
        var timedOut = false
        var continuation: CheckedContinuation<Outcome, Never>?
    }

    let lnet: LNet
    private let state = Mutex(State())
    private let start = Mutex<ContinuousClock.Instant>(.now)

    init(lnet: LNet) { self.lnet = lnet }

    func run(storage: MemoryDescriptor.Storage, threshold: Int, timeout: Duration,
             _ body: (MDHandle) throws(LNetError) -> Void) async -> Outcome {
        let queue = EventQueue(label: "lst-op", delivery: .inline { [self] event in handle(event) })
        let md: MDHandle
        do {
            md = try lnet.bind(MemoryDescriptor(storage: storage, threshold: .count(threshold), eventQueue: queue))
        } catch {
            return Outcome(status: .failed, error: error.description)
        }
        start.withLock { $0 = .now }
        do {
            try body(md)
        } catch {
            state.withLock { $0.outcome.error = error.description; $0.outcome.status = .failed }
            try? lnet.unlink(md)
        }
        let timer = Task { [lnet] in
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            let stillRunning = state.withLock { state -> Bool in
                guard !state.done else { return false }
                state.timedOut = true
                return true
            }
            if stillRunning { try? lnet.unlink(md) }
        }
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let finished = state.withLock { state -> Outcome? in
                if state.done { return state.outcome }
                state.continuation = continuation
                return nil
            }
            if let finished { continuation.resume(returning: finished) }
        }
        timer.cancel()
        return outcome
    }

    private func handle(_ event: LNetEvent) {
        let now = ContinuousClock.now
        let began = start.withLock { $0 }
        var unlinkNow = false
        let resume = state.withLock { state -> (CheckedContinuation<Outcome, Never>, Outcome)? in
            if state.timedOut, state.outcome.status.isOK { state.outcome.status = .timeout }
            if !event.status.isOK, state.outcome.status.isOK { state.outcome.status = event.status }
            switch event.kind {
            case .reply:
                state.outcome.reply = event
                state.outcome.replyTime = now - began
            case .ack:
                state.outcome.ack = event
                state.outcome.replyTime = now - began
            default:
                break
            }
            guard event.unlinked else {
                // A failed SEND means the ACK/REPLY will never come: unlink so the MD's last event arrives.
                unlinkNow = !event.status.isOK
                return nil
            }
            state.done = true
            state.outcome.elapsed = now - began
            guard let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.outcome)
        }
        if unlinkNow { try? lnet.unlink(event.md) }
        if let (continuation, outcome) = resume { continuation.resume(returning: outcome) }
    }
}
