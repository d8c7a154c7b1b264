// The fuzz target for the RDMA LND's wire-message parser, its connection-handshake parsers and the LNet header
// parser. The invariants it checks are in Fuzz/WireFuzzChecks (shared with the tests, which replay the corpus and
// every kept crash through them); here a broken invariant becomes a crash, so libFuzzer reports it.
//
// With `-D FUZZING` and `--sanitize fuzzer` (scripts/fuzz.sh) libFuzzer supplies `main` and calls
// `LLVMFuzzerTestOneInput`. Without them (the ordinary `swift build`) this is a plain tool:
//
//   WireFuzz FILE|DIR...             replay inputs through the target (exit 1 at the first broken invariant)
//   WireFuzz --write-seeds DIR       write the seed corpus (Fuzz/corpus)
//
// Input layout: byte 0 chooses the parser (see WireInvariants.swift). Rejecting input is never a failure;
// trapping (`fatalError`) is reserved for a broken invariant.

import WireFuzzChecks

#if !FUZZING
import Foundation
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    do throws(InvariantViolation) {
        try WireInvariants.check(UnsafeRawBufferPointer(start: data, count: size))
    } catch {
        fatalError("fuzz invariant violated: \(error)")
    }
    return 0
}

#if !FUZZING
enum WireFuzz {
    /// Replays one input; a broken invariant is reported (naming the input) and ends the tool with status 1.
    static func replay(_ input: UnsafeRawBufferPointer, _ name: String) {
        do throws(InvariantViolation) { try WireInvariants.check(input) } catch {
            FileHandle.standardError.write(Data("WireFuzz: \(name): fuzz invariant violated: \(error)\n".utf8))
            exit(1)
        }
    }
}

@main
enum WireFuzzMain {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            let directory = URL(fileURLWithPath: arguments[1], isDirectory: true)
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let seeds = Seeds.all
            for (name, bytes) in seeds {
                bytes.withUnsafeBytes { WireFuzz.replay($0, name) }  // every seed must itself pass
                try Data(bytes).write(to: directory.appendingPathComponent(name))
            }
            print("wrote \(seeds.count) seeds to \(directory.path)")
            return
        }
        if arguments.isEmpty || arguments.contains(where: { $0.hasPrefix("-") }) {
            print("""
                usage: WireFuzz FILE|DIR...          replay inputs through the fuzz target
                       WireFuzz --write-seeds DIR    write the seed corpus
                (build with scripts/fuzz.sh to fuzz with libFuzzer)
                """)
            if !arguments.contains("-h") && !arguments.contains("--help") { exit(2) }
            return
        }
        var count = 0
        for path in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                print("WireFuzz: no such file: \(path)")
                exit(2)
            }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted().map { path + "/" + $0 }
                : [path]
            for file in files {
                let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
                bytes.withUnsafeBytes { WireFuzz.replay($0, file) }
                count += 1
            }
        }
        print("WireFuzz: replayed \(count) inputs, no invariant broken")
    }
}
#endif
