import Testing
@testable import RemoraRouting

@Suite struct ServerNameTableTests {
    @Test func exactWildcardDefault() {
        var t = ServerNameTable<Int>(defaultValue: 0)
        let added = [t.add("api.example.com", 1), t.add("*.example.com", 2), t.add("*.eu.example.com", 3),
                     t.add("API.example.com", 9)]   // the same pattern, ignoring case
        #expect(added == [true, true, true, false])
        #expect(t.lookup("api.example.com") == 1)
        #expect(t.lookup("API.Example.Com") == 1)
        #expect(t.lookup("web.example.com") == 2)
        #expect(t.lookup("a.b.example.com") == 2)
        #expect(t.lookup("x.eu.example.com") == 3)   // the longest suffix wins
        #expect(t.lookup("eu.example.com") == 2)
        #expect(t.lookup("example.com") == 0)        // a wildcard needs a label before the suffix
        #expect(t.lookup("other.org") == 0)
        #expect(t.lookup(nil) == 0)
        #expect(t.lookup("") == 0)
    }

    @Test func noDefault() {
        var t = ServerNameTable<String>()
        t.add("*.svc", "svc")
        #expect(t.lookup("db.ns.svc") == "svc")
        #expect(t.lookup("svc") == nil)
        #expect(t.lookup(nil) == nil)
    }

    @Test func patterns() {
        #expect(ServerNameTable<Int>.problem("api.example.com") == nil)
        #expect(ServerNameTable<Int>.problem("*.example.com") == nil)
        for bad in ["", "*", "*.", "a..b", "a b", "*.*.x", "x.*.y", ".x", "x."] {
            #expect(ServerNameTable<Int>.problem(bad) != nil, "\(bad)")
        }
    }
}
