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
        #expect(command.op == .write && command.size == ByteCountRange(65536) && command.concurrency == 4 && command.count == 10)
        #expect(command.verify && command.json && command.mode == .push)
        #expect(command.node.nid == "192.0.2.2@o2ib" && command.to == "192.0.2.1@o2ib")
    }

    @Test func selftestDefaults() throws {
        let command = try #require(try Lnetctl.parseAsRoot(["selftest", "--to", "0@lo"]) as? SelftestCommand)
        #expect(command.op == .read && command.size.max == 1 << 20 && !command.size.isRange && command.concurrency == 8 && command.count == nil)
        #expect(!command.verify && command.mode == nil && command.maxErrors == 100)
    }

    @Test(arguments: [
        ["selftest"],  // --to is required
        ["selftest", "--to", "0@lo", "--op", "erase"],
        ["selftest", "--to", "0@lo", "--size", "12XB"],
        ["selftest", "--to", "0@lo", "--size", "0"],
        ["selftest", "--to", "0@lo", "--size", "0-64KiB"],
        ["selftest", "--to", "0@lo", "--size", "64KiB-1KiB"],
        ["selftest", "--to", "0@lo", "--size", "1-4GiB"],
        ["selftest", "--to", "0@lo", "--size", "1-"],
        ["selftest", "--to", "0@lo", "--size", "1-2-3"],
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

    @Test func placementVariable() throws {
        #expect(try placementPolicy([:]) == .peerHash)
        #expect(try placementPolicy(["LNET_PLACEMENT": "hint"]) == .hints)
        #expect(try placementPolicy(["LNET_PLACEMENT": "none"]) == .roundRobin)
        #expect(throws: CommandFailure.self) { try placementPolicy(["LNET_PLACEMENT": "object"]) }
        do {
            _ = try placementPolicy(["LNET_PLACEMENT": "cpt"])
        } catch {
            #expect(error.description.contains("LNET_PLACEMENT") && error.description.contains("nid, hint, none"))
        }
    }

    @Test func placementCookiesVariable() throws {
        #expect(try placementCookies([:]) == false)
        #expect(try placementCookies(["LNET_PLACEMENT_COOKIES": "1"]) == true)
        #expect(throws: CommandFailure.self) { try placementCookies(["LNET_PLACEMENT_COOKIES": "yes"]) }
    }

    @Test func byteCounts() {
        let cases: [(String, Int?)] = [("4096", 4096), ("4K", 4096), ("64KiB", 65536), ("64kb", 65536), ("1M", 1 << 20), ("1MiB", 1 << 20),
                                       ("2GiB", 2 << 30), ("", nil), ("MiB", nil), ("1.5M", nil), ("-1", nil), ("1T", nil)]
        for (text, value) in cases {
            #expect(ByteCount(argument: text)?.value == value, "\(text)")
        }
    }

    @Test func sizeRanges() {
        let good: [(String, Int, Int)] = [("1-64KiB", 1, 64 << 10), ("64KiB-16MiB", 64 << 10, 16 << 20), ("1B-1MiB", 1, 1 << 20),
                                          ("1-70000", 1, 70_000), ("4K-4096", 4096, 4096), ("1MiB", 1 << 20, 1 << 20),
                                          (" 1 - 64K ", 1, 64 << 10)]
        for (text, low, high) in good {
            let range = ByteCountRange(argument: text)
            #expect(range?.min == low && range?.max == high, "\(text)")
            #expect(range?.problem == nil, "\(text)")
            #expect(range?.isRange == (low != high), "\(text)")
        }
        for text in ["", "-", "1-", "-64KiB", "1--2", "1-2-3", "a-b", "1-64XB", "1.5K-2K", "-1"] {
            #expect(ByteCountRange(argument: text) == nil, "\(text)")
        }
        // Well-formed but unusable: each says why, on one line.
        let bad: [(String, String)] = [("0-64KiB", "at least 1 byte"), ("64KiB-1KiB", "larger than the maximum"),
                                       ("1-4GiB", "at most 4 GiB - 2"), ("0", "1 byte to 4 GiB - 2"), ("4GiB", "1 byte to 4 GiB - 2")]
        for (text, reason) in bad {
            let problem = ByteCountRange(argument: text)?.problem
            #expect(problem?.contains(reason) == true && problem?.contains("\n") == false, "\(text): \(problem ?? "none")")
        }
        #expect(ByteCountRange(argument: "64KiB-1KiB")?.problem?.hasPrefix("64KiB-1KiB:") == true)
        #expect(ByteCountRange(min: 1, max: Int(UInt32.max) - 1).problem == nil)
        #expect(ByteCountRange(min: 1, max: Int(UInt32.max)).problem != nil)
        #expect(ByteCountRange(argument: "1-64KiB")?.description == "1B-64KiB" && ByteCountRange(1 << 20).description == "1 MiB")
    }

    @Test func selftestSizeRangeArguments() throws {
        let command = try #require(try Lnetctl.parseAsRoot(["selftest", "--to", "0@lo", "--op", "write", "--size", "1B-1MiB"]) as? SelftestCommand)
        #expect(command.size == ByteCountRange(min: 1, max: 1 << 20) && command.size.isRange)
        do {
            _ = try Lnetctl.parseAsRoot(["selftest", "--to", "0@lo", "--size", "64KiB-1KiB"])
            Issue.record("an inverted range should be refused")
        } catch {
            let message = Lnetctl.message(for: error)
            #expect(message.contains("--size 64KiB-1KiB: the minimum is larger than the maximum"), "\(message)")
            #expect(!message.contains("\n"), "\(message)")
        }
        // Pings move a fixed-size node description: --size does not matter.
        #expect(try Lnetctl.parseAsRoot(["selftest", "--to", "0@lo", "--op", "ping", "--size", "0-1"]) is SelftestCommand)
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
