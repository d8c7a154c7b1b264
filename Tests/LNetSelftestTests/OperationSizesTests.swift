import Foundation
import Testing
@testable import LNetSelftest

@Suite struct OperationSizesTests {
    @Test func splitMix64KnownAnswers() {
        // The reference outputs of SplitMix64 (Vigna's splitmix64.c).
        var zero = SplitMix64(seed: 0)
        #expect([zero.next(), zero.next(), zero.next()] == [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var other = SplitMix64(seed: 1_234_567)
        #expect([other.next(), other.next(), other.next()] == [0x599E_D017_FB08_FC85, 0x2C73_F084_5854_0FA5, 0x883E_BCE5_A3F2_7C77])
    }

    @Test func advancingSkipsDraws() {
        var drawn = SplitMix64(seed: 42)
        let skipped = drawn.advanced(by: 5)
        for _ in 0..<5 { _ = drawn.next() }
        #expect(drawn == skipped)
        var unit = SplitMix64(seed: 7)
        for _ in 0..<1000 {
            let value = unit.nextUnitInterval()
            #expect(value >= 0 && value < 1)
        }
    }

    @Test(arguments: [(1, 70_000), (1, 2), (5, 6), (64 << 10, 16 << 20), (1, 1 << 20), (4096, 4096), (Int(UInt32.max) - 3, Int(UInt32.max) - 1)])
    func lengthsStayInRangeAndReachBothEnds(minimum: Int, maximum: Int) {
        let sizes = OperationSizes(minimum: minimum, maximum: maximum)
        var generator = SplitMix64(seed: 99)
        var seen = Set<Int>()
        for _ in 0..<20_000 {
            let length = sizes.draw(using: &generator)
            #expect(length >= minimum && length <= maximum)
            seen.insert(length)
        }
        if maximum - minimum <= 2 { #expect(seen == Set(minimum...maximum)) }
        // Ranges wide enough: small lengths are common (log-uniform), so the bottom end comes up; the top end is the
        // rarest length but a range of a few values reaches it.
        #expect(seen.contains(minimum) || maximum - minimum > 1_000)
    }

    @Test func eachDecadeGetsItsShare() {
        // 1...999_999: six whole decades, each with probability exactly 1/6.
        let sizes = OperationSizes(minimum: 1, maximum: 999_999)
        var generator = SplitMix64(seed: 2024)
        var decades = [Int](repeating: 0, count: 6)
        let draws = 60_000
        for _ in 0..<draws {
            let length = sizes.draw(using: &generator)
            decades[String(length).count - 1] += 1
        }
        // 10_000 expected per decade, standard deviation about 91.
        for (decade, count) in decades.enumerated() {
            #expect(abs(count - draws / 6) < 500, "decade \(decade): \(count) of \(draws)")
        }
        // Discrete log-uniform: 1 comes up ln 2 / ln 10^6 of the time (5.0 %), 2 ln(3/2) / ln 10^6 (2.9 %).
        var ones = 0
        var twos = 0
        for _ in 0..<draws {
            switch sizes.draw(using: &generator) {
            case 1: ones += 1
            case 2: twos += 1
            default: break
            }
        }
        let total = log(1_000_000.0)
        #expect(abs(Double(ones) / Double(draws) - log(2.0) / total) < 0.005, "\(ones)")
        #expect(abs(Double(twos) / Double(draws) - log(1.5) / total) < 0.004, "\(twos)")
    }

    @Test func aSoakRangeSpreadsOverEveryDecade() {
        // The soak test's range, 1 B to 16 MiB: every decade up to 10^7 gets close to its log share.
        let sizes = OperationSizes(minimum: 1, maximum: 16 << 20)
        var decades = [Int](repeating: 0, count: 8)
        let draws = 40_000
        for sequence in 1...UInt64(draws) {
            decades[String(sizes.length(session: 0xABCDEF, sequence: sequence)).count - 1] += 1
        }
        let share = log(10.0) / log(Double(16 << 20) + 1)
        for decade in 0..<7 {
            #expect(abs(Double(decades[decade]) / Double(draws) - share) < 0.015, "decade \(decade): \(decades)")
        }
        #expect(decades[7] > 0)
    }

    @Test func lengthsAreReproduciblePerSessionAndSequence() {
        let sizes = OperationSizes(minimum: 1, maximum: 70_000)
        let first = (1...200).map { sizes.length(session: 0x1234, sequence: UInt64($0)) }
        let again = (1...200).map { sizes.length(session: 0x1234, sequence: UInt64($0)) }
        let otherSession = (1...200).map { sizes.length(session: 0x1235, sequence: UInt64($0)) }
        #expect(first == again && first != otherSession)
        #expect(Set(first).count > 150)
        // Operation n's length is the n-th draw of the session's generator.
        var generator = OperationSizes.generator(session: 0x1234)
        #expect((1...200).map { _ in sizes.draw(using: &generator) } == first)
        // One size: every operation has it.
        #expect((1...50).allSatisfy { OperationSizes(4096).length(session: 9, sequence: UInt64($0)) == 4096 })
    }

    @Test func descriptions() {
        #expect(OperationSizes(minimum: 1, maximum: 64 << 10).description == "1B-64KiB")
        #expect(OperationSizes(minimum: 64 << 10, maximum: 16 << 20).description == "64KiB-16MiB")
        #expect(OperationSizes(minimum: 1, maximum: 70_000).description == "1B-70000B")
        #expect(OperationSizes(1 << 20).description == "1MiB")
        #expect(OperationSizes(1 << 20).isFixed && !OperationSizes(minimum: 1, maximum: 2).isFixed)
    }
}
