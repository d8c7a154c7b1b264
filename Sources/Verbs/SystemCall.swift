#if canImport(Glibc)
import Glibc
#endif

/// The system-call plumbing of Verbs' event channels, written once: EINTR and EAGAIN, poll(2) with a `Duration`,
/// non-blocking descriptors.
enum SystemCall {
    enum Outcome {
        case done
        /// The call failed with EAGAIN or EWOULDBLOCK: nothing was ready.
        case wouldBlock
    }

    /// Runs `body` (a call that returns a negative value and sets errno when it fails) again as long as it fails
    /// with EINTR. EAGAIN/EWOULDBLOCK is `.wouldBlock` (unless `wouldBlockIsFailure`); any other failure throws,
    /// naming `call`.
    static func retryingInterrupts(_ call: String, wouldBlockIsFailure: Bool = false, _ body: () -> Int32) throws(VerbsError) -> Outcome {
        while true {
            if body() >= 0 { return .done }
            let code = VerbsError.current
            if code == EINTR { continue }
            if !wouldBlockIsFailure && (code == EAGAIN || code == EWOULDBLOCK) { return .wouldBlock }
            throw VerbsError(call: call, errno: code)
        }
    }
}

/// `poll(2)` on one descriptor, retried on EINTR, with a Duration timeout; and making a channel's descriptor
/// non-blocking.
enum FileDescriptorWait {
    static func makeNonBlocking(_ fd: Int32) throws(VerbsError) {
        if fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 {
            throw VerbsError(call: "fcntl(O_NONBLOCK)", errno: VerbsError.current)
        }
    }

    /// Returns when the descriptor is readable or the timeout passed (the caller re-checks).
    static func readable(_ fd: Int32, timeout: Duration?, call: String) throws(VerbsError) {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds: Int32
        if let timeout {
            milliseconds = max(0, timeout.pollMilliseconds)
        } else {
            milliseconds = -1
        }
        _ = try SystemCall.retryingInterrupts(call, wouldBlockIsFailure: true) { poll(&entry, 1, milliseconds) }
    }
}

extension Duration {
    /// Whole milliseconds for poll(2) and rdma_cm's timeouts (truncated, clamped to `Int32`).
    var pollMilliseconds: Int32 {
        let (seconds, attoseconds) = components
        return Int32(clamping: seconds.multipliedReportingOverflow(by: 1000).overflow ? (seconds < 0 ? .min : .max)
                     : seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
