import Dispatch
import LNet
import Logging
import Synchronization

/// The placement hints self-test operations carry (`lnetctl selftest --hint`), for a server whose
/// `LNET_PLACEMENT` is `hint`.
public enum SelftestHint: String, Sendable, CaseIterable, CustomStringConvertible {
    /// No hints: the server places by the client's NID.
    case none
    /// Each slot (operation in flight) is one object: major = slot + 1, minor = 0, so each slot's operations stay on
    /// one partition of the server and the slots spread over its partitions.
    case object
    /// One object, offsets moving on: major = 1, minor = the operation's sequence number, so consecutive operations
    /// go to different partitions.
    case offset

    /// The hints of operation `sequence` issued by `slot`.
    public func hints(slot: Int, sequence: UInt64) -> LNetHints {
        switch self {
        case .none: .none
        case .object: LNetHints(major: UInt64(slot) + 1, minor: 0)
        case .offset: LNetHints(major: 1, minor: sequence)
        }
    }

    public var description: String { rawValue }
}

/// What a self-test run does.
public struct SelftestConfiguration: Sendable {
    public var op: SelftestOp
    /// The placement hints every operation carries.
    public var hint: SelftestHint = .none
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
