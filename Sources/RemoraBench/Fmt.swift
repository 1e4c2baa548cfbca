/// Number formatting without Foundation (no `String(format:)` in the binary).
public enum Fmt {
    /// `v` with exactly `decimals` digits after the point ("12.345"); NaN and infinities → "0".
    public static func fixed(_ v: Double, _ decimals: Int) -> String {
        guard v.isFinite else { return decimals > 0 ? "0." + String(repeating: "0", count: decimals) : "0" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(v) * scale).rounded()
        guard scaled < 9e18 else { return String(Int64(v.rounded())) }   // beyond UInt64 precision anyway
        let n = UInt64(scaled)
        let p = UInt64(scale)
        let whole = n / p
        var s = (v < 0 && n > 0 ? "-" : "") + String(whole)
        if decimals > 0 {
            let frac = String(n % p)
            s += "." + String(repeating: "0", count: decimals - frac.count) + frac
        }
        return s
    }

    /// 1234567 → "1,234,567".
    public static func grouped<T: BinaryInteger>(_ v: T) -> String {
        let digits = Array(String(v.magnitude))
        var out = v < 0 ? "-" : ""
        for (i, d) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(d)
        }
        return out
    }

    /// A rate with one decimal and grouping: "123,456.7".
    public static func rate(_ v: Double) -> String {
        guard v.isFinite, v >= 0 else { return "0.0" }
        let tenths = UInt64((v * 10).rounded())
        return grouped(tenths / 10) + "." + String(tenths % 10)
    }

    /// Bytes in binary units: "812 B", "12.34 KiB", "1.50 MiB", "3.20 GiB".
    public static func bytes(_ v: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var x = v
        var u = 0
        while x >= 1024 && u < units.count - 1 { x /= 1024; u += 1 }
        return u == 0 ? "\(Int(x)) B" : fixed(x, 2) + " " + units[u]
    }

    /// µs as milliseconds with 3 decimals ("0.123").
    public static func ms(_ us: UInt64) -> String { fixed(Double(us) / 1000, 3) }

    /// ns as milliseconds with 3 decimals.
    public static func msFromNs(_ ns: UInt64) -> String { fixed(Double(ns) / 1e6, 3) }

    /// Seconds with 2 decimals from ns.
    public static func seconds(_ ns: UInt64) -> String { fixed(Double(ns) / 1e9, 2) }

    /// A percentile label: 50 → "50", 99.9 → "99.9", 99.999 → "99.999".
    public static func percent(_ p: Double) -> String {
        var s = fixed(p, 4)
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }

    /// Right-aligns `s` in `width` columns.
    public static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }

    /// Left-aligns `s` in `width` columns.
    public static func padRight(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }
}
