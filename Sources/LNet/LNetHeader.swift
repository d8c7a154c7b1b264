/// The four LNet message types.
public enum LNetMessageType: UInt8, Sendable, Hashable, CustomStringConvertible {
    case put = 1
    case get = 2
    case ack = 3
    case reply = 4

    public var description: String {
        switch self {
        case .put: return "PUT"
        case .get: return "GET"
        case .ack: return "ACK"
        case .reply: return "REPLY"
        }
    }
}

/// Placement hints carried in a header so a server can keep one object's work on one CPU partition.
///
/// A hint is not a CPU number: it names the work (e.g. `major` = an object id, `minor` = an offset in GiB).
/// Both zero means "no hint". Instead of hints a PUT or GET can carry a server's placement cookie
/// (``init(cookie:)``): one the server gave in an ACK or REPLY (``LNetEvent/placementCookie``), echoed back so the
/// server places the message on the partition the cookie names.
public struct LNetHints: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt64
    /// The minor hint; `UInt64.max` is reserved: it marks `major` as a server's placement cookie.
    public var minor: UInt64

    public init(major: UInt64, minor: UInt64 = 0) {
        self.major = major
        self.minor = minor
    }

    /// A server's placement cookie, echoed (header flag bit 1). Kept in the same 16 bytes as hints (`major` the
    /// cookie, `minor` the reserved `UInt64.max`), so a header is no larger for it.
    public init(cookie: LNetPlacementCookie) {
        self.major = cookie.rawValue
        self.minor = .max
    }

    /// Whether `major` is a server's placement cookie rather than a hint.
    public var isCookie: Bool { minor == .max }

    /// The server's placement cookie these hints carry, if they are one.
    public var cookie: LNetPlacementCookie? { isCookie ? LNetPlacementCookie(rawValue: major) : nil }

    /// No hint: placement falls back to the peer NID hash.
    public static let none = LNetHints(major: 0, minor: 0)

    public var isNone: Bool { major == 0 && minor == 0 }

    public var description: String {
        if let cookie { return "\(cookie)" }
        return isNone ? "none" : "\(major).\(minor)"
    }
}

/// A placement cookie a server gives a peer in an ACK or REPLY (with ``LNet/Configuration/placementCookies``;
/// ``LNetEvent/placementCookie`` on the peer's ACK or REPLY event): it
/// names the CPU partition the server matched the request on. A peer that echoes it (``LNetHints/init(cookie:)``)
/// has its later messages placed on that partition, whatever the server's policy would compute, so the server
/// decides where an object's work goes rather than a hash of the client's hints. A cookie naming no partition of
/// the server is ignored (the message is placed by the policy). On the wire it is a 64-bit field whose value must
/// fit 16 bits; in memory it takes 2 bytes (so the headers and events that carry one stay as small as before).
public struct LNetPlacementCookie: Hashable, Sendable, CustomStringConvertible {
    private let value: UInt16

    /// The cookie of a wire value, `nil` when it does not fit 16 bits.
    public init?(rawValue: UInt64) {
        guard let value = UInt16(exactly: rawValue) else { return nil }
        self.value = value
    }

    /// The cookie that names `partition`.
    public init(partition: Int) { self.value = UInt16(clamping: partition) }

    /// Its wire value.
    public var rawValue: UInt64 { UInt64(value) }

    /// The partition the cookie names.
    public var partition: Int { Int(value) }

    public var description: String { "cookie(cpt\(partition))" }
}

/// The LNet message header: a fixed-size, little-endian binary record that an LND embeds in its own wire
/// messages.
///
/// Wire layout (version 1, ``encodedSize`` = 96 bytes, all integers little-endian):
///
/// | offset | size | field                                                                      |
/// |-------:|-----:|----------------------------------------------------------------------------|
/// |      0 |    4 | magic `0x4C4E4554` ("LNET")                                                 |
/// |      4 |    2 | version (1)                                                                 |
/// |      6 |    1 | type: 1 PUT, 2 GET, 3 ACK, 4 REPLY                                          |
/// |      7 |    1 | flags: bit 0 = ACK requested (PUT); bit 1 = a placement cookie: a PUT or GET echoes one in bytes 80-87 (instead of hints), an ACK or REPLY gives one in bytes 64-71; other bits must be zero |
/// |      8 |    8 | destination NID (network << 32 \| address)                                  |
/// |     16 |    8 | source NID                                                                  |
/// |     24 |    4 | destination pid                                                             |
/// |     28 |    4 | source pid                                                                  |
/// |     32 |    4 | payload length: data bytes this message carries (PUT, REPLY; 0 for GET/ACK)|
/// |     36 |    4 | length: GET = bytes requested; ACK = bytes the PUT matched; REPLY = bytes the GET asked for; PUT = 0 |
/// |     40 |    4 | portal index (PUT, GET)                                                     |
/// |     44 |    4 | status (``LNetStatus`` raw value; ACK/REPLY report failure here)            |
/// |     48 |    8 | match bits                                                                  |
/// |     56 |    8 | remote offset (PUT, GET; ACK/REPLY echo the matched offset)                 |
/// |     64 |    8 | header data: a 64-bit user value (PUT); with flag bit 1 on an ACK or REPLY, the placement cookie the target gives |
/// |     72 |    8 | MD cookie: PUT/GET = the initiator's MD (where the ACK/REPLY goes); ACK/REPLY = that MD. With early placement the top byte is the initiator's partition that sent it, plus one (its ACK or REPLY is handled there) |
/// |     80 |    8 | placement hint, major; with flag bit 1 on a PUT or GET: the server's placement cookie it echoes (``LNetPlacementCookie``: the low 16 bits name the partition) |
/// |     88 |    8 | placement hint, minor (zero with flag bit 1 on a PUT or GET; never all ones, which is reserved) |
///
/// Cookies, both ways (issue 14): a server with ``LNet/Configuration/placementCookies`` puts in each ACK and REPLY
/// it sends, with flag bit 1, a cookie naming the partition it matched the request on (the ACK or REPLY keeps the
/// request's hints); a client that echoes it in a PUT or GET (``LNetHints/init(cookie:)``) is placed on that
/// partition. A peer of an older build rejects flag bit 1 (unknown flags), so turn cookies on only where every
/// peer has this version. And an initiator under early placement
/// names its sending partition in the MD cookie, which every ACK and REPLY echoes: they are matched, and their
/// events delivered, on that partition.
///
/// Decoding checks the magic, the version, the type, the flags (a cookie's zero minor and 16-bit value; no hint minor
/// of `UInt64.max`, which is reserved) and the size, and throws
/// ``CodingError`` rather than trapping.
public struct LNetHeader: Hashable, Sendable, CustomStringConvertible {
    public static let magic: UInt32 = 0x4C4E_4554
    public static let currentVersion: UInt16 = 1
    /// Bytes of an encoded header.
    public static let encodedSize = 96

    /// Why a header could not be decoded.
    public enum CodingError: Error, Sendable, Equatable, CustomStringConvertible {
        case tooShort(Int)
        case badMagic(UInt32)
        case unsupportedVersion(UInt16)
        case unknownType(UInt8)
        case unknownFlags(UInt8)
        /// Flag bit 1 on a PUT or GET (an echoed placement cookie) with a non-zero hint minor.
        case cookieWithMinor(UInt64)
        /// A placement cookie (flag bit 1) whose value does not fit 16 bits.
        case cookieOutOfRange(UInt64)
        /// A hint minor of `UInt64.max`, which is reserved (it marks a cookie in memory).
        case reservedHintMinor
        case bufferTooSmall(Int)

        public var description: String {
            switch self {
            case .tooShort(let count): return "LNet header needs \(LNetHeader.encodedSize) bytes, got \(count)"
            case .badMagic(let value): return "bad LNet header magic 0x\(String(value, radix: 16))"
            case .unsupportedVersion(let version): return "unsupported LNet header version \(version)"
            case .unknownType(let type): return "unknown LNet message type \(type)"
            case .unknownFlags(let flags): return "unknown LNet header flags 0x\(String(flags, radix: 16))"
            case .cookieWithMinor(let minor): return "LNet header with a placement cookie has hint minor \(minor), not 0"
            case .cookieOutOfRange(let value): return "LNet header carries placement cookie \(value), which does not fit 16 bits"
            case .reservedHintMinor: return "LNet header carries the reserved hint minor 0xFFFFFFFFFFFFFFFF"
            case .bufferTooSmall(let count): return "cannot encode an LNet header into \(count) bytes"
            }
        }
    }

    public var type: LNetMessageType
    public var ackRequested: Bool
    /// On an ACK or REPLY: the placement cookie the target gives (flag bit 1, in the header data's place).
    /// (Declared here, it sits in the padding before `destination`: the header is no larger for it.)
    public var givenCookie: LNetPlacementCookie?
    public var destination: ProcessID
    public var source: ProcessID
    public var payloadLength: UInt32
    public var length: UInt32
    public var portal: UInt32
    public var status: LNetStatus
    public var matchBits: UInt64
    public var offset: UInt64
    public var headerData: UInt64
    public var mdCookie: UInt64
    public var hints: LNetHints

    public init(type: LNetMessageType, source: ProcessID, destination: ProcessID, payloadLength: UInt32 = 0,
                length: UInt32 = 0, portal: UInt32 = 0, matchBits: UInt64 = 0, offset: UInt64 = 0,
                headerData: UInt64 = 0, mdCookie: UInt64 = 0, status: LNetStatus = .ok, ackRequested: Bool = false,
                hints: LNetHints = .none) {
        self.type = type
        self.ackRequested = ackRequested
        self.destination = destination
        self.source = source
        self.payloadLength = payloadLength
        self.length = length
        self.portal = portal
        self.status = status
        self.matchBits = matchBits
        self.offset = offset
        self.headerData = headerData
        self.mdCookie = mdCookie
        self.hints = hints
    }

    /// Encodes into the first ``encodedSize`` bytes of `buffer`.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) throws(CodingError) {
        guard buffer.count >= Self.encodedSize, let base = buffer.baseAddress else {
            throw CodingError.bufferTooSmall(buffer.count)
        }
        func put<T: FixedWidthInteger>(_ value: T, _ at: Int) {
            (base + at).storeBytes(of: value.littleEndian, as: T.self)
        }
        put(Self.magic, 0)
        put(Self.currentVersion, 4)
        put(type.rawValue, 6)
        let answer = type == .ack || type == .reply
        let cookieFlag: UInt8 = (answer ? givenCookie != nil : hints.isCookie) ? 2 : 0
        put(UInt8(ackRequested ? 1 : 0) | cookieFlag, 7)
        put(destination.nid.rawValue, 8)
        put(source.nid.rawValue, 16)
        put(destination.pid, 24)
        put(source.pid, 28)
        put(payloadLength, 32)
        put(length, 36)
        put(portal, 40)
        put(status.rawValue, 44)
        put(matchBits, 48)
        put(offset, 56)
        put(answer ? givenCookie?.rawValue ?? headerData : headerData, 64)  // an answer's header data is unused
        put(mdCookie, 72)
        put(hints.major, 80)
        put(hints.isCookie ? 0 : hints.minor, 88)
    }

    /// The encoded bytes.
    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.encodedSize)
        bytes.withUnsafeMutableBytes { try? encode(into: $0) }
        return bytes
    }

    /// Decodes a header from the first ``encodedSize`` bytes of `bytes`.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(CodingError) {
        guard bytes.count >= Self.encodedSize, let base = bytes.baseAddress else {
            throw CodingError.tooShort(bytes.count)
        }
        func get<T: FixedWidthInteger>(_ at: Int, as: T.Type) -> T {
            T(littleEndian: base.loadUnaligned(fromByteOffset: at, as: T.self))
        }
        let magic = get(0, as: UInt32.self)
        guard magic == Self.magic else { throw CodingError.badMagic(magic) }
        let version = get(4, as: UInt16.self)
        guard version == Self.currentVersion else { throw CodingError.unsupportedVersion(version) }
        let rawType = get(6, as: UInt8.self)
        guard let type = LNetMessageType(rawValue: rawType) else { throw CodingError.unknownType(rawType) }
        let flags = get(7, as: UInt8.self)
        guard flags & ~3 == 0 else { throw CodingError.unknownFlags(flags) }
        let major = get(80, as: UInt64.self), minor = get(88, as: UInt64.self)
        let answer = type == .ack || type == .reply
        guard minor != .max else { throw CodingError.reservedHintMinor }
        let given = flags & 2 != 0 && answer, echoed = flags & 2 != 0 && !answer
        guard !echoed || minor == 0 else { throw CodingError.cookieWithMinor(minor) }
        let cookieValue = given ? get(64, as: UInt64.self) : major
        guard !given && !echoed || cookieValue <= UInt64(UInt16.max) else { throw CodingError.cookieOutOfRange(cookieValue) }
        self.init(
            type: type,
            source: ProcessID(nid: NID(rawValue: get(16, as: UInt64.self)), pid: get(28, as: UInt32.self)),
            destination: ProcessID(nid: NID(rawValue: get(8, as: UInt64.self)), pid: get(24, as: UInt32.self)),
            payloadLength: get(32, as: UInt32.self),
            length: get(36, as: UInt32.self),
            portal: get(40, as: UInt32.self),
            matchBits: get(48, as: UInt64.self),
            offset: get(56, as: UInt64.self),
            headerData: given ? 0 : get(64, as: UInt64.self),
            mdCookie: get(72, as: UInt64.self),
            status: LNetStatus(wire: get(44, as: UInt32.self)),
            ackRequested: flags & 1 != 0,
            hints: LNetHints(major: major, minor: echoed ? .max : minor))
        if given { givenCookie = LNetPlacementCookie(rawValue: cookieValue) }
    }

    /// Decodes a header from a byte array or slice.
    public init(decoding bytes: some Collection<UInt8>) throws(CodingError) {
        let array = Array(bytes)
        var result: Result<LNetHeader, CodingError> = .failure(.tooShort(array.count))
        array.withUnsafeBytes { raw in
            do throws(CodingError) { result = .success(try LNetHeader(decoding: raw)) } catch { result = .failure(error) }
        }
        self = try result.get()
    }

    public var description: String {
        "\(type) \(source) -> \(destination) portal \(portal) bits 0x\(String(matchBits, radix: 16)) "
            + "payload \(payloadLength) len \(length) off \(offset) status \(status)"
    }
}

extension LNetHeader {
    /// The header of the REPLY that answers this GET: the ends swapped, the GET's length, portal, match bits, MD
    /// cookie and hints kept, with `payloadLength` bytes from `offset` (or none, with a failed `status`).
    func reply(payloadLength: Int, offset: UInt64, status: LNetStatus = .ok) -> LNetHeader {
        LNetHeader(type: .reply, source: destination, destination: source, payloadLength: UInt32(payloadLength), length: length,
                   portal: portal, matchBits: matchBits, offset: offset, mdCookie: mdCookie, status: status, hints: hints)
    }
}
