import RemoraConfig
import RemoraControl
import RemoraCore
import Testing

func parsed(_ yaml: String, file: String = "web") throws -> Config {
    switch ConfigLoader.parse(yaml: yaml, file: file) {
    case .success(let c): return c
    case .failure(let e):
        Issue.record("does not validate:\n\(e)\n---\n\(yaml)")
        throw e
    }
}

/// A realistic group document: comments, flow and block styles, virtual hosts, quoted strings,
/// non-ASCII text, header matches, mirrors, rewrites, HTTP/2 settings, a TCP listener.
let realistic = """
    # web: every proxy of the web service gets this. Owned by the platform team — édité à la main.
    admin: { address: 127.0.0.1:9901 }
    workers: 2
    drain_timeout: 5s
    listeners:
      - name: web
        address: "0.0.0.0:8080"      # all interfaces
        protocol: http
        http2: { max_concurrent_streams: 200 }
        routes:
          # Testing in production: this header always reaches the canary.
          - name: canary-override
            match: { headers: [ { name: x-canary, exact: always } ] }
            backends: [ { cluster: v2 } ]
          - name: greeting
            match: { path: { exact: /hello } }
            direct_response: { status: 200, body: "grüß dich\\n" }
          - name: split
            match:
              path: { prefix: / }
              headers:
                - { name: x-env, exact: "2", invert: true }
            backends:
              - cluster: v1
                weight: 90      # stable
              - cluster: v2
                weight: "10"    # canary (quoted on purpose)
              - cluster: v3
            hash_on: { header: x-user-id }
            timeout: 2s
            mirror: { cluster: shadow, percent: 0.5 }
            request_headers:
              set: { x-env: prod }
              remove: [ x-debug ]
      - name: api
        address: 127.0.0.1:8081
        virtual_hosts:
          - name: api
            domains: [ api.example.com, "*.api.example.com" ]
            routes:
              - name: split
                match: { path: { prefix: /v1/ } }
                rewrite: { prefix: /api/v1/ }
                backends: [ { cluster: v1, weight: 99 }, { cluster: v2, weight: 1 } ]
          - name: default
            domains: [ "*" ]
            routes:
              - name: rest
                backends: [ { cluster: v1 } ]
      - name: db
        address: 127.0.0.1:15432
        protocol: tcp
        cluster: postgres
    clusters:
      - { name: v1, endpoints: [ "127.0.0.1:9001", "127.0.0.1:9002" ] }
      - { name: v2, endpoints: [ "127.0.0.1:9003" ], protocol: http2 }
      - name: v3
        endpoints:
          - 127.0.0.1:9004
        connect_timeout: 250ms
      - { name: shadow, endpoints: [ "127.0.0.1:9005" ] }
      - { name: postgres, endpoints: [ "127.0.0.1:5432" ] }
    """

@Suite struct WeightEditTests {
    /// parse → edit → parse: the same Config except the weights, and every other byte the same.
    @Test func realisticRoundTrip() throws {
        let before = try parsed(realistic)
        // `split` is a route of two listeners (web, and api's virtual host): both change.
        let weights = [ClusterWeight("v1", 50), ClusterWeight("v2", 45)]
        let edited = try WeightEdit.apply(to: realistic, route: "split", weights: weights)
        let after = try parsed(edited)
        #expect(after == before.settingWeights(route: "split", weights))
        #expect(after.backends(ofRoute: "web/split")?.map(\.weight) == [50, 45, 1])
        #expect(after.backends(ofRoute: "api/split")?.map(\.weight) == [50, 45])
        // Every line but the three weights is as it was.
        let a = realistic.split(separator: "\n", omittingEmptySubsequences: false)
        let b = edited.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(a.count == b.count)
        #expect(zip(a, b).filter { $0 != $1 }.count == 3)
    }

    @Test func aClusterMissingFromOneOfTheRoutesIsRefused() throws {
        // `split` exists in listeners web (v1, v2, v3) and api (v1, v2): v3 is not a backend of api/split.
        #expect(throws: ControlError.self) {
            _ = try WeightEdit.apply(to: realistic, route: "split", weights: [ClusterWeight("v3", 5)])
        }
    }

    @Test func everyStyleOfWeight() throws {
        let before = try parsed(realistic)
        // web/split: v1 block scalar, v2 quoted, v3 absent (a new `weight:` line in the block mapping).
        let weights = [ClusterWeight("v1", 70), ClusterWeight("v2", 20), ClusterWeight("v3", 10)]
        let edited = try WeightEdit.apply(to: realistic, route: "web/split", weights: weights)
        let after = try parsed(edited)
        #expect(after == before.settingWeights(route: "web/split", weights))
        #expect(edited.contains("weight: 70      # stable"))
        #expect(edited.contains("weight: 20    # canary (quoted on purpose)"))
        #expect(edited.contains("          - weight: 10\n            cluster: v3\n"))
        // api/split untouched.
        #expect(after.backends(ofRoute: "api/split") == [WeightedBackend(cluster: "v1", weight: 99), WeightedBackend(cluster: "v2", weight: 1)])
        // Only the weights changed: the comments and the non-ASCII text are intact.
        #expect(edited.hasPrefix("# web: every proxy of the web service gets this. Owned by the platform team — édité à la main.\n"))
        #expect(edited.contains("grüß dich"))
        let changedLines = zip(realistic.split(separator: "\n", omittingEmptySubsequences: false),
                               edited.split(separator: "\n", omittingEmptySubsequences: false)).filter { $0 != $1 }
        #expect(changedLines.count >= 2)
    }

    @Test func flowStyleAndVirtualHosts() throws {
        let before = try parsed(realistic)
        let edited = try WeightEdit.apply(to: realistic, route: "api/split", weights: [ClusterWeight("v2", 30)])
        #expect(edited.contains("backends: [ { cluster: v1, weight: 99 }, { cluster: v2, weight: 30 } ]"))
        #expect(try parsed(edited) == before.settingWeights(route: "api/split", [ClusterWeight("v2", 30)]))
        // A backend without a weight in flow style gets one.
        let e2 = try WeightEdit.apply(to: realistic, route: "rest", weights: [ClusterWeight("v1", 7)])
        #expect(e2.contains("backends: [ { weight: 7, cluster: v1 } ]"))
        #expect(try parsed(e2) == before.settingWeights(route: "rest", [ClusterWeight("v1", 7)]))
    }

    @Test func emptyWeightAndCRLF() throws {
        let doc = "listeners:\r\n  - name: web\r\n    address: 127.0.0.1:0\r\n    routes:\r\n      - name: r\r\n        backends:\r\n"
            + "          - cluster: a\r\n            weight:\r\n          - { cluster: b, weight: ~ }\r\n"
            + "clusters:\r\n  - { name: a, endpoints: [ \"127.0.0.1:1\" ] }\r\n  - { name: b, endpoints: [ \"127.0.0.1:2\" ] }\r\n"
        let before = try parsed(doc)
        let w = [ClusterWeight("a", 3), ClusterWeight("b", 4)]
        let edited = try WeightEdit.apply(to: doc, route: "r", weights: w)
        #expect(edited.contains("weight: 3\r\n"))
        #expect(edited.contains("{ cluster: b, weight: 4 }"))
        #expect(try parsed(edited) == before.settingWeights(route: "r", w))
    }

    /// A sidecar's services have routes too (`sidecar.services[].routes`, issue 15's mesh): they are
    /// the routes of the listener `outbound_<service>`, edited by name or `outbound_<service>/ROUTE`,
    /// in the section and in every copy the expansion made.
    @Test func sidecarServiceRoutes() throws {
        let doc = """
            # the frontend's sidecar
            sidecar:
              ipv6: false
              services:
                - name: orders
                  addresses: [10.233.0.100]
                  port: 8080
                  cluster: orders-v1
                  routes:
                    - name: split
                      backends: [ { cluster: orders-v1, weight: 90 }, { cluster: orders-v2, weight: 10 } ]
                - { name: cache, port: 6379, cluster: redis, protocol: tcp }
            clusters:
              - { name: orders-v1, endpoints: [ "10.233.0.11:8080" ] }
              - { name: orders-v2, endpoints: [ "10.233.0.12:8080" ] }
              - { name: redis, endpoints: [ "10.233.0.13:6379" ] }
            """
        let before = try parsed(doc)
        let w = [ClusterWeight("orders-v1", 50), ClusterWeight("orders-v2", 50)]
        for spec in ["split", "outbound_orders/split"] {
            let edited = try WeightEdit.apply(to: doc, route: spec, weights: w)
            #expect(edited == doc.replacing("weight: 90 }, { cluster: orders-v2, weight: 10",
                                            with: "weight: 50 }, { cluster: orders-v2, weight: 50"))
            let after = try parsed(edited)
            #expect(after == before.settingWeights(route: spec, w))
            #expect(after.backends(ofRoute: spec)?.map(\.weight) == [50, 50])
            guard case .forward(let f)? = after.sidecar?.services.first?.routes.first?.action else {
                Issue.record("no forwarding route in the section")
                continue
            }
            #expect(f.backends.map(\.weight) == [50, 50])
        }
        #expect(throws: ControlError(404, "no route outbound_cache/split in the document")) {
            _ = try WeightEdit.apply(to: doc, route: "outbound_cache/split", weights: w)
        }
        #expect(throws: ControlError(404, "no route split: the document has no listeners")) {
            _ = try WeightEdit.apply(to: "sidecar: { ipv6: false }\n", route: "split", weights: w)
        }
    }

    @Test func refusals() throws {
        #expect(throws: ControlError(404, "no route nope in the document")) {
            _ = try WeightEdit.apply(to: realistic, route: "nope", weights: [ClusterWeight("v1", 1)])
        }
        #expect(throws: ControlError(404, "no route db/split in the document")) {
            _ = try WeightEdit.apply(to: realistic, route: "db/split", weights: [ClusterWeight("v1", 1)])
        }
        do {
            _ = try WeightEdit.apply(to: realistic, route: "web/split", weights: [ClusterWeight("shadow", 1)])
            Issue.record("expected a refusal")
        } catch {
            #expect(error.status == 400)
            #expect(error.message == "cluster shadow is not a backend of route web/split (its backends: v1, v2, v3)")
        }
        do {
            _ = try WeightEdit.apply(to: realistic, route: "greeting", weights: [ClusterWeight("v1", 1)])
            Issue.record("expected a refusal")
        } catch {
            #expect(error.status == 400)
            #expect(error.message.contains("has no backends"))
        }
    }

    /// A document stored with `--force` is still parsed by the split edit: alias bombs and deep
    /// nesting are refused (400) at once, not copied out exponentially (issue 19, finding 9).
    @Test func yamlBombsAreRefused() {
        var lines = [#"x: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]"#]
        for i in 1...8 { lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ",") + "]") }
        lines.append("listeners: [ { name: a, routes: [ { name: r, backends: [ { cluster: x, weight: 1 } ] } ], extra: *a8 } ]")
        do {
            _ = try WeightEdit.apply(to: lines.joined(separator: "\n"), route: "r", weights: [ClusterWeight("x", 2)])
            Issue.record("expected a refusal")
        } catch {
            #expect(error.status == 400)
            #expect(error.message.hasPrefix("alias *a3 on line 5: aliases would repeat more than 100000 nodes"), "\(error.message)")
        }
        do {
            _ = try WeightEdit.apply(to: "listeners: " + String(repeating: "[", count: 100_000), route: "r",
                                     weights: [ClusterWeight("x", 2)])
            Issue.record("expected a refusal")
        } catch {
            #expect(error.status == 400)
            #expect(error.message == "lists and mappings nested more than 64 deep on line 1", "\(error.message)")
        }
    }

    @Test func anchorsAndAliasesAreNotEditedInPlace() throws {
        let doc = """
            listeners:
              - name: a
                address: 127.0.0.1:0
                routes:
                  - name: r
                    backends: &shared [ { cluster: x, weight: 1 }, { cluster: y, weight: 1 } ]
              - name: b
                address: 127.0.0.1:0
                routes:
                  - name: r
                    backends: *shared
            clusters:
              - { name: x, endpoints: [ "127.0.0.1:1" ] }
              - { name: y, endpoints: [ "127.0.0.1:2" ] }
            """
        _ = try parsed(doc)
        for route in ["r", "a/r", "b/r"] {
            do {
                _ = try WeightEdit.apply(to: doc, route: route, weights: [ClusterWeight("x", 5)])
                Issue.record("\(route): expected a refusal")
            } catch {
                #expect(error.status == 400)
                #expect(error.message.contains("anchors or aliases"))
            }
        }
    }

    @Test func byteOffsetsAfterMultibyteText() throws {
        // Three- and four-byte characters before the weight: libyaml counts characters, not bytes.
        let doc = """
            # 日本語のコメント 🐟🐟🐟
            listeners:
              - name: web
                address: 127.0.0.1:0
                routes:
                  - name: hi
                    match: { path: { exact: /hi } }
                    direct_response: { status: 200, body: "🐟 ünïcödé" }
                  - name: r
                    backends: [ { cluster: a, weight: 1 }, { cluster: b, weight: 2 } ]
            clusters:
              - { name: a, endpoints: [ "127.0.0.1:1" ] }
              - { name: b, endpoints: [ "127.0.0.1:2" ] }
            """
        let w = [ClusterWeight("a", 100), ClusterWeight("b", 0)]
        let edited = try WeightEdit.apply(to: doc, route: "r", weights: w)
        #expect(edited.contains("backends: [ { cluster: a, weight: 100 }, { cluster: b, weight: 0 } ]"))
        #expect(try parsed(edited) == (try parsed(doc)).settingWeights(route: "r", w))
        // With a byte order mark too.
        let bom = "\u{FEFF}" + doc
        let e2 = try WeightEdit.apply(to: bom, route: "r", weights: w)
        #expect(e2 == "\u{FEFF}" + edited)
    }
}
