// Byte counts as people write and read them: the binary units, parsing (`64K`, `1MiB`) and formatting
// (`1.5 MiB`, `64KiB`), written once for the tunables, lnetctl's arguments and every report.

/// The binary units, largest first.
package let binaryByteUnits: [(scale: Int, name: String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]

/// `1.5 MiB`, `256 KiB`, `100 B`.
public func formatBytes(_ count: Int) -> String {
    for (scale, unit) in binaryByteUnits where count >= scale {
        let value = Double(count) / Double(scale)
        if count % scale == 0 { return "\(count / scale) \(unit)" }
        return "\((value * 10).rounded() / 10) \(unit)"
    }
    return "\(count) B"
}

/// `64KiB`, `1MiB`, `70000B`: the largest binary unit that divides `count`, with no space (exact).
public func formatBytesExactly(_ count: Int) -> String {
    for (scale, unit) in binaryByteUnits where count >= scale && count % scale == 0 { return "\(count / scale)\(unit)" }
    return "\(count)B"
}

/// Parses a byte count: digits with an optional binary suffix K, M or G (`4K`, `1M`, `64KiB`; KB/MB/GB are read
/// as binary too, as perftest does). Used by the tunables and by `lnetctl`'s size arguments.
public func parseSize(_ text: String) -> Int? {
    var digits = String(text.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()).uppercased()
    if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B") { digits.removeLast() }
    var shift = 0
    switch digits.last {
    case "K": shift = 10
    case "M": shift = 20
    case "G": shift = 30
    default: break
    }
    if shift > 0 { digits.removeLast() }
    guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(digits), value <= (Int.max >> shift) else { return nil }
    return value << shift
}
