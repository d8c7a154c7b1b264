#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The deterministic byte patterns of self-test sessions: both sides compute them from the session id, so nothing
/// but the data itself crosses the network.
public enum SelftestPattern {
    /// The seed of a read session's slot: each slot's source holds a different pattern, so data landing in the
    /// wrong slot is caught.
    public static func readSeed(session: UInt64, slot: Int) -> UInt64 {
        mix(session ^ 0x5245_4144_0000_0000 ^ UInt64(slot) &* 0x1000_0000_01B3)
    }

    /// The seed of a write session (the same for every slot; the first 8 bytes of each write carry its sequence
    /// number instead).
    public static func writeSeed(session: UInt64) -> UInt64 {
        mix(session ^ 0x5752_4954_4500_0000)
    }

    /// SplitMix64's first output for `value` (its state advanced once, then mixed).
    static func mix(_ value: UInt64) -> UInt64 {
        SplitMix64.finalize(value &+ SplitMix64.gamma)
    }

    /// Fills `buffer` with the pattern of `seed` (8 bytes per step; a short tail byte by byte).
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
        guard let base = buffer.baseAddress else { return }
        var state = seed | 1
        var offset = 0
        while offset + 8 <= buffer.count {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            (base + offset).storeBytes(of: (state ^ (state >> 29)).littleEndian, as: UInt64.self)
            offset += 8
        }
        while offset < buffer.count {
            base.storeBytes(of: UInt8(truncatingIfNeeded: seed &+ UInt64(offset)), toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }

    /// Stores the low `min(8, buffer.count)` bytes of `sequence` (little-endian) at the start of `buffer`.
    public static func stamp(_ buffer: UnsafeMutableRawBufferPointer, sequence: UInt64) {
        for i in 0..<min(8, buffer.count) {
            buffer[i] = UInt8(truncatingIfNeeded: sequence >> (8 * i))
        }
    }

    /// The sequence stamped at the start of `buffer` (only the bytes that fit).
    public static func readStamp(_ buffer: UnsafeRawBufferPointer) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<min(8, buffer.count) { value |= UInt64(buffer[i]) << (8 * i) }
        return value
    }

    /// `sequence` cut to what fits in a `size`-byte slot.
    public static func truncatedSequence(_ sequence: UInt64, size: Int) -> UInt64 {
        size >= 8 ? sequence : sequence & ((1 << (8 * UInt64(max(0, size)))) - 1)
    }

    /// The offset of the first byte where `actual` and `expected` differ (over the shorter length), or `nil`.
    public static func firstDifference(_ actual: UnsafeRawBufferPointer, _ expected: UnsafeRawBufferPointer) -> Int? {
        let count = min(actual.count, expected.count)
        guard count > 0, let a = actual.baseAddress, let e = expected.baseAddress else { return nil }
        guard memcmp(a, e, count) != 0 else { return nil }
        for i in 0..<count where actual[i] != expected[i] { return i }
        return nil
    }
}
