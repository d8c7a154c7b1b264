import LNet
/// The connection handshake, carried in rdma_cm private data (connect: at most 56 bytes; accept: 196; reject: 148).
///
/// ```
/// CONNREQ (40 bytes)                     CONNACK (48 bytes)                   CONNREJ (32 bytes)
///  0 u32 magic  "LNC1"                    0 u32 magic                          0 u32 magic
///  4 u16 version                          4 u16 version                        4 u16 version
///  6 u16 reserved                         6 u16 reserved                       6 u8  reason, u8 reserved
///  8 u64 source NID                       8 u64 source NID (the acceptor)      8 u64 rejecter's incarnation
/// 16 u64 source incarnation              16 u64 acceptor incarnation          16 u16 queue depth  \
/// 24 u64 destination NID                 24 u64 requester incarnation (echo)  18 u16 max fragments } it would accept
/// 32 u16 queue depth  \                  32 u16 queue depth  \                20 u32 max message  /
/// 34 u16 max fragments } proposed        34 u16 max fragments } agreed        24 u64 destination NID it serves
/// 36 u32 max message  /                  36 u32 max message  /
///                                        40 u64 destination NID (requester)
/// ```
/// rdma_cm may pad private data with zeros; each form has a fixed size and ignores what follows it.
public enum Handshake {
    public static let magic: UInt32 = 0x3143_4E4C  // "LNC1"
    public static let version: UInt16 = 2
}

/// What a connection is sized by; proposed by the active side, possibly lowered by the passive side.
public struct ConnectionLimits: Sendable, Hashable, CustomStringConvertible {
    /// Receive buffers per side, and so messages in flight each way (peer credits).
    public var queueDepth: UInt16
    public var maxFragments: UInt16
    public var maxMessageSize: UInt32

    public init(queueDepth: UInt16, maxFragments: UInt16, maxMessageSize: UInt32) {
        self.queueDepth = queueDepth
        self.maxFragments = maxFragments
        self.maxMessageSize = maxMessageSize
    }

    public var description: String { "queue depth \(queueDepth), \(maxFragments) fragments, \(maxMessageSize)-byte messages" }

    func encode(into writer: inout ByteWriter) {
        writer.write(queueDepth)
        writer.write(maxFragments)
        writer.write(maxMessageSize)
    }

    static func decode(from reader: inout WireReader) throws(WireError) -> ConnectionLimits {
        ConnectionLimits(queueDepth: try reader.read(), maxFragments: try reader.read(), maxMessageSize: try reader.read())
    }
}

/// Why the passive side refused a connection.
public enum RejectReason: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case versionMismatch = 1, queueDepthTooLarge, tooManyFragments, messageSizeTooLarge, staleIncarnation,
         connectionRace, noResources, wrongDestination, malformed, shuttingDown

    public var description: String {
        switch self {
        case .versionMismatch: "protocol version mismatch"
        case .queueDepthTooLarge: "queue depth too large"
        case .tooManyFragments: "too many fragments"
        case .messageSizeTooLarge: "message size too large"
        case .staleIncarnation: "stale incarnation"
        case .connectionRace: "connection race"
        case .noResources: "no resources"
        case .wrongDestination: "not the destination NID"
        case .malformed: "malformed connection request"
        case .shuttingDown: "shutting down"
        }
    }

    /// Whether the active side may retry, with the limits the reject carries.
    public var isRetryable: Bool {
        switch self {
        case .queueDepthTooLarge, .tooManyFragments, .messageSizeTooLarge, .connectionRace, .noResources: true
        default: false
        }
    }
}

/// The active side's request.
public struct ConnectRequest: Sendable, Hashable {
    public static let size = 40
    public var source: UInt64
    public var sourceStamp: UInt64
    public var destination: UInt64
    public var limits: ConnectionLimits
    /// Set only when decoding a request of another version, so the passive side can reject it by name.
    public var version: UInt16 = Handshake.version

    public init(source: UInt64, sourceStamp: UInt64, destination: UInt64, limits: ConnectionLimits) {
        self.source = source
        self.sourceStamp = sourceStamp
        self.destination = destination
        self.limits = limits
    }

    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Self.size) { buffer, count in
            var writer = ByteWriter(UnsafeMutableRawBufferPointer(buffer))
            writer.write(Handshake.magic)
            writer.write(version)
            writer.write(UInt16(0))
            writer.write(source)
            writer.write(sourceStamp)
            writer.write(destination)
            limits.encode(into: &writer)
            count = Self.size
        }
    }

    /// Decodes a request; a wrong magic or short data is `WireError`, another version decodes with `version` set.
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> ConnectRequest {
        try WireReader.withReader(bytes) { reader throws(WireError) in
            let magic = try reader.read(UInt32.self)
            guard magic == Handshake.magic else { throw WireError.badMagic(magic) }
            let version = try reader.read(UInt16.self)
            _ = try reader.read(UInt16.self)
            var request = ConnectRequest(source: try reader.read(), sourceStamp: try reader.read(),
                                         destination: try reader.read(), limits: try .decode(from: &reader))
            request.version = version
            return request
        }
    }
}

/// The passive side's acceptance, with the limits both sides now use.
public struct ConnectAccept: Sendable, Hashable {
    public static let size = 48
    public var source: UInt64
    public var sourceStamp: UInt64
    public var requesterStamp: UInt64
    public var limits: ConnectionLimits
    public var destination: UInt64

    public init(source: UInt64, sourceStamp: UInt64, requesterStamp: UInt64, limits: ConnectionLimits, destination: UInt64) {
        self.source = source
        self.sourceStamp = sourceStamp
        self.requesterStamp = requesterStamp
        self.limits = limits
        self.destination = destination
    }

    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Self.size) { buffer, count in
            var writer = ByteWriter(UnsafeMutableRawBufferPointer(buffer))
            writer.write(Handshake.magic)
            writer.write(Handshake.version)
            writer.write(UInt16(0))
            writer.write(source)
            writer.write(sourceStamp)
            writer.write(requesterStamp)
            limits.encode(into: &writer)
            writer.write(destination)
            count = Self.size
        }
    }

    public static func decode(_ bytes: [UInt8]) throws(WireError) -> ConnectAccept {
        try WireReader.withReader(bytes) { reader throws(WireError) in
            let magic = try reader.read(UInt32.self)
            guard magic == Handshake.magic else { throw WireError.badMagic(magic) }
            let version = try reader.read(UInt16.self)
            guard version == Handshake.version else { throw WireError.badVersion(version) }
            _ = try reader.read(UInt16.self)
            return ConnectAccept(source: try reader.read(), sourceStamp: try reader.read(), requesterStamp: try reader.read(),
                                 limits: try .decode(from: &reader), destination: try reader.read())
        }
    }
}

/// The passive side's refusal: why, and what it would accept.
public struct ConnectReject: Sendable, Hashable {
    public static let size = 32
    public var reason: RejectReason
    public var stamp: UInt64
    public var limits: ConnectionLimits
    public var servedNID: UInt64

    public init(reason: RejectReason, stamp: UInt64, limits: ConnectionLimits, servedNID: UInt64) {
        self.reason = reason
        self.stamp = stamp
        self.limits = limits
        self.servedNID = servedNID
    }

    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Self.size) { buffer, count in
            var writer = ByteWriter(UnsafeMutableRawBufferPointer(buffer))
            writer.write(Handshake.magic)
            writer.write(Handshake.version)
            writer.write(reason.rawValue)
            writer.write(UInt8(0))
            writer.write(stamp)
            limits.encode(into: &writer)
            writer.write(servedNID)
            count = Self.size
        }
    }

    /// Decodes a reject; nil when the private data is not ours (e.g. a reject by the CM itself, no listener).
    public static func decode(_ bytes: [UInt8]) -> ConnectReject? {
        bytes.withUnsafeBytes { raw -> ConnectReject? in
            var reader = WireReader(raw)
            guard (try? reader.read(UInt32.self)) == Handshake.magic,
                  (try? reader.read(UInt16.self)) != nil,
                  let rawReason = try? reader.read(UInt8.self), let reason = RejectReason(rawValue: rawReason),
                  (try? reader.read(UInt8.self)) != nil,
                  let stamp = try? reader.read(UInt64.self),
                  let limits = try? ConnectionLimits.decode(from: &reader),
                  let served = try? reader.read(UInt64.self) else { return nil }
            return ConnectReject(reason: reason, stamp: stamp, limits: limits, servedNID: served)
        }
    }
}
