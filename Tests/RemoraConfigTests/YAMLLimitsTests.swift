import Glibc
import RemoraConfig
import RemoraCore
import Testing

/// Nanoseconds on the monotonic clock.
private func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Parses `yaml`, returning its errors and how long it took in ms.
private func refused(_ yaml: String) -> (errors: [ConfigError], ms: Double) {
    let t0 = now()
    let r = ConfigLoader.parse(yaml: yaml, file: "bomb.yaml")
    let ms = Double(now() - t0) / 1e6
    if case .failure(let e) = r { return (e.errors, ms) }
    Issue.record("expected the document to be refused")
    return ([], ms)
}

/// Issue 19, finding 9: alias amplification and deep nesting cost milliseconds, not minutes.
@Suite struct YAMLLimitsTests {
    /// Nine levels of ten aliases each (10^9 nodes once expanded): refused at the alias that
    /// crosses the limit, with its line.
    @Test func billionLaughsIsRefusedAtTheAlias() {
        var lines = [#"a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]"#]
        for i in 1...8 { lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ",") + "]") }
        lines.append("listeners: *a8")
        let (e, ms) = refused(lines.joined(separator: "\n") + "\n")
        #expect(e.count == 1, "\(e)")
        // a0..a3 = 10, 110, 1110, 11110 nodes: the third alias of line 5 crosses 100000 nodes.
        #expect(e.first?.line == 5, "\(e)")
        #expect(e.first?.file == "bomb.yaml")
        #expect(e.first?.message.contains("alias *a3: aliases would repeat more than 100000 nodes") == true, "\(e)")
        #expect(ms < 500, "took \(ms) ms")
    }

    /// A linear file that aliases one big block thousands of times (valid config, 6 s to validate
    /// before): the repeats pass 10 times what is written out.
    @Test func aliasedBlockRepeatedThousandsOfTimesIsRefused() {
        let routes = (0..<200).map { "{name: r\($0), backends: [{cluster: c}]}" }.joined(separator: ", ")
        var lines = [#"clusters: [{name: c, endpoints: ["127.0.0.1:9"]}]"#, "listeners:",
                     #"  - {name: l0, address: "127.0.0.1:1000", routes: &R ["# + routes + "]}"]
        for n in 1..<3000 { lines.append(#"  - {name: l\#(n), address: "127.0.0.1:\#(1000 + n)", routes: *R}"#) }
        let (e, ms) = refused(lines.joined(separator: "\n") + "\n")
        #expect(e.count == 1 && e[0].line > 3 && e[0].message.contains("alias *R"), "\(e)")
        #expect(ms < 1_000, "took \(ms) ms")
    }

    /// Reusing a block a few times, as configs do, stays fine (and so does a big document that
    /// repeats up to 10 times what it writes out).
    @Test func ordinaryAliasesStillWork() throws {
        let routes = (0..<50).map { "{name: r\($0), backends: [{cluster: c}]}" }.joined(separator: ", ")
        var lines = [#"clusters: [{name: c, endpoints: ["127.0.0.1:9"]}]"#, "listeners:",
                     #"  - {name: l0, address: "127.0.0.1:1000", routes: &R ["# + routes + "]}"]
        for n in 1..<200 { lines.append(#"  - {name: l\#(n), address: "127.0.0.1:\#(1000 + n)", routes: *R}"#) }
        guard case .success(let c) = ConfigLoader.parse(yaml: lines.joined(separator: "\n") + "\n", file: "ok.yaml") else {
            Issue.record("refused")
            return
        }
        #expect(c.listeners.count == 200 && c.listeners[199].virtualHosts[0].routes.count == 50)
    }

    @Test(arguments: [65, 100_000])
    func deepNestingIsRefused(depth: Int) {
        let (e, ms) = refused("listeners: " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "\n")
        #expect(e.count == 1 && e[0].line == 1 && e[0].message == "lists and mappings nested more than 64 deep", "\(e)")
        #expect(ms < 500, "took \(ms) ms")
    }
}

/// Issue 19, finding 11: errors found after decoding get the file and the line of their field.
@Suite struct LocateTests {
    let yaml = """
        # reloaded
        workers: 4
        admin:
          address: 127.0.0.1:9901
        listeners:
          - name: web.1
            address: 127.0.0.1:8080
            routes:
              - name: api
                backends: [ { cluster: db } ]
          - name: hosts
            address: 127.0.0.1:8081
            virtual_hosts:
              - name: h
                domains: [ "a.example" ]
                routes:
                  - name: r
                    backends: [ { cluster: db } ]
        clusters:
          - name: db
            endpoints: [ "db.invalid:5432" ]
        """

    @Test(arguments: [
        ("workers", 2),
        ("admin.address", 4),
        ("listeners", 6),
        ("listeners.web.1.address", 7),
        ("listeners.hosts.address", 12),
        ("listeners.web.1.routes.api.backends", 10),
        ("listeners.hosts.routes.r.backends", 18),          // routes under a virtual host
        ("listeners.hosts.virtual_hosts.h.domains", 15),
        ("clusters.db.endpoints", 21),
        ("listeners[1].virtual_hosts[0].routes[0]", 17),
        ("listeners.nope.address", 6),                      // the deepest part found
        ("nope", 2),                                        // nothing found: the document's first line
    ] as [(String, Int)])
    func fieldLines(path: String, line: Int) {
        let e = ConfigLoader.locate(ConfigErrors([ConfigError(file: "", line: 0, path: path, message: "m")]),
                                    in: yaml, file: "remora.yaml")
        #expect(e.errors.map(\.description) == ["remora.yaml:\(line): \(path): m"])
    }

    @Test func knownLinesAndFilesStay() {
        let e = ConfigLoader.locate(ConfigErrors([ConfigError(file: "a.yaml", line: 3, path: "workers", message: "m"),
                                                  ConfigError(file: "", line: 0, path: "", message: "draining")]),
                                    in: yaml, file: "remora.yaml")
        #expect(e.errors.map(\.description) == ["a.yaml:3: workers: m", "remora.yaml:0: (top): draining"])
    }
}
