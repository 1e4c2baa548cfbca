import Testing
import RemoraCore
import RemoraHTTP

/// `RequestTarget`: which targets the proxy forwards, and how an absolute form becomes origin form
/// (found by Tests/fuzz/http1: "httpu://?" was split into an empty authority and the path "?").
@Suite struct RequestTargetTests {
    func split(_ s: String) -> (String, String)? {
        var b = Array(s.utf8)
        return b.withUnsafeMutableBytes { t in
            RequestTarget.splitAbsolute(UnsafeRawBufferPointer(t)).map { ($0.authority.string, $0.path.string) }
        }
    }

    func forwardable(_ s: String, options: Bool = false) -> Bool {
        var b = Array(s.utf8)
        return b.withUnsafeMutableBytes { RequestTarget.isForwardable(UnsafeRawBufferPointer($0), isOPTIONS: options) }
    }

    @Test func splitsHTTPAndHTTPSAbsoluteForms() {
        #expect(split("http://a.example:81/p?q")! == ("a.example:81", "/p?q"))
        #expect(split("HTTPS://a/")! == ("a", "/"))
        #expect(split("http://a")! == ("a", "/"))
    }

    @Test func refusesOtherSchemesAndAQueryWithoutPath() {
        #expect(split("httpu://?") == nil)
        #expect(split("ftp://x/admin") == nil)
        #expect(split("hxxp://x/admin") == nil)
        #expect(split("http://x?q=1") == nil)
        #expect(split("/http://x/") == nil)
    }

    @Test func forwardsOriginFormAbsoluteHTTPAndOptionsStar() {
        #expect(forwardable("/a?b"))
        #expect(forwardable("http://x/a"))
        #expect(forwardable("*", options: true))
        #expect(!forwardable("*"))
        #expect(!forwardable("httpu://?"))
        #expect(!forwardable("ftp://x/admin"))
        #expect(!forwardable(""))
    }
}
