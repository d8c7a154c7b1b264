/// A `Duration` in the units system calls and reports take. Written once here for every module above LNet
/// (`package`); Verbs, below it, has its own for the timeouts it passes to poll(2) and rdma_cm.
extension Duration {
    /// Whole nanoseconds (truncated; saturating at the ends of `Int64`).
    package var inNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return seconds < 0 ? .min : .max }
        return scaled.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }

    /// Whole microseconds (truncated).
    package var inMicroseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds.multipliedReportingOverflow(by: 1_000_000).overflow ? (seconds < 0 ? .min : .max)
            : seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }

    /// Whole milliseconds (truncated).
    package var inMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds.multipliedReportingOverflow(by: 1000).overflow ? (seconds < 0 ? .min : .max)
            : seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Seconds as a floating-point number.
    package var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
