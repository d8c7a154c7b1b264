import Foundation
import LNet
import RDMALND
import Testing
import WireFuzzChecks

/// Replays every input the fuzzer ever kept (`Fuzz/crashes/`, one file per crash it found) and the seed corpus
/// (`Fuzz/corpus/`) through the fuzz target's own invariants - the code in `Fuzz/WireFuzzChecks` that the target
/// runs, not a copy: a decode either throws or gives a message that re-encodes byte for byte (reserved fields and
/// the checksum aside), to the size computed from its body independently of the codec, and decodes again to the
/// same message. Each file is replayed as the fuzz target reads it (byte 0 chooses the parser) and through every
/// parser. A missing folder is a failure. `scripts/fuzz.sh` is the fuzzer; `Fuzz/WireFuzz` its target.
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    /// `corpus/NAME` and `crashes/NAME` of every kept input, dot files excluded. Throws if the folder is missing.
    static func inputs(in subdirectory: String) throws -> [String] {
        let directory = fuzzDirectory.appendingPathComponent(subdirectory)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(subdirectory)/\($0)" }
    }

    static func contents(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: fuzzDirectory.appendingPathComponent(name)))
    }

    static func check(_ name: String, _ parser: Parser?, _ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        let outcome = bytes.withUnsafeBytes { raw in
            Result { () throws(InvariantViolation) in
                if let parser { try WireInvariants.check(parser, raw) } else { try WireInvariants.check(raw) }
            }
        }
        if case .failure(let error) = outcome {
            Issue.record("\(name)\(parser.map { " through \($0)" } ?? ""): fuzz invariant violated: \(error)",
                         sourceLocation: sourceLocation)
        }
    }

    @Test func theFoldersAreThere() throws {
        let corpus = try Self.inputs(in: "corpus")
        _ = try Self.inputs(in: "crashes")
        #expect(corpus.count >= Seeds.all.count, "Fuzz/corpus has \(corpus.count) seeds; regenerate with `swift run WireFuzz --write-seeds Fuzz/corpus`")
    }

    /// The corpus holds every seed the fuzz target writes, byte for byte: a seed that differs means the format
    /// changed and the corpus is stale.
    @Test func theCorpusHoldsTheTargetsSeeds() throws {
        for (name, bytes) in Seeds.all {
            let stored = try? Self.contents("corpus/\(name)")
            #expect(stored == bytes, "corpus/\(name) is missing or stale: regenerate with `swift run WireFuzz --write-seeds Fuzz/corpus`")
        }
    }

    /// As the fuzz target reads the file.
    @Test(arguments: try inputs(in: "corpus") + inputs(in: "crashes"))
    func replayAsTheFuzzTarget(_ name: String) throws {
        Self.check(name, nil, try Self.contents(name))
    }

    /// Through every parser: the whole file, the file after the selector byte, and (for wire messages) the file
    /// after the selector and the u16 fragment limit, under several limits.
    @Test(arguments: try inputs(in: "corpus") + inputs(in: "crashes"))
    func replayThroughEveryParser(_ name: String) throws {
        let bytes = try Self.contents(name)
        for input in [bytes, Array(bytes.dropFirst()), Array(bytes.dropFirst(3))] {
            var limits = [0, 1, 16, 256, Int(UInt16.max)]
            if bytes.count >= 3 { limits.append(Int(bytes[1]) | Int(bytes[2]) << 8) }
            for maxFragments in limits {
                Self.check(name, .wireMessage, [UInt8(maxFragments & 0xFF), UInt8(maxFragments >> 8)] + input)
            }
            for parser in Parser.allCases where parser != .wireMessage { Self.check(name, parser, input) }
        }
    }

    /// Each seed is a valid message for the parser its first byte names (so the invariants above were applied
    /// to a decoded message, not skipped by a rejection).
    @Test(arguments: try inputs(in: "corpus"))
    func seedsDecode(_ name: String) throws {
        let bytes = try Self.contents(name)
        try #require(bytes.count > 1)
        let body = Array(bytes.dropFirst())
        let stale = "stale seed \(name): regenerate with `swift run WireFuzz --write-seeds Fuzz/corpus`"
        switch Parser(selector: bytes[0]) {
        case .wireMessage:
            try #require(body.count >= 2)
            let maxFragments = Int(body[0]) | Int(body[1]) << 8
            let message = Array(body.dropFirst(2))
            #expect(throws: Never.self, Comment(rawValue: stale)) {
                _ = try message.withUnsafeBytes { raw throws(WireError) in try WireMessage.decode(raw, maxFragments: maxFragments) }
            }
        case .connectRequest: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try ConnectRequest.decode(body) }
        case .connectAccept: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try ConnectAccept.decode(body) }
        case .connectReject: #expect(ConnectReject.decode(body) != nil, Comment(rawValue: stale))
        case .lnetHeader: #expect(throws: Never.self, Comment(rawValue: stale)) { _ = try LNetHeader(decoding: body) }
        }
    }
}
