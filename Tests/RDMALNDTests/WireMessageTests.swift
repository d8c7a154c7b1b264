import LNet
import Testing
@testable import RDMALND

@Suite struct WireMessageTests {
    static let addressing = WireAddressing(source: 0x0005_0000_C000_0201, sourceStamp: 11, destination: 0x0005_0000_C000_0202, destinationStamp: 22)
    static let lnet = LNetHeader(type: .put, source: ProcessID(nid: NID(rawValue: 0x0005_0000_C000_0201), pid: 7),
                                 destination: ProcessID(nid: NID(rawValue: 0x0005_0000_C000_0202), pid: 8), payloadLength: 4196,
                                 portal: 3, matchBits: 0xABCD, offset: 64, headerData: 9, mdCookie: 11, ackRequested: true)
    static let descriptor = RDMADescriptor(fragments: [RDMAFragment(address: 0x1000, length: 4096, rkey: 7),
                                                       RDMAFragment(address: 0x9000, length: 100, rkey: 8)])

    static let bodies: [WireBody] = [
        .noop,
        .putRequest(lnet: lnet, cookie: 1, source: descriptor),
        .putRequest(lnet: lnet, cookie: 1, source: RDMADescriptor()),
        .putAck(sourceCookie: 2, sinkCookie: 3, sink: descriptor),
        .putNak(sourceCookie: 4, status: -2),
        .putDone(cookie: 5, status: 0, length: 4196),
        .getRequest(lnet: lnet, cookie: 6, sink: descriptor),
        .pull(requesterCookie: 7, targetCookie: 8, status: 0, length: 4196, source: descriptor),
        .getDone(cookie: 9, status: -61, length: 0),
        .reply(cookie: 10, status: -2, payloadOffset: WireFormat.replyHeaderSize, payloadLength: 0),
    ]

    func roundTrip(_ body: WireBody, checksum: Bool, payload: [UInt8] = []) throws -> WireMessage {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
        defer { buffer.deallocate() }
        let length = WireMessage.encode(body, credits: 3, addressing: Self.addressing, checksum: checksum, into: buffer) {
            $0.copyBytes(from: payload)
        }
        return try WireMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), maxFragments: 256)
    }

    @Test(arguments: bodies, [false, true])
    func everyMessageTypeRoundTrips(_ body: WireBody, checksum: Bool) throws {
        let message = try roundTrip(body, checksum: checksum)
        #expect(message.body == body)
        #expect(message.header.type == body.type)
        #expect(message.header.credits == 3)
        #expect(message.header.source == Self.addressing.source)
        #expect(message.header.destinationStamp == 22)
    }

    @Test func immediateCarriesItsPayloadInPlace() throws {
        let payload = Array("eager payload".utf8)
        let message = try roundTrip(.immediate(lnet: Self.lnet, payloadOffset: 0, payloadLength: payload.count), checksum: true, payload: payload)
        guard case .immediate(let lnet, let offset, let length) = message.body else { Issue.record("not immediate"); return }
        #expect(lnet == Self.lnet)
        #expect(offset == WireFormat.headerSize + WireFormat.lnetHeaderSize)
        #expect(length == payload.count)
    }

    @Test func replyCarriesItsPayloadInPlace() throws {
        let payload = Array("the data of a small GET".utf8)
        let message = try roundTrip(.reply(cookie: 12, status: 0, payloadOffset: 0, payloadLength: payload.count), checksum: false,
                                    payload: payload)
        guard case .reply(let cookie, let status, let offset, let length) = message.body else { Issue.record("not a REPLY"); return }
        #expect(cookie == 12 && status == 0)
        #expect(offset == WireFormat.replyHeaderSize)
        #expect(length == payload.count)
        #expect(message.header.length == WireFormat.replyHeaderSize + payload.count)
    }

    @Test func replyLengthMustMatchItsPayload() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
        defer { buffer.deallocate() }
        let length = WireMessage.encode(.reply(cookie: 1, status: 0, payloadOffset: 0, payloadLength: 10), credits: 0,
                                        addressing: Self.addressing, checksum: false, into: buffer) { $0.initializeMemory(as: UInt8.self, repeating: 1) }
        // The u32 length says 11: one byte more than the message carries.
        buffer.storeBytes(of: UInt32(11).littleEndian, toByteOffset: WireFormat.headerSize + 12, as: UInt32.self)
        #expect(throws: WireError.badLength(claimed: WireFormat.replyHeaderSize + 11, received: length)) {
            try WireMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), maxFragments: 256)
        }
    }

    @Test func controlMessagesAreTheOnesThatSkipLNet() {
        #expect(WireMessageType.allCases.filter(\.isControl) == [.noop, .putAck, .putNak, .putDone, .pull, .getDone, .reply])
    }

    /// Encodes a valid GET_REQ, lets `damage` break it, and returns what decoding says.
    func decodeDamaged(checksum: Bool = false, maxFragments: Int = 256, _ damage: (inout [UInt8]) -> Void) -> WireError? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
        defer { buffer.deallocate() }
        let length = WireMessage.encode(.getRequest(lnet: Self.lnet, cookie: 6, sink: Self.descriptor), credits: 0,
                                        addressing: Self.addressing, checksum: checksum, into: buffer)
        var bytes = Array(buffer[0..<length])
        damage(&bytes)
        let result: Result<WireMessage, WireError> = bytes.withUnsafeBytes { raw in
            do throws(WireError) { return .success(try WireMessage.decode(raw, maxFragments: maxFragments)) } catch { return .failure(error) }
        }
        if case .failure(let error) = result { return error }
        return nil
    }

    @Test func malformedMessagesAreErrorsNotCrashes() {
        #expect(decodeDamaged { $0[0] ^= 0xFF } == .badMagic(WireFormat.magic ^ 0xFF))
        #expect(decodeDamaged { $0[4] = 9 } == .badVersion(9))
        #expect(decodeDamaged { $0[6] = 77 } == .badType(77))
        #expect(decodeDamaged { $0.removeLast(10) } == .badLength(claimed: getRequestLength, received: getRequestLength - 10))
        #expect(decodeDamaged { $0 = Array($0[0..<20]) } == .badLength(claimed: getRequestLength, received: 20))
        #expect(decodeDamaged(maxFragments: 1) { _ in } == .tooManyFragments(2, limit: 1))
        #expect(decodeDamaged { $0[8] = 50; $0[9] = 0 } != nil)  // claims 50 bytes: the body is cut short
        if case .badChecksum = decodeDamaged(checksum: true, { $0[100] ^= 1 }) {} else { Issue.record("checksum not checked") }
        #expect(decodeDamaged { $0 = [] } == .truncated(needed: 4, have: 0))
    }

    var getRequestLength: Int { WireFormat.headerSize + WireFormat.lnetHeaderSize + 8 + Self.descriptor.encodedSize }

    @Test func maxMessageSizeCoversEagerAndDescriptors() {
        let size = WireFormat.maxMessageSize(immediateSize: 4096, maxFragments: 256)
        #expect(size >= WireFormat.headerSize + WireFormat.lnetHeaderSize + 4096)
        #expect(size >= WireFormat.headerSize + WireFormat.lnetHeaderSize + 8 + 8 + 256 * 16)
    }
}
