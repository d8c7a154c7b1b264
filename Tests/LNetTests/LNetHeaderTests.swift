import Testing

@testable import LNet

@Suite struct LNetHeaderTests {
    private func sample() throws -> LNetHeader {
        LNetHeader(type: .put, source: try ProcessID(parsing: "7-192.0.2.1@o2ib"),
                   destination: try ProcessID(parsing: "9-192.0.2.2@o2ib"), payloadLength: 4096, length: 17,
                   portal: 23, matchBits: 0xDEAD_BEEF_0000_0001, offset: 1 << 33, headerData: 0x1122_3344_5566_7788,
                   mdCookie: 42, status: .noMatch, ackRequested: true, hints: LNetHints(major: 1001, minor: 3))
    }

    @Test func roundTrips() throws {
        let header = try sample()
        let bytes = header.encoded()
        #expect(bytes.count == LNetHeader.encodedSize)
        #expect(try LNetHeader(decoding: bytes) == header)
    }

    @Test func layoutIsLittleEndianAtDocumentedOffsets() throws {
        let bytes = try sample().encoded()
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }
        #expect(u32(0) == LNetHeader.magic)
        #expect(bytes[4] == 1 && bytes[5] == 0)
        #expect(bytes[6] == LNetMessageType.put.rawValue)
        #expect(bytes[7] == 1)
        #expect(u64(8) == (try NID(parsing: "192.0.2.2@o2ib")).rawValue)
        #expect(u64(16) == (try NID(parsing: "192.0.2.1@o2ib")).rawValue)
        #expect(u32(24) == 9 && u32(28) == 7)
        #expect(u32(32) == 4096 && u32(36) == 17 && u32(40) == 23 && u32(44) == LNetStatus.noMatch.rawValue)
        #expect(u64(48) == 0xDEAD_BEEF_0000_0001 && u64(56) == 1 << 33 && u64(64) == 0x1122_3344_5566_7788)
        #expect(u64(72) == 42 && u64(80) == 1001 && u64(88) == 3)
    }

    /// Flag bit 1: bytes 80-87 carry a server's placement cookie instead of hints (minor zero).
    @Test func placementCookieRoundTripsInFlagBitOne() throws {
        var header = try sample()
        header.hints = LNetHints(cookie: LNetPlacementCookie(partition: 3))
        var bytes = header.encoded()
        #expect(bytes[7] == 3 && bytes[80] == 3 && bytes[88..<96].allSatisfy { $0 == 0 })
        let decoded = try LNetHeader(decoding: bytes)
        #expect(decoded == header && decoded.hints.cookie?.partition == 3 && !decoded.hints.isNone)
        bytes[90] = 1
        #expect(throws: LNetHeader.CodingError.cookieWithMinor(1 << 16)) { try LNetHeader(decoding: bytes) }
        bytes[90] = 0
        bytes[82] = 1
        #expect(throws: LNetHeader.CodingError.cookieOutOfRange(1 << 16 | 3)) { try LNetHeader(decoding: bytes) }
        bytes[82] = 0
        // A hint minor of all ones is reserved (it marks a cookie in memory), with or without the flag.
        var reserved = try sample().encoded()
        reserved.replaceSubrange(88..<96, with: [UInt8](repeating: 0xFF, count: 8))
        #expect(throws: LNetHeader.CodingError.reservedHintMinor) { try LNetHeader(decoding: reserved) }
        // A cookie costs a header no bytes: it shares the hints' 16 and the padding after the flags.
        #expect(MemoryLayout<LNetHeader>.size == 96 && MemoryLayout<LNetHints>.size == 16)
        bytes[7] = 0x04
        #expect(throws: LNetHeader.CodingError.unknownFlags(4)) { try LNetHeader(decoding: bytes) }
        // An ACK gives a cookie in the header data's place and keeps its hints.
        var ack = LNetHeader(type: .ack, source: header.destination, destination: header.source, length: 17, mdCookie: 42,
                             hints: LNetHints(major: 1001, minor: 3))
        ack.givenCookie = LNetPlacementCookie(partition: 5)
        let encoded = ack.encoded()
        #expect(encoded[7] == 2 && encoded[64] == 5 && encoded[80] == 0xE9 && encoded[88] == 3)
        let back = try LNetHeader(decoding: encoded)
        #expect(back == ack && back.givenCookie?.partition == 5 && back.headerData == 0 && back.hints == ack.hints)
    }

    @Test func rejectsBadInput() throws {
        var bytes = try sample().encoded()
        #expect(throws: LNetHeader.CodingError.tooShort(95)) { try LNetHeader(decoding: bytes.prefix(95)) }
        #expect(throws: LNetHeader.CodingError.tooShort(0)) { try LNetHeader(decoding: [UInt8]()) }
        var bad = bytes
        bad[0] ^= 0xFF
        #expect(throws: LNetHeader.CodingError.self) { try LNetHeader(decoding: bad) }
        bad = bytes
        bad[4] = 2
        #expect(throws: LNetHeader.CodingError.unsupportedVersion(2)) { try LNetHeader(decoding: bad) }
        bad = bytes
        bad[6] = 9
        #expect(throws: LNetHeader.CodingError.unknownType(9)) { try LNetHeader(decoding: bad) }
        bad = bytes
        bad[7] = 0x80
        #expect(throws: LNetHeader.CodingError.unknownFlags(0x80)) { try LNetHeader(decoding: bad) }
        bytes[44] = 200
        #expect(try LNetHeader(decoding: bytes).status == .failed)
        let header = try sample()
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 10, alignment: 1)
        defer { raw.deallocate() }
        #expect(throws: LNetHeader.CodingError.bufferTooSmall(10)) { try header.encode(into: raw) }
    }

    /// Random bytes, many with a valid start: a header decodes exactly when the documented checks pass (size,
    /// magic, version, type, flags), throws the error that names the first check that fails otherwise, and what
    /// decodes re-encodes to the same 96 bytes (an unknown status code reads as `failed`).
    @Test func randomBytesDecodeExactlyWhenValid() {
        var generator = SystemRandomNumberGenerator()
        var decoded = 0, rejected = 0
        for _ in 0..<2000 {
            var bytes = (0..<Int.random(in: 0...120, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if Bool.random(using: &generator) {
                if Bool.random(using: &generator) { bytes += [UInt8](repeating: 0, count: max(0, 96 - bytes.count)) }
                let flags: UInt8 = [0, 1, 2, 3, .random(in: 0...255, using: &generator)].randomElement(using: &generator)!
                let start: [UInt8] = [0x54, 0x45, 0x4E, 0x4C, 1, 0, UInt8.random(in: 0...5, using: &generator), flags]
                bytes.replaceSubrange(0..<min(8, bytes.count), with: start.prefix(bytes.count))
            }
            func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
            func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }
            // Some cookies that decode (random ones almost never have a zero minor or fit 16 bits): a zero minor,
            // and a 16-bit value where a PUT or GET echoes one (bytes 80-87) and an ACK or REPLY gives one (64-71).
            if bytes.count >= 96, bytes[7] & 2 != 0, Bool.random(using: &generator) {
                bytes.replaceSubrange(88..<96, with: [UInt8](repeating: 0, count: 8))
                bytes.replaceSubrange(82..<88, with: [UInt8](repeating: 0, count: 6))
                bytes.replaceSubrange(66..<72, with: [UInt8](repeating: 0, count: 6))
            }
            let expected: LNetHeader.CodingError? = {
                guard bytes.count >= LNetHeader.encodedSize else { return .tooShort(bytes.count) }
                guard u32(0) == LNetHeader.magic else { return .badMagic(u32(0)) }
                let version = UInt16(bytes[4]) | UInt16(bytes[5]) << 8
                guard version == 1 else { return .unsupportedVersion(version) }
                guard (1...4).contains(bytes[6]) else { return .unknownType(bytes[6]) }
                guard bytes[7] & ~3 == 0 else { return .unknownFlags(bytes[7]) }
                guard u64(88) != .max else { return .reservedHintMinor }
                let answer = bytes[6] >= 3, cookie = bytes[7] & 2 != 0
                guard !cookie || answer || u64(88) == 0 else { return .cookieWithMinor(u64(88)) }
                let value = answer ? u64(64) : u64(80)
                guard !cookie || value <= 0xFFFF else { return .cookieOutOfRange(value) }
                return nil
            }()
            do throws(LNetHeader.CodingError) {
                let header = try LNetHeader(decoding: bytes)
                decoded += 1
                #expect(expected == nil, "decoded although \(expected.map { "\($0)" } ?? "")")
                var again = header.encoded()
                if LNetStatus(rawValue: u32(44)) == nil {
                    #expect(header.status == .failed)
                    again.replaceSubrange(44..<48, with: bytes[44..<48])
                }
                #expect(again == Array(bytes.prefix(LNetHeader.encodedSize)), "\(header) re-encodes differently")
            } catch {
                rejected += 1
                #expect(error == expected, "threw \(error), expected \(expected.map { "\($0)" } ?? "a decoded header")")
            }
        }
        #expect(decoded > 0 && rejected > 0, "\(decoded) decoded, \(rejected) rejected")
    }
}
