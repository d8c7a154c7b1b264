import LNet

/// Timeouts and keepalives, run by the scheduler thread every 100 ms.
extension Connection {
    /// Fails what has waited past its deadline (closing the connection: a timeout means the peer is in
    /// trouble), and sends a keepalive when the connection has been quiet.
    func checkTimers(now: Tick) {
        var deferred = Deferred()
        state.withLock { state in
            switch state.phase {
            case .closed:
                return
            case .connecting:
                if now.since(created) > UInt64(timeoutSeconds + 1) * 1_000_000_000 {
                    closeLocked(&state, reason: "connecting timed out", status: .timeout, &deferred)
                }
                return
            case .established:
                break
            }
            // A transaction whose request waits in the send queue is the queue's to time out (SendQueue).
            let expired = state.transactions.values.contains { ($0.requestPosted || !$0.initiated) && $0.deadline < now }
                || state.queue.oldestQueuedDeadline.map { $0 < now } == true
            if expired {
                context.counters.bump(.timeouts)
                // What the connection was waiting for, for the log (as o2iblnd's "timed out tx" lines).
                let waitingFor = state.transactions.values.sorted { $0.cookie < $1.cookie }.prefix(8).map(\.summary)
                let credits = state.queue.credits
                logger.warning("message timed out", metadata: [
                    "posted": "\(state.queue.posted.count)", "queued": "\(state.queue.queuedCount)",
                    "credits": "\(credits.available) available, \(credits.owed) owed, \(credits.transactions) transactions",
                    "transactions": "\(state.transactions.count): \(waitingFor.joined(separator: ", "))",
                    "lastReceive": "\(now.duration(since: state.lastReceive)) ago", "lastSend": "\(now.duration(since: state.lastSend)) ago",
                ])
                closeLocked(&state, reason: "a message timed out after \(timeoutSeconds) s", status: .timeout, &deferred)
                return
            }
            let keepalive = context.tunables.keepalive
            if keepalive > 0 {
                if now.since(state.lastReceive) > UInt64(keepalive * 3 + timeoutSeconds) * 1_000_000_000 {
                    closeLocked(&state, reason: "peer silent for \(now.duration(since: state.lastReceive))", status: .timeout, &deferred)
                    return
                }
                if now.since(state.lastSend) > UInt64(keepalive) * 1_000_000_000 {
                    state.queue.keepalive()
                    pump(&state, &deferred)
                }
            }
        }
        deferred.run()
    }
}
