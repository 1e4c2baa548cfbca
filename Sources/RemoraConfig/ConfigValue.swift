import RemoraCore

/// Parsers shared with the CLI and later the control plane.
public enum ConfigValue {
    /// "250ms", "5s", "2m", "1h", "0" (=0), also "1.5s"; returns milliseconds or nil.
    /// A decimal must come out as whole milliseconds ("1.5ms" is nil); no sign, no spaces.
    public static func duration(_ s: String) -> Millis? {
        if s == "0" { return 0 }
        // "ms" before "m" and "s", so "5ms" is not read as "5m" + "s".
        for (unit, ms) in [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)] as [(String, Millis)]
        where s.hasSuffix(unit) {
            return scaled(s.utf8.dropLast(unit.utf8.count), by: ms)
        }
        return nil
    }

    /// "60KiB", "1MiB", "512", "1GiB", "16KB"(=16000), "4MB"; returns bytes or nil.
    public static func size(_ s: String) -> Int? {
        // Longer units first: "KiB" also ends in "B".
        let units: [(String, UInt64)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
                                         ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1)]
        let (unit, factor) = units.first { s.hasSuffix($0.0) } ?? ("", 1)
        let digits = s.utf8.dropLast(unit.utf8.count)
        guard !digits.contains(UInt8(ascii: ".")), let bytes = scaled(digits, by: factor) else { return nil }
        return Int(exactly: bytes)
    }

    /// "5", "0.5", "12.25", "100" (at most 4 decimals, at most 100); returns parts per million.
    public static func percent(_ s: String) -> UInt32? {
        guard let ppm = scaled(Substring(s).utf8, by: 10_000), ppm <= 1_000_000 else { return nil }
        return UInt32(ppm)
    }

    /// "1KiB", "60KiB", "1MiB" when exact in a binary unit, else "<n>B"; for messages.
    static func sizeText(_ bytes: Int) -> String {
        for (unit, factor) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where bytes != 0 && bytes % factor == 0 {
            return "\(bytes / factor)\(unit)"
        }
        return "\(bytes)B"
    }

    /// `digits[.digits] * factor`, nil unless the result is a whole number that fits in UInt64.
    private static func scaled(_ number: Substring.UTF8View, by factor: UInt64) -> UInt64? {
        let parts = number.split(separator: UInt8(ascii: "."), maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) } }),
              let whole = UInt64(Substring(parts[0])) else { return nil }
        var (result, overflow) = whole.multipliedReportingOverflow(by: factor)
        if parts.count == 2 {
            let fraction = parts[1]
            guard !overflow, fraction.count <= 9, let f = UInt64(Substring(fraction)) else { return nil }
            var scale: UInt64 = 1
            for _ in 0..<fraction.count { scale *= 10 }
            let part = f * factor // f < 10^9 and factor <= 3.6e6: fits
            guard part % scale == 0 else { return nil }
            (result, overflow) = result.addingReportingOverflow(part / scale)
        }
        return overflow ? nil : result
    }
}
