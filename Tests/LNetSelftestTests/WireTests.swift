import LNet
import Testing
@testable import LNetSelftest

@Suite struct WireTests {
    @Test func sessionRequestRoundTrip() throws {
        for kind in [SessionRequest.Kind.setup, .teardown] {
            for op in SelftestOp.allCases {
                let request = SessionRequest(kind: kind, session: 0x00AB_CDEF_0123_4567, op: op, size: 1 << 20,
                                             concurrency: 8, verify: op != .read)
                let bytes = request.encoded()
                #expect(bytes.count == SessionRequest.encodedSize)
                #expect(try SessionRequest(decoding: bytes) == request)
                #expect(request.minSize == request.size && request.sizes.isFixed)
                let mixed = SessionRequest(kind: kind, session: 7, op: op, size: 16 << 20, minSize: 1, concurrency: 8, verify: true)
                #expect(mixed.encoded().count == SessionRequest.encodedSize)
                #expect(try SessionRequest(decoding: mixed.encoded()) == mixed)
                #expect(mixed.sizes == OperationSizes(minimum: 1, maximum: 16 << 20))
            }
        }
    }

    @Test func minSizeIsTheLastField() throws {
        let bytes = SessionRequest(kind: .setup, session: 1, op: .write, size: 0x0001_1170, minSize: 0x0102_0304, concurrency: 3,
                                   verify: true).encoded()
        #expect(Array(bytes[20..<24]) == [0x70, 0x11, 0x01, 0])
        #expect(Array(bytes[24..<28]) == [3, 0, 0, 0])
        #expect(Array(bytes[28..<32]) == [4, 3, 2, 1])
        // A request from before mixed sizes has 0 there (then reserved): one size.
        var old = bytes
        old.replaceSubrange(28..<32, with: [0, 0, 0, 0])
        let decoded = try SessionRequest(decoding: old)
        #expect(decoded.minSize == 0x0001_1170 && decoded.size == 0x0001_1170 && decoded.sizes.isFixed)
    }

    @Test func headerIsLittleEndian() {
        let bytes = SessionRequest(kind: .setup, session: 0x0102_0304_0506_0708, op: .write, size: 0x10, concurrency: 2,
                                   verify: true).encoded()
        #expect(Array(bytes[0..<4]) == [0x31, 0x54, 0x53, 0x4C])  // "LST1" as a little-endian u32
        #expect(Array(bytes[4..<6]) == [1, 0])
        #expect(Array(bytes[6..<8]) == [1, 0])
        #expect(Array(bytes[8..<16]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(bytes[16] == 2 && bytes[17] == 1)
        #expect(Array(bytes[20..<24]) == [0x10, 0, 0, 0])
        #expect(Array(bytes[28..<32]) == [0x10, 0, 0, 0])  // min size: the same (one size)
    }

    @Test func sessionReplyRoundTrip() throws {
        let reply = SessionReply(kind: .closed, session: 42, status: .tooMuchMemory, getMode: .push, putMode: .pull,
                                 sessionMemoryLimit: 1 << 28, operationsServed: 7, bytesServed: 7 << 20,
                                 verificationFailures: 1, serverCPUNanoseconds: 123_456, serverMaxRSSKiB: 65_536,
                                 message: "session needs 1 GiB — too much")
        #expect(try SessionReply(decoding: reply.encoded()) == reply)
    }

    @Test func longReplyMessageIsCutAtACharacterBoundary() throws {
        let reply = SessionReply(kind: .ready, session: 1, status: .failed, message: String(repeating: "é", count: 400))
        let bytes = reply.encoded()
        #expect(bytes.count <= SelftestProtocol.replyBufferSize)
        let decoded = try SessionReply(decoding: bytes)
        #expect(decoded.message.allSatisfy { $0 == "é" } && !decoded.message.isEmpty)
    }

    @Test func verdictAndNodeInfoRoundTrip() throws {
        let verdict = Verdict(session: 9, slot: 3, sequence: 77, status: .patternMismatch, badOffset: 4100)
        #expect(verdict.encoded().count == Verdict.encodedSize)
        #expect(Verdict.encodedSize <= SelftestProtocol.verdictSize)
        #expect(try Verdict(decoding: verdict.encoded()) == verdict)
        let info = NodeInfo(nid: try NID(parsing: "192.0.2.1@o2ib"), pid: 12345, startedNanoseconds: 99)
        #expect(try NodeInfo(decoding: info.encoded()) == info)
    }

    @Test func decodeErrors() throws {
        let good = SessionRequest(kind: .setup, session: 1, op: .read, size: 4096, concurrency: 1, verify: false).encoded()
        #expect(throws: SelftestWireError.truncated(needed: 16, available: 3)) { try SessionRequest(decoding: Array(good[0..<3])) }
        #expect(throws: SelftestWireError.truncated(needed: 20, available: 19)) { try SessionRequest(decoding: Array(good[0..<19])) }
        var bad = good
        bad[0] ^= 0xFF
        #expect(throws: SelftestWireError.badMagic(0x4C53_54CE)) { try SessionRequest(decoding: bad) }
        bad = good
        bad[4] = 9
        #expect(throws: SelftestWireError.unsupportedVersion(9)) { try SessionRequest(decoding: bad) }
        bad = good
        bad[16] = 7
        #expect(throws: SelftestWireError.invalidField(name: "op", value: 7)) { try SessionRequest(decoding: bad) }
        bad = good
        bad[17] = 0x80
        #expect(throws: SelftestWireError.invalidField(name: "flags", value: 0x80)) { try SessionRequest(decoding: bad) }
        // A reply where a request is expected.
        let reply = SessionReply(kind: .ready, session: 1, status: .ok).encoded()
        #expect(throws: SelftestWireError.unexpectedType(got: 3, expected: [1, 2])) { try SessionRequest(decoding: reply) }
        // A reply whose message length runs past the end.
        var truncatedText = SessionReply(kind: .ready, session: 1, status: .ok, message: "hello").encoded()
        truncatedText.removeLast(2)
        #expect(throws: SelftestWireError.self) { try SessionReply(decoding: truncatedText) }
    }

    /// Damaged and truncated messages: every decoder either throws or returns a value that survives a re-encode;
    /// the four message types never decode as each other; an undamaged message decodes to what was sent, and
    /// one cut short decodes as nothing.
    @Test func randomBytesDecodeConsistently() {
        var generator = SystemRandomNumberGenerator()
        let request = SessionRequest(kind: .setup, session: 5, op: .write, size: 9, concurrency: 2, verify: true)
        let reply = SessionReply(kind: .ready, session: 5, status: .ok, message: "x")
        let verdict = Verdict(session: 5, slot: 1, sequence: 2, status: .ok)
        let info = NodeInfo(nid: .loopback, pid: 1, startedNanoseconds: 2)
        let valid = [request.encoded(), reply.encoded(), verdict.encoded(), info.encoded()]
        var decodedCount = 0, rejectedCount = 0
        for _ in 0..<2000 {
            let which = Int.random(in: 0..<valid.count, using: &generator)
            let original = valid[which]
            var bytes = original
            let flips = Int.random(in: 0...4, using: &generator)
            for _ in 0..<flips { bytes[Int.random(in: 0..<bytes.count, using: &generator)] = .random(in: 0...255, using: &generator) }
            if Bool.random(using: &generator) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator))) }
            let truncated = bytes.count < original.count

            // Each decoder: nil if it threw, else whether its value survived encoding and decoding again, and
            // whether it is the message that was sent.
            var outcomes: [(roundTrips: Bool, isOriginal: Bool)?] = []
            outcomes.append((try? SessionRequest(decoding: bytes)).map { (try? SessionRequest(decoding: $0.encoded())) == $0 ? (true, $0 == request) : (false, false) })
            outcomes.append((try? SessionReply(decoding: bytes)).map { (try? SessionReply(decoding: $0.encoded())) == $0 ? (true, $0 == reply) : (false, false) })
            outcomes.append((try? Verdict(decoding: bytes)).map { (try? Verdict(decoding: $0.encoded())) == $0 ? (true, $0 == verdict) : (false, false) })
            outcomes.append((try? NodeInfo(decoding: bytes)).map { (try? NodeInfo(decoding: $0.encoded())) == $0 ? (true, $0 == info) : (false, false) })
            let decoded = outcomes.indices.filter { outcomes[$0] != nil }
            decodedCount += decoded.count
            rejectedCount += outcomes.count - decoded.count
            #expect(decoded.count <= 1, "\(bytes) decodes as \(decoded.count) message types")
            for index in decoded { #expect(outcomes[index]?.roundTrips == true, "decoder \(index): \(bytes) does not survive a re-encode") }
            if flips == 0 && truncated {
                #expect(decoded.isEmpty, "\(bytes.count) of \(original.count) bytes decoded")
            } else if flips == 0 {
                #expect(decoded == [which] && outcomes[which]?.isOriginal == true, "undamaged message \(which) decodes as \(decoded)")
            }
        }
        #expect(decodedCount > 0 && rejectedCount > 0, "\(decodedCount) decoded, \(rejectedCount) rejected")
    }

    @Test func matchBitsKeepKindAndSessionApart() {
        let session: UInt64 = 0x00FF_FFFF_FFFF_FFFF
        #expect(SelftestProtocol.matchBits(.data, session: session) != SelftestProtocol.matchBits(.reply, session: session))
        #expect(SelftestProtocol.matchBits(.verdict, session: session) >> 56 == 3)
        #expect(SelftestProtocol.matchBits(.data, session: .max) & SelftestProtocol.sessionMask == SelftestProtocol.sessionMask)
        let portals: Set<UInt32> = [SelftestProtocol.pingPortal, SelftestProtocol.controlPortal, SelftestProtocol.replyPortal,
                                    SelftestProtocol.dataPortal]
        #expect(portals.count == 4)
    }
}

@Suite struct PatternAndHistogramTests {
    @Test func patternsDifferBySlotAndSession() throws {
        let a = try LNetBuffer(count: 1000)
        let b = try LNetBuffer(count: 1000)
        SelftestPattern.fill(a.bytes, seed: SelftestPattern.readSeed(session: 1, slot: 0))
        SelftestPattern.fill(b.bytes, seed: SelftestPattern.readSeed(session: 1, slot: 1))
        #expect(SelftestPattern.firstDifference(UnsafeRawBufferPointer(a.bytes), UnsafeRawBufferPointer(b.bytes)) != nil)
        SelftestPattern.fill(b.bytes, seed: SelftestPattern.readSeed(session: 1, slot: 0))
        #expect(SelftestPattern.firstDifference(UnsafeRawBufferPointer(a.bytes), UnsafeRawBufferPointer(b.bytes)) == nil)
        b.bytes[997] ^= 1
        #expect(SelftestPattern.firstDifference(UnsafeRawBufferPointer(a.bytes), UnsafeRawBufferPointer(b.bytes)) == 997)
    }

    @Test func stampFitsSmallSlots() throws {
        let buffer = try LNetBuffer(count: 3)
        SelftestPattern.stamp(buffer.bytes, sequence: 0x0102_0304)
        #expect(buffer.read() == [4, 3, 2])
        #expect(SelftestPattern.readStamp(UnsafeRawBufferPointer(buffer.bytes)) == SelftestPattern.truncatedSequence(0x0102_0304, size: 3))
    }

    @Test func histogramPercentiles() {
        var histogram = LatencyHistogram()
        #expect(histogram.percentile(50) == 0)
        for value in 1...10_000 { histogram.record(UInt64(value) * 1000) }
        #expect(histogram.count == 10_000)
        #expect(histogram.maximum == 10_000_000 && histogram.minimum == 1000)
        let p50 = Double(histogram.percentile(50))
        let p99 = Double(histogram.percentile(99))
        #expect(abs(p50 - 5_000_000) / 5_000_000 < 0.02)
        #expect(abs(p99 - 9_900_000) / 9_900_000 < 0.02)
        #expect(histogram.percentile(100) == 10_000_000)
        #expect(abs(histogram.mean - 5_000_500) < 1)
    }

    @Test func histogramBucketsAreContiguous() {
        var previous = LatencyHistogram.range(of: 0)
        for index in 1..<LatencyHistogram.bucketCount {
            let range = LatencyHistogram.range(of: index)
            #expect(range.lowerBound == previous.upperBound &+ 1, "bucket \(index)")
            #expect(LatencyHistogram.index(of: range.lowerBound) == index && LatencyHistogram.index(of: range.upperBound) == index)
            previous = range
            if range.upperBound == .max { break }
        }
        #expect(LatencyHistogram.index(of: .max) == LatencyHistogram.bucketCount - 1)
    }

    @Test func jsonIsSortedAndEscaped() {
        let value = JSONValue.object(["b": .int(1), "a": .array([.string("x\"\n"), .bool(true), .null, .number(1.23456, decimals: 2)]),
                                      "c": .double(.nan), "d": .double(3)])
        #expect(value.description == #"{"a":["x\"\n",true,null,1.23],"b":1,"c":null,"d":3}"#)
    }
}
