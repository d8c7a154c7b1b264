/// A handle to a memory descriptor that LNet holds. Handles are never reused: a stale handle is simply invalid.
public struct MDHandle: Hashable, Sendable, CustomStringConvertible {
    /// The cookie carried on the wire (as the initiator's MD cookie) to route ACKs and REPLYs back.
    public let cookie: UInt64

    public init(cookie: UInt64) { self.cookie = cookie }

    /// A handle that names no MD (`LNET_INVALID_HANDLE`).
    public static let invalid = MDHandle(cookie: 0)

    public var description: String { "md#\(cookie)" }
}

/// How many operations an MD may take part in before it stops matching.
public enum MDThreshold: Hashable, Sendable {
    /// No limit (`LNET_MD_THRESH_INF`).
    case infinite
    /// This many operations; each SEND, ACK, REPLY, PUT and GET uses one.
    case count(Int)
}

/// Whether an MD (and its match entry) is unlinked automatically once it is exhausted.
public enum LNetUnlinkPolicy: Hashable, Sendable {
    /// Unlink when the threshold reaches zero and nothing is in flight (`LNET_UNLINK`).
    case unlink
    /// Keep it (inactive) until it is unlinked explicitly (`LNET_RETAIN`).
    case retain
}

/// A memory descriptor: memory plus the rules for using it (`struct lnet_md`).
public struct MemoryDescriptor: Sendable {
    /// Options that change how an MD matches and completes.
    public struct Options: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// Incoming PUTs may match this MD (`LNET_MD_OP_PUT`).
        public static let put = Options(rawValue: 1 << 0)
        /// Incoming GETs may match this MD (`LNET_MD_OP_GET`).
        public static let get = Options(rawValue: 1 << 1)
        /// Use the offset the initiator sends instead of the MD's own running offset (`LNET_MD_MANAGE_REMOTE`).
        public static let manageRemote = Options(rawValue: 1 << 2)
        /// Accept a message longer than the space left, delivering only what fits (`LNET_MD_TRUNCATE`).
        public static let truncate = Options(rawValue: 1 << 3)
        /// Never send an ACK for a PUT into this MD, even if the initiator asked for one (`LNET_MD_ACK_DISABLE`).
        public static let ackDisable = Options(rawValue: 1 << 4)
    }

    /// Where the bytes are.
    public enum Storage: @unchecked Sendable {
        /// One owned buffer (the whole buffer).
        case buffer(LNetBuffer)
        /// A part of one owned buffer.
        case region(LNetBuffer, offset: Int, length: Int)
        /// Several owned buffers, in order (a scatter/gather list, like Lustre's kiov).
        case buffers([LNetBuffer])
        /// Caller-provided memory. The caller guarantees that the memory stays valid, and is not accessed
        /// concurrently by the application, from attach/bind until the MD's final event (the one with
        /// `unlinked == true`).
        case unsafeFragments([UnsafeMutableRawBufferPointer])
        /// No memory: a zero-length MD (e.g. a PUT that carries only its header data).
        case none
    }

    public var storage: Storage
    public var threshold: MDThreshold
    public var options: Options
    /// Where the MD's events go; `nil` for no events.
    public var eventQueue: EventQueue?
    /// An opaque value returned in every event on this MD (Lustre's `user_ptr`).
    public var userInfo: (any Sendable)?

    public init(storage: Storage, threshold: MDThreshold = .count(1), options: Options = [],
                eventQueue: EventQueue? = nil, userInfo: (any Sendable)? = nil) {
        self.storage = storage
        self.threshold = threshold
        self.options = options
        self.eventQueue = eventQueue
        self.userInfo = userInfo
    }

    /// An MD over one whole owned buffer.
    public init(buffer: LNetBuffer, threshold: MDThreshold = .count(1), options: Options = [],
                eventQueue: EventQueue? = nil, userInfo: (any Sendable)? = nil) {
        self.init(storage: .buffer(buffer), threshold: threshold, options: options, eventQueue: eventQueue,
                  userInfo: userInfo)
    }

    /// Resolves the storage to fragments, validating ranges.
    func makeStorage() throws(LNetError) -> MDStorage {
        switch storage {
        case .none:
            return .empty
        case .buffer(let buffer):
            return MDStorage(fragments: buffer.count > 0 ? [LNetFragment(baseAddress: buffer.baseAddress, length: buffer.count)] : [],
                             owners: [buffer])
        case .region(let buffer, let offset, let length):
            guard offset >= 0, length >= 0, offset <= buffer.count, length <= buffer.count - offset else {
                throw LNetError.invalidMemoryDescriptor("region \(offset)+\(length) is outside a \(buffer.count)-byte buffer")
            }
            return MDStorage(fragments: length > 0 ? [LNetFragment(baseAddress: buffer.baseAddress + offset, length: length)] : [],
                             owners: [buffer])
        case .buffers(let buffers):
            return MDStorage(fragments: buffers.filter { $0.count > 0 }.map { LNetFragment(baseAddress: $0.baseAddress, length: $0.count) },
                             owners: buffers)
        case .unsafeFragments(let pieces):
            var fragments: [LNetFragment] = []
            for piece in pieces where piece.count > 0 {
                guard let base = piece.baseAddress else {
                    throw LNetError.invalidMemoryDescriptor("a fragment has a length but no address")
                }
                fragments.append(LNetFragment(baseAddress: base, length: piece.count))
            }
            return MDStorage(fragments: fragments, owners: [])
        }
    }
}
