import LNet

/// A self-test message that could not be decoded. Decoding never traps: every malformed input is one of these.
public enum SelftestWireError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(needed: Int, available: Int)
    case badMagic(UInt32)
    case unsupportedVersion(UInt16)
    case unexpectedType(got: UInt16, expected: [UInt16])
    case invalidField(name: String, value: UInt64)

    public var description: String {
        switch self {
        case .truncated(let needed, let available): return "self-test message truncated: needs \(needed) bytes, has \(available)"
        case .badMagic(let magic): return "not a self-test message (magic 0x\(String(magic, radix: 16)))"
        case .unsupportedVersion(let version): return "self-test protocol version \(version) is not supported (this build speaks \(SelftestWire.version))"
        case .unexpectedType(let got, let expected): return "self-test message type \(got) where \(expected) was expected"
        case .invalidField(let name, let value): return "self-test message field \(name) has invalid value \(value)"
        }
    }
}

/// Little-endian encoding of the self-test messages.
///
/// Every message starts with the same 16-byte header:
///
/// | offset | size | field |
/// | -----: | ---: | ----- |
/// | 0 | 4 | magic `0x4C535431` ("LST1") |
/// | 4 | 2 | version (1) |
/// | 6 | 2 | message type (``SelftestWire/MessageType``) |
/// | 8 | 8 | session id (0 in a ping reply) |
public enum SelftestWire {
    public static let magic: UInt32 = 0x4C53_5431
    public static let version: UInt16 = 1
    public static let headerSize = 16

    public enum MessageType: UInt16, Sendable {
        case setup = 1
        case teardown = 2
        case ready = 3
        case closed = 4
        case verdict = 5
        case nodeInfo = 6
    }
}

extension SelftestWireError: ByteDecodingError {
    public static func truncated(needed: Int, have: Int) -> SelftestWireError { .truncated(needed: needed, available: have) }
}

/// The reader of self-test messages (LNet's byte coder, throwing ``SelftestWireError``).
typealias SelftestReader = ByteReader<SelftestWireError>

extension ByteWriter {
    /// Writes the common header.
    mutating func header(_ type: SelftestWire.MessageType, session: UInt64) {
        write(SelftestWire.magic)
        write(SelftestWire.version)
        write(type.rawValue)
        write(session)
    }
}

extension ByteReader where Failure == SelftestWireError {
    /// Reads and checks the common header; returns the type and the session id.
    mutating func header(expecting expected: [SelftestWire.MessageType]) throws(SelftestWireError) -> (SelftestWire.MessageType, UInt64) {
        guard remaining >= SelftestWire.headerSize else { throw .truncated(needed: SelftestWire.headerSize, available: remaining) }
        let magic = try read(UInt32.self)
        guard magic == SelftestWire.magic else { throw .badMagic(magic) }
        let version = try read(UInt16.self)
        guard version == SelftestWire.version else { throw .unsupportedVersion(version) }
        let rawType = try read(UInt16.self)
        guard let type = SelftestWire.MessageType(rawValue: rawType), expected.contains(type) else {
            throw .unexpectedType(got: rawType, expected: expected.map(\.rawValue))
        }
        return (type, try read(UInt64.self))
    }
}

/// The kind of operation a self-test session runs.
public enum SelftestOp: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The client GETs from the server's source (bulk read).
    case read
    /// The client PUTs into the server's sink (bulk write, ACK requested).
    case write
    /// The client GETs the server's small ping MD.
    case ping

    var wire: UInt8 {
        switch self {
        case .read: 1
        case .write: 2
        case .ping: 3
        }
    }

    init?(wire: UInt8) {
        switch wire {
        case 1: self = .read
        case 2: self = .write
        case 3: self = .ping
        default: return nil
        }
    }

    public var description: String { rawValue }
}

/// A bulk mode a node reports for itself (the LND's GET and PUT modes), when its owner told the server.
public enum AdvertisedBulkMode: String, Sendable, CustomStringConvertible {
    case unknown, pull, push

    var wire: UInt8 {
        switch self {
        case .unknown: 0
        case .pull: 1
        case .push: 2
        }
    }

    init(wire: UInt8) {
        switch wire {
        case 1: self = .pull
        case 2: self = .push
        default: self = .unknown
        }
    }

    public var description: String { rawValue }
}

/// Client -> server (control portal): set up or tear down a session.
///
/// After the header: op u8, flags u8 (bit 0: verify), reserved u16 (0), size u32, concurrency u32, min size u32:
/// 32 bytes in all.
///
/// `size` is the largest length of an operation (what the server sizes each slot for); `min size` the smallest, when
/// operations have mixed lengths. A min size of 0 means "the same as size": that is what requests from before mixed
/// sizes carried in this (then reserved) field, so they still mean one size. A server from before mixed sizes ignores
/// the field: it serves mixed reads and unverified writes, but fails verified writes of other lengths than `size`
/// with a length mismatch.
public struct SessionRequest: Equatable, Sendable {
    public enum Kind: Sendable, Equatable { case setup, teardown }

    public var kind: Kind
    public var session: UInt64
    public var op: SelftestOp
    /// The largest bytes per operation.
    public var size: Int
    /// The smallest bytes per operation (equal to ``size`` when every operation has the same length).
    public var minSize: Int
    public var concurrency: Int
    public var verify: Bool

    public static let encodedSize = SelftestWire.headerSize + 16

    /// `minSize` defaults to `size` (one size).
    public init(kind: Kind, session: UInt64, op: SelftestOp, size: Int, minSize: Int? = nil, concurrency: Int, verify: Bool) {
        self.kind = kind
        self.session = session
        self.op = op
        self.size = size
        self.minSize = minSize ?? size
        self.concurrency = concurrency
        self.verify = verify
    }

    /// The lengths the session's operations have.
    public var sizes: OperationSizes { OperationSizes(minimum: minSize, maximum: size) }

    public func encoded() -> [UInt8] {
        return ByteWriter.bytes(count: Self.encodedSize) { writer in
            writer.header(kind == .setup ? .setup : .teardown, session: session)
            writer.write(op.wire as UInt8)
            writer.write((verify ? 1 : 0) as UInt8)
            writer.write(0 as UInt16)
            writer.write(UInt32(clamping: size) as UInt32)
            writer.write(UInt32(clamping: concurrency) as UInt32)
            writer.write(UInt32(clamping: minSize) as UInt32)
        }
    }

    public init(decoding bytes: [UInt8]) throws(SelftestWireError) {
        self = try SelftestReader.withReader(bytes) { reader throws(SelftestWireError) -> Self in
            let (type, session) = try reader.header(expecting: [.setup, .teardown])
            let rawOp = try reader.read(UInt8.self)
            guard let op = SelftestOp(wire: rawOp) else { throw .invalidField(name: "op", value: UInt64(rawOp)) }
            let flags = try reader.read(UInt8.self)
            guard flags & ~1 == 0 else { throw .invalidField(name: "flags", value: UInt64(flags)) }
            _ = try reader.read(UInt16.self)
            let size = try reader.read(UInt32.self)
            let concurrency = try reader.read(UInt32.self)
            let minSize = try reader.read(UInt32.self)
            return Self(kind: type == .setup ? .setup : .teardown, session: session, op: op, size: Int(size),
                      minSize: minSize == 0 ? Int(size) : Int(minSize), concurrency: Int(concurrency), verify: flags & 1 != 0)
        }
    }
}

/// The outcome of a session request.
public enum SessionStatus: UInt32, Sendable, Equatable, CustomStringConvertible {
    case ok = 0
    /// The session would take more memory than the server allows.
    case tooMuchMemory = 1
    /// The request's fields are out of range.
    case badRequest = 2
    /// Teardown of a session the server does not know.
    case unknownSession = 3
    /// The server has as many sessions as it allows.
    case tooManySessions = 4
    /// Anything else (allocation or attach failed); the message says what.
    case failed = 5

    init(wire: UInt32) { self = SessionStatus(rawValue: wire) ?? .failed }

    public var description: String {
        switch self {
        case .ok: "ok"
        case .tooMuchMemory: "too much memory"
        case .badRequest: "bad request"
        case .unknownSession: "unknown session"
        case .tooManySessions: "too many sessions"
        case .failed: "failed"
        }
    }
}

/// Server -> client (reply portal): the answer to set-up ("ready") or teardown ("closed").
///
/// After the header: status u32, get mode u8, put mode u8, message length u16, session memory limit u64,
/// operations served u64, bytes served u64, verification failures u64, server CPU nanoseconds during the session u64,
/// server peak RSS KiB u64, then the message (UTF-8, at most ``maxMessageLength`` bytes).
public struct SessionReply: Equatable, Sendable {
    public enum Kind: Sendable, Equatable { case ready, closed }

    public var kind: Kind
    public var session: UInt64
    public var status: SessionStatus
    /// The server LND's GET mode (who moves a read's data), if the server's owner said.
    public var getMode: AdvertisedBulkMode
    /// The server LND's PUT mode, if the server's owner said.
    public var putMode: AdvertisedBulkMode
    /// The most memory one session may take on the server.
    public var sessionMemoryLimit: UInt64
    /// Operations the server saw in the session (PUTs landed, GETs served); in "closed" replies.
    public var operationsServed: UInt64
    public var bytesServed: UInt64
    /// Writes whose content the server found wrong (verified sessions).
    public var verificationFailures: UInt64
    /// CPU time the server process used during the session (user + system), in nanoseconds.
    public var serverCPUNanoseconds: UInt64
    /// The server process's peak resident set size in KiB.
    public var serverMaxRSSKiB: UInt64
    /// Why the request failed, in words (empty on success).
    public var message: String

    public static let fixedSize = SelftestWire.headerSize + 56
    public static let maxMessageLength = SelftestProtocol.replyBufferSize - fixedSize

    public init(kind: Kind, session: UInt64, status: SessionStatus, getMode: AdvertisedBulkMode = .unknown,
                putMode: AdvertisedBulkMode = .unknown, sessionMemoryLimit: UInt64 = 0, operationsServed: UInt64 = 0,
                bytesServed: UInt64 = 0, verificationFailures: UInt64 = 0, serverCPUNanoseconds: UInt64 = 0,
                serverMaxRSSKiB: UInt64 = 0, message: String = "") {
        self.kind = kind
        self.session = session
        self.status = status
        self.getMode = getMode
        self.putMode = putMode
        self.sessionMemoryLimit = sessionMemoryLimit
        self.operationsServed = operationsServed
        self.bytesServed = bytesServed
        self.verificationFailures = verificationFailures
        self.serverCPUNanoseconds = serverCPUNanoseconds
        self.serverMaxRSSKiB = serverMaxRSSKiB
        self.message = message
    }

    public func encoded() -> [UInt8] {
        var text = Array(message.utf8)
        if text.count > Self.maxMessageLength {
            // Cut at a character boundary so the text stays valid UTF-8.
            var cut = Self.maxMessageLength
            while cut > 0 && text[cut] & 0xC0 == 0x80 { cut -= 1 }
            text = Array(text[..<cut])
        }
        return ByteWriter.bytes(count: Self.fixedSize + text.count) { writer in
            writer.header(kind == .ready ? .ready : .closed, session: session)
            writer.write(status.rawValue as UInt32)
            writer.write(getMode.wire as UInt8)
            writer.write(putMode.wire as UInt8)
            writer.write(UInt16(text.count) as UInt16)
            writer.write(sessionMemoryLimit as UInt64)
            writer.write(operationsServed as UInt64)
            writer.write(bytesServed as UInt64)
            writer.write(verificationFailures as UInt64)
            writer.write(serverCPUNanoseconds as UInt64)
            writer.write(serverMaxRSSKiB as UInt64)
            text.withUnsafeBytes { writer.write(bytes: $0) }
        }
    }

    public init(decoding bytes: [UInt8]) throws(SelftestWireError) {
        self = try SelftestReader.withReader(bytes) { reader throws(SelftestWireError) -> Self in
            let (type, session) = try reader.header(expecting: [.ready, .closed])
            let status = SessionStatus(wire: try reader.read(UInt32.self))
            let getMode = AdvertisedBulkMode(wire: try reader.read(UInt8.self))
            let putMode = AdvertisedBulkMode(wire: try reader.read(UInt8.self))
            let length = Int(try reader.read(UInt16.self))
            guard length <= Self.maxMessageLength else { throw .invalidField(name: "message length", value: UInt64(length)) }
            let limit = try reader.read(UInt64.self)
            let operations = try reader.read(UInt64.self)
            let bytesServed = try reader.read(UInt64.self)
            let failures = try reader.read(UInt64.self)
            let cpu = try reader.read(UInt64.self)
            let rss = try reader.read(UInt64.self)
            let text = Array(try reader.bytes(length))
            return Self(kind: type == .ready ? .ready : .closed, session: session, status: status, getMode: getMode,
                      putMode: putMode, sessionMemoryLimit: limit, operationsServed: operations, bytesServed: bytesServed,
                      verificationFailures: failures, serverCPUNanoseconds: cpu, serverMaxRSSKiB: rss,
                      message: String(decoding: text, as: UTF8.self))
        }
    }
}

/// What the server found in one verified write.
public enum VerdictStatus: UInt32, Sendable, Equatable, CustomStringConvertible {
    case ok = 0
    /// The first 8 bytes did not carry the operation's sequence number (the PUT's header data).
    case sequenceMismatch = 1
    /// The rest of the slot did not hold the expected pattern.
    case patternMismatch = 2
    /// The write's length was outside the session's sizes, or it was cut short.
    case lengthMismatch = 3
    /// The PUT failed on the server.
    case failed = 4

    init(wire: UInt32) { self = VerdictStatus(rawValue: wire) ?? .failed }

    public var description: String {
        switch self {
        case .ok: "ok"
        case .sequenceMismatch: "sequence mismatch"
        case .patternMismatch: "pattern mismatch"
        case .lengthMismatch: "length mismatch"
        case .failed: "failed"
        }
    }
}

/// Server -> client (reply portal, verdict MD at offset slot x ``SelftestProtocol/verdictSize``): the check of one
/// verified write.
///
/// After the header: slot u32, status u32, sequence u64, first bad byte offset u64: 40 bytes.
public struct Verdict: Equatable, Sendable {
    public var session: UInt64
    public var slot: Int
    public var sequence: UInt64
    public var status: VerdictStatus
    /// Offset of the first wrong byte within the slot (when the status is a mismatch).
    public var badOffset: UInt64

    public static let encodedSize = SelftestWire.headerSize + 24

    public init(session: UInt64, slot: Int, sequence: UInt64, status: VerdictStatus, badOffset: UInt64 = 0) {
        self.session = session
        self.slot = slot
        self.sequence = sequence
        self.status = status
        self.badOffset = badOffset
    }

    public func encoded() -> [UInt8] {
        return ByteWriter.bytes(count: Self.encodedSize) { writer in
            writer.header(.verdict, session: session)
            writer.write(UInt32(clamping: slot) as UInt32)
            writer.write(status.rawValue as UInt32)
            writer.write(sequence as UInt64)
            writer.write(badOffset as UInt64)
        }
    }

    public init(decoding bytes: [UInt8]) throws(SelftestWireError) {
        self = try SelftestReader.withReader(bytes) { reader throws(SelftestWireError) -> Self in
            let (_, session) = try reader.header(expecting: [.verdict])
            let slot = try reader.read(UInt32.self)
            let status = VerdictStatus(wire: try reader.read(UInt32.self))
            return Self(session: session, slot: Int(slot), sequence: try reader.read(UInt64.self), status: status, badOffset: try reader.read(UInt64.self))
        }
    }
}

/// The ping MD's content: who answered.
///
/// After the header (session 0): NID u64, pid u32, flags u32 (0), start time u64 (nanoseconds since the Unix
/// epoch): 40 bytes.
public struct NodeInfo: Equatable, Sendable {
    public var nid: NID
    public var pid: UInt32
    public var startedNanoseconds: UInt64

    public static let encodedSize = SelftestWire.headerSize + 24

    public init(nid: NID, pid: UInt32, startedNanoseconds: UInt64) {
        self.nid = nid
        self.pid = pid
        self.startedNanoseconds = startedNanoseconds
    }

    public var processID: ProcessID { ProcessID(nid: nid, pid: pid) }

    public func encoded() -> [UInt8] {
        return ByteWriter.bytes(count: Self.encodedSize) { writer in
            writer.header(.nodeInfo, session: 0)
            writer.write(nid.rawValue as UInt64)
            writer.write(pid as UInt32)
            writer.write(0 as UInt32)
            writer.write(startedNanoseconds as UInt64)
        }
    }

    public init(decoding bytes: [UInt8]) throws(SelftestWireError) {
        self = try SelftestReader.withReader(bytes) { reader throws(SelftestWireError) -> Self in
            _ = try reader.header(expecting: [.nodeInfo])
            let nid = NID(rawValue: try reader.read(UInt64.self))
            let pid = try reader.read(UInt32.self)
            _ = try reader.read(UInt32.self)
            return Self(nid: nid, pid: pid, startedNanoseconds: try reader.read(UInt64.self))
        }
    }
}
