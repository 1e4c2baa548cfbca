import CRE2

/// RE2, the regex engine of routes and authorization rules (as in Envoy): matching time is linear
/// in the input, whatever the pattern, so no request can make a match backtrack. The only importer
/// of CRE2 (RemoraRouting and the authorizer use it from here). A compiled regex is immutable and
/// safe to use from every worker at once.
public enum Regex {
    /// Compiles `pattern`; on failure returns RE2's message.
    public static func compile(_ pattern: String, ignoreCase: Bool) -> Result<OpaquePointer, RegexError> {
        var pattern = pattern
        var message = [CChar](repeating: 0, count: 256)
        let re = pattern.withUTF8 { p in
            p.withMemoryRebound(to: CChar.self) { cre2_compile($0.baseAddress, $0.count, ignoreCase ? 1 : 0, &message, 256) }
        }
        return re.map { .success($0) } ?? .failure(RegexError(message: "invalid regex: " + text(message)))
    }

    public static func free(_ re: OpaquePointer) { cre2_free(re) }

    public static func groups(_ re: OpaquePointer) -> Int { Int(cre2_groups(re)) }

    /// `re` matches all of `text`.
    @inline(__always)
    public static func fullMatch(_ re: OpaquePointer, _ text: UnsafeRawBufferPointer) -> Bool {
        cre2_full_match(re, chars(text), text.count) != 0
    }

    /// The first match in text[from...]: `spans` receives start and end of groups 0 ..< spans.count / 2.
    @inline(__always)
    public static func search(_ re: OpaquePointer, _ text: UnsafeRawBufferPointer, from: Int, _ spans: UnsafeMutableBufferPointer<Int>) -> Bool {
        cre2_search(re, chars(text), text.count, from, spans.baseAddress, Int32(spans.count / 2)) != 0
    }

    /// Bounds [min, max] of every string `re` matches, for a cheap rejection before calling RE2;
    /// nil when RE2 cannot bound them.
    public static func range(_ re: OpaquePointer) -> (min: [UInt8], max: [UInt8])? {
        let cap = 32
        var lo = [CChar](repeating: 0, count: cap), hi = lo
        var loCount = 0, hiCount = 0
        guard cre2_range(re, &lo, &loCount, &hi, &hiCount, cap) != 0 else { return nil }
        return (lo.prefix(loCount).map { UInt8(bitPattern: $0) }, hi.prefix(hiCount).map { UInt8(bitPattern: $0) })
    }

    /// nil when `substitution` only refers to groups `re` has; else RE2's message.
    public static func checkSubstitution(_ re: OpaquePointer, _ substitution: String) -> String? {
        var s = substitution
        var message = [CChar](repeating: 0, count: 256)
        let ok = s.withUTF8 { p in
            p.withMemoryRebound(to: CChar.self) { cre2_check_rewrite(re, $0.baseAddress, $0.count, &message, 256) }
        }
        return ok != 0 ? nil : text(message)
    }

    /// RE2 wants a non-null pointer even for empty text.
    @inline(__always)
    private static func chars(_ t: UnsafeRawBufferPointer) -> UnsafePointer<CChar> {
        (t.baseAddress ?? UnsafeRawPointer(("" as StaticString).utf8Start)).assumingMemoryBound(to: CChar.self)
    }

    private static func text(_ message: [CChar]) -> String {
        String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

public struct RegexError: Error { public var message: String }
