#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// CPU time and peak memory of this process (`getrusage(RUSAGE_SELF)`).
public struct ResourceUsage: Sendable, Equatable {
    /// User CPU time in nanoseconds.
    public var userNanoseconds: UInt64
    /// System CPU time in nanoseconds.
    public var systemNanoseconds: UInt64
    /// Peak resident set size in KiB (`ru_maxrss`).
    public var maxRSSKiB: UInt64

    public var cpuNanoseconds: UInt64 { userNanoseconds + systemNanoseconds }

    public init(userNanoseconds: UInt64, systemNanoseconds: UInt64, maxRSSKiB: UInt64) {
        self.userNanoseconds = userNanoseconds
        self.systemNanoseconds = systemNanoseconds
        self.maxRSSKiB = maxRSSKiB
    }

    /// The process's usage now.
    public static func current() -> ResourceUsage {
        var usage = rusage()
        #if canImport(Glibc)
        _ = getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        _ = getrusage(RUSAGE_SELF, &usage)
        #endif
        func nanos(_ time: timeval) -> UInt64 {
            UInt64(max(0, time.tv_sec)) * 1_000_000_000 + UInt64(max(0, time.tv_usec)) * 1_000
        }
        #if canImport(Darwin)
        let rss = UInt64(max(0, usage.ru_maxrss)) / 1024  // bytes on Darwin
        #else
        let rss = UInt64(max(0, usage.ru_maxrss))  // KiB on Linux
        #endif
        return ResourceUsage(userNanoseconds: nanos(usage.ru_utime), systemNanoseconds: nanos(usage.ru_stime), maxRSSKiB: rss)
    }

    /// The CPU used since `earlier` (peak RSS is this snapshot's).
    public func since(_ earlier: ResourceUsage) -> ResourceUsage {
        ResourceUsage(userNanoseconds: userNanoseconds &- min(userNanoseconds, earlier.userNanoseconds),
                      systemNanoseconds: systemNanoseconds &- min(systemNanoseconds, earlier.systemNanoseconds),
                      maxRSSKiB: maxRSSKiB)
    }
}
