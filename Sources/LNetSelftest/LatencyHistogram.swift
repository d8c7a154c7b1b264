/// Latencies in a log-linear histogram (HdrHistogram's bucketing, without its package): values below 128 ns are
/// exact; above, each power of two is split into 64 buckets, so a reported percentile is within 1/64 (1.6%) of the
/// true value. The maximum and minimum are exact. Constant memory, however many samples.
public struct LatencyHistogram: Sendable, Equatable, CustomStringConvertible {
    static let subBucketBits = 6
    static let subBuckets = 1 << subBucketBits
    static let bucketCount = (64 - subBucketBits + 1) * subBuckets

    private var counts: [Int]
    public private(set) var count = 0
    public private(set) var minimum: UInt64 = .max
    public private(set) var maximum: UInt64 = 0
    private var sum: Double = 0

    public init() {
        counts = Array(repeating: 0, count: Self.bucketCount)
    }

    static func index(of value: UInt64) -> Int {
        let magnitude = 63 - value.leadingZeroBitCount
        guard value >= UInt64(2 * subBuckets), magnitude > subBucketBits else { return Int(value) }
        let shift = magnitude - subBucketBits
        return (shift + 1) * subBuckets + Int(value >> UInt64(shift)) - subBuckets
    }

    /// The smallest and largest value that land in bucket `index`.
    static func range(of index: Int) -> ClosedRange<UInt64> {
        guard index >= 2 * subBuckets else { return UInt64(index)...UInt64(index) }
        let shift = index / subBuckets - 1
        let sub = UInt64(index % subBuckets + subBuckets)
        let low = sub << UInt64(shift)
        return low...(low + ((1 << UInt64(shift)) - 1))
    }

    /// Adds one sample (nanoseconds).
    public mutating func record(_ nanoseconds: UInt64) {
        counts[Self.index(of: nanoseconds)] += 1
        count += 1
        minimum = Swift.min(minimum, nanoseconds)
        maximum = Swift.max(maximum, nanoseconds)
        sum += Double(nanoseconds)
    }

    /// Adds every sample of `other`.
    public mutating func merge(_ other: LatencyHistogram) {
        guard other.count > 0 else { return }
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        minimum = Swift.min(minimum, other.minimum)
        maximum = Swift.max(maximum, other.maximum)
        sum += other.sum
    }

    /// The value at percentile `p` (0...100) in nanoseconds: the middle of the bucket holding that rank, clamped to
    /// the exact minimum and maximum; 0 when empty.
    public func percentile(_ p: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, Int((Swift.min(100, Swift.max(0, p)) / 100 * Double(count)).rounded(.up)))
        var seen = 0
        for (index, n) in counts.enumerated() where n > 0 {
            seen += n
            if seen >= rank {
                let range = Self.range(of: index)
                let middle = range.lowerBound + (range.upperBound - range.lowerBound) / 2
                return Swift.min(maximum, Swift.max(minimum, middle))
            }
        }
        return maximum
    }

    public var description: String {
        "\(count) samples, p50 \(percentile(50)) ns, p99 \(percentile(99)) ns, max \(maximum) ns"
    }

    /// The mean in nanoseconds (0 when empty).
    public var mean: Double { count == 0 ? 0 : sum / Double(count) }
}
