/// Byte counts as people read them, for messages and reports.

/// `1.5 MiB`, `256 KiB`, `100 B`.
public func formatBytes(_ count: Int) -> String {
    let units: [(Int, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
    for (scale, unit) in units where count >= scale {
        let value = Double(count) / Double(scale)
        if count % scale == 0 { return "\(count / scale) \(unit)" }
        return "\((value * 10).rounded() / 10) \(unit)"
    }
    return "\(count) B"
}
