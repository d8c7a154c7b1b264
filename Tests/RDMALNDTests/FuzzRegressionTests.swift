import Foundation
import LNet
import RDMALND
import Testing

/// Replays every input the fuzzer ever kept (`Fuzz/crashes/`, one file per crash it found) and the seed corpus
/// (`Fuzz/corpus/`) through every parser: a decode must either succeed or throw, never trap, and what it decodes
/// must survive a re-encode. `scripts/fuzz.sh` is the fuzzer; `Fuzz/WireFuzz` its target (byte 0 of an input
/// chooses the parser, see there).
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    /// `corpus/NAME` and `crashes/NAME` of every kept input, dot files excluded.
    static func inputs(in subdirectory: String) -> [String] {
        let directory = fuzzDirectory.appendingPathComponent(subdirectory)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(subdirectory)/\($0)" }
    }

    static let corpus = inputs(in: "corpus")
    static let crashes = inputs(in: "crashes")

    static func contents(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: fuzzDirectory.appendingPathComponent(name)))
    }

    @Test func theSeedCorpusIsThere() {
        #expect(Self.corpus.count >= 30, "Fuzz/corpus has \(Self.corpus.count) seeds; regenerate with `swift run WireFuzz --write-seeds Fuzz/corpus`")
    }

    @Test(arguments: corpus + crashes)
    func replayThroughEveryParser(_ name: String) throws {
        let bytes = try Self.contents(name)
        // The whole file, the file as the fuzz target reads it (after the selector byte), and the wire message
        // after the selector and the u16 fragment limit.
        for input in [bytes, Array(bytes.dropFirst()), Array(bytes.dropFirst(3))] {
            var limits = [0, 1, 16, 256, Int(UInt16.max)]
            if bytes.count >= 3 { limits.append(Int(bytes[1]) | Int(bytes[2]) << 8) }
            for maxFragments in limits { Self.wireMessage(input, maxFragments: maxFragments) }
            Self.connectRequest(input)
            Self.connectAccept(input)
            Self.connectReject(input)
            Self.lnetHeader(input)
        }
    }

    /// Each seed is a valid message for the parser its first byte names: a seed that stops decoding means the
    /// format changed and the corpus is stale (`swift run WireFuzz --write-seeds Fuzz/corpus` rewrites it).
    @Test(arguments: corpus)
    func seedsDecode(_ name: String) throws {
        let bytes = try Self.contents(name)
        try #require(bytes.count > 1)
        let body = Array(bytes.dropFirst())
        let stale = "stale seed \(name): regenerate with `swift run WireFuzz --write-seeds Fuzz/corpus`"
        switch bytes[0] % 5 {
        case 0:
            try #require(body.count >= 2)
            let maxFragments = Int(body[0]) | Int(body[1]) << 8
            let message = Array(body.dropFirst(2))
            #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try Self.decodeWire(message, maxFragments: maxFragments).get() }
        case 1: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try ConnectRequest.decode(body) }
        case 2: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try ConnectAccept.decode(body) }
        case 3: #expect(ConnectReject.decode(body) != nil, Comment(rawValue: stale))
        default: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try LNetHeader(decoding: body) }
        }
    }

    // MARK: decode, and if that works, re-encode and decode again

    static func decodeWire(_ bytes: [UInt8], maxFragments: Int) -> Result<WireMessage, WireError> {
        bytes.withUnsafeBytes { raw in
            Result { () throws(WireError) in try WireMessage.decode(raw, maxFragments: maxFragments) }
        }
    }

    static func wireMessage(_ bytes: [UInt8], maxFragments: Int) {
        let decoded: WireMessage
        switch decodeWire(bytes, maxFragments: maxFragments) {
        case .success(let message): decoded = message
        case .failure(let error): _ = error.description; return
        }
        let header = decoded.header
        #expect(header.length >= WireFormat.headerSize && header.length <= bytes.count)
        #expect(header.type == decoded.body.type)
        guard header.length >= WireFormat.headerSize, header.length <= bytes.count else { return }
        let addressing = WireAddressing(source: header.source, sourceStamp: header.sourceStamp,
                                        destination: header.destination, destinationStamp: header.destinationStamp)
        // Room for any message these inputs can hold (they are small files), so a wrong size shows as a mismatch.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: header.length + 1 << 20, alignment: 8)
        defer { buffer.deallocate() }
        for checksum in [false, true] {
            let length = WireMessage.encode(decoded.body, credits: header.credits, addressing: addressing,
                                            checksum: checksum, into: buffer) { payload in
                if case .immediate(_, let offset, let count) = decoded.body {
                    payload.copyBytes(from: bytes[offset..<(offset + count)])
                }
            }
            #expect(length == header.length, "\(header.type) of \(header.length) bytes re-encodes to \(length)")
            let again = Result { () throws(WireError) in
                try WireMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), maxFragments: maxFragments)
            }
            #expect(again == .success(decoded), "\(header.type) round trip (checksum \(checksum))")
        }
    }

    static func connectRequest(_ bytes: [UInt8]) {
        guard let request = try? ConnectRequest.decode(bytes) else { return }
        #expect(bytes.count >= ConnectRequest.size)
        #expect((try? ConnectRequest.decode(request.encoded())) == request)
    }

    static func connectAccept(_ bytes: [UInt8]) {
        guard let accept = try? ConnectAccept.decode(bytes) else { return }
        #expect(bytes.count >= ConnectAccept.size)
        #expect((try? ConnectAccept.decode(accept.encoded())) == accept)
    }

    static func connectReject(_ bytes: [UInt8]) {
        guard let reject = ConnectReject.decode(bytes) else { return }
        #expect(bytes.count >= ConnectReject.size)
        #expect(ConnectReject.decode(reject.encoded()) == reject)
    }

    static func lnetHeader(_ bytes: [UInt8]) {
        let header: LNetHeader
        do throws(LNetHeader.CodingError) { header = try LNetHeader(decoding: bytes) } catch { _ = error.description; return }
        #expect(bytes.count >= LNetHeader.encodedSize)
        #expect((try? LNetHeader(decoding: header.encoded())) == header)
        _ = header.description
    }
}
