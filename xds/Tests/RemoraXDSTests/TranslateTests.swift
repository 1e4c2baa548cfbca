import Foundation
import Glibc
import RemoraConfig
import RemoraXDSProto
import SwiftProtobuf
import XCTest
@testable import RemoraXDS

/// Builders for the Envoy messages the tests send.
enum Build {
    static func any<M: Message>(_ m: M) -> Google_Protobuf_Any { try! Google_Protobuf_Any(message: m) }

    static func address(_ host: String, _ port: UInt32) -> Envoy_Config_Core_V3_Address {
        var s = Envoy_Config_Core_V3_SocketAddress()
        s.address = host
        s.portValue = port
        var a = Envoy_Config_Core_V3_Address()
        a.socketAddress = s
        return a
    }

    static var ads: Envoy_Config_Core_V3_ConfigSource {
        var c = Envoy_Config_Core_V3_ConfigSource()
        c.ads = Envoy_Config_Core_V3_AggregatedConfigSource()
        c.resourceApiVersion = .v3
        return c
    }

    static var router: Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter {
        var f = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
        f.name = "envoy.filters.http.router"
        f.typedConfig = any(Envoy_Extensions_Filters_Http_Router_V3_Router())
        return f
    }

    static func hcm(rds: String? = nil, inline: Envoy_Config_Route_V3_RouteConfiguration? = nil,
                    edit: (inout Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager) -> Void = { _ in })
        -> Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager {
        var h = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager()
        h.statPrefix = "ingress"
        h.httpFilters = [router]
        if let rds {
            var r = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_Rds()
            r.routeConfigName = rds
            r.configSource = ads
            h.rds = r
        } else if let inline {
            h.routeConfig = inline
        }
        edit(&h)
        return h
    }

    static func listener<M: Message>(_ name: String, port: UInt32, filter: M) -> Envoy_Config_Listener_V3_Listener {
        var f = Envoy_Config_Listener_V3_Filter()
        f.name = "f"
        f.typedConfig = any(filter)
        var fc = Envoy_Config_Listener_V3_FilterChain()
        fc.filters = [f]
        var l = Envoy_Config_Listener_V3_Listener()
        l.name = name
        l.address = address("127.0.0.1", port)
        l.filterChains = [fc]
        return l
    }

    static func route(prefix: String = "/", cluster: String, name: String = "") -> Envoy_Config_Route_V3_Route {
        var m = Envoy_Config_Route_V3_RouteMatch()
        m.prefix = prefix
        var a = Envoy_Config_Route_V3_RouteAction()
        a.cluster = cluster
        var r = Envoy_Config_Route_V3_Route()
        r.name = name
        r.match = m
        r.route = a
        return r
    }

    static func routeConfig(_ name: String, domains: [String] = ["*"], _ routes: [Envoy_Config_Route_V3_Route]) -> Envoy_Config_Route_V3_RouteConfiguration {
        var vh = Envoy_Config_Route_V3_VirtualHost()
        vh.name = "vh"
        vh.domains = domains
        vh.routes = routes
        var rc = Envoy_Config_Route_V3_RouteConfiguration()
        rc.name = name
        rc.virtualHosts = [vh]
        return rc
    }

    static func edsCluster(_ name: String) -> Envoy_Config_Cluster_V3_Cluster {
        var c = Envoy_Config_Cluster_V3_Cluster()
        c.name = name
        c.type = .eds
        var e = Envoy_Config_Cluster_V3_Cluster.EdsClusterConfig()
        e.edsConfig = ads
        c.edsClusterConfig = e
        return c
    }

    static func cla(_ name: String, _ endpoints: [(String, UInt32, Envoy_Config_Core_V3_HealthStatus)]) -> Envoy_Config_Endpoint_V3_ClusterLoadAssignment {
        var loc = Envoy_Config_Endpoint_V3_LocalityLbEndpoints()
        loc.lbEndpoints = endpoints.map { h, p, s in
            var ep = Envoy_Config_Endpoint_V3_Endpoint()
            ep.address = address(h, p)
            var lb = Envoy_Config_Endpoint_V3_LbEndpoint()
            lb.endpoint = ep
            lb.healthStatus = s
            return lb
        }
        var c = Envoy_Config_Endpoint_V3_ClusterLoadAssignment()
        c.clusterName = name
        c.endpoints = [loc]
        return c
    }

    static func delta<M: Message>(_ type: XDSType, nonce: String, _ ms: [(String, String, M)], removed: [String] = []) -> DeltaDiscoveryResponse {
        var r = DeltaDiscoveryResponse()
        r.typeURL = type.rawValue
        r.nonce = nonce
        r.systemVersionInfo = "s" + nonce
        r.resources = ms.map { name, version, m in
            var res = Envoy_Service_Discovery_V3_Resource()
            res.name = name
            res.version = version
            res.resource = any(m)
            return res
        }
        r.removedResources = removed
        return r
    }

    static func response<M: Message>(_ type: XDSType, _ version: String, nonce: String, _ ms: [M]) -> DiscoveryResponse {
        var r = DiscoveryResponse()
        r.typeURL = type.rawValue
        r.versionInfo = version
        r.nonce = nonce
        r.resources = ms.map { any($0) }
        return r
    }
}

final class TranslateTests: XCTestCase {
    func resources(route: Envoy_Config_Route_V3_Route = Build.route(cluster: "app"),
                   cluster: Envoy_Config_Cluster_V3_Cluster = Build.edsCluster("app")) -> XDSResources {
        var r = XDSResources()
        r.listeners = ["web": Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc"))]
        r.routes = ["rc": Build.routeConfig("rc", [route])]
        r.clusters = [cluster.name: cluster]
        r.endpoints = ["app": Build.cla("app", [("127.0.0.1", 9000, .healthy), ("127.0.0.1", 9001, .unhealthy)])]
        return r
    }

    func config(_ r: XDSResources) throws -> YAMLNode {
        guard case .config(let doc) = try Translator().translate(r) else { XCTFail("pending"); throw XDSError("pending") }
        if case .failure(let e) = ConfigLoader.parse(yaml: doc.text, file: "t") { XCTFail("\(e)\n\(doc.text)") }
        return doc
    }

    func testListenerRDSClusterEDSBecomeOneRemoraConfig() throws {
        let doc = try config(resources())
        XCTAssertEqual(doc.text, """
        listeners:
          - name: "web"
            address: "127.0.0.1:8080"
            protocol: "http"
            routes:
              - name: "route0"
                match:
                  path:
                    prefix: "/"
                backends:
                  - cluster: "app"
                    weight: 1
        clusters:
          - name: "app"
            endpoints: [ "127.0.0.1:9000" ]
            lb: "round_robin"
            circuit_breaker: {}
            retry_budget: "off"

        """)
    }

    func testMissingRDSOrEDSIsPendingNotAnError() throws {
        var r = resources()
        r.routes = [:]
        XCTAssertEqual(try Translator().translate(r), .pending("RDS route configurations of listeners web"))
        r = resources()
        r.endpoints = [:]
        XCTAssertEqual(try Translator().translate(r), .pending("EDS assignments app"))
        XCTAssertEqual(r.rdsNames, ["rc"])
        XCTAssertEqual(r.edsNames, ["app"])
    }

    func testUnsupportedFieldsAreNamed() {
        var route = Build.route(cluster: "app")
        route.route.requestMirrorPolicies = [Envoy_Config_Route_V3_RouteAction.RequestMirrorPolicy()]
        route.route.requestMirrorPolicies[0].clusterHeader = "x-mirror-to"
        XCTAssertThrowsError(try Translator().translate(resources(route: route))) { e in
            XCTAssertTrue("\(e)".contains("routes[0].route.request_mirror_policies[0].cluster_header is not supported"), "\(e)")
        }
        var c = Build.edsCluster("app")
        c.transportSocketMatches = [Data()]
        XCTAssertThrowsError(try Translator().translate(resources(cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("Cluster app.transport_socket_matches is not supported"), "\(e)")
        }
        var r = resources()
        var l = r.listeners["web"]!
        var lf = Envoy_Config_Listener_V3_ListenerFilter()
        lf.name = "envoy.filters.listener.original_dst"   // the TLS and HTTP inspectors are read (filter chains)
        l.listenerFilters = [lf]
        r.listeners["web"] = l
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("Listener web: listener_filters[0]: listener filter envoy.filters.listener.original_dst is not supported"), "\(e)")
        }
    }

    func testUnknownHTTPFilterIsRefused() {
        var r = resources()
        let h = Build.hcm(rds: "rc") { h in
            var f = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
            f.name = "envoy.filters.http.fault"
            f.typedConfig = Build.any(Google_Protobuf_Struct())
            h.httpFilters.insert(f, at: 0)
        }
        r.listeners["web"] = Build.listener("web", port: 8080, filter: h)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("http_filters[0] (envoy.filters.http.fault): HTTP filter type.googleapis.com/google.protobuf.Struct is not supported"), "\(e)")
        }
    }

    func testRouteToUnknownClusterIsAnErrorWhenClustersAreValidated() throws {
        // RDS: Envoy's default is validate_clusters false, and such a route answers 503.
        let text = try config(resources(route: Build.route(cluster: "nope"))).text
        XCTAssertTrue(text.contains("direct_response:\n          status: 503\n          body: \"\""), text)
        var r = resources(route: Build.route(cluster: "nope"))
        r.routes["rc"]!.validateClusters = Google_Protobuf_BoolValue(true)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("routes[0].route: unknown cluster nope"), "\(e)")
        }
        // Inline: validated by default.
        r = resources()
        r.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(inline: Build.routeConfig("x", [Build.route(cluster: "nope")])))
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("unknown cluster nope"), "\(e)")
        }
    }

    func testMatchersWeightsRetryHeadersRedirectDirect() throws {
        var m = Envoy_Config_Route_V3_RouteMatch()
        var re = Envoy_Type_Matcher_V3_RegexMatcher()
        re.regex = "/users/[0-9]+"
        m.safeRegex = re
        var hm = Envoy_Config_Route_V3_HeaderMatcher()
        hm.name = "x-env"
        var sm = Envoy_Type_Matcher_V3_StringMatcher()
        sm.prefix = "pro"
        hm.stringMatch = sm
        hm.invertMatch = true
        var method = Envoy_Config_Route_V3_HeaderMatcher()
        method.name = ":method"
        method.exactMatch = "GET"
        var q = Envoy_Config_Route_V3_QueryParameterMatcher()
        q.name = "debug"
        q.presentMatch = true
        m.headers = [hm, method]
        m.queryParameters = [q]
        var a = Envoy_Config_Route_V3_RouteAction()
        var w = Envoy_Config_Route_V3_WeightedCluster()
        w.clusters = [("app", 90), ("app2", 10)].map { n, v in
            var cw = Envoy_Config_Route_V3_WeightedCluster.ClusterWeight()
            cw.name = n
            cw.weight = Google_Protobuf_UInt32Value(UInt32(v))
            return cw
        }
        a.weightedClusters = w
        a.timeout = Google_Protobuf_Duration(seconds: 2, nanos: 500_000_000)
        var rp = Envoy_Config_Route_V3_RetryPolicy()
        rp.retryOn = "5xx, reset"
        rp.numRetries = Google_Protobuf_UInt32Value(2)
        a.retryPolicy = rp
        var rw = Envoy_Type_Matcher_V3_RegexMatchAndSubstitute()
        var pat = Envoy_Type_Matcher_V3_RegexMatcher()
        pat.regex = "^/users/(.*)$"
        rw.pattern = pat
        rw.substitution = "/v2/\\1"
        a.regexRewrite = rw
        var r = Envoy_Config_Route_V3_Route()
        r.match = m
        r.route = a
        var add = Envoy_Config_Core_V3_HeaderValueOption()
        var hv = Envoy_Config_Core_V3_HeaderValue()
        hv.key = "X-Env"
        hv.value = "prod"
        add.header = hv
        add.appendAction = .overwriteIfExistsOrAdd
        r.requestHeadersToAdd = [add]
        r.responseHeadersToRemove = ["server"]
        var res = resources(route: r)
        res.clusters["app2"] = Build.edsCluster("app2")
        res.endpoints["app2"] = Build.cla("app2", [("127.0.0.1", 9100, .unknown)])
        let route = try config(res)["listeners"].flatMap { if case .list(let l) = $0 { l[0]["routes"] } else { nil } }
        guard case .list(let routes)? = route else { return XCTFail("no routes") }
        let text = YAMLNode.map([("r", routes[0])]).text
        for want in ["regex: \"/users/[0-9]+\"", "name: \"x-env\"", "prefix: \"pro\"", "invert: true", "methods: [ \"GET\" ]",
                     "name: \"debug\"", "present: true", "cluster: \"app2\"", "weight: 10", "timeout: \"2500ms\"",
                     "attempts: 3", "on: [ \"5xx\", \"reset\" ]", "substitution: \"/v2/\\\\1\"", "x-env: \"prod\"", "remove: [ \"server\" ]"] {
            XCTAssertTrue(text.contains(want), "\(want) not in\n\(text)")
        }
        // Redirect and direct response.
        var rd = Envoy_Config_Route_V3_RedirectAction()
        rd.hostRedirect = "new.example"
        rd.pathRedirect = "/new"
        rd.responseCode = .found
        var r2 = Envoy_Config_Route_V3_Route()
        r2.match = m
        r2.redirect = rd
        var d = Envoy_Config_Route_V3_DirectResponseAction()
        d.status = 418
        var ds = Envoy_Config_Core_V3_DataSource()
        ds.inlineString = "teapot"
        d.body = ds
        var r3 = Envoy_Config_Route_V3_Route()
        r3.match = m
        r3.directResponse = d
        var res2 = resources()
        res2.routes["rc"] = Build.routeConfig("rc", [r2, r3])
        let t2 = try config(res2).text
        for want in ["host: \"new.example\"", "code: 302", "path: \"/new\"", "status: 418", "body: \"teapot\""] {
            XCTAssertTrue(t2.contains(want), "\(want) not in\n\(t2)")
        }
    }

    func testClusterOptions() throws {
        var c = Build.edsCluster("app")
        c.lbPolicy = .leastRequest
        c.connectTimeout = Google_Protobuf_Duration(seconds: 0, nanos: 250_000_000)
        var t = Envoy_Config_Cluster_V3_CircuitBreakers.Thresholds()
        t.maxRequests = Google_Protobuf_UInt32Value(200)
        t.maxRetries = Google_Protobuf_UInt32Value(3)
        var cb = Envoy_Config_Cluster_V3_CircuitBreakers()
        cb.thresholds = [t]
        c.circuitBreakers = cb
        var od = Envoy_Config_Cluster_V3_OutlierDetection()
        od.consecutive5Xx = Google_Protobuf_UInt32Value(7)
        od.maxEjectionPercent = Google_Protobuf_UInt32Value(50)
        c.outlierDetection = od
        var hc = Envoy_Config_Core_V3_HealthCheck()
        hc.timeout = Google_Protobuf_Duration(seconds: 1)
        hc.interval = Google_Protobuf_Duration(seconds: 5)
        hc.unhealthyThreshold = Google_Protobuf_UInt32Value(3)
        hc.healthyThreshold = Google_Protobuf_UInt32Value(2)
        var hh = Envoy_Config_Core_V3_HealthCheck.HttpHealthCheck()
        hh.path = "/healthz"
        var range = Envoy_Type_V3_Int64Range()
        range.start = 200
        range.end = 202
        hh.expectedStatuses = [range]
        hc.httpHealthCheck = hh
        c.healthChecks = [hc]
        var opts = Envoy_Extensions_Upstreams_Http_V3_HttpProtocolOptions()
        var explicit = Envoy_Extensions_Upstreams_Http_V3_HttpProtocolOptions.ExplicitHttpConfig()
        var h2 = Envoy_Config_Core_V3_Http2ProtocolOptions()
        h2.maxConcurrentStreams = Google_Protobuf_UInt32Value(50)
        explicit.http2ProtocolOptions = h2
        opts.explicitHTTPConfig = explicit
        c.typedExtensionProtocolOptions = ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Build.any(opts)]
        let text = try config(resources(cluster: c)).text
        for want in ["protocol: \"http2\"", "max_concurrent_streams: 50", "lb: \"least_request\"", "connect_timeout: \"250ms\"",
                     "max_requests: 200", "max_retries: 3", "consecutive_5xx: 7", "consecutive_gateway_errors: 0",
                     "max_ejection_percent: 50", "path: \"/healthz\"", "expect: [ 200, 201 ]", "unhealthy_threshold: 3"] {
            XCTAssertTrue(text.contains(want), "\(want) not in\n\(text)")
        }
        XCTAssertTrue(text.contains("retry_budget: \"off\""), text)
        // Istio's "no limit" (2^32 - 1) is Remora's largest; a retry budget replaces max_retries; the panic threshold.
        var istio = Envoy_Config_Cluster_V3_CircuitBreakers.Thresholds()
        istio.maxConnections = Google_Protobuf_UInt32Value(UInt32.max)
        istio.maxRequests = Google_Protobuf_UInt32Value(UInt32.max)
        istio.maxRetries = Google_Protobuf_UInt32Value(UInt32.max)
        istio.trackRemaining = true
        var budget = Envoy_Config_Cluster_V3_CircuitBreakers.Thresholds.RetryBudget()
        budget.budgetPercent.value = 25.5
        istio.retryBudget = budget
        var c2 = Build.edsCluster("app")
        c2.circuitBreakers.thresholds = [istio]
        c2.commonLbConfig.healthyPanicThreshold.value = 0
        c2.commonLbConfig.localityWeightedLbConfig = Data()
        let t2 = try config(resources(cluster: c2)).text
        for want in ["max_connections: 1000000", "max_requests: 1000000", "max_retries: 1000000",
                     "retry_budget:\n      percent: \"25.5\"\n      min_concurrency: 3", "panic_threshold: 0"] {
            XCTAssertTrue(t2.contains(want), "\(want) not in\n\(t2)")
        }
        c2.commonLbConfig.healthyPanicThreshold.value = 12.5
        XCTAssertThrowsError(try Translator().translate(resources(cluster: c2))) { e in
            XCTAssertTrue("\(e)".contains("common_lb_config.healthy_panic_threshold: 12.5"), "\(e)")
        }
        // A field of a kept message the translation does not read: named.
        c.outlierDetection.successRateStdevFactor = Google_Protobuf_UInt32Value(1900)
        XCTAssertThrowsError(try Translator().translate(resources(cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("Cluster app.outlier_detection.success_rate_stdev_factor is not supported"), "\(e)")
        }
    }

    // MARK: TLS

    static func file(_ f: String) -> Envoy_Config_Core_V3_DataSource {
        var d = Envoy_Config_Core_V3_DataSource()
        d.filename = f
        return d
    }

    static func certificate(_ cert: String, _ key: String) -> Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate {
        var t = Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate()
        t.certificateChain = file(cert)
        t.privateKey = file(key)
        return t
    }

    static func transportSocket<M: Message>(_ m: M) -> TransportSocket {
        var ts = TransportSocket()
        ts.name = "envoy.transport_sockets.tls"
        ts.typedConfig = Build.any(m)
        return ts
    }

    static func upstreamTLS() -> UpstreamTLS {
        var u = UpstreamTLS()
        u.sni = "app.shop.svc"
        var v = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext()
        v.trustedCa = file("/certs/ca.pem")
        var uri = Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher()
        uri.sanType = .uri
        uri.matcher.exact = "spiffe://mesh.local/ns/shop/sa/app"
        var dns = Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher()
        dns.sanType = .dns
        dns.matcher.exact = "app.shop.svc"
        v.matchTypedSubjectAltNames = [uri, dns]
        var old = Envoy_Type_Matcher_V3_StringMatcher()
        old.exact = "legacy.shop.svc"
        v.matchSubjectAltNames = [old]
        u.commonTlsContext.validationContext = v
        u.commonTlsContext.tlsCertificates = [certificate("/certs/sidecar.pem", "/certs/sidecar-key.pem")]
        u.commonTlsContext.alpnProtocols = ["http/1.1"]
        u.commonTlsContext.tlsParams.tlsMinimumProtocolVersion = .tlsv13
        return u
    }

    func testUpstreamTlsContextBecomesClusterTLS() throws {
        var c = Build.edsCluster("app")
        c.transportSocket = Self.transportSocket(Self.upstreamTLS())
        let text = try config(resources(cluster: c)).text
        XCTAssertTrue(text.contains("""
            tls:
              ca: "/certs/ca.pem"
              server_name: "app.shop.svc"
              verify_san: [ "spiffe://mesh.local/ns/shop/sa/app", "app.shop.svc", "legacy.shop.svc" ]
              cert: "/certs/sidecar.pem"
              key: "/certs/sidecar-key.pem"
              alpn: [ "http/1.1" ]
              min_version: "1.3"
        """), text)
        XCTAssertFalse(text.contains("protocol: \"http1\""), text)
        // Offering h2 and http/1.1 without http2 options: Envoy speaks HTTP/1.1 whatever the server picks,
        // so the cluster says http1 (Remora would otherwise let ALPN pick: protocol auto).
        var both = Self.upstreamTLS()
        both.commonTlsContext.alpnProtocols = ["h2", "http/1.1"]
        c.transportSocket = Self.transportSocket(both)
        XCTAssertTrue(try config(resources(cluster: c)).text.contains("protocol: \"http1\""))
        // No validation context: Envoy would accept any server certificate; refused.
        var u = Self.upstreamTLS()
        u.commonTlsContext.validationContextType = nil
        c.transportSocket = Self.transportSocket(u)
        XCTAssertThrowsError(try Translator().translate(resources(cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("Cluster app.transport_socket.typed_config.common_tls_context.validation_context (trusted_ca) is required"), "\(e)")
        }
        // An inline certificate, a prefix SAN matcher, an IP SAN, TLS 1.1, auto SNI: each named.
        let cases: [(String, (inout UpstreamTLS) -> Void)] = [
            ("common_tls_context.tls_certificates[0].certificate_chain.inline_string is not supported (only filename is supported)",
             { $0.commonTlsContext.tlsCertificates[0].certificateChain.inlineString = "-----BEGIN CERTIFICATE-----" }),
            ("validation_context.match_typed_subject_alt_names[0].matcher.prefix is not supported (only an exact name is supported)",
             { $0.commonTlsContext.validationContext.matchTypedSubjectAltNames[0].matcher.prefix = "spiffe://" }),
            ("validation_context.match_typed_subject_alt_names[1].san_type: IP_ADDRESS is not supported",
             { $0.commonTlsContext.validationContext.matchTypedSubjectAltNames[1].sanType = .ipAddress }),
            ("tls_params.tls_minimum_protocol_version: TLSv1_1 is not supported",
             { $0.commonTlsContext.tlsParams.tlsMinimumProtocolVersion = .tlsv11 }),
            ("Cluster app.transport_socket.typed_config.auto_host_sni is not supported", { $0.autoHostSni = true }),
            ("validation_context.crl is not supported", { $0.commonTlsContext.validationContext.crl = Self.file("/certs/crl.pem") }),
        ]
        for (want, edit) in cases {
            var u = Self.upstreamTLS()
            edit(&u)
            c.transportSocket = Self.transportSocket(u)
            XCTAssertThrowsError(try Translator().translate(resources(cluster: c))) { e in
                XCTAssertTrue("\(e)".contains(want), "\(want) not in \(e)")
            }
        }
        // A transport socket that is not TLS.
        c.transportSocket = Self.transportSocket(Google_Protobuf_Struct())
        XCTAssertThrowsError(try Translator().translate(resources(cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("Cluster app.transport_socket.typed_config: type.googleapis.com/google.protobuf.Struct is not supported"), "\(e)")
        }
    }

    static func sds(_ name: String, ads: Bool = true) -> SdsSecretConfig {
        var sc = SdsSecretConfig()
        sc.name = name
        if ads { sc.sdsConfig = Build.ads }
        return sc
    }

    static let certPEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    static let keyPEM = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"

    static func certSecret(_ name: String, cert: String = certPEM, key: String = keyPEM) -> Secret {
        var t = Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate()
        t.certificateChain.inlineBytes = Data(cert.utf8)
        t.privateKey.inlineString = key
        var s = Secret()
        s.name = name
        s.tlsCertificate = t
        return s
    }

    static func caSecret(_ name: String) -> Secret {
        var v = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext()
        v.trustedCa.inlineString = certPEM
        var s = Secret()
        s.name = name
        s.validationContext = v
        return s
    }

    /// Istio's form: the listener's certificate and client CA, the cluster's client certificate and CA by
    /// SDS; the cluster's SAN check in combined_validation_context.
    func sdsResources() -> XDSResources {
        var r = resources()
        var d = DownstreamTLS()
        d.commonTlsContext.tlsCertificateSdsSecretConfigs = [Self.sds("web")]
        d.commonTlsContext.validationContextSdsSecretConfig = Self.sds("ROOTCA")
        d.requireClientCertificate = Google_Protobuf_BoolValue(true)
        r.listeners["web"]!.filterChains[0].transportSocket = Self.transportSocket(d)
        var u = UpstreamTLS()
        u.commonTlsContext.tlsCertificateSdsSecretConfigs = [Self.sds("default")]
        var cv = Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext.CombinedCertificateValidationContext()
        var uri = Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher()
        uri.sanType = .uri
        uri.matcher.exact = "spiffe://mesh.local/ns/shop/sa/app"
        cv.defaultValidationContext.matchTypedSubjectAltNames = [uri]
        cv.validationContextSdsSecretConfig = Self.sds("ROOTCA")
        u.commonTlsContext.combinedValidationContext = cv
        var c = r.clusters["app"]!
        c.transportSocket = Self.transportSocket(u)
        r.clusters["app"] = c
        return r
    }

    func testSDSSecretsBecomeFilesTheConfigurationNames() throws {
        var t = Translator()
        t.secretsDirectory = "/run/secrets"
        var r = sdsResources()
        XCTAssertEqual(r.sdsNames, ["ROOTCA", "default", "web"])
        // Envoy's warming: the configuration waits for the secrets.
        XCTAssertEqual(try t.translate(r), .pending("SDS secrets ROOTCA, default, web"))
        r.secrets = ["web": Self.certSecret("web"), "default": Self.certSecret("default"), "ROOTCA": Self.caSecret("ROOTCA")]
        guard case .config(let doc) = try t.translate(r) else { return XCTFail("pending") }
        let text = doc.text
        XCTAssertTrue(text.contains("""
            tls:
              certificates:
                - cert: "/run/secrets/web.cert.pem"
                  key: "/run/secrets/web.key.pem"
              client_ca: "/run/secrets/ROOTCA.ca.pem"
        """), text)
        XCTAssertTrue(text.contains("""
            tls:
              ca: "/run/secrets/ROOTCA.ca.pem"
              verify_san: [ "spiffe://mesh.local/ns/shop/sa/app" ]
              cert: "/run/secrets/default.cert.pem"
              key: "/run/secrets/default.key.pem"
        """), text)
        XCTAssertFalse(text.contains("PRIVATE KEY"), "keys never enter the configuration")
        // The files: keys first (a watcher that sees the key waits for its certificate).
        let files = t.secretFiles(r)
        XCTAssertEqual(files.map(\.path), ["/run/secrets/default.key.pem", "/run/secrets/web.key.pem",
                                           "/run/secrets/ROOTCA.ca.pem", "/run/secrets/default.cert.pem", "/run/secrets/web.cert.pem"])
        XCTAssertEqual(files[1].bytes, Array(Self.keyPEM.utf8))
        // Names that are not file names: replaced, and a hash keeps two apart.
        let a = t.secretPath("kubernetes://ns/a", .cert), b = t.secretPath("kubernetes://ns_a", .cert)
        XCTAssertTrue(a.hasPrefix("/run/secrets/kubernetes___ns_a-") && a.hasSuffix(".cert.pem"), a)
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(t.secretPath("..x", .key).hasPrefix("/run/secrets/_.x-"), true)
    }

    func testSDSErrorsNameTheField() {
        var t = Translator()
        t.secretsDirectory = "/s"
        let base = sdsResources()
        func fails(_ edit: (inout XDSResources) -> Void, _ want: String, line: UInt = #line) {
            var r = base
            r.secrets = ["web": Self.certSecret("web"), "default": Self.certSecret("default"), "ROOTCA": Self.caSecret("ROOTCA")]
            edit(&r)
            XCTAssertThrowsError(try t.translate(r), line: line) { e in XCTAssertTrue("\(e)".contains(want), "\(want) not in \(e)", line: line) }
        }
        // A static secret (no sds_config), or SDS from another source than the ADS stream.
        fails({ r in
            var u = UpstreamTLS()
            u.commonTlsContext.tlsCertificateSdsSecretConfigs = [Self.sds("default", ads: false)]
            u.commonTlsContext.validationContextSdsSecretConfig = Self.sds("ROOTCA")
            var c = r.clusters["app"]!; c.transportSocket = Self.transportSocket(u); r.clusters["app"] = c
        }, "Cluster app.transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0] (default): sds_config is required")
        fails({ r in
            var u = UpstreamTLS()
            var sc = Self.sds("default")
            sc.sdsConfig.path = "/etc/sds"
            u.commonTlsContext.tlsCertificateSdsSecretConfigs = [sc]
            u.commonTlsContext.validationContextSdsSecretConfig = Self.sds("ROOTCA")
            var c = r.clusters["app"]!; c.transportSocket = Self.transportSocket(u); r.clusters["app"] = c
        }, "tls_certificate_sds_secret_configs[0].sds_config: only ads is supported")
        // A CA secret named as a certificate, and the other way round.
        fails({ r in r.secrets["web"] = Self.caSecret("web") }, "Secret web: a tls_certificate is required")
        fails({ r in r.secrets["ROOTCA"] = Self.certSecret("ROOTCA") }, "Secret ROOTCA: a validation_context is required")
        // Not PEM; a password; an environment variable.
        fails({ r in r.secrets["web"] = Self.certSecret("web", key: "secret") },
              "Secret web.tls_certificate.private_key: not PEM (no PRIVATE KEY-----)")
        fails({ r in r.secrets["web"]!.tlsCertificate.password.inlineString = "x" }, "Secret web.tls_certificate.password is not supported")
        fails({ r in r.secrets["default"]!.tlsCertificate.certificateChain.environmentVariable = "CERT" },
              "Secret default.tls_certificate.certificate_chain.environment_variable is not supported")
        // SAN checks in a CA secret (they go in default_validation_context), a CA in the default context.
        fails({ r in r.secrets["ROOTCA"]!.validationContext.matchSubjectAltNames = [Envoy_Type_Matcher_V3_StringMatcher()] },
              "Secret ROOTCA.validation_context.match_subject_alt_names is not supported")
        fails({ r in
            var c = r.clusters["app"]!
            var u = try! UpstreamTLS(unpackingAny: c.transportSocket.typedConfig)
            u.commonTlsContext.combinedValidationContext.defaultValidationContext.trustedCa = Self.file("/ca.pem")
            c.transportSocket = Self.transportSocket(u); r.clusters["app"] = c
        }, "combined_validation_context.default_validation_context.trusted_ca is not supported")
    }

    func testAFileThatCannotBeReadIsNACKedWithItsField() {
        var t = Translator()
        t.checkFile = { $0 == "/certs/ca.pem" ? "cannot read /certs/ca.pem: No such file or directory" : nil }
        var c = Build.edsCluster("app")
        c.transportSocket = Self.transportSocket(Self.upstreamTLS())
        XCTAssertThrowsError(try t.translate(resources(cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("Cluster app.transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename: cannot read /certs/ca.pem: No such file or directory"), "\(e)")
        }
        t.checkFile = { _ in nil }
        XCTAssertNoThrow(try t.translate(resources(cluster: c)))
        // The agent's check reads the file.
        XCTAssertNil(Translator.readableFile("/proc/self/status"))
        XCTAssertTrue(Translator.readableFile("/nonexistent/x.pem")?.contains("No such file") == true)
    }

    func testSecretFilesArePrivateAndReplacedWhole() throws {
        let dir = NSTemporaryDirectory() + "remora-xds-secrets-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sf = SecretFiles(directory: dir)
        XCTAssertNil(sf.prepare())
        var st = stat()
        XCTAssertEqual(lstat(dir, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        XCTAssertEqual(sf.write([SecretFile(path: dir + "/a.key.pem", bytes: Array("one".utf8))]), [])
        XCTAssertEqual(sf.write([SecretFile(path: dir + "/a.key.pem", bytes: Array("two".utf8))]), [])
        XCTAssertEqual(try String(contentsOfFile: dir + "/a.key.pem", encoding: .utf8), "two")
        XCTAssertEqual(lstat(dir + "/a.key.pem", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["a.key.pem"], "no temporary file left")
        // A link where the directory should be is refused.
        let link = dir + "-link"
        symlink(dir, link)
        defer { unlink(link) }
        XCTAssertTrue(SecretFiles(directory: link).prepare()?.contains("not a directory") == true)
    }

    // MARK: filter chains

    typealias FCM = Envoy_Config_Listener_V3_FilterChainMatch

    static func tcpChain(_ cluster: String, _ match: FCM? = nil) -> Envoy_Config_Listener_V3_FilterChain {
        var t = TcpProxy()
        t.statPrefix = "p"
        t.cluster = cluster
        var f = Envoy_Config_Listener_V3_Filter()
        f.name = "envoy.filters.network.tcp_proxy"
        f.typedConfig = Build.any(t)
        var fc = Envoy_Config_Listener_V3_FilterChain()
        fc.filters = [f]
        if let match { fc.filterChainMatch = match }
        return fc
    }

    static func match(names: [String] = [], transport: String = "", port: UInt32? = nil, ranges: [(String, UInt32)] = []) -> FCM {
        var m = FCM()
        m.serverNames = names
        m.transportProtocol = transport
        if let port { m.destinationPort = Google_Protobuf_UInt32Value(port) }
        m.prefixRanges = ranges.map { p, l in
            var c = Envoy_Config_Core_V3_CidrRange()
            c.addressPrefix = p
            c.prefixLen = Google_Protobuf_UInt32Value(l)
            return c
        }
        return m
    }

    func chainResources(_ edit: (inout Listener) -> Void) -> XDSResources {
        var r = resources()
        for n in ["a", "b", "d"] {
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = n
            c.type = .static
            c.loadAssignment = Build.cla(n, [("127.0.0.1", 9100, .healthy)])
            r.clusters[n] = c
        }
        var l = r.listeners["web"]!
        l.name = "edge"
        l.address = Build.address("127.0.0.1", 8443)
        var inspector = Envoy_Config_Listener_V3_ListenerFilter()
        inspector.name = "envoy.filters.listener.tls_inspector"
        inspector.typedConfig.typeURL = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        l.listenerFilters = [inspector]
        edit(&l)
        r.listeners["edge"] = l
        return r
    }

    func testTLSPassthroughByServerNames() throws {
        let r = chainResources { l in
            l.filterChains = [Self.tcpChain("a", Self.match(names: ["a.test"], transport: "tls")),
                              Self.tcpChain("b", Self.match(names: ["*.b.test", "b.test"])),
                              Self.tcpChain("a", Self.match(names: ["c.test"], port: 9999))]   // another port: never
            l.defaultFilterChain = Self.tcpChain("d")
        }
        let text = try config(r).text
        XCTAssertTrue(text.contains("""
              - name: "edge"
                address: "127.0.0.1:8443"
                protocol: "tls"
                sni:
                  - server_names: [ "a.test" ]
                    cluster: "a"
                  - server_names: [ "*.b.test", "b.test" ]
                    cluster: "b"
                cluster: "d"
            """), text)
        // TLS termination on a chain chosen by name is not passthrough.
        var bad = chainResources { l in
            var fc = Self.tcpChain("a", Self.match(names: ["a.test"]))
            var d = DownstreamTLS()
            d.commonTlsContext.tlsCertificates = [Self.certificate("/c.pem", "/k.pem")]
            fc.transportSocket = Self.transportSocket(d)
            l.filterChains = [fc, Self.tcpChain("b")]
        }
        XCTAssertThrowsError(try Translator().translate(bad)) { e in
            XCTAssertTrue("\(e)".contains("Listener edge: filter_chains[0]: chains chosen by filter_chain_match.server_names are supported for TLS passthrough only"), "\(e)")
        }
        bad = chainResources { l in l.filterChains = [Self.tcpChain("a", Self.match(names: ["a.test"])), Self.tcpChain("b"), Self.tcpChain("d")] }
        XCTAssertThrowsError(try Translator().translate(bad)) { e in
            XCTAssertTrue("\(e)".contains("filter_chains[1] and filter_chains[2]: more than one chain without server_names"), "\(e)")
        }
    }

    func testTLSAndPlaintextChainsBecomeAllowPlaintext() throws {
        var d = DownstreamTLS()
        d.commonTlsContext.tlsCertificates = [Self.certificate("/c.pem", "/k.pem")]
        let r = chainResources { l in
            var tls = l.filterChains[0]
            tls.filterChainMatch = Self.match(transport: "tls")
            tls.transportSocket = Self.transportSocket(d)
            var plain = l.filterChains[0]
            plain.filterChainMatch = Self.match(transport: "raw_buffer")
            l.filterChains = [plain, tls]
        }
        let text = try config(r).text
        XCTAssertTrue(text.contains("""
                tls:
                  certificates:
                    - cert: "/c.pem"
                      key: "/k.pem"
                  alpn: [ "http/1.1" ]
                  allow_plaintext: true
            """), text)
        // Different filters on the two chains: not one listener.
        let bad = chainResources { l in
            var tls = l.filterChains[0]
            tls.filterChainMatch = Self.match(transport: "tls")
            tls.transportSocket = Self.transportSocket(d)
            var plain = Self.tcpChain("a")
            plain.filterChainMatch = Self.match(transport: "raw_buffer")
            l.filterChains = [plain, tls]
        }
        XCTAssertThrowsError(try Translator().translate(bad)) { e in
            XCTAssertTrue("\(e)".contains("only the same filters, TLS on the first and none on the second, are supported"), "\(e)")
        }
    }

    func testDestinationPortAndPrefixRangesPickTheChainForTheListenersOwnAddress() throws {
        let r = chainResources { l in
            l.filterChains = [Self.tcpChain("d"),
                              Self.tcpChain("a", Self.match(port: 8443, ranges: [("127.0.0.0", 8)])),
                              Self.tcpChain("b", Self.match(port: 8443, ranges: [("127.0.0.1", 32), ("10.0.0.0", 8)])),
                              Self.tcpChain("d", Self.match(port: 8443, ranges: [("192.168.0.0", 16)])),
                              Self.tcpChain("d", Self.match(port: 15006))]
        }
        var text = try config(r).text
        XCTAssertTrue(text.contains("""
                protocol: "tcp"
                cluster: "b"
            """), text)
        // No chain for this port or address, no default: refused (Envoy would close every connection).
        var bad = chainResources { l in l.filterChains = [Self.tcpChain("a", Self.match(port: 15006))] }
        XCTAssertThrowsError(try Translator().translate(bad)) { e in
            XCTAssertTrue("\(e)".contains("Listener edge: no filter chain can match the listener's address 127.0.0.1:8443"), "\(e)")
        }
        // The destination address of a listener on 0.0.0.0 differs between connections.
        bad = chainResources { l in
            l.address = Build.address("0.0.0.0", 8443)
            l.filterChains = [Self.tcpChain("a", Self.match(ranges: [("10.0.0.0", 8)])), Self.tcpChain("b")]
        }
        XCTAssertThrowsError(try Translator().translate(bad)) { e in
            XCTAssertTrue("\(e)".contains("Listener edge: filter_chains[0].filter_chain_match.prefix_ranges is not supported on a listener bound to 0.0.0.0"), "\(e)")
        }
        // A default chain only.
        let only = chainResources { l in l.filterChains = [Self.tcpChain("a", Self.match(port: 1))]; l.defaultFilterChain = Self.tcpChain("d") }
        text = try config(only).text
        XCTAssertTrue(text.contains("cluster: \"d\""), text)
    }

    func testIPRanges() {
        let net = IPBytes("10.1.0.0")!, ip = IPBytes("10.1.2.3")!
        XCTAssertTrue(net.contains(ip, prefix: 16))
        XCTAssertTrue(net.contains(ip, prefix: 0))
        XCTAssertFalse(net.contains(ip, prefix: 24))
        XCTAssertFalse(net.contains(ip, prefix: 33))
        XCTAssertTrue(IPBytes("fd00::")!.contains(IPBytes("fd00::1")!, prefix: 8))
        XCTAssertFalse(IPBytes("fd00::")!.contains(ip, prefix: 0), "families never mix")
        XCTAssertTrue(IPBytes("::")!.isUnspecified)
        XCTAssertTrue(IPBytes("0.0.0.0")!.isUnspecified)
        XCTAssertNil(IPBytes("example.com"))
    }

    func testChainMatchesThatDoNotMapAreNACKedByName() {
        let cases: [(String, (inout FCM) -> Void)] = [
            ("Listener edge: filter_chains[0].filter_chain_match.application_protocols is not supported", { $0.applicationProtocols = ["h2"] }),
            ("filter_chains[0].filter_chain_match.source_prefix_ranges is not supported", { $0.sourcePrefixRanges = [Envoy_Config_Core_V3_CidrRange()] }),
            ("filter_chains[0].filter_chain_match.source_ports is not supported", { $0.sourcePorts = [80] }),
            ("filter_chains[0].filter_chain_match.transport_protocol: quic is not supported", { $0.transportProtocol = "quic" }),
        ]
        for (want, edit) in cases {
            let r = chainResources { l in
                var m = Self.match(names: ["a.test"])
                edit(&m)
                l.filterChains = [Self.tcpChain("a", m), Self.tcpChain("b")]
            }
            XCTAssertThrowsError(try Translator().translate(r)) { e in XCTAssertTrue("\(e)".contains(want), "\(want) not in \(e)") }
        }
        // Two chains nothing tells apart; a listener filter other than the inspectors.
        var r = chainResources { l in l.filterChains = [Self.tcpChain("a"), Self.tcpChain("b")] }
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("Listener edge: 2 filter chains that filter_chain_match does not tell apart"), "\(e)")
        }
        r = chainResources { l in l.listenerFilters[0].typedConfig.typeURL = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" }
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("Listener edge: listener_filters[0] (envoy.filters.listener.tls_inspector): listener filter type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst is not supported"), "\(e)")
        }
    }

    func testDownstreamTlsContextBecomesListenerTLS() throws {
        var d = DownstreamTLS()
        d.commonTlsContext.tlsCertificates = [Self.certificate("/certs/web.pem", "/certs/web-key.pem"),
                                              Self.certificate("/certs/api.pem", "/certs/api-key.pem")]
        var r = resources()
        r.listeners["web"]!.filterChains[0].transportSocket = Self.transportSocket(d)
        // No ALPN configured: Envoy offers none (HTTP/1.1); no client certificate asked for.
        var text = try config(r).text
        XCTAssertTrue(text.contains("""
            tls:
              certificates:
                - cert: "/certs/web.pem"
                  key: "/certs/web-key.pem"
                - cert: "/certs/api.pem"
                  key: "/certs/api-key.pem"
              alpn: [ "http/1.1" ]
        """), text)
        XCTAssertFalse(text.contains("client_ca"), text)
        // Mutual TLS, ALPN, minimum version.
        d.commonTlsContext.validationContext.trustedCa = Self.file("/certs/ca.pem")
        d.requireClientCertificate = Google_Protobuf_BoolValue(true)
        d.commonTlsContext.alpnProtocols = ["h2", "http/1.1"]
        d.commonTlsContext.tlsParams.tlsMinimumProtocolVersion = .tlsv12
        d.commonTlsContext.tlsParams.tlsMaximumProtocolVersion = .tlsv13
        r.listeners["web"]!.filterChains[0].transportSocket = Self.transportSocket(d)
        text = try config(r).text
        for want in ["client_ca: \"/certs/ca.pem\"", "forward_client_cert: false", "alpn: [ \"h2\", \"http/1.1\" ]",
                     "min_version: \"1.2\""] {
            XCTAssertTrue(text.contains(want), "\(want) not in\n\(text)")
        }
        // SANITIZE_SET with uri and dns: Remora's x-forwarded-client-cert (By, Hash, URI, DNS); other details refused.
        var set = r
        set.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc") {
            $0.forwardClientCertDetails = .sanitizeSet
            $0.setCurrentClientCertDetails.uri = true
            $0.setCurrentClientCertDetails.dns = true
        })
        set.listeners["web"]!.filterChains[0].transportSocket = Self.transportSocket(d)
        XCTAssertTrue(try config(set).text.contains("forward_client_cert: true"))
        set.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc") {
            $0.forwardClientCertDetails = .sanitizeSet
            $0.setCurrentClientCertDetails.uri = true
            $0.setCurrentClientCertDetails.cert = true
        })
        XCTAssertThrowsError(try Translator().translate(set)) { e in
            XCTAssertTrue("\(e)".contains("typed_config.set_current_client_cert_details: only uri and dns together are supported"), "\(e)")
        }
        set.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc") { $0.forwardClientCertDetails = .appendForward })
        XCTAssertThrowsError(try Translator().translate(set)) { e in
            XCTAssertTrue("\(e)".contains("typed_config.forward_client_cert_details is not supported"), "\(e)")
        }
        // A CA without require_client_certificate (an optional client certificate), a SAN check on
        // clients, require_sni, session ticket keys: each named.
        let cases: [(String, (inout DownstreamTLS) -> Void)] = [
            ("validation_context without require_client_certificate (an optional client certificate) is not supported",
             { $0.clearRequireClientCertificate() }),
            ("validation_context.match_subject_alt_names is not supported (Remora checks a client certificate against client_ca only)",
             { var m = Envoy_Type_Matcher_V3_StringMatcher(); m.exact = "x"; $0.commonTlsContext.validationContext.matchSubjectAltNames = [m] }),
            ("typed_config.require_sni is not supported", { $0.requireSni = Google_Protobuf_BoolValue(true) }),
            ("common_tls_context.tls_params.cipher_suites is not supported", { $0.commonTlsContext.tlsParams.cipherSuites = ["ECDHE-RSA-AES128-GCM-SHA256"] }),
            ("tls_maximum_protocol_version: TLSv1_2 is not supported", { $0.commonTlsContext.tlsParams.tlsMaximumProtocolVersion = .tlsv12 }),
            ("common_tls_context.tls_certificates[0].private_key.environment_variable is not supported",
             { $0.commonTlsContext.tlsCertificates[0].privateKey.environmentVariable = "KEY" }),
        ]
        for (want, edit) in cases {
            var bad = d
            edit(&bad)
            r.listeners["web"]!.filterChains[0].transportSocket = Self.transportSocket(bad)
            XCTAssertThrowsError(try Translator().translate(r)) { e in
                XCTAssertTrue("\(e)".contains(want), "\(want) not in \(e)")
            }
        }
        // A tcp_proxy listener: TLS without ALPN.
        var t = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy()
        t.statPrefix = "tcp"
        t.cluster = "app"
        var tl = Build.listener("tcp", port: 9443, filter: t)
        var plain = d
        plain.commonTlsContext.alpnProtocols = []
        tl.filterChains[0].transportSocket = Self.transportSocket(plain)
        r.listeners["tcp"] = tl
        r.listeners["web"]!.filterChains[0].clearTransportSocket()
        text = try config(r).text
        XCTAssertTrue(text.contains("protocol: \"tcp\""), text)
        XCTAssertFalse(text.contains("alpn"), text)
        XCTAssertFalse(text.contains("forward_client_cert"), text)
    }

    func testMirrorPolicyBecomesMirror() throws {
        var route = Build.route(cluster: "app")
        var mp = Envoy_Config_Route_V3_RouteAction.RequestMirrorPolicy()
        mp.cluster = "shadow"
        var rf = Envoy_Config_Core_V3_RuntimeFractionalPercent()
        rf.runtimeKey = "mirror.share"
        rf.defaultValue.numerator = 125_000
        rf.defaultValue.denominator = .million
        mp.runtimeFraction = rf
        route.route.requestMirrorPolicies = [mp]
        var r = resources(route: route)
        r.clusters["shadow"] = Build.edsCluster("shadow")
        r.endpoints["shadow"] = Build.cla("shadow", [("127.0.0.1", 9500, .healthy)])
        var text = try config(r).text
        XCTAssertTrue(text.contains("mirror:\n          cluster: \"shadow\"\n          percent: \"12.5\""), text)
        // No runtime fraction: every request. A shadow cluster without endpoints: no mirror (Envoy's shadow fails unseen).
        r.routes["rc"]!.virtualHosts[0].routes[0].route.requestMirrorPolicies[0].clearRuntimeFraction()
        text = try config(r).text
        XCTAssertTrue(text.contains("mirror:\n          cluster: \"shadow\"\n          percent: \"100\""), text)
        r.endpoints["shadow"] = Build.cla("shadow", [])
        XCTAssertFalse(try config(r).text.contains("mirror"))
        // An unknown shadow cluster: NACKed when clusters are validated, else no mirror.
        r.routes["rc"]!.virtualHosts[0].routes[0].route.requestMirrorPolicies[0].cluster = "nope"
        XCTAssertFalse(try config(r).text.contains("mirror"))
        r.routes["rc"]!.validateClusters = Google_Protobuf_BoolValue(true)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("request_mirror_policies[0].cluster: unknown cluster nope"), "\(e)")
        }
        // Two policies.
        r = resources(route: route)
        r.clusters["shadow"] = Build.edsCluster("shadow")
        r.endpoints["shadow"] = Build.cla("shadow", [("127.0.0.1", 9500, .healthy)])
        r.routes["rc"]!.virtualHosts[0].routes[0].route.requestMirrorPolicies.append(mp)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("2 mirror policies; one is supported"), "\(e)")
        }
        var f = Envoy_Type_V3_FractionalPercent()
        for (n, d, want) in [(1, Envoy_Type_V3_FractionalPercent.DenominatorType.hundred, "1"), (5, .tenThousand, "0.05"),
                             (1, .million, "0.0001"), (250, .hundred, "100"), (0, .million, "0")] {
            f.numerator = UInt32(n); f.denominator = d
            XCTAssertEqual(try Translator.percent(f, at: "p"), want)
        }
    }

    func testHashPolicyBecomesTheClustersHashOn() throws {
        var route = Build.route(cluster: "app")
        var hp = Envoy_Config_Route_V3_RouteAction.HashPolicy()
        hp.header.headerName = "X-User"
        route.route.hashPolicy = [hp]
        var c = Build.edsCluster("app")
        c.lbPolicy = .ringHash
        var text = try config(resources(route: route, cluster: c)).text
        XCTAssertTrue(text.contains("lb: \"ring_hash\"\n") && text.contains("    hash_on:\n      header: \"x-user\""), text)
        // Round robin: the key is of no use (as in Envoy), so none.
        text = try config(resources(route: route)).text
        XCTAssertFalse(text.contains("hash_on"), text)
        // Cookie, source IP, maglev.
        c.lbPolicy = .maglev
        hp.cookie.name = "session"
        route.route.hashPolicy = [hp]
        text = try config(resources(route: route, cluster: c)).text
        XCTAssertTrue(text.contains("hash_on:\n      cookie: \"session\""), text)
        hp.connectionProperties.sourceIp = true
        route.route.hashPolicy = [hp]
        text = try config(resources(route: route, cluster: c)).text
        XCTAssertTrue(text.contains("hash_on: \"source_ip\""), text)
        // A cookie Envoy would make (ttl): not supported.
        hp.cookie.name = "session"
        hp.cookie.ttl = Google_Protobuf_Duration(seconds: 60)
        route.route.hashPolicy = [hp]
        XCTAssertThrowsError(try Translator().translate(resources(route: route, cluster: c))) { e in
            XCTAssertTrue("\(e)".contains("hash_policy[0].cookie.ttl is not supported (Remora hashes on a cookie the client sends; it does not make one)"), "\(e)")
        }
        // Two routes to one cluster with different keys.
        var h1 = Envoy_Config_Route_V3_RouteAction.HashPolicy()
        h1.header.headerName = "x-a"
        var h2 = h1
        h2.header.headerName = "x-b"
        var r1 = Build.route(prefix: "/a", cluster: "app")
        r1.route.hashPolicy = [h1]
        var r2 = Build.route(prefix: "/b", cluster: "app")
        r2.route.hashPolicy = [h2]
        var r = resources(cluster: c)
        r.routes["rc"] = Build.routeConfig("rc", [r1, r2])
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("routes[1].route.hash_policy: cluster app is given another hash policy by"), "\(e)")
        }
        r2.route.hashPolicy = [h1]
        r.routes["rc"] = Build.routeConfig("rc", [r1, r2])
        XCTAssertTrue(try config(r).text.contains("hash_on:\n      header: \"x-a\""))
        // Query parameters: named.
        var hq = Envoy_Config_Route_V3_RouteAction.HashPolicy()
        hq.queryParameter = Data([0x0a, 0x01, 0x75])
        r1.route.hashPolicy = [hq]
        r.routes["rc"] = Build.routeConfig("rc", [r1])
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("routes[0].route.hash_policy[0].query_parameter is not supported"), "\(e)")
        }
    }

    /// A listener with the fault and local rate limit filters before the router, as Istio's have them
    /// (empty at the listener, configured per route).
    func filtersListener(fault: HTTPFault = HTTPFault(), rateLimit: LocalRateLimit? = nil) -> Envoy_Config_Listener_V3_Listener {
        let h = Build.hcm(rds: "rc") { h in
            var f = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
            f.name = "envoy.filters.http.fault"
            f.typedConfig = Build.any(fault)
            var l = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
            l.name = "envoy.filters.http.local_ratelimit"
            var rl = rateLimit ?? LocalRateLimit()
            rl.statPrefix = "http_local_rate_limiter"
            l.typedConfig = Build.any(rl)
            h.httpFilters.insert(contentsOf: [f, l], at: 0)
        }
        return Build.listener("web", port: 8080, filter: h)
    }

    static func fraction(_ n: UInt32, _ d: Envoy_Type_V3_FractionalPercent.DenominatorType = .hundred) -> Envoy_Type_V3_FractionalPercent {
        var f = Envoy_Type_V3_FractionalPercent()
        f.numerator = n
        f.denominator = d
        return f
    }

    func testFaultFilterPerRouteAndListenerWide() throws {
        var fault = HTTPFault()
        fault.delay.fixedDelay = Google_Protobuf_Duration(seconds: 0, nanos: 200_000_000)
        fault.delay.percentage = Self.fraction(10)
        fault.abort.httpStatus = 503
        fault.abort.percentage = Self.fraction(5000, .million)
        fault.abortPercentRuntime = "fault.http.abort.abort_percent"
        var route = Build.route(cluster: "app")
        route.typedPerFilterConfig["envoy.filters.http.fault"] = Build.any(fault)
        var r = resources(route: route)
        r.listeners["web"] = filtersListener()
        var text = try config(r).text
        XCTAssertTrue(text.contains("fault:\n          delay:\n            fixed: \"200ms\"\n            percent: \"10\"\n          abort:\n            status: 503\n            percent: \"0.5\""), text)
        // The listener's own configuration applies to routes without one; a route's replaces it.
        var wide = HTTPFault()
        wide.abort.grpcStatus = 14
        wide.abort.percentage = Self.fraction(100)
        var h = Envoy_Config_Route_V3_HeaderMatcher()
        h.name = "X-Fault"
        h.presentMatch = true
        wide.headers = [h]
        r.listeners["web"] = filtersListener(fault: wide)
        r.routes["rc"] = Build.routeConfig("rc", [route, Build.route(prefix: "/other", cluster: "app")])
        text = try config(r).text
        XCTAssertTrue(text.contains("abort:\n            grpc_status: 14\n            percent: \"100\"\n          only_with_header: \"x-fault\""), text)
        XCTAssertEqual(text.components(separatedBy: "fault:").count, 3, text)
        // Unsupported parts are named.
        fault.clearDelay()
        fault.maxActiveFaults = Google_Protobuf_UInt32Value(10)
        route.typedPerFilterConfig["envoy.filters.http.fault"] = Build.any(fault)
        r = resources(route: route)
        r.listeners["web"] = filtersListener()
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("routes[0].typed_per_filter_config[envoy.filters.http.fault].max_active_faults is not supported"), "\(e)")
        }
        // A per-route config for a filter the listener does not have.
        r.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc"))
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("typed_per_filter_config[envoy.filters.http.fault]: type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault is not supported"), "\(e)")
        }
        // The router must stay last.
        let h2 = Build.hcm(rds: "rc") { h in
            var f = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
            f.name = "fault"
            f.typedConfig = Build.any(HTTPFault())
            h.httpFilters.append(f)
        }
        r.listeners["web"] = Build.listener("web", port: 8080, filter: h2)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("http_filters[0]: the router must be the last filter"), "\(e)")
        }
    }

    func testLocalRateLimitPerRoute() throws {
        var rl = LocalRateLimit()
        rl.statPrefix = "rl"
        rl.tokenBucket.maxTokens = 20
        rl.tokenBucket.tokensPerFill = Google_Protobuf_UInt32Value(5)
        rl.tokenBucket.fillInterval = Google_Protobuf_Duration(seconds: 0, nanos: 500_000_000)
        var on = Envoy_Config_Core_V3_RuntimeFractionalPercent()
        on.runtimeKey = "local_rate_limit_enabled"
        on.defaultValue = Self.fraction(100)
        rl.filterEnabled = on
        rl.filterEnforced = on
        var route = Build.route(cluster: "app")
        route.typedPerFilterConfig["envoy.filters.http.local_ratelimit"] = Build.any(rl)
        var r = resources(route: route)
        r.listeners["web"] = filtersListener()
        XCTAssertTrue(try config(r).text.contains("rate_limit:\n          per_second: 10\n          burst: 20"))
        // Not enforced (Envoy's default: 0 %): it only counts, so no bucket.
        rl.clearFilterEnforced()
        r.routes["rc"]!.virtualHosts[0].routes[0].typedPerFilterConfig["envoy.filters.http.local_ratelimit"] = Build.any(rl)
        XCTAssertFalse(try config(r).text.contains("rate_limit"))
        // 3 tokens every 7 s: not a whole number per second.
        rl.filterEnforced = on
        rl.tokenBucket.tokensPerFill = Google_Protobuf_UInt32Value(3)
        rl.tokenBucket.fillInterval = Google_Protobuf_Duration(seconds: 7)
        r.routes["rc"]!.virtualHosts[0].routes[0].typedPerFilterConfig["envoy.filters.http.local_ratelimit"] = Build.any(rl)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("token_bucket: 3 token(s) every 7000 ms is not a whole number per second"), "\(e)")
        }
        // A listener-wide bucket (shared by every route in Envoy): refused.
        rl.tokenBucket.fillInterval = Google_Protobuf_Duration(seconds: 1)
        r.listeners["web"] = filtersListener(rateLimit: rl)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("http_filters[1].typed_config.token_bucket: a listener-wide bucket is not supported"), "\(e)")
        }
    }

    func testFileAccessLog() throws {
        func listener(_ f: FileAccessLog?, name: String = "envoy.access_loggers.file") -> Envoy_Config_Listener_V3_Listener {
            Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc") { h in
                if let f {
                    var l = Envoy_Config_Accesslog_V3_AccessLog()
                    l.name = name
                    l.typedConfig = Build.any(f)
                    h.accessLog = [l]
                }
            })
        }
        var r = resources()
        var f = FileAccessLog()
        f.path = "/dev/stdout"
        r.listeners["web"] = listener(f)
        XCTAssertTrue(try config(r).text.contains("access_log:\n      path: \"stdout\"\n      format: \"text\""))
        f.path = "/var/log/web.log"
        f.logFormat.textFormatSource.inlineString = "%REQ(:METHOD)% %RESPONSE_CODE% %UPSTREAM_HOST%\n"
        r.listeners["web"] = listener(f)
        XCTAssertTrue(try config(r).text.contains("path: \"/var/log/web.log\"\n      format: \"%REQ(:METHOD)% %RESPONSE_CODE% %UPSTREAM_HOST%\""))
        // A command Remora does not know: the loader's error.
        f.logFormat.textFormatSource.inlineString = "%DOWNSTREAM_LOCAL_ADDRESS%\n"
        r.listeners["web"] = listener(f)
        guard case .config(let doc) = try Translator().translate(r), case .failure(let e) = ConfigLoader.parse(yaml: doc.text, file: "t") else {
            return XCTFail("accepted")
        }
        XCTAssertTrue("\(e)".contains("unknown access log command %DOWNSTREAM_LOCAL_ADDRESS%"), "\(e)")
        // JSON formats and filters: named.
        f.logFormat.jsonFormat = Google_Protobuf_Struct()
        r.listeners["web"] = listener(f)
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("access_log[0].typed_config.log_format.json_format is not supported"), "\(e)")
        }
        r.listeners["web"] = Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc") { h in
            var l = Envoy_Config_Accesslog_V3_AccessLog()
            l.name = "f"
            l.filter = Data([0x0a, 0x00])
            l.typedConfig = Build.any(FileAccessLog())
            h.accessLog = [l]
        })
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("access_log[0].filter is not supported"), "\(e)")
        }
    }

    func testVirtualHostAndRouteConfigurationHeaderChangesApplyToEachRoute() throws {
        func option(_ k: String, _ v: String, overwrite: Bool = true) -> Envoy_Config_Core_V3_HeaderValueOption {
            var o = Envoy_Config_Core_V3_HeaderValueOption()
            o.header.key = k
            o.header.value = v
            o.appendAction = overwrite ? .overwriteIfExistsOrAdd : .appendIfExistsOrAdd
            return o
        }
        var r = resources()
        var d = Envoy_Config_Route_V3_Route()
        d.match.path = "/direct"
        d.directResponse.status = 204
        var routed = Build.route(cluster: "app")
        routed.requestHeadersToAdd = [option("x-route", "1")]
        r.routes["rc"]!.virtualHosts[0].routes = [d, routed]
        r.routes["rc"]!.virtualHosts[0].requestHeadersToAdd = [option("x-vhost", "v", overwrite: false)]
        r.routes["rc"]!.virtualHosts[0].responseHeadersToRemove = ["Server"]
        r.routes["rc"]!.responseHeadersToAdd = [option("x-mesh", "remora")]
        r.routes["rc"]!.requestHeadersToRemove = ["x-internal"]
        let text = try config(r).text
        XCTAssertTrue(text.contains("""
                direct_response:
                  status: 204
                response_headers:
                  set:
                    x-mesh: "remora"
                  remove: [ "server" ]
        """), text)
        XCTAssertTrue(text.contains("""
                request_headers:
                  set:
                    x-route: "1"
                  add:
                    x-vhost: "v"
                  remove: [ "x-internal" ]
                response_headers:
        """), text)
        // The same header at two levels: which wins is Envoy's ordering; refused.
        r.routes["rc"]!.virtualHosts[0].routes[1].requestHeadersToAdd = [option("x-vhost", "r")]
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("header x-vhost changed twice (route, virtual host and route configuration levels together) is not supported"), "\(e)")
        }
        r.routes["rc"]!.virtualHosts[0].routes[1].requestHeadersToAdd = [option("x-internal", "r")]
        XCTAssertThrowsError(try Translator().translate(r)) { e in
            XCTAssertTrue("\(e)".contains("header x-internal both added and removed"), "\(e)")
        }
    }

    /// A route as istiod sends it: no timeout (0s), its default retry policy with the previous_hosts
    /// predicate, zero max_stream_duration, a decorator and metadata.
    static func istioRoute(cluster: String) -> Envoy_Config_Route_V3_Route {
        var r = Build.route(cluster: cluster, name: "default")
        r.route.timeout = Google_Protobuf_Duration(seconds: 0)
        var rp = Envoy_Config_Route_V3_RetryPolicy()
        rp.retryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        rp.numRetries = Google_Protobuf_UInt32Value(2)
        var hp = Envoy_Config_Route_V3_RetryPolicy.RetryHostPredicate()
        hp.name = "envoy.retry_host_predicates.previous_hosts"
        hp.typedConfig = Google_Protobuf_Any()
        hp.typedConfig.typeURL = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        rp.retryHostPredicate = [hp]
        rp.hostSelectionRetryMaxAttempts = 5
        rp.retriableStatusCodes = [503]
        r.route.retryPolicy = rp
        var msd = Envoy_Config_Route_V3_RouteAction.MaxStreamDuration()
        msd.maxStreamDuration = Google_Protobuf_Duration(seconds: 0)
        msd.grpcTimeoutHeaderMax = Google_Protobuf_Duration(seconds: 0)
        r.route.maxStreamDuration = msd
        r.decorator = Data([0x0a, 0x03, 0x61, 0x70, 0x70])     // operation: "app"
        r.metadata = Data([0x0a, 0x00])
        return r
    }

    func testIstioDefaultRouteIsAccepted() throws {
        let text = try config(resources(route: Self.istioRoute(cluster: "app"))).text
        for want in ["timeout: \"0ms\"", "attempts: 3", "status_codes: [ 503 ]", "\"connect-failure\", \"refused-stream\", \"unavailable\""] {
            XCTAssertTrue(text.contains(want), "\(want) not in\n\(text)")
        }
        // Istio's endpoints carry metadata (labels, tlsMode): ignored.
        var res = resources(route: Self.istioRoute(cluster: "app"))
        res.endpoints["app"]!.endpoints[0].lbEndpoints[0].metadata = Data([0x0a, 0x00])
        res.endpoints["app"]!.endpoints[0].metadata = Data([0x0a, 0x00])
        XCTAssertTrue(try config(res).text.contains("endpoints: [ \"127.0.0.1:9000\" ]"))
        // Another host predicate, or a real stream limit: named.
        var r = Self.istioRoute(cluster: "app")
        r.route.retryPolicy.retryHostPredicate[0].typedConfig.typeURL = "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate"
        XCTAssertThrowsError(try Translator().translate(resources(route: r))) { e in
            XCTAssertTrue("\(e)".contains("retry_policy.retry_host_predicate[0] (envoy.retry_host_predicates.previous_hosts): only envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate is supported"), "\(e)")
        }
        r = Self.istioRoute(cluster: "app")
        r.route.maxStreamDuration.grpcTimeoutHeaderMax = Google_Protobuf_Duration(seconds: 30)
        XCTAssertThrowsError(try Translator().translate(resources(route: r))) { e in
            XCTAssertTrue("\(e)".contains("max_stream_duration.grpc_timeout_header_max: only 0 is supported"), "\(e)")
        }
    }

    func testAClusterWithNoHealthyEndpointAnswers503LikeEnvoy() throws {
        var r = resources()
        r.endpoints["app"] = Build.cla("app", [("127.0.0.1", 9000, .unhealthy)])
        let text = try config(r).text
        XCTAssertTrue(text.contains("status: 503"), text)
        XCTAssertFalse(text.contains("clusters:\n  - name"), text)
    }

    func testNamesAreMadeRemoraNames() {
        var n = NameMap()
        XCTAssertEqual(n.cluster("outbound|80||svc.ns.svc.cluster.local"), "outbound_80__svc.ns.svc.cluster.local")
        XCTAssertEqual(n.cluster("a/b"), "a_b")
        XCTAssertEqual(n.cluster("a_b"), "a_b_2")
        XCTAssertEqual(n.clusterName("a/b"), "a_b")
    }

    func testYAMLQuotesEverythingItIsGiven() {
        let doc = YAMLNode.map([("k", .string("a: b # c\n\"*&")), ("l", .list([.map([("x", .int(1)), ("y", .bool(true))])]))])
        XCTAssertEqual(doc.text, "k: \"a: b # c\\n\\\"*&\"\nl:\n  - x: 1\n    y: true\n")
    }
}

final class ADSStateTests: XCTestCase {
    func node() -> XDSNode { var n = XDSNode(); n.id = "n1"; n.cluster = "c"; return n }

    func sends(_ a: [ADSState.Action]) -> [DiscoveryRequest] {
        a.compactMap { if case .send(let r) = $0 { r } else { nil } }
    }

    func testWildcardCDSAndLDSThenEDSAndRDSByNameACKedByVersionAndNonce() {
        var s = ADSState(node: node())
        let first = sends(s.streamStarted())
        XCTAssertEqual(first.map(\.typeURL), [XDSType.cluster.rawValue, XDSType.listener.rawValue])
        XCTAssertEqual(first.map(\.resourceNames), [[], []])
        XCTAssertEqual(first[0].node.id, "n1")

        var a = s.receive(Build.response(.cluster, "c1", nonce: "1", [Build.edsCluster("app")]))
        var r = sends(a)
        XCTAssertEqual(r.count, 2)
        XCTAssertEqual(r[0].typeURL, XDSType.cluster.rawValue)
        XCTAssertEqual(r[0].versionInfo, "c1")
        XCTAssertEqual(r[0].responseNonce, "1")
        XCTAssertFalse(r[0].hasErrorDetail)
        XCTAssertEqual(r[1].typeURL, XDSType.endpoint.rawValue)
        XCTAssertEqual(r[1].resourceNames, ["app"])

        a = s.receive(Build.response(.endpoint, "e1", nonce: "2", [Build.cla("app", [("127.0.0.1", 9000, .healthy)])]))
        a = s.receive(Build.response(.listener, "l1", nonce: "3", [Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc"))]))
        r = sends(a)
        XCTAssertEqual(r.map(\.typeURL), [XDSType.listener.rawValue, XDSType.route.rawValue])
        XCTAssertEqual(r[1].resourceNames, ["rc"])
        a = s.receive(Build.response(.route, "r1", nonce: "4", [Build.routeConfig("rc", [Build.route(cluster: "app")])]))
        XCTAssertTrue(a.contains { if case .publish = $0 { true } else { false } }, "\(a)")
        XCTAssertEqual(sends(a).first?.versionInfo, "r1")
        XCTAssertEqual(s.acks, 4)
        XCTAssertEqual(s.nacks, 0)
    }

    func testInvalidResponseIsNACKedWithThePreviousVersionAndTheStateKept() {
        var s = ADSState(node: node())
        _ = s.streamStarted()
        _ = s.receive(Build.response(.cluster, "1", nonce: "a", [Build.edsCluster("app")]))
        _ = s.receive(Build.response(.endpoint, "1", nonce: "b", [Build.cla("app", [("127.0.0.1", 9000, .healthy)])]))
        _ = s.receive(Build.response(.listener, "1", nonce: "c", [Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc"))]))
        let good = s.receive(Build.response(.route, "1", nonce: "d", [Build.routeConfig("rc", [Build.route(cluster: "app")])]))
        XCTAssertTrue(good.contains { if case .publish = $0 { true } else { false } })
        let published = s.published
        // A route to an unknown cluster.
        var validated = Build.routeConfig("rc", [Build.route(cluster: "gone")])
        validated.validateClusters = Google_Protobuf_BoolValue(true)
        let bad = s.receive(Build.response(.route, "2", nonce: "e", [validated]))
        let r = sends(bad)
        XCTAssertEqual(r.count, 1)
        XCTAssertEqual(r[0].versionInfo, "1", "a NACK carries the last accepted version")
        XCTAssertEqual(r[0].responseNonce, "e")
        XCTAssertEqual(r[0].resourceNames, ["rc"])
        XCTAssertTrue(r[0].errorDetail.message.contains("unknown cluster gone"), r[0].errorDetail.message)
        XCTAssertEqual(r[0].errorDetail.code, 3)
        XCTAssertFalse(bad.contains { if case .publish = $0 { true } else { false } })
        XCTAssertEqual(s.published, published)
        XCTAssertEqual(s.versions[.route], "1")
        // A new stream resubscribes with the accepted versions.
        let again = sends(s.streamStarted())
        XCTAssertEqual(again.map(\.typeURL), [XDSType.cluster, .listener, .endpoint, .route].map(\.rawValue))
        XCTAssertEqual(again.map(\.versionInfo), ["1", "1", "1", "1"])
        XCTAssertEqual(again.map(\.responseNonce), ["", "", "", ""])
    }

    func testConfigRemoraRefusesIsNACKedWithTheLoadersError() {
        var s = ADSState(node: node())
        _ = s.streamStarted()
        _ = s.receive(Build.response(.cluster, "1", nonce: "a", [Build.edsCluster("app")]))
        _ = s.receive(Build.response(.endpoint, "1", nonce: "b", [Build.cla("app", [("127.0.0.1", 9000, .healthy)])]))
        // Two listeners on one address: valid xDS resources, refused by Remora's loader.
        let a = s.receive(Build.response(.listener, "1", nonce: "c", [
            Build.listener("a", port: 8080, filter: Build.hcm(inline: Build.routeConfig("x", [Build.route(cluster: "app")]))),
            Build.listener("b", port: 8080, filter: Build.hcm(inline: Build.routeConfig("y", [Build.route(cluster: "app")]))),
        ]))
        let r = sends(a)
        XCTAssertTrue(r.first?.hasErrorDetail == true, "\(a)")
        XCTAssertTrue(r.first?.errorDetail.message.contains("Remora refuses") == true, r.first?.errorDetail.message ?? "")
    }

    func testSDSIsRequestedForTheNamedSecretsAndWrittenBeforeThePublish() {
        var t = Translator()
        t.secretsDirectory = "/s"
        var s = ADSState(node: node(), translator: t)
        _ = s.streamStarted()
        var c = Build.edsCluster("app")
        var u = UpstreamTLS()
        u.commonTlsContext.tlsCertificateSdsSecretConfigs = [TranslateTests.sds("default")]
        u.commonTlsContext.validationContextSdsSecretConfig = TranslateTests.sds("ROOTCA")
        c.transportSocket = TranslateTests.transportSocket(u)
        var a = s.receive(Build.response(.cluster, "1", nonce: "a", [c]))
        XCTAssertEqual(sends(a).map(\.typeURL), [XDSType.cluster, .endpoint, .secret].map(\.rawValue))
        XCTAssertEqual(sends(a).last?.resourceNames, ["ROOTCA", "default"])
        _ = s.receive(Build.response(.endpoint, "1", nonce: "b", [Build.cla("app", [("127.0.0.1", 9000, .healthy)])]))
        _ = s.receive(Build.response(.listener, "1", nonce: "c", [Build.listener("web", port: 8080, filter: Build.hcm(inline: Build.routeConfig("x", [Build.route(cluster: "app")])))]))
        XCTAssertEqual(s.pending, "SDS secrets ROOTCA, default")
        a = s.receive(Build.response(.secret, "1", nonce: "d", [TranslateTests.certSecret("default"), TranslateTests.caSecret("ROOTCA")]))
        let kinds = a.map { a -> String in
            switch a { case .send, .sendDelta: "send"; case .writeSecrets(let f): "write \(f.count)"; case .publish: "publish"; case .log: "log" }
        }
        XCTAssertEqual(kinds.filter { $0 != "log" }, ["send", "write 3", "publish"])
        XCTAssertEqual(sends(a).first?.versionInfo, "1")
        XCTAssertEqual(sends(a).first?.resourceNames, ["ROOTCA", "default"])
        // A rotated secret: the files change, the configuration (which names them) does not.
        a = s.receive(Build.response(.secret, "2", nonce: "e", [TranslateTests.certSecret("default", key: TranslateTests.keyPEM + "\n"),
                                                               TranslateTests.caSecret("ROOTCA")]))
        XCTAssertEqual(a.compactMap { if case .writeSecrets(let f) = $0 { f.map(\.path) } else { nil } }, [["/s/default.key.pem"]])
        XCTAssertFalse(a.contains { if case .publish = $0 { true } else { false } })
        // Unchanged: nothing written.
        a = s.receive(Build.response(.secret, "3", nonce: "f", [TranslateTests.certSecret("default", key: TranslateTests.keyPEM + "\n"),
                                                               TranslateTests.caSecret("ROOTCA")]))
        XCTAssertFalse(a.contains { if case .writeSecrets = $0 { true } else { false } })
        // A new stream asks for them again, with the accepted version.
        let again = sends(s.streamStarted())
        XCTAssertEqual(again.last?.typeURL, XDSType.secret.rawValue)
        XCTAssertEqual(again.last?.versionInfo, "3")
    }

    func deltas(_ a: [ADSState.Action]) -> [DeltaDiscoveryRequest] {
        a.compactMap { if case .sendDelta(let r) = $0 { r } else { nil } }
    }

    func testDeltaSubscribesUnsubscribesAndAnswersEachNonce() {
        var s = ADSState(node: node())
        s.mode = .delta
        var r = deltas(s.streamStarted())
        XCTAssertEqual(r.map(\.typeURL), [XDSType.cluster, .listener].map(\.rawValue))
        XCTAssertEqual(r.map(\.resourceNamesSubscribe), [[], []], "LDS and CDS: wildcard")
        XCTAssertEqual(r[0].node.id, "n1")
        var a = s.receive(delta: Build.delta(.cluster, nonce: "1", [("app", "c1", Build.edsCluster("app")), ("old", "c1", Build.edsCluster("old"))]))
        r = deltas(a)
        XCTAssertEqual(r.map(\.typeURL), [XDSType.cluster, .endpoint].map(\.rawValue))
        XCTAssertEqual(r[0].responseNonce, "1")
        XCTAssertFalse(r[0].hasErrorDetail)
        XCTAssertEqual(r[1].resourceNamesSubscribe, ["app", "old"])
        _ = s.receive(delta: Build.delta(.endpoint, nonce: "2", [("app", "e1", Build.cla("app", [("127.0.0.1", 9000, .healthy)])),
                                                                ("old", "e1", Build.cla("old", [("127.0.0.1", 9001, .healthy)]))]))
        a = s.receive(delta: Build.delta(.listener, nonce: "3", [("web", "l1", Build.listener("web", port: 8080, filter: Build.hcm(rds: "rc")))]))
        XCTAssertEqual(deltas(a).last?.resourceNamesSubscribe, ["rc"])
        a = s.receive(delta: Build.delta(.route, nonce: "4", [("rc", "r1", Build.routeConfig("rc", [Build.route(cluster: "app")]))]))
        XCTAssertTrue(a.contains { if case .publish = $0 { true } else { false } }, "\(a)")
        // A removed cluster: its assignment is unsubscribed and dropped.
        a = s.receive(delta: Build.delta(.cluster, nonce: "5", [(String, String, Envoy_Config_Cluster_V3_Cluster)](), removed: ["old"]))
        r = deltas(a)
        XCTAssertEqual(r.count, 2)
        XCTAssertEqual(r[0].responseNonce, "5")
        XCTAssertEqual(r[1].typeURL, XDSType.endpoint.rawValue)
        XCTAssertEqual(r[1].resourceNamesSubscribe, [])
        XCTAssertEqual(r[1].resourceNamesUnsubscribe, ["old"])
        XCTAssertNil(s.resources.clusters["old"])
        XCTAssertNil(s.resources.endpoints["old"])
        XCTAssertEqual(s.resourceVersions[.cluster], ["app": "c1"])
        // A route to an unknown (validated) cluster: NACK with the nonce and error_detail; nothing changes.
        var bad = Build.routeConfig("rc", [Build.route(cluster: "gone")])
        bad.validateClusters = Google_Protobuf_BoolValue(true)
        let published = s.published
        a = s.receive(delta: Build.delta(.route, nonce: "6", [("rc", "r2", bad)]))
        r = deltas(a)
        XCTAssertEqual(r.count, 1)
        XCTAssertEqual(r[0].responseNonce, "6")
        XCTAssertTrue(r[0].errorDetail.message.contains("unknown cluster gone"), r[0].errorDetail.message)
        XCTAssertEqual(s.resourceVersions[.route], ["rc": "r1"])
        XCTAssertEqual(s.published, published)
        // A resource named unlike its body is refused.
        a = s.receive(delta: Build.delta(.route, nonce: "7", [("other", "r3", Build.routeConfig("rc", [Build.route(cluster: "app")]))]))
        XCTAssertTrue(deltas(a).first?.errorDetail.message.contains("resource other carries a resource named rc") == true, "\(a)")
        // A new stream: the accepted versions, the names subscribed.
        r = deltas(s.streamStarted())
        XCTAssertEqual(r.map(\.typeURL), [XDSType.cluster, .listener, .endpoint, .route].map(\.rawValue))
        XCTAssertEqual(r[0].initialResourceVersions, ["app": "c1"])
        XCTAssertEqual(r[2].resourceNamesSubscribe, ["app"])
        XCTAssertEqual(r[2].initialResourceVersions, ["app": "e1"])
        XCTAssertEqual(r[3].initialResourceVersions, ["rc": "r1"])
        XCTAssertEqual(r.map(\.responseNonce), ["", "", "", ""])
    }

    func testGRPCFraming() {
        var f = GRPCFramer()
        let framed = GRPCFramer.frame([1, 2, 3]) + GRPCFramer.frame([])
        framed.withUnsafeBytes { f.append(UnsafeRawBufferPointer(rebasing: $0[0..<4])) }
        XCTAssertEqual(f.next(), .none)
        framed.withUnsafeBytes { f.append(UnsafeRawBufferPointer(rebasing: $0[4...])) }
        XCTAssertEqual(f.next(), .message([1, 2, 3]))
        XCTAssertEqual(f.next(), .message([]))
        XCTAssertEqual(f.next(), .none)
        [UInt8]([1, 0, 0, 0, 0]).withUnsafeBytes { f.append($0) }
        XCTAssertEqual(f.next(), .error("compressed gRPC messages are not supported"))
    }
}
