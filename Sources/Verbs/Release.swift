import Logging
import Synchronization

/// What releasing verbs and rdma_cm handles did, process-wide: every `ibv_destroy_*` / `ibv_dealloc_*` /
/// `ibv_dereg_mr` / `rdma_destroy_*` a handle's `deinit` makes goes through here, so a release that fails (a
/// handle destroyed out of order, twice, or with work the device still holds) is logged and counted instead of
/// being lost in a `deinit`.
public enum Release {
    /// One release call's figures.
    public struct Tally: Sendable, Equatable {
        /// Calls made.
        public var calls = 0
        /// Calls that returned an error.
        public var failures = 0
    }

    private static let state = Mutex<[String: Tally]>([:])
    private static let logger = Logger(label: "verbs.release")

    /// Each release call's tally, by the C function's name (`ibv_destroy_qp`, ...).
    public static var tallies: [String: Tally] { state.withLock { $0 } }

    /// Release calls that failed, over all kinds.
    public static var failures: Int { state.withLock { $0.values.reduce(0) { $0 + $1.failures } } }

    /// Records a release call's result: 0 is success; otherwise the errno value (verbs) or -1 with errno set
    /// (rdma_cm).
    static func record(_ call: String, _ result: Int32) {
        let failed = result != 0
        state.withLock { tallies in
            tallies[call, default: Tally()].calls += 1
            if failed { tallies[call, default: Tally()].failures += 1 }
        }
        if failed {
            let errno = result > 0 ? result : VerbsError.current
            logger.error("releasing a verbs handle failed", metadata: ["call": "\(call)", "error": "\(VerbsError(call: call, errno: errno))"])
        }
    }
}
