#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import LNet

/// The lengths of a session's operations: one size, or a range from which each operation draws its own length
/// log-uniformly, so that every factor of ten between the ends gets as many operations as any other.
///
/// An operation's length depends only on the session id and its sequence number (the `sequence`-th draw of a
/// ``SplitMix64`` seeded from the session id), so a session's lengths can be reproduced.
public struct OperationSizes: Sendable, Equatable, CustomStringConvertible {
    /// The smallest length (at least 1 for a valid range).
    public let minimum: Int
    /// The largest length: what slot buffers are sized for.
    public let maximum: Int

    /// Every operation moves `size` bytes.
    public init(_ size: Int) {
        minimum = size
        maximum = size
    }

    /// Each operation moves between `minimum` and `maximum` bytes, both included.
    public init(minimum: Int, maximum: Int) {
        self.minimum = minimum
        self.maximum = maximum
    }

    /// One size for every operation.
    public var isFixed: Bool { minimum == maximum }

    /// A length in `minimum...maximum` from one draw of `generator`: `floor(x)` with `x` log-uniform on
    /// `[minimum, maximum + 1)`, so length `n` comes with probability `ln((n + 1) / n) / ln((maximum + 1) / minimum)`.
    public func draw(using generator: inout some RandomNumberGenerator) -> Int {
        guard minimum < maximum else { return minimum }
        let low = Double(max(1, minimum))
        let unit = Double(generator.next() >> 11) * 0x1p-53
        let x = low * exp(unit * log((Double(maximum) + 1) / low))
        // Rounding may land a hair outside the range at either end.
        return Swift.min(maximum, Swift.max(minimum, Int(x)))
    }

    /// The length of operation `sequence` (from 1) of `session`.
    public func length(session: UInt64, sequence: UInt64) -> Int {
        guard !isFixed else { return minimum }
        var generator = Self.generator(session: session).advanced(by: sequence &- 1)
        return draw(using: &generator)
    }

    /// The generator whose `n`-th draw picks the length of operation `n` of `session`.
    public static func generator(session: UInt64) -> SplitMix64 {
        SplitMix64(seed: session ^ 0x5349_5A45_0000_0000)  // "SIZE"
    }

    /// `64KiB`, or `1B-64KiB` for a range (exact: sizes that are not a whole number of units are in bytes).
    public var description: String {
        isFixed ? Self.compact(maximum) : "\(Self.compact(minimum))-\(Self.compact(maximum))"
    }

    /// `64KiB`, `1MiB`, `70000B`: the largest binary unit that divides `count`, with no space.
    public static func compact(_ count: Int) -> String { formatBytesExactly(count) }
}
