// The checks of the fuzz target (Fuzz/WireFuzz), in a library of their own so that the tests replay the corpus and
// every kept crash with exactly the same invariants (Tests/RDMALNDTests/FuzzRegressionTests.swift): the fuzz target
// turns a broken invariant into a crash for libFuzzer, the tests into a failed expectation.
//
// Input layout: byte 0 chooses the parser (modulo 5), the rest is that parser's input:
//   0  WireMessage.decode            bytes 1-2 = maxFragments (u16 LE), then the message
//   1  ConnectRequest.decode         2  ConnectAccept.decode
//   3  ConnectReject.decode          4  LNetHeader(decoding:)
// A successful decode is re-encoded and decoded again: the result must be equal, the encoding must reproduce the
// input byte for byte except for reserved fields and the checksum, and a wire message's size must match the size
// computed here from its body, independently of the codec. Rejecting input is never a failure.

import LNet
import RDMALND

/// An invariant a decoded input broke.
public struct InvariantViolation: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let file: String
    public let line: UInt

    init(_ message: String, file: StaticString = #fileID, line: UInt = #line) {
        self.message = message
        self.file = "\(file)"
        self.line = line
    }

    public var description: String { "\(message) (\(file):\(line))" }
}

/// The parsers, as byte 0 of an input names them.
public enum Parser: UInt8, CaseIterable, Sendable {
    case wireMessage = 0, connectRequest, connectAccept, connectReject, lnetHeader

    /// The parser a selector byte names (modulo the number of parsers).
    public init(selector: UInt8) {
        self = Parser(rawValue: selector % UInt8(Parser.allCases.count))!
    }
}

public enum WireInvariants {
    /// One fuzz input: byte 0 chooses the parser, the rest is its input. Throws the first invariant it breaks.
    public static func check(_ input: UnsafeRawBufferPointer) throws(InvariantViolation) {
        guard let selector = input.first else { return }
        try check(Parser(selector: selector), UnsafeRawBufferPointer(rebasing: input[1...]))
    }

    /// The input of one parser (what follows the selector byte). Throws the first invariant it breaks.
    public static func check(_ parser: Parser, _ rest: UnsafeRawBufferPointer) throws(InvariantViolation) {
        switch parser {
        case .wireMessage: try wireMessage(rest)
        case .connectRequest: try connectRequest(Array(rest))
        case .connectAccept: try connectAccept(Array(rest))
        case .connectReject: try connectReject(Array(rest))
        case .lnetHeader: try lnetHeader(rest)
        }
    }

    static func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                          file: StaticString = #fileID, line: UInt = #line) throws(InvariantViolation) {
        if !condition() { throw InvariantViolation(message(), file: file, line: line) }
    }

    /// Whether `encoded` equals `original` over `0..<count`, except at the offsets `ignoring` names.
    static func sameBytes(_ encoded: UnsafeRawBufferPointer, _ original: UnsafeRawBufferPointer, count: Int,
                          ignoring: [Range<Int>]) -> Bool {
        guard encoded.count >= count, original.count >= count else { return false }
        for index in 0..<count where !ignoring.contains(where: { $0.contains(index) }) {
            if encoded[index] != original[index] { return false }
        }
        return true
    }

    // MARK: wire messages

    static func wireMessage(_ bytes: UnsafeRawBufferPointer) throws(InvariantViolation) {
        guard bytes.count >= 2 else { return }
        let maxFragments = Int(bytes[0]) | Int(bytes[1]) << 8
        let received = UnsafeRawBufferPointer(rebasing: bytes[2...])
        let message: WireMessage
        do {
            message = try WireMessage.decode(received, maxFragments: maxFragments)
        } catch {
            _ = error.description
            return
        }
        try checkRoundTrip(message, received: received, maxFragments: maxFragments)
    }

    /// The encoded size of a body, computed independently of the codec.
    static func encodedSize(_ body: WireBody) -> Int {
        let header = WireFormat.headerSize, lnet = WireFormat.lnetHeaderSize
        func descriptor(_ d: RDMADescriptor) -> Int { WireFormat.descriptorHeaderSize + d.fragments.count * WireFormat.fragmentSize }
        switch body {
        case .noop: return header
        case .immediate(_, _, let payloadLength): return header + lnet + payloadLength
        case .putRequest(_, _, let d), .getRequest(_, _, let d): return header + lnet + 8 + descriptor(d)
        case .putAck(_, _, let d): return header + 16 + descriptor(d)
        case .putNak: return header + 12
        case .putDone, .getDone: return header + 16
        case .pull(_, _, _, _, let d): return header + 24 + descriptor(d)
        case .reply(_, _, _, let payloadLength): return header + 16 + payloadLength
        }
    }

    /// Where the reserved bytes of a body's RDMA descriptor are (u16 + u32 after the count); ignored by decode.
    static func reservedDescriptorBytes(_ body: WireBody) -> [Range<Int>] {
        let start: Int
        switch body {
        case .putRequest, .getRequest: start = WireFormat.headerSize + WireFormat.lnetHeaderSize + 8
        case .putAck: start = WireFormat.headerSize + 16
        case .pull: start = WireFormat.headerSize + 24
        default: return []
        }
        return [(start + 2)..<(start + WireFormat.descriptorHeaderSize)]
    }

    static func checkRoundTrip(_ message: WireMessage, received: UnsafeRawBufferPointer, maxFragments: Int) throws(InvariantViolation) {
        let header = message.header
        let length = header.length
        try invariant(length >= WireFormat.headerSize && length <= received.count,
                  "decoded length \(length) outside 48...\(received.count)")
        try invariant(header.type == message.body.type, "header type \(header.type) != body type \(message.body.type)")
        try invariant(encodedSize(message.body) == length,
                  "\(header.type) decoded from \(length) bytes re-encodes to \(encodedSize(message.body))")
        // An embedded LNet header's unknown status code decodes as `failed`, so its status bytes may differ.
        var ignored = [12..<16] + reservedDescriptorBytes(message.body)
        switch message.body {
        case .immediate(_, let payloadOffset, let payloadLength):
            try invariant(payloadOffset == WireFormat.headerSize + WireFormat.lnetHeaderSize && payloadLength >= 0
                      && payloadOffset + payloadLength == length,
                      "IMMEDIATE payload \(payloadOffset)+\(payloadLength) in a \(length)-byte message")
        case .putRequest(_, _, let d), .getRequest(_, _, let d):
            try invariant(d.fragments.count <= maxFragments, "\(d.fragments.count) fragments over the limit \(maxFragments)")
        case .putAck(_, _, let d), .pull(_, _, _, _, let d):
            try invariant(d.fragments.count <= maxFragments, "\(d.fragments.count) fragments over the limit \(maxFragments)")
        case .reply(_, _, let payloadOffset, let payloadLength):
            try invariant(payloadOffset == WireFormat.replyHeaderSize && payloadLength >= 0 && payloadOffset + payloadLength == length,
                      "REPLY payload \(payloadOffset)+\(payloadLength) in a \(length)-byte message")
        default:
            break
        }
        switch message.body {
        case .immediate, .putRequest, .getRequest:
            let status = WireFormat.headerSize + 44
            let raw = UInt32(littleEndian: received.loadUnaligned(fromByteOffset: status, as: UInt32.self))
            if LNetStatus(rawValue: raw) == nil { ignored.append(status..<(status + 4)) }
        default:
            break
        }

        let addressing = WireAddressing(source: header.source, sourceStamp: header.sourceStamp,
                                        destination: header.destination, destinationStamp: header.destinationStamp)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 8)
        defer { buffer.deallocate() }
        for checksum in [false, true] {
            buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
            let written = WireMessage.encode(message.body, credits: header.credits, addressing: addressing,
                                             checksum: checksum, into: buffer) { payload in
                switch message.body {
                case .immediate(_, let offset, let count) where count > 0, .reply(_, _, let offset, let count) where count > 0:
                    payload.copyMemory(from: UnsafeRawBufferPointer(rebasing: received[offset..<(offset + count)]))
                default:
                    break
                }
            }
            try invariant(written == length, "\(header.type) of \(length) bytes re-encoded to \(written) bytes")
            let encoded = UnsafeRawBufferPointer(buffer)
            let again: WireMessage
            do {
                again = try WireMessage.decode(encoded, maxFragments: maxFragments)
            } catch {
                throw InvariantViolation("re-encoded \(header.type) (checksum \(checksum)) fails to decode: \(error)")
            }
            try invariant(again == message, "\(header.type) round trip changed the message: \(message) -> \(again)")
            try invariant(sameBytes(encoded, received, count: length, ignoring: ignored),
                      "\(header.type) re-encoding differs from the received bytes")
            if !checksum {
                try invariant(encoded.loadUnaligned(fromByteOffset: 12, as: UInt32.self) == 0, "checksum written when off")
            }
        }
    }

    // MARK: handshake and LNet header

    static func connectRequest(_ bytes: [UInt8]) throws(InvariantViolation) {
        let request: ConnectRequest
        do { request = try ConnectRequest.decode(bytes) } catch { _ = error.description; return }
        try invariant(bytes.count >= ConnectRequest.size, "CONNREQ decoded from \(bytes.count) bytes")
        let encoded = request.encoded()
        try invariant(encoded.count == ConnectRequest.size, "CONNREQ encodes to \(encoded.count) bytes")
        do {
            let again = try ConnectRequest.decode(encoded)
            try invariant(again == request, "CONNREQ round trip changed \(request) -> \(again)")
        } catch {
            throw InvariantViolation("re-encoded CONNREQ fails to decode: \(error)")
        }
        try checkBytes("CONNREQ", encoded, bytes, count: ConnectRequest.size, ignoring: [6..<8])
        _ = request.limits.description
    }

    static func connectAccept(_ bytes: [UInt8]) throws(InvariantViolation) {
        let accept: ConnectAccept
        do { accept = try ConnectAccept.decode(bytes) } catch { _ = error.description; return }
        try invariant(bytes.count >= ConnectAccept.size, "CONNACK decoded from \(bytes.count) bytes")
        let encoded = accept.encoded()
        try invariant(encoded.count == ConnectAccept.size, "CONNACK encodes to \(encoded.count) bytes")
        do {
            let again = try ConnectAccept.decode(encoded)
            try invariant(again == accept, "CONNACK round trip changed \(accept) -> \(again)")
        } catch {
            throw InvariantViolation("re-encoded CONNACK fails to decode: \(error)")
        }
        try checkBytes("CONNACK", encoded, bytes, count: ConnectAccept.size, ignoring: [6..<8])
    }

    static func connectReject(_ bytes: [UInt8]) throws(InvariantViolation) {
        guard let reject = ConnectReject.decode(bytes) else { return }
        try invariant(bytes.count >= ConnectReject.size, "CONNREJ decoded from \(bytes.count) bytes")
        let encoded = reject.encoded()
        try invariant(encoded.count == ConnectReject.size, "CONNREJ encodes to \(encoded.count) bytes")
        let again = ConnectReject.decode(encoded)
        try invariant(again == reject, "CONNREJ round trip changed \(reject) -> \(String(describing: again))")
        // The reject decoder ignores the version (any version's reject is read) and the reserved byte.
        try checkBytes("CONNREJ", encoded, bytes, count: ConnectReject.size, ignoring: [4..<6, 7..<8])
        _ = reject.reason.description
    }

    static func lnetHeader(_ bytes: UnsafeRawBufferPointer) throws(InvariantViolation) {
        let header: LNetHeader
        do { header = try LNetHeader(decoding: bytes) } catch { _ = error.description; return }
        try invariant(bytes.count >= LNetHeader.encodedSize, "LNet header decoded from \(bytes.count) bytes")
        let encoded = header.encoded()
        do {
            let again = try LNetHeader(decoding: encoded)
            try invariant(again == header, "LNet header round trip changed \(header) -> \(again)")
        } catch {
            throw InvariantViolation("re-encoded LNet header fails to decode: \(error)")
        }
        // An unknown status code decodes as `failed`, so the status bytes may differ.
        let rawStatus = bytes.loadUnaligned(fromByteOffset: 44, as: UInt32.self)
        let statusKnown = LNetStatus(rawValue: UInt32(littleEndian: rawStatus)) != nil
        let same = encoded.withUnsafeBytes { encoded in
            sameBytes(encoded, bytes, count: LNetHeader.encodedSize, ignoring: statusKnown ? [] : [44..<48])
        }
        try invariant(same, "LNet header re-encoding differs from the received bytes")
        _ = header.description
    }

    static func checkBytes(_ what: String, _ encoded: [UInt8], _ original: [UInt8], count: Int, ignoring: [Range<Int>]) throws(InvariantViolation) {
        let same = encoded.withUnsafeBytes { encoded in
            original.withUnsafeBytes { original in sameBytes(encoded, original, count: count, ignoring: ignoring) }
        }
        try invariant(same, "\(what) re-encoding differs from the received bytes")
    }
}


// MARK: seeds

public enum Seeds {
    static let maxFragments: UInt16 = 256
    static let addressing = WireAddressing(source: 0x0005_0000_C0A8_0101, sourceStamp: 0x1111_2222_3333_4444,
                                           destination: 0x0005_0000_C0A8_0102, destinationStamp: 0x5555_6666_7777_8888)
    static let source = ProcessID(nid: NID(rawValue: 0x0005_0000_C0A8_0101), pid: 12345)
    static let target = ProcessID(nid: NID(rawValue: 0x0005_0000_C0A8_0102), pid: 12345)
    static let limits = ConnectionLimits(queueDepth: 8, maxFragments: 256, maxMessageSize: 4096 + 160)

    static func lnet(_ type: LNetMessageType, status: LNetStatus = .ok, ack: Bool = false) -> LNetHeader {
        LNetHeader(type: type, source: source, destination: target, payloadLength: type == .put || type == .reply ? 8192 : 0,
                   length: type == .put ? 0 : 8192, portal: 4, matchBits: 0xDEAD_BEEF, offset: 512, headerData: 7,
                   mdCookie: 0x42, status: status, ackRequested: ack, hints: LNetHints(major: 99, minor: 1))
    }

    static let fragments = RDMADescriptor(fragments: [
        RDMAFragment(address: 0x7F00_0000_1000, length: 4096, rkey: 0x1234),
        RDMAFragment(address: 0x7F00_0000_9000, length: 4096, rkey: 0x1234),
        RDMAFragment(address: 0x7F00_0002_0000, length: 100, rkey: 0x5678),
    ])

    /// Every wire body, named.
    static var bodies: [(String, WireBody, [UInt8])] {
        let put = lnet(.put, ack: true), get = lnet(.get)
        let payload = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        return [
            ("noop", .noop, []),
            ("immediate-empty", .immediate(lnet: put, payloadOffset: 144, payloadLength: 0), []),
            ("immediate-payload", .immediate(lnet: put, payloadOffset: 144, payloadLength: payload.count), payload),
            ("put-request", .putRequest(lnet: put, cookie: 0x1001, source: fragments), []),
            ("put-request-push", .putRequest(lnet: put, cookie: 0x1002, source: RDMADescriptor()), []),
            ("put-ack", .putAck(sourceCookie: 0x1001, sinkCookie: 0x2001, sink: fragments), []),
            ("put-nak", .putNak(sourceCookie: 0x1001, status: -2), []),
            ("put-done", .putDone(cookie: 0x2001, status: 0, length: 8292), []),
            ("get-request", .getRequest(lnet: get, cookie: 0x3001, sink: fragments), []),
            ("pull", .pull(requesterCookie: 0x3001, targetCookie: 0x4001, status: 0, length: 8292, source: fragments), []),
            ("pull-failed", .pull(requesterCookie: 0x3001, targetCookie: 0x4001, status: -5, length: 0, source: RDMADescriptor()), []),
            ("get-done", .getDone(cookie: 0x4001, status: 0, length: 8292), []),
            ("reply-empty", .reply(cookie: 0x3001, status: 0, payloadOffset: WireFormat.replyHeaderSize, payloadLength: 0), []),
            ("reply-payload", .reply(cookie: 0x3001, status: 0, payloadOffset: WireFormat.replyHeaderSize, payloadLength: payload.count),
             payload),
            ("reply-failed", .reply(cookie: 0x3001, status: -2, payloadOffset: WireFormat.replyHeaderSize, payloadLength: 0), []),
        ]
    }

    static func wire(_ body: WireBody, payload: [UInt8], checksum: Bool) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
        defer { buffer.deallocate() }
        let length = WireMessage.encode(body, credits: 3, addressing: addressing, checksum: checksum, into: buffer) {
            $0.copyBytes(from: payload)
        }
        return [Parser.wireMessage.rawValue, UInt8(maxFragments & 0xFF), UInt8(maxFragments >> 8)] + Array(buffer[0..<length])
    }

    /// (file name, contents) of every seed.
    public static var all: [(String, [UInt8])] {
        var seeds: [(String, [UInt8])] = []
        for (name, body, payload) in bodies {
            seeds.append(("wire-\(name)", wire(body, payload: payload, checksum: false)))
            seeds.append(("wire-\(name)-crc", wire(body, payload: payload, checksum: true)))
        }
        let request = ConnectRequest(source: addressing.source, sourceStamp: addressing.sourceStamp,
                                     destination: addressing.destination, limits: limits)
        var future = request
        future.version = Handshake.version + 1
        seeds.append(("connreq", [Parser.connectRequest.rawValue] + request.encoded()))
        seeds.append(("connreq-padded", [Parser.connectRequest.rawValue] + request.encoded() + [UInt8](repeating: 0, count: 56 - ConnectRequest.size)))
        seeds.append(("connreq-next-version", [Parser.connectRequest.rawValue] + future.encoded()))
        let accept = ConnectAccept(source: addressing.destination, sourceStamp: addressing.destinationStamp,
                                   requesterStamp: addressing.sourceStamp, limits: limits, destination: addressing.source)
        seeds.append(("connack", [Parser.connectAccept.rawValue] + accept.encoded()))
        seeds.append(("connack-padded", [Parser.connectAccept.rawValue] + accept.encoded() + [UInt8](repeating: 0, count: 196 - ConnectAccept.size)))
        for reason in [RejectReason.versionMismatch, .queueDepthTooLarge, .connectionRace, .staleIncarnation, .shuttingDown] {
            let reject = ConnectReject(reason: reason, stamp: addressing.destinationStamp, limits: limits, servedNID: addressing.destination)
            seeds.append(("connrej-\(reason.rawValue)", [Parser.connectReject.rawValue] + reject.encoded()))
        }
        let reject = ConnectReject(reason: .tooManyFragments, stamp: 1, limits: limits, servedNID: addressing.destination)
        seeds.append(("connrej-padded", [Parser.connectReject.rawValue] + reject.encoded() + [UInt8](repeating: 0, count: 148 - ConnectReject.size)))
        seeds.append(("lnet-put", [Parser.lnetHeader.rawValue] + lnet(.put, ack: true).encoded()))
        seeds.append(("lnet-get", [Parser.lnetHeader.rawValue] + lnet(.get).encoded()))
        seeds.append(("lnet-ack", [Parser.lnetHeader.rawValue] + lnet(.ack).encoded()))
        seeds.append(("lnet-reply-failed", [Parser.lnetHeader.rawValue] + lnet(.reply, status: .noMatch).encoded()))
        return seeds
    }
}
