/// SplitMix64 (Steele, Lea and Flood): a tiny, fast, seedable generator with a 64-bit state, good enough for
/// choosing operation sizes and reproducible from its seed on every platform.
///
/// The state advances by a fixed odd constant and each output is a bijective mix of the state, so the `n`-th output of
/// the stream seeded with `s` is the first output of the stream seeded with `s + (n - 1) x` ``gamma``: any draw can be
/// reached without running the ones before it.
public struct SplitMix64: RandomNumberGenerator, Sendable, Equatable {
    /// The state's increment (2^64 / the golden ratio, odd).
    public static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= Self.gamma
        return Self.finalize(state)
    }

    /// The output mix (a bijection of 64-bit values): `next()` is `finalize(state + gamma)`; also a good hash.
    public static func finalize(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// This generator after `count` more draws, without making them.
    public func advanced(by count: UInt64) -> SplitMix64 {
        SplitMix64(seed: state &+ count &* Self.gamma)
    }

    /// A uniform value in `[0, 1)` from one draw (its top 53 bits).
    public mutating func nextUnitInterval() -> Double {
        Double(next() >> 11) * 0x1p-53
    }
}
