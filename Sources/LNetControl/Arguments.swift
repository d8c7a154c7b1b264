import ArgumentParser
import Foundation
import LNet
import LNetSelftest
import Logging
import RDMALND
import Synchronization

// Command-line values: targets, byte counts and ranges, durations, and the enums parsed from arguments.

/// Parses a target: `12345-192.0.2.1@o2ib`, or a bare NID (pid 12345).
func parseTarget(_ text: String) throws(CommandFailure) -> ProcessID {
    let target: ProcessID
    do { target = try ProcessID(parsing: text) } catch { throw CommandFailure(error.description) }
    guard !target.nid.isAny, target.pid != ProcessID.anyPID else { throw CommandFailure("target '\(text)' must name one process") }
    return target
}

/// A byte count: digits with an optional binary suffix (`4096`, `64K`, `64KiB`, `1M`, `1MiB`, `1G`); KB/MB/GB are read
/// as binary too, as perftest does.
struct ByteCount: ExpressibleByArgument, Sendable, Equatable, CustomStringConvertible {
    let value: Int

    init(_ value: Int) { self.value = value }

    init?(argument: String) {
        guard let value = parseSize(argument) else { return nil }
        self.value = value
    }

    var description: String { formatBytes(value) }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// One byte count (`1MiB`) or a range `MIN-MAX` (`1-64KiB`, `64KiB-16MiB`, `1B-1MiB`), each end a ``ByteCount``.
/// Whether the values are usable is ``problem``'s business, so a bad range gets its own message.
struct ByteCountRange: ExpressibleByArgument, Sendable, Equatable, CustomStringConvertible {
    let min: Int
    let max: Int

    init(_ value: Int) {
        min = value
        max = value
    }

    init(min: Int, max: Int) {
        self.min = min
        self.max = max
    }

    init?(argument: String) {
        let ends = argument.split(separator: "-", omittingEmptySubsequences: false)
        switch ends.count {
        case 1:
            guard let value = parseSize(argument) else { return nil }
            self.init(value)
        case 2:
            guard let low = parseSize(String(ends[0])), let high = parseSize(String(ends[1])) else { return nil }
            self.init(min: low, max: high)
        default:
            return nil
        }
    }

    var isRange: Bool { min != max }

    /// `1 MiB` for one size, `1B-64KiB` for a range.
    var description: String { isRange ? OperationSizes(minimum: min, maximum: max).description : formatBytes(max) }

    /// Why these sizes cannot be used for self-test operations (1 byte to 4 GiB - 2 each, MIN <= MAX), in words
    /// that follow the option's name; `nil` when they can.
    var problem: String? {
        let limit = Int(UInt32.max) - 1
        guard isRange else { return max >= 1 && max <= limit ? nil : "must be 1 byte to 4 GiB - 2" }
        let text = OperationSizes(minimum: min, maximum: max).description
        if min < 1 { return "\(text): the minimum must be at least 1 byte" }
        if min > max { return "\(text): the minimum is larger than the maximum" }
        if max > limit { return "\(text): the maximum must be at most 4 GiB - 2" }
        return nil
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A duration: `10s`, `500ms`, `2m`, `1.5` (seconds).
struct DurationArgument: ExpressibleByArgument, Sendable, Equatable {
    let duration: Duration

    init?(argument: String) {
        let text = argument.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000_001), ("s", 1), ("m", 60), ("h", 3600)]
        var scale = 1.0
        var number = text
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            scale = factor
            number = String(text.dropLast(suffix.count))
            break
        }
        guard let value = Double(number), value.isFinite, value > 0 else { return nil }
        duration = .nanoseconds(Int64((value * scale * 1e9).rounded()))
    }
}

extension BulkMode: ExpressibleByArgument {}
extension SelftestOp: ExpressibleByArgument {}
extension SelftestHint: ExpressibleByArgument {}

extension AdvertisedBulkMode {
    init(_ mode: BulkMode) { self = mode == .pull ? .pull : .push }
}
