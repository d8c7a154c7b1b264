import ArgumentParser
import Testing
@testable import LNetControl
import LNetSelftest
import RDMALND

@Suite struct ParsingTests {
    @Test func selftestArguments() throws {
        let parsed = try Lnetctl.parseAsRoot(["selftest", "--nid", "192.0.2.2@o2ib", "--to", "192.0.2.1@o2ib", "--op", "write",
                                              "--size", "64KiB", "--concurrency", "4", "--count", "10", "--verify", "--mode", "push",
                                              "--json"])
        let command = try #require(parsed as? SelftestCommand)
        #expect(command.op == .write && command.size.value == 65536 && command.concurrency == 4 && command.count == 10)
        #expect(command.verify && command.json && command.mode == .push)
        #expect(command.node.nid == "192.0.2.2@o2ib" && command.to == "192.0.2.1@o2ib")
    }

    @Test func selftestDefaults() throws {
        let command = try #require(try Lnetctl.parseAsRoot(["selftest", "--to", "0@lo"]) as? SelftestCommand)
        #expect(command.op == .read && command.size.value == 1 << 20 && command.concurrency == 8 && command.count == nil)
        #expect(!command.verify && command.mode == nil && command.maxErrors == 100)
    }

    @Test(arguments: [
        ["selftest"],  // --to is required
        ["selftest", "--to", "0@lo", "--op", "erase"],
        ["selftest", "--to", "0@lo", "--size", "12XB"],
        ["selftest", "--to", "0@lo", "--size", "0"],
        ["selftest", "--to", "0@lo", "--concurrency", "0"],
        ["selftest", "--to", "0@lo", "--count", "0"],
        ["selftest", "--to", "0@lo", "--mode", "sideways"],
        ["selftest", "--to", "0@lo", "--duration", "-3s"],
        ["ping"],
        ["ping", "0@lo", "--count", "0"],
        ["serve", "--max-sessions", "0"],
        ["serve", "--max-session-memory", "lots"],
        ["frobnicate"],
    ])
    func argumentErrors(arguments: [String]) {
        #expect(throws: (any Error).self) { try Lnetctl.parseAsRoot(arguments) }
    }

    @Test func byteCounts() {
        let cases: [(String, Int?)] = [("4096", 4096), ("4K", 4096), ("64KiB", 65536), ("64kb", 65536), ("1M", 1 << 20), ("1MiB", 1 << 20),
                                       ("2GiB", 2 << 30), ("", nil), ("MiB", nil), ("1.5M", nil), ("-1", nil), ("1T", nil)]
        for (text, value) in cases {
            #expect(ByteCount(argument: text)?.value == value, "\(text)")
        }
    }

    @Test func durations() {
        #expect(DurationArgument(argument: "10s")?.duration == .seconds(10))
        #expect(DurationArgument(argument: "250ms")?.duration == .milliseconds(250))
        #expect(DurationArgument(argument: "2m")?.duration == .seconds(120))
        #expect(DurationArgument(argument: "1.5")?.duration == .milliseconds(1500))
        #expect(DurationArgument(argument: "0s") == nil && DurationArgument(argument: "soon") == nil)
    }

    @Test func failuresAreOneLine() {
        #expect(CommandFailure("first\nsecond\n  third").message == "first second third")
    }
}
