import Testing
import RemoraCore
import RemoraHTTP

/// `PathNormalizer`: RFC 3986 dot segments, merged slashes, unreserved escapes decoded, escaped
/// slashes kept / refused / decoded; the query untouched.
@Suite struct PathNormalizerTests {
    func norm(_ s: String, _ o: PathNormalizer.Options = .init()) -> String {
        var b = Array(s.utf8)
        var out = [UInt8](repeating: 0, count: b.count)
        let r = b.withUnsafeMutableBytes { t in
            out.withUnsafeMutableBytes { PathNormalizer.normalize(UnsafeRawBufferPointer(t), o, into: $0) }
        }
        switch r {
        case .unchanged: return s
        case .changed(let n): return String(decoding: out[0..<n], as: UTF8.self)
        case .rejected(let why): return "reject:\(why)"
        }
    }

    @Test func theSmugglingShapesAllBecomeAdmin() {
        for s in ["//admin", "/%61dmin", "/a/../admin", "/./admin", "/%2E/admin", "/a/%2e%2E/admin", "///admin", "/x/./../admin",
                  "/../admin", "/%41/../admin"] {
            #expect(norm(s) == "/admin", "\(s)")
        }
        #expect(norm("/admin%2F..") == "/admin%2F..", "kept: one segment, still under /admin")
        #expect(norm("/admin%2F..", .init(escapedSlashes: .reject)) == "reject:escapedSlash")
        #expect(norm("/admin%2f..", .init(escapedSlashes: .decode)) == "/")
        #expect(norm("/public%2F..%2Fadmin", .init(escapedSlashes: .decode)) == "/admin")
        #expect(norm("/a%5Cb", .init(escapedSlashes: .reject)) == "reject:escapedSlash")
    }

    @Test func rfc3986DotSegmentTable() {
        // RFC 3986 §5.4 and §5.2.4 examples, as paths.
        let table: [(String, String)] = [
            ("/a/b/c/./../../g", "/a/g"), ("/mid/content=5/../6", "/mid/6"), ("/a/b/c/.", "/a/b/c/"), ("/a/b/c/..", "/a/b/"),
            ("/.", "/"), ("/..", "/"), ("/a/..", "/"), ("/a/../", "/"), ("/a/./", "/a/"), ("/a/b/../../..", "/"),
            ("/a/.b", "/a/.b"), ("/a/..b", "/a/..b"), ("/a/b.", "/a/b."), ("/a/...", "/a/..."), ("/", "/"),
        ]
        for (a, b) in table { #expect(norm(a) == b, "\(a)") }
    }

    @Test func slashesQueryAndEscapes() {
        #expect(norm("/a//b///c/") == "/a/b/c/")
        #expect(norm("/a//b", .init(mergeSlashes: false)) == "/a//b")
        #expect(norm("//a/../b", .init(mergeSlashes: false)) == "//b")
        #expect(norm("/a/../b?x=/../..//%61") == "/b?x=/../..//%61", "the query is not touched")
        #expect(norm("/a#/../b") == "/a#/../b")
        #expect(norm("/%7e%2d%5F%30") == "/~-_0")
        #expect(norm("/a%20b%2fc") == "/a%20b%2Fc", "other escapes kept, hex uppercased")
        #expect(norm("/a%zz") == "reject:badEscape")
        #expect(norm("/a%4") == "reject:badEscape")
        #expect(norm("/a%") == "reject:badEscape")
        #expect(norm("/a%?x") == "reject:badEscape")
        #expect(norm("/a?%zz") == "/a?%zz", "the query's escapes are the upstream's business")
        #expect(norm("/%2525") == "/%2525", "a percent sign stays encoded")
        #expect(norm("/a%00b") == "reject:badEscape", "an encoded NUL is refused")
        #expect(norm("/\\admin") == "/admin")
        #expect(norm("/x\\..\\admin") == "/admin", "a backslash is a slash")
        #expect(norm("/a%5C..%5Cadmin", .init(escapedSlashes: .decode)) == "/admin")
        #expect(norm("/a\\b", .init(removeDotSegments: false)) == "/a\\b")
    }

    @Test func commonPathsAreUnchangedByTheFastScan() {
        for s in ["/", "/api/v1/users?id=1", "/pkg.Svc/Method", "/a.b/c.d", "/a/b..c", "*", "/x?y=//z", "/a/"] {
            var b = Array(s.utf8)
            let may = b.withUnsafeMutableBytes { PathNormalizer.mayChange(UnsafeRawBufferPointer($0)) }
            #expect(!may, "\(s)")
            #expect(norm(s) == s)
        }
    }

    @Test func stepsCanBeTurnedOff() {
        let none = PathNormalizer.Options(removeDotSegments: false, decodeUnreserved: false, mergeSlashes: false, escapedSlashes: .keep)
        for s in ["//admin", "/a/../b", "/%61", "/%zz", "/a%2f", "/a%00", "/a\\b"] { #expect(norm(s, none) == s, "\(s)") }
        #expect(norm("/a/../%61", .init(removeDotSegments: false)) == "/a/../a")
        #expect(norm("/a/../%61", .init(decodeUnreserved: false)) == "/%61")
        #expect(!ListenerConfig(name: "l", address: HostPort(host: "127.0.0.1", port: 0)).with { $0.pathNormalization = .off }.normalizesPaths)
    }

    @Test func escapedSlashesDefaultToRejectOnlyWithAuthorization() {
        var l = ListenerConfig(name: "l", address: HostPort(host: "127.0.0.1", port: 0))
        #expect(l.escapedSlashes == .keep && l.normalizesPaths)
        l.authorization = .init()
        #expect(l.escapedSlashes == .reject)
        l.pathNormalization.escapedSlashes = .keep
        #expect(l.escapedSlashes == .keep)
    }

    @Test func neverLongerAndIdempotentOnGeneratedPaths() {
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        let alphabet = Array("/./%2F%2e%41a.b//..?%5c%zz".utf8)
        for _ in 0..<3000 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let n = Int(rng >> 58)
            var s = "/"
            for k in 0..<n { s.append(Character(UnicodeScalar(alphabet[Int((rng >> UInt64(k % 50)) % UInt64(alphabet.count))]))) }
            let once = norm(s, .init(escapedSlashes: .keep))
            if once.hasPrefix("reject:") { continue }
            #expect(once.utf8.count <= s.utf8.count)
            #expect(norm(once, .init(escapedSlashes: .keep)) == once, "\(s) -> \(once)")
        }
    }
}

extension ListenerConfig {
    func with(_ f: (inout ListenerConfig) -> Void) -> ListenerConfig { var c = self; f(&c); return c }
}
