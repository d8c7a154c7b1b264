import LNet

/// The RDMA LND's wire format, version 2. Every message is one SEND into a pre-posted receive buffer.
///
/// All integers are little-endian. A message is a fixed 48-byte header and a body whose layout depends on
/// the type:
///
/// ```
/// header (48 bytes)
///   0  u32 magic            0x3144_4E4C ("LND1")
///   4  u16 version          2
///   6  u8  type             WireMessageType
///   7  u8  credits          receive buffers the sender re-posted for us since its last message
///   8  u32 length           bytes in the whole message, header included
///  12  u32 checksum         CRC-32C of the whole message with this field zero; 0 when checksums are off
///  16  u64 source NID       24 u64 source incarnation
///  32  u64 destination NID  40 u64 destination incarnation
///
/// descriptor (RDMA-able memory): u16 count, u16 reserved, u32 reserved, then count x
///   { u64 address, u32 length, u32 rkey }      (16 bytes a fragment)
///
/// bodies
///   NOOP          -                                            (returns credits / keepalive)
///   IMMEDIATE     LNet header, payload                         (eager: the payload follows the header)
///   PUT_REQ       LNet header, u64 cookie, descriptor          (pull: the source; push: no fragments)
///   PUT_ACK       u64 source cookie, u64 sink cookie, descriptor (push: the sink to WRITE into)
///   PUT_NAK       u64 source cookie, i32 status                 (push: the sink matched nothing / failed)
///   PUT_DONE      u64 cookie, i32 status, u32 length            (pull: sink -> source after its READ;
///                                                                push: source -> sink after its WRITEs)
///   GET_REQ       LNet header, u64 cookie, descriptor          (the requester's sink; no fragments: the sink fits
///                                                               one message, answer with REPLY)
///   PULL          u64 requester cookie, u64 target cookie, i32 status, u32 length, descriptor
///                                                              (GET pull, "transmit-first": the source to READ;
///                                                               a non-zero status fails the GET instead)
///   GET_DONE      u64 cookie, i32 status, u32 length            (push: target -> requester after its WRITEs;
///                                                                pull: requester -> target after its READ)
///   REPLY         u64 requester cookie, i32 status, u32 length, payload
///                                                              (the data of a GET whose sink had no fragments,
///                                                               in the message itself: no RDMA, no registration)
/// ```
///
/// Version 2 added REPLY (version 1 moved every GET's data by RDMA).
///
/// A cookie names a transaction (one transfer) on the side that made it, so a control message finds its
/// transfer with one lookup. PUT_ACK, PUT_NAK, PUT_DONE, PULL, GET_DONE and REPLY are control messages: the
/// connection handles them itself; they never go through LNet matching.
public enum WireFormat {
    public static let magic: UInt32 = 0x3144_4E4C
    public static let version: UInt16 = 2
    public static let headerSize = 48
    public static let fragmentSize = 16
    public static let descriptorHeaderSize = 8
    /// The LNet header embedded in IMMEDIATE, PUT_REQ and GET_REQ.
    public static var lnetHeaderSize: Int { LNetHeader.encodedSize }
    /// Bytes of a REPLY before its payload.
    public static let replyHeaderSize = headerSize + 16

    /// The largest payload a REPLY of a `maxMessageSize`-byte message carries.
    public static func replyCapacity(maxMessageSize: Int) -> Int { max(0, maxMessageSize - replyHeaderSize) }

    /// The largest message needed for a given eager size and fragment limit: receive buffers are this big.
    public static func maxMessageSize(immediateSize: Int, maxFragments: Int) -> Int {
        let eager = headerSize + lnetHeaderSize + immediateSize
        let request = headerSize + lnetHeaderSize + 8 + descriptorHeaderSize + maxFragments * fragmentSize
        let pull = headerSize + 8 + 8 + 4 + 4 + descriptorHeaderSize + maxFragments * fragmentSize
        return max(eager, request, pull)
    }
}

/// The old name of ``WireMessageType`` (it read as LNet's message type, `LNetMessageType`).
@available(*, deprecated, renamed: "WireMessageType")
public typealias MessageType = WireMessageType

/// The message types of wire version 2.
public enum WireMessageType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case noop = 1, immediate, putRequest, putAck, putNak, putDone, getRequest, pull, getDone, reply

    /// Control messages are handled by the connection itself and never reach LNet's parse.
    public var isControl: Bool {
        switch self {
        case .noop, .putAck, .putNak, .putDone, .pull, .getDone, .reply: true
        case .immediate, .putRequest, .getRequest: false
        }
    }

    public var description: String {
        switch self {
        case .noop: "NOOP"
        case .immediate: "IMMEDIATE"
        case .putRequest: "PUT_REQ"
        case .putAck: "PUT_ACK"
        case .putNak: "PUT_NAK"
        case .putDone: "PUT_DONE"
        case .getRequest: "GET_REQ"
        case .pull: "PULL"
        case .getDone: "GET_DONE"
        case .reply: "REPLY"
        }
    }
}

/// A malformed wire message: the connection that carried it is closed with this as the logged reason.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(needed: Int, have: Int)
    case badMagic(UInt32)
    case badVersion(UInt16)
    case badType(UInt8)
    case badLength(claimed: Int, received: Int)
    case tooManyFragments(Int, limit: Int)
    case badChecksum(expected: UInt32, computed: UInt32)
    case wrongDestination(String)
    case trailingBytes(Int)
    case badLNetHeader(LNetHeader.CodingError)

    public var description: String {
        switch self {
        case .truncated(let needed, let have): "truncated message: needs \(needed) bytes, has \(have)"
        case .badMagic(let magic): "bad magic 0x\(String(magic, radix: 16))"
        case .badVersion(let version): "unknown wire version \(version)"
        case .badType(let type): "unknown message type \(type)"
        case .badLength(let claimed, let received): "length \(claimed) does not match the \(received) bytes received"
        case .tooManyFragments(let count, let limit): "descriptor with \(count) fragments (limit \(limit))"
        case .badChecksum(let expected, let computed): "bad checksum: header says 0x\(String(expected, radix: 16)), message is 0x\(String(computed, radix: 16))"
        case .wrongDestination(let what): "message for another node: \(what)"
        case .trailingBytes(let count): "\(count) unexpected bytes after the body"
        case .badLNetHeader(let error): "malformed LNet header: \(error)"
        }
    }
}

/// One piece of remotely accessible memory.
public struct RDMAFragment: Sendable, Hashable {
    public var address: UInt64
    public var length: UInt32
    public var rkey: UInt32

    public init(address: UInt64, length: UInt32, rkey: UInt32) {
        self.address = address
        self.length = length
        self.rkey = rkey
    }
}

/// Remotely accessible memory: what a PUT source, a GET sink, or a PULL source looks like on the wire.
public struct RDMADescriptor: Sendable, Hashable {
    public var fragments: [RDMAFragment]

    public init(fragments: [RDMAFragment] = []) { self.fragments = fragments }

    public var totalLength: Int { fragments.reduce(0) { $0 + Int($1.length) } }

    var encodedSize: Int { WireFormat.descriptorHeaderSize + fragments.count * WireFormat.fragmentSize }

    func encode(into writer: inout ByteWriter) {
        writer.write(UInt16(fragments.count))
        writer.write(UInt16(0))
        writer.write(UInt32(0))
        for fragment in fragments {
            writer.write(fragment.address)
            writer.write(fragment.length)
            writer.write(fragment.rkey)
        }
    }

    static func decode(from reader: inout WireReader, maxFragments: Int) throws(WireError) -> RDMADescriptor {
        let count = Int(try reader.read(UInt16.self))
        _ = try reader.read(UInt16.self)
        _ = try reader.read(UInt32.self)
        guard count <= maxFragments else { throw WireError.tooManyFragments(count, limit: maxFragments) }
        // Check the bytes are there before reserving room for them (a short message must not allocate much).
        guard reader.remaining >= count * WireFormat.fragmentSize else {
            throw WireError.truncated(needed: reader.offset + count * WireFormat.fragmentSize, have: reader.buffer.count)
        }
        var fragments: [RDMAFragment] = []
        fragments.reserveCapacity(count)
        for _ in 0..<count {
            fragments.append(RDMAFragment(address: try reader.read(), length: try reader.read(), rkey: try reader.read()))
        }
        return RDMADescriptor(fragments: fragments)
    }
}

/// The fixed header of every message.
public struct WireHeader: Sendable, Hashable {
    public var type: WireMessageType
    public var credits: UInt8
    public var length: Int
    public var source: UInt64
    public var sourceStamp: UInt64
    public var destination: UInt64
    public var destinationStamp: UInt64
}

/// A message body, decoded. Payload bytes of an IMMEDIATE or REPLY stay in the receive buffer (`payloadOffset`).
public enum WireBody: Sendable, Hashable {
    case noop
    case immediate(lnet: LNetHeader, payloadOffset: Int, payloadLength: Int)
    case putRequest(lnet: LNetHeader, cookie: UInt64, source: RDMADescriptor)
    case putAck(sourceCookie: UInt64, sinkCookie: UInt64, sink: RDMADescriptor)
    case putNak(sourceCookie: UInt64, status: Int32)
    case putDone(cookie: UInt64, status: Int32, length: UInt32)
    case getRequest(lnet: LNetHeader, cookie: UInt64, sink: RDMADescriptor)
    case pull(requesterCookie: UInt64, targetCookie: UInt64, status: Int32, length: UInt32, source: RDMADescriptor)
    case getDone(cookie: UInt64, status: Int32, length: UInt32)
    case reply(cookie: UInt64, status: Int32, payloadOffset: Int, payloadLength: Int)

    public var type: WireMessageType {
        switch self {
        case .noop: .noop
        case .immediate: .immediate
        case .putRequest: .putRequest
        case .putAck: .putAck
        case .putNak: .putNak
        case .putDone: .putDone
        case .getRequest: .getRequest
        case .pull: .pull
        case .getDone: .getDone
        case .reply: .reply
        }
    }
}

/// A decoded message.
public struct WireMessage: Sendable, Hashable {
    public var header: WireHeader
    public var body: WireBody
}

/// Who is talking to whom, stamped into every header.
public struct WireAddressing: Sendable, Hashable {
    public var source: UInt64
    public var sourceStamp: UInt64
    public var destination: UInt64
    public var destinationStamp: UInt64

    public init(source: UInt64, sourceStamp: UInt64, destination: UInt64, destinationStamp: UInt64) {
        self.source = source
        self.sourceStamp = sourceStamp
        self.destination = destination
        self.destinationStamp = destinationStamp
    }
}

extension WireMessage {
    /// Encodes a message into `buffer` (a registered send buffer); returns its length.
    /// `payload` is the eager payload of an IMMEDIATE or REPLY, gathered by `copyPayload` straight into the buffer.
    public static func encode(_ body: WireBody, credits: UInt8, addressing: WireAddressing, checksum: Bool,
                              into buffer: UnsafeMutableRawBufferPointer,
                              copyPayload: (UnsafeMutableRawBufferPointer) -> Void = { _ in }) -> Int {
        var writer = ByteWriter(buffer)
        writer.skip(WireFormat.headerSize)
        switch body {
        case .noop:
            break
        case .immediate(let lnet, _, let payloadLength):
            writer.write(lnet)
            copyPayload(UnsafeMutableRawBufferPointer(rebasing: buffer[writer.offset..<writer.offset + payloadLength]))
            writer.skip(payloadLength)
        case .putRequest(let lnet, let cookie, let source):
            writer.write(lnet)
            writer.write(cookie)
            source.encode(into: &writer)
        case .putAck(let sourceCookie, let sinkCookie, let sink):
            writer.write(sourceCookie)
            writer.write(sinkCookie)
            sink.encode(into: &writer)
        case .putNak(let sourceCookie, let status):
            writer.write(sourceCookie)
            writer.write(status)
        case .putDone(let cookie, let status, let length), .getDone(let cookie, let status, let length):
            writer.write(cookie)
            writer.write(status)
            writer.write(length)
        case .getRequest(let lnet, let cookie, let sink):
            writer.write(lnet)
            writer.write(cookie)
            sink.encode(into: &writer)
        case .pull(let requesterCookie, let targetCookie, let status, let length, let source):
            writer.write(requesterCookie)
            writer.write(targetCookie)
            writer.write(status)
            writer.write(length)
            source.encode(into: &writer)
        case .reply(let cookie, let status, _, let payloadLength):
            writer.write(cookie)
            writer.write(status)
            writer.write(UInt32(payloadLength))
            copyPayload(UnsafeMutableRawBufferPointer(rebasing: buffer[writer.offset..<writer.offset + payloadLength]))
            writer.skip(payloadLength)
        }
        let length = writer.offset
        var head = ByteWriter(buffer)
        head.write(WireFormat.magic)
        head.write(WireFormat.version)
        head.write(body.type.rawValue)
        head.write(credits)
        head.write(UInt32(length))
        head.write(UInt32(0))
        head.write(addressing.source)
        head.write(addressing.sourceStamp)
        head.write(addressing.destination)
        head.write(addressing.destinationStamp)
        if checksum {
            var sum = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
            if sum == 0 { sum = 1 }  // 0 means "not checksummed"
            buffer.storeBytes(of: sum.littleEndian, toByteOffset: 12, as: UInt32.self)
        }
        return length
    }

    /// Decodes and validates a received message of `received` bytes. Never traps on bad input.
    public static func decode(_ buffer: UnsafeRawBufferPointer, maxFragments: Int) throws(WireError) -> WireMessage {
        var reader = WireReader(buffer)
        let magic = try reader.read(UInt32.self)
        guard magic == WireFormat.magic else { throw WireError.badMagic(magic) }
        let version = try reader.read(UInt16.self)
        guard version == WireFormat.version else { throw WireError.badVersion(version) }
        let rawType = try reader.read(UInt8.self)
        guard let type = WireMessageType(rawValue: rawType) else { throw WireError.badType(rawType) }
        let credits = try reader.read(UInt8.self)
        let length = Int(try reader.read(UInt32.self))
        guard length >= WireFormat.headerSize, length <= buffer.count else {
            throw WireError.badLength(claimed: length, received: buffer.count)
        }
        let checksum = try reader.read(UInt32.self)
        let header = WireHeader(type: type, credits: credits, length: length, source: try reader.read(),
                                sourceStamp: try reader.read(), destination: try reader.read(), destinationStamp: try reader.read())
        let message = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        if checksum != 0 {
            // The checksum of the message with its checksum field zero, without copying it.
            let zero: UInt32 = 0
            var computed = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: message[0..<12]))
            computed = withUnsafeBytes(of: zero) { CRC32C.checksum($0, seed: computed) }
            computed = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: message[16...]), seed: computed)
            if computed == 0 { computed = 1 }
            guard computed == checksum else { throw WireError.badChecksum(expected: checksum, computed: computed) }
        }
        reader = WireReader(message)
        _ = try reader.bytes(WireFormat.headerSize)
        let body: WireBody
        switch type {
        case .noop:
            body = .noop
        case .immediate:
            let lnet = try reader.readLNetHeader()
            body = .immediate(lnet: lnet, payloadOffset: reader.offset, payloadLength: reader.remaining)
            _ = try reader.bytes(reader.remaining)
        case .putRequest:
            let lnet = try reader.readLNetHeader()
            body = .putRequest(lnet: lnet, cookie: try reader.read(), source: try .decode(from: &reader, maxFragments: maxFragments))
        case .putAck:
            body = .putAck(sourceCookie: try reader.read(), sinkCookie: try reader.read(),
                           sink: try .decode(from: &reader, maxFragments: maxFragments))
        case .putNak:
            body = .putNak(sourceCookie: try reader.read(), status: try reader.read())
        case .putDone:
            body = .putDone(cookie: try reader.read(), status: try reader.read(), length: try reader.read())
        case .getRequest:
            let lnet = try reader.readLNetHeader()
            body = .getRequest(lnet: lnet, cookie: try reader.read(), sink: try .decode(from: &reader, maxFragments: maxFragments))
        case .pull:
            body = .pull(requesterCookie: try reader.read(), targetCookie: try reader.read(), status: try reader.read(),
                         length: try reader.read(), source: try .decode(from: &reader, maxFragments: maxFragments))
        case .getDone:
            body = .getDone(cookie: try reader.read(), status: try reader.read(), length: try reader.read())
        case .reply:
            let cookie: UInt64 = try reader.read()
            let status: Int32 = try reader.read()
            let payloadLength = Int(try reader.read(UInt32.self))
            guard payloadLength == reader.remaining else {
                throw WireError.badLength(claimed: WireFormat.replyHeaderSize + payloadLength, received: length)
            }
            body = .reply(cookie: cookie, status: status, payloadOffset: reader.offset, payloadLength: payloadLength)
            _ = try reader.bytes(payloadLength)
        }
        guard reader.remaining == 0 else { throw WireError.trailingBytes(reader.remaining) }
        return WireMessage(header: header, body: body)
    }
}
