import Glibc
import RemoraConfig
import RemoraCore
import Testing

/// The errors from a config that must not validate.
private func errors(_ yaml: String, file: String = "test.yaml") -> [ConfigError] {
    switch ConfigLoader.parse(yaml: yaml, file: file) {
    case .success(let config):
        Issue.record("expected errors, got \(config)")
        return []
    case .failure(let e):
        return e.errors
    }
}

private func config(_ yaml: String) -> Config? {
    switch ConfigLoader.parse(yaml: yaml, file: "test.yaml") {
    case .success(let config): return config
    case .failure(let e):
        Issue.record("unexpected errors:\n\(e)")
        return nil
    }
}

private func hp(_ s: String) -> HostPort { HostPort.parse(s)! }

extension ListenerConfig {
    /// Every route, across virtual hosts.
    var routes: [RouteConfig] { virtualHosts.flatMap(\.routes) }
}

@Suite struct ConfigLoaderTests {
    @Test func fullExample() throws {
        let yaml = """
            admin: { address: 127.0.0.1:9901 }   # optional
            workers: 2
            drain_timeout: 5s
            listeners:
              - name: web
                address: 127.0.0.1:8080
                protocol: http
                request_header_timeout: 10s
                max_request_header_bytes: 60KiB
                idle_timeout: 60s
                routes:
                  - name: all
                    match: { path: { prefix: / } }
                    backends: [ { cluster: app, weight: 1 } ]
                    timeout: 15s
                  - name: health
                    match: { path: { exact: /healthz } }
                    backends: [ { cluster: app, weight: 0 }, { cluster: app2 } ]
                    timeout: 0
              - name: db
                address: 127.0.0.1:15432
                protocol: tcp
                cluster: postgres
            clusters:
              - name: app
                protocol: http1
                endpoints: [ 127.0.0.1:9000, "[::1]:9001", "localhost:9002" ]
                connect_timeout: 5s
                max_idle_per_endpoint: 128
              - name: app2
                protocol: http2
                endpoints: [ 10.0.0.1:80 ]
                connect_timeout: 250ms
                max_idle_per_endpoint: 0
              - name: postgres
                endpoints:
                  - 127.0.0.1:5432
            """
        let c = try #require(config(yaml))
        #expect(c == Config(
            admin: AdminConfig(address: HostPort(host: "127.0.0.1", port: 9901)),
            workers: 2,
            drainTimeout: 5_000,
            listeners: [
                ListenerConfig(name: "web", address: hp("127.0.0.1:8080"), protocol: .http,
                               requestHeaderTimeout: 10_000, maxRequestHeaderBytes: 61_440, idleTimeout: 60_000,
                               virtualHosts: [VirtualHostConfig(name: "default", domains: ["*"], routes: [
                                   RouteConfig(name: "all", match: RouteMatch(path: .prefix("/")), action: .forward(
                                       ForwardAction(backends: [WeightedBackend(cluster: "app", weight: 1)], timeout: 15_000))),
                                   RouteConfig(name: "health", match: RouteMatch(path: .exact("/healthz")), action: .forward(
                                       ForwardAction(backends: [WeightedBackend(cluster: "app", weight: 0),
                                                                WeightedBackend(cluster: "app2", weight: 1)], timeout: 0))),
                               ])]),
                ListenerConfig(name: "db", address: hp("127.0.0.1:15432"), protocol: .tcp, cluster: "postgres"),
            ],
            clusters: [
                ClusterConfig(name: "app", protocol: .http1,
                              endpoints: [HostPort(host: "127.0.0.1", port: 9000), HostPort(host: "::1", port: 9001),
                                          HostPort(host: "localhost", port: 9002)],
                              connectTimeout: 5_000, maxIdlePerEndpoint: 128),
                ClusterConfig(name: "app2", protocol: .http2, endpoints: [hp("10.0.0.1:80")],
                              connectTimeout: 250, maxIdlePerEndpoint: 0),
                ClusterConfig(name: "postgres", endpoints: [hp("127.0.0.1:5432")]),
            ]))
    }

    @Test func defaults() throws {
        let c = try #require(config("""
            listeners:
              - name: web
                address: 0.0.0.0:80
                routes:
                  - name: all
                    backends: [ { cluster: app } ]
              - name: raw
                address: "[::]:9000"
                protocol: tcp
                cluster: app
            clusters:
              - name: app
                endpoints: [ app.internal:8080 ]
            """))
        #expect(c.admin == nil)
        #expect(c.workers == 0)
        #expect(c.drainTimeout == 5_000)
        let web = c.listeners[0], raw = c.listeners[1]
        #expect(web.protocol == .http && web.requestHeaderTimeout == 10_000 && web.maxRequestHeaderBytes == 60 * 1024)
        #expect(web.idleTimeout == 60_000 && web.cluster == nil)
        #expect(web.virtualHosts == [VirtualHostConfig(name: "default", domains: ["*"], routes: [
            RouteConfig(name: "all", match: RouteMatch(path: .prefix("/")),
                        action: .forward(ForwardAction(backends: [WeightedBackend(cluster: "app", weight: 1)], timeout: 15_000)))])])
        #expect(raw == ListenerConfig(name: "raw", address: HostPort(host: "::", port: 9000), protocol: .tcp,
                                      idleTimeout: 60_000, virtualHosts: [], cluster: "app"))
        // Issue 17: the idle pool follows demand (no cap unless configured) and closes after 60 s idle.
        #expect(c.clusters == [ClusterConfig(name: "app", protocol: .http1, endpoints: [hp("app.internal:8080")],
                                             connectTimeout: 5_000, maxIdlePerEndpoint: nil, idleTimeout: 60_000)])
    }

    @Test func acceptedEdgeCases() throws {
        // Port 0 may repeat; routes may be empty or null; null optional values mean "default";
        // anchors and aliases expand; quoted and plain scalars read alike.
        let c = try #require(config("""
            workers: 256
            drain_timeout: 0
            admin:
            listeners:
              - name: a.b_c-1
                address: 127.0.0.1:0
                routes: []
              - name: "b"
                address: 127.0.0.1:0
                idle_timeout: ~
                routes:
              - name: c
                address: 127.0.0.1:8080
                routes:
                  - name: r
                    match: { path: { prefix: /api/ } }
                    backends: &two [ { cluster: x, weight: 1000000 }, { cluster: y, weight: "0" } ]
                  - name: r2
                    backends: *two
            clusters:
              - { name: x, endpoints: [ "127.0.0.1:65535" ] }
              - { name: y, endpoints: [ "127.0.0.1:65534" ] }
            """))
        #expect(c.workers == 256 && c.drainTimeout == 0 && c.admin == nil)
        #expect(c.listeners.map(\.name) == ["a.b_c-1", "b", "c"])
        #expect(c.listeners[0].virtualHosts == [VirtualHostConfig(name: "default", routes: [])])
        #expect(c.listeners[1].idleTimeout == 60_000 && c.listeners[1].virtualHosts.isEmpty)
        let backends = [WeightedBackend(cluster: "x", weight: 1_000_000), WeightedBackend(cluster: "y", weight: 0)]
        #expect(c.listeners[2].routes.map { $0.action } == [.forward(ForwardAction(backends: backends)),
                                                            .forward(ForwardAction(backends: backends))])
        #expect(c.listeners[2].routes[0].match.path == .prefix("/api/"))
    }

    @Test func sameClusterTwiceInASplitIsRefused() {
        let e = errors("""
            listeners:
              - name: web
                address: 127.0.0.1:1
                routes: [ { name: r, backends: [ { cluster: a, weight: 1 }, { cluster: a, weight: 2 } ] } ]
            clusters:
              - { name: a, endpoints: [ "127.0.0.1:2" ] }
            """)
        #expect(e.map(\.path) == ["listeners[0].routes[0].backends[1].cluster"])
        #expect(e.first?.message.contains("appears twice") == true)
    }

    /// One broken thing per config: the single error's line, path and message.
    @Test(arguments: [
        ("""
         listeners:
           - name: web
             address: 127.0.0.1:8080
             routes:
               - name: all
                 backends: [ { cluster: app } ]
                 tiemout: 5s
         clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
         """, 7, "listeners[0].routes[0].tiemout", #"unknown key "tiemout" (expected one of: name, match, backends, hash_on, timeout, mirror, redirect, direct_response, rewrite, request_headers, response_headers, request_timeout, retry, fault, rate_limit, authorization, upgrade, grpc_web)"#),
        ("""
         listeners:
           - name: web
             address: 127.0.0.1:8080
             routes:
               - name: all
                 backends: [ { cluster: app } ]
                 timeout: fast
         clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
         """, 7, "listeners[0].routes[0].timeout", #"expected a duration like "250ms", "5s" or "2m", got "fast""#),
        ("""
         listeners:
           - name: web
             address: 127.0.0.1:8080
             routes:
               - name: all
                 backends:
                   - cluster: app
                   - cluster: ap
         clusters:
           - { name: app, endpoints: [ 127.0.0.1:1 ] }
           - { name: postgres, endpoints: [ 127.0.0.1:2 ] }
         """, 8, "listeners[0].routes[0].backends[1].cluster", #"cluster "ap" is not defined (defined: app, postgres)"#),
        ("""
         listeners:
           - { name: db, address: 127.0.0.1:1, protocol: tcp, cluster: pg }
         """, 2, "listeners[0].cluster", #"cluster "pg" is not defined (no clusters are defined)"#),
        ("""
         listeners:
           - { name: web, address: 127.0.0.1:1 }
           - { name: web, address: 127.0.0.1:2 }
         """, 3, "listeners[1].name", #"duplicate listener name "web" (first used on line 2)"#),
        ("""
         listeners:
           - { name: a, address: 127.0.0.1:1 }
           - { name: b, address: 127.0.0.1:1 }
         """, 3, "listeners[1].address", "duplicate address 127.0.0.1:1 (first used on line 2)"),
        ("""
         admin: { address: "[::1]:9901" }
         listeners:
           - { name: a, address: "[::1]:9901" }
         """, 3, "listeners[0].address", "duplicate address [::1]:9901 (first used on line 1)"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         clusters:
           - { name: app, endpoints: [ 127.0.0.1:1 ] }
           - { name: app, endpoints: [ 127.0.0.1:2 ] }
         """, 4, "clusters[1].name", #"duplicate cluster name "app" (first used on line 3)"#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - { name: r, backends: [ { cluster: x } ] }
               - { name: r, backends: [ { cluster: x } ] }
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 6, "listeners[0].routes[1].name", #"duplicate route name "r" (first used on line 5)"#),
        ("""
         listeners:
           name: web
         """, 2, "listeners", "expected a list, got a mapping"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - { name: r, match: [ / ], backends: [ { cluster: x } ] }
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 5, "listeners[0].routes[0].match", "expected a mapping, got a list"),
        ("""
         listeners:
           - name: [ a ]
             address: 127.0.0.1:1
         """, 2, "listeners[0].name", "got a list"),
        ("""
         workers: -1
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 1, "workers", "must be between 0 and 256, got -1"),
        ("""
         workers: 257
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 1, "workers", "must be between 0 and 256, got 257"),
        ("""
         workers: two
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 1, "workers", #"expected an integer, got "two""#),
        ("""
         drain_timeout: -5s
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 1, "drain_timeout", "must not be negative, got -5s"),
        ("""
         drain_timeout: 5
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 1, "drain_timeout", #"expected a duration like "250ms", "5s" or "2m", got "5""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             max_request_header_bytes: 2MiB
         """, 4, "listeners[0].max_request_header_bytes", "must be between 1KiB and 1MiB, got 2MiB"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             max_request_header_bytes: 1000
         """, 4, "listeners[0].max_request_header_bytes", "must be between 1KiB and 1MiB, got 1000"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             max_request_header_bytes: big
         """, 4, "listeners[0].max_request_header_bytes", #"expected a size like "60KiB", "1MiB" or "512", got "big""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             idle_timeout: 0s
         """, 4, "listeners[0].idle_timeout", "must be greater than 0"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             request_header_timeout: 0
         """, 4, "listeners[0].request_header_timeout", "must be greater than 0"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 backends: [ { cluster: x, weight: 1000001 } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 6, "listeners[0].routes[0].backends[0].weight", "must be between 0 and 1000000, got 1000001"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 backends: [ { cluster: x, weight: 0 }, { cluster: x, weight: 0 } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 6, "listeners[0].routes[0].backends", "at least one backend must have a weight above 0"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 backends: []
         """, 6, "listeners[0].routes[0].backends", "at least one backend is required"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
         """, 5, "listeners[0].routes[0].backends", #"missing required key "backends""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 backends: [ x ]
         """, 6, "listeners[0].routes[0].backends[0]", #"expected a mapping, got "x""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 match:
                   path: { prefix: /, exact: /x }
                 backends: [ { cluster: x } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 7, "listeners[0].routes[0].match.path", "expected exactly one of prefix, exact or regex"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 match:
                   path: {}
                 backends: [ { cluster: x } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 7, "listeners[0].routes[0].match.path", "expected exactly one of prefix, exact or regex"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             routes:
               - name: r
                 match:
                   path:
                     exact: api
                 backends: [ { cluster: x } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 8, "listeners[0].routes[0].match.path.exact", #"expected a path starting with "/", got "api""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             protocol: tcp
             cluster: x
             routes: [ { name: r, backends: [ { cluster: x } ] } ]
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 6, "listeners[0].routes", "only allowed on an http listener"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             protocol: tcp
             request_header_timeout: 5s
             cluster: x
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 5, "listeners[0].request_header_timeout", "only allowed on an http listener"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             protocol: tcp
         """, 2, "listeners[0].cluster", #"missing required key "cluster""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             cluster: x
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 4, "listeners[0].cluster", "only allowed on a tcp listener"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             protocol: udp
         """, 4, "listeners[0].protocol", #"expected http, tcp or tls, got "udp""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             protocol: -tcp
         """, 4, "listeners[0].protocol", #"expected http, tcp or tls, got "-tcp""#),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:65536
         """, 3, "listeners[0].address", #"got "127.0.0.1:65536""#),
        ("""
         listeners:
           - name: my web
             address: 127.0.0.1:1
         """, 2, "listeners[0].name", #"expected a name made of letters, digits, "_", "." and "-", got "my web""#),
        ("""
         listeners:
           - name:
             address: 127.0.0.1:1
         """, 2, "listeners[0].name", "got nothing"),
        ("""
         listeners:
           - address: 127.0.0.1:1
         """, 2, "listeners[0].name", #"missing required key "name""#),
        ("""
         listeners:
           - name: a
             address: localhost
         """, 3, "listeners[0].address", #"expected host:port like "127.0.0.1:8080" or "[::1]:8080", got "localhost""#),
        ("""
         listeners:
           - name: a
             address: ::1:80
         """, 3, "listeners[0].address", "expected host:port"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1, protocol: tcp, cluster: x } ]
         clusters:
           - name: x
             endpoints: [ 127.0.0.1:1, 127.0.0.1:0 ]
         """, 4, "clusters[0].endpoints[1]", "port must be between 1 and 65535, got 0"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1, protocol: tcp, cluster: x } ]
         clusters:
           - name: x
             endpoints: []
         """, 4, "clusters[0].endpoints", "at least one endpoint is required"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1, protocol: tcp, cluster: x } ]
         clusters:
           - name: x
             protocol: http3
             endpoints: [ 127.0.0.1:1 ]
         """, 4, "clusters[0].protocol", #"expected http1, http2 or auto, got "http3""#),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1, protocol: tcp, cluster: x } ]
         clusters:
           - name: x
             endpoints: [ 127.0.0.1:1 ]
             max_idle_per_endpoint: 100001
         """, 5, "clusters[0].max_idle_per_endpoint", "must be between 0 and 100000, got 100001"),
        ("""
         listeners:
           - name: a
             address: 127.0.0.1:1
             name: b
         """, 4, "listeners[0].name", #"duplicate key "name" (first on line 2)"#),
        ("""
         listener:
           - name: a
             address: 127.0.0.1:1
         listeners: [ { name: b, address: 127.0.0.1:2 } ]
         """, 1, "listener", #"unknown key "listener" (expected one of: admin, workers, drain_timeout, listeners, clusters, overload, node, max_connections, sidecar)"#),
        ("""
         admin: 127.0.0.1:9901
         listeners: [ { name: b, address: 127.0.0.1:2 } ]
         """, 1, "admin", #"expected a mapping, got "127.0.0.1:9901""#),
        ("""
         admin: {}
         listeners: [ { name: b, address: 127.0.0.1:2 } ]
         """, 1, "admin.address", #"missing required key "address""#),
        ("""
         # comment
         listeners: []
         """, 2, "listeners", "no listeners"),
        ("""
         clusters: [ { name: x, endpoints: [ 127.0.0.1:1 ] } ]
         """, 1, "listeners", "no listeners"),
        ("""
         - name: a
         """, 1, "", "expected a mapping, got a list"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         ---
         listeners: [ { name: a, address: 127.0.0.1:1 } ]
         """, 2, "", "expected one YAML document"),
        ("""
         listeners: [ { name: a, address: 127.0.0.1:1, routes: *nope } ]
         """, 1, "", "alias *nope"),
        ("""
         listeners:
           ? [ a ]
           : b
         """, 2, "", "a mapping key must be a plain string"),
    ] as [(String, Int, String, String)])
    func singleError(yaml: String, line: Int, path: String, message: String) {
        let e = errors(yaml)
        #expect(e.count == 1, "\(e)")
        guard let first = e.first else { return }
        #expect(first.file == "test.yaml")
        #expect(first.line == line, "\(first)")
        #expect(first.path == path, "\(first)")
        #expect(first.message.contains(message), "\(first)")
    }

    @Test func allErrorsSortedByLine() {
        let e = errors("""
            workers: 1000
            listeners:
              - name: web
                address: 127.0.0.1:8080
                routes:
                  - name: all
                    backends: [ { cluster: ap, weight: -1 } ]
                    tiemout: 5s
              - name: web
                address: 127.0.0.1:8080
                protocol: tcp
            drain_timeout: soon
            clusters:
              - name: app
                endpoints: [ nohost ]
            """, file: "remora.yaml")
        // A missing key is reported on the first line of its mapping; same-line errors keep their order.
        #expect(e.map(\.line) == [1, 7, 7, 8, 9, 9, 10, 12, 15])
        #expect(e.map(\.path) == [
            "workers",
            "listeners[0].routes[0].backends[0].cluster",
            "listeners[0].routes[0].backends[0].weight",
            "listeners[0].routes[0].tiemout",
            "listeners[1].name",
            "listeners[1].cluster",
            "listeners[1].address",
            "drain_timeout",
            "clusters[0].endpoints[0]",
        ])
        #expect(e[1].message == #"cluster "ap" is not defined (defined: app)"#)
        #expect(e[2].message == "must be between 0 and 1000000, got -1")
        #expect(e[5].message == #"missing required key "cluster""#)
        #expect(e.first?.description == "remora.yaml:1: workers: must be between 0 and 256, got 1000")
    }

    @Test(arguments: ["", "\n\n", "# only a comment\n", "~\n", "---\n...\n"])
    func emptyFile(yaml: String) {
        let e = errors(yaml)
        #expect(e.map(\.description) == ["test.yaml:1: listeners: no listeners"])
    }

    @Test(arguments: [
        ("listeners:\n  - name: a\n    address: 127.0.0.1:1\n  routes: [\n", 4, "invalid YAML: did not find expected '-' indicator"),
        ("listeners: [ { name: a, address: 127.0.0.1:1 }\nclusters: []\n", 2, "invalid YAML: did not find expected ',' or ']'"),
        ("workers: 1\nlisteners:\n  - name: \"a\n", 4, "invalid YAML: found unexpected end of stream"),
        ("workers: 1\n\tlisteners: []\n", 2, "invalid YAML"),
        ("a: b: c\n", 1, "invalid YAML: mapping values are not allowed in this context"),
    ] as [(String, Int, String)])
    func syntaxError(yaml: String, line: Int, message: String) {
        let e = errors(yaml)
        #expect(e.count == 1)
        #expect(e.first?.line == line, "\(e)")
        #expect(e.first?.path == "")
        #expect(e.first?.message.hasPrefix(message) == true, "\(e)")
    }

    @Test func http2Settings() throws {
        let c = try #require(config("""
            listeners:
              - name: web
                address: 127.0.0.1:1
                http2: { max_concurrent_streams: 250, initial_stream_window: 256KiB, connection_window: 8MiB, max_header_list_size: 16KiB }
                routes: [ { name: all, backends: [ { cluster: h2 } ] } ]
            clusters:
              - name: h2
                protocol: http2
                endpoints: [ 127.0.0.1:2 ]
                http2: { initial_stream_window: 64KiB }
            """))
        #expect(c.listeners[0].http2 == HTTP2Settings(maxConcurrentStreams: 250, initialStreamWindow: 256 * 1024,
                                                        connectionWindow: 8 << 20, maxHeaderListSize: 16 * 1024))
        #expect(c.clusters[0].http2.initialStreamWindow == 64 * 1024)
        #expect(c.clusters[0].http2.maxConcurrentStreams == 100)
        let e = errors("""
            listeners:
              - name: web
                address: 127.0.0.1:1
                http2: { max_concurrent_streams: 0 }
                routes: [ { name: all, backends: [ { cluster: a } ] } ]
            clusters:
              - name: a
                endpoints: [ 127.0.0.1:2 ]
                http2: { initial_stream_window: 1MiB }
            """)
        #expect(e.map(\.path) == ["listeners[0].http2.max_concurrent_streams", "clusters[0].http2"])
    }

    @Test func loadFromFile() throws {
        var template = Array("/tmp/remora-config-test-XXXXXX.yaml".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemps($0.baseAddress!, 5) }
        try #require(fd >= 0)
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { unlink(path) }
        let text = "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    routes: [ { name: r, backends: [ { cluster: nope } ] } ]\n"
        #expect(text.utf8.count == text.withCString { write(fd, $0, strlen($0)) })
        close(fd)

        guard case .failure(let e) = ConfigLoader.load(path: path) else {
            Issue.record("expected an error")
            return
        }
        #expect(e.errors.map(\.description)
            == ["\(path):4: listeners[0].routes[0].backends[0].cluster: cluster \"nope\" is not defined (no clusters are defined)"])
    }

    @Test func loadMissingFile() {
        guard case .failure(let e) = ConfigLoader.load(path: "/nonexistent/remora.yaml") else {
            Issue.record("expected an error")
            return
        }
        #expect(e.errors.count == 1)
        #expect(e.errors.first?.file == "/nonexistent/remora.yaml")
        #expect(e.errors.first?.message == "cannot read the file: No such file or directory")
    }

    @Test func loadDirectory() {
        guard case .failure(let e) = ConfigLoader.load(path: "/tmp") else {
            Issue.record("expected an error")
            return
        }
        #expect(e.errors.first?.message == "cannot read the file: Is a directory")
    }

    @Test func bufferLimitConnectRateAndOverload() throws {
        func yaml(_ limit: String, _ rate: String, _ extra: String = "") -> String {
            """
            listeners:
              - name: web
                address: 127.0.0.1:0
            \(limit)
                routes: [ { name: all, backends: [ { cluster: app } ] } ]
            clusters:
              - name: app
                endpoints: [ 127.0.0.1:9000 ]
            \(rate)
            \(extra)
            """
        }
        let limit = "    per_connection_buffer_limit: 256KiB", rate = "    max_connects_per_second: 50"
        let c = try #require(config(yaml(limit, rate, "overload: { refuse_streams_above: 512MiB }")))
        #expect(c.listeners[0].perConnectionBufferLimit == 256 * 1024)
        #expect(c.clusters[0].maxConnectsPerSecond == 50)
        #expect(c.overload == OverloadConfig(refuseStreamsAbove: 512 << 20, refuseConnectionsAbove: 640 << 20))
        let d = try #require(config(yaml("", "")))
        #expect(d.listeners[0].perConnectionBufferLimit == 1 << 20)
        #expect(d.clusters[0].maxConnectsPerSecond == 1000)
        #expect(d.overload == nil)
        let e = errors(yaml(limit, rate, "overload: { refuse_streams_above: 2GiB, refuse_connections_above: 1GiB }"))
        #expect(e.map(\.path) == ["overload.refuse_connections_above"])
        let f = errors(yaml("    per_connection_buffer_limit: 1KiB", rate))
        #expect(f.map(\.path) == ["listeners[0].per_connection_buffer_limit"])
    }

    @Test func clusterIdleTimeoutAndIdleCap() throws {
        func yaml(_ extra: String) -> String {
            """
            listeners: [ { name: raw, address: 127.0.0.1:0, protocol: tcp, cluster: app } ]
            clusters:
              - name: app
                endpoints: [ 127.0.0.1:9000 ]
            \(extra)
            """
        }
        let c = try #require(config(yaml("    idle_timeout: 250ms\n    max_idle_per_endpoint: 16")))
        #expect(c.clusters[0].idleTimeout == 250 && c.clusters[0].maxIdlePerEndpoint == 16)
        let d = try #require(config(yaml("")))
        #expect(d.clusters[0].idleTimeout == 60_000 && d.clusters[0].maxIdlePerEndpoint == nil)
        #expect(errors(yaml("    idle_timeout: 0")).map(\.path) == ["clusters[0].idle_timeout"])
        #expect(errors(yaml("    idle_timeout: soon")).map(\.path) == ["clusters[0].idle_timeout"])
    }
}
