#if canImport(Glibc)
import Glibc
#endif

/// A point on the monotonic clock, in nanoseconds: what the data path stamps deadlines and activity with.
///
/// ``coarse`` reads `CLOCK_MONOTONIC_COARSE` (a few milliseconds of resolution, read from the vDSO page without
/// touching the clock hardware), good enough for timeouts and keepalives and cheap on every message, even in a
/// guest whose clock source traps (the SoftRoCE VM's HPET). ``precise`` reads `CLOCK_MONOTONIC`, for busy-poll
/// windows of microseconds; the scheduler reads it only every few empty polls.
struct Tick: Comparable, Hashable, Sendable, CustomStringConvertible {
    var nanoseconds: UInt64

    static var coarse: Tick { read(CLOCK_MONOTONIC_COARSE) }
    static var precise: Tick { read(CLOCK_MONOTONIC) }

    private static func read(_ clock: clockid_t) -> Tick {
        var spec = timespec()
        clock_gettime(clock, &spec)
        return Tick(nanoseconds: UInt64(max(0, spec.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, spec.tv_nsec)))
    }

    static func < (lhs: Tick, rhs: Tick) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    static func + (tick: Tick, seconds: Int) -> Tick { Tick(nanoseconds: tick.nanoseconds &+ UInt64(max(0, seconds)) &* 1_000_000_000) }

    /// Nanoseconds from `earlier` to this tick (0 if `earlier` is later).
    func since(_ earlier: Tick) -> UInt64 { nanoseconds >= earlier.nanoseconds ? nanoseconds - earlier.nanoseconds : 0 }

    /// `since` as a Duration, for logs.
    func duration(since earlier: Tick) -> Duration { .nanoseconds(Int64(clamping: since(earlier))) }

    var description: String { "\(nanoseconds / 1_000_000) ms" }
}
