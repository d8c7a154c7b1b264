import LNet
import Logging
import Synchronization

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
