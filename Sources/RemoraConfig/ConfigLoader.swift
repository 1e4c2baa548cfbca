import Glibc
import RemoraCore
import RemoraPolicy
import RemoraRouting

public enum ConfigLoader {
    /// Reads and validates a YAML file. Errors carry `file` = path as given.
    public static func load(path: String) -> Result<Config, ConfigErrors> {
        read(path: path).flatMap { parse(bytes: $0, file: path) }
    }

    /// The whole file, or the error that says why it cannot be read.
    public static func read(path: String) -> Result<[UInt8], ConfigErrors> {
        let (bytes, error) = readFile(path)
        guard error == 0 else {
            let reason = String(cString: strerror(error))
            return .failure(ConfigErrors([ConfigError(file: path, line: 0, path: "", message: "cannot read the file: \(reason)")]))
        }
        return .success(bytes)
    }

    /// Validates YAML bytes (as read by `read`); `file` is used in error messages.
    public static func parse(bytes: [UInt8], file: String) -> Result<Config, ConfigErrors> {
        bytes.withUnsafeBufferPointer { decode($0, file: file) }
    }

    /// Validates YAML text; `file` is used in error messages (e.g. "<embedded>").
    public static func parse(yaml: String, file: String) -> Result<Config, ConfigErrors> {
        var yaml = yaml
        return yaml.withUTF8 { decode($0, file: file) }
    }

    private static func decode(_ bytes: UnsafeBufferPointer<UInt8>, file: String) -> Result<Config, ConfigErrors> {
        switch YAML.parse(bytes) {
        case .failure(let e):
            return .failure(ConfigErrors([ConfigError(file: file, line: e.line, path: "", message: e.message)]))
        case .success(let root):
            let d = Decoder(file: file)
            let config = Schema(d).config(root)
            if let config, d.errors.isEmpty { return .success(config) }
            return .failure(ConfigErrors(d.sortedErrors))
        }
    }

    /// Gives errors found after decoding, which know only the path of their field (route
    /// compilation, endpoint resolution, what a reload may not change such as `workers`), the
    /// file they came from and the line of that field in `yaml`: the deepest node of the path
    /// found there. Errors that already have a line keep it.
    public static func locate(_ errors: ConfigErrors, in yaml: String, file: String) -> ConfigErrors {
        var yaml = yaml
        let root: Node? = yaml.withUTF8 { if case .success(let r) = YAML.parse($0) { r } else { nil } }
        return ConfigErrors(errors.errors.map { e in
            var e = e
            if e.file.isEmpty { e.file = file }
            if e.line == 0, let root, !e.path.isEmpty { e.line = line(of: Substring(e.path), in: root) }
            return e
        })
    }

    /// The line of `path` (`listeners[0].address`, or with names for list items:
    /// `clusters.db.endpoints`, `listeners.web.routes.api.backends`) under `node`, or of the
    /// deepest part of it that exists.
    static func line(of path: Substring, in node: Node) -> Int {
        var rest = path
        if rest.first == "." { rest = rest.dropFirst() }
        if rest.isEmpty { return node.line }
        // The longest key or item name that `rest` starts with, followed by ".", "[" or the end.
        func matches(_ name: String) -> Bool {
            guard rest.hasPrefix(name) else { return false }
            let after = rest.dropFirst(name.count).first
            return after == nil || after == "." || after == "["
        }
        switch node.value {
        case .map(let entries):
            if let e = entries.filter({ matches($0.key) }).max(by: { $0.key.count < $1.key.count }) {
                return line(of: rest.dropFirst(e.key.count), in: e.value)
            }
            // A listener's routes may sit under its virtual hosts (compiled as one host).
            if rest.hasPrefix("routes."), let hosts = entries.first(where: { $0.key == "virtual_hosts" }),
               case .list(let items) = hosts.value.value {
                for h in items {
                    let l = line(of: rest, in: h)
                    if l != h.line { return l }
                }
            }
        case .list(let items):
            if rest.first == "[", let close = rest.firstIndex(of: "]"), let i = Int(rest[rest.index(after: rest.startIndex)..<close]),
               items.indices.contains(i) {
                return line(of: rest[rest.index(after: close)...], in: items[i])
            }
            let named = items.compactMap { item -> (String, Node)? in
                guard case .map(let entries) = item.value, let n = entries.first(where: { $0.key == "name" }) else { return nil }
                return (n.value.text, item)
            }
            if let (name, item) = named.filter({ matches($0.0) }).max(by: { $0.0.count < $1.0.count }) {
                return line(of: rest.dropFirst(name.count), in: item)
            }
        case .scalar:
            break
        }
        return node.line
    }

    /// The whole file, or the `errno` of what failed.
    private static func readFile(_ path: String) -> (bytes: [UInt8], errno: Int32) {
        guard let f = fopen(path, "rb") else { return ([], errno) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            bytes += chunk[..<n]
            if n < chunk.count { return ferror(f) == 0 ? (bytes, 0) : ([], errno) }
        }
    }
}

/// `s` as an IP literal in its canonical text (inet_ntop's, as the proxy prints peer addresses), or
/// nil when it is not one.
func canonicalIP(_ s: String) -> String? {
    var buf = [UInt8](repeating: 0, count: 16)
    var text = [CChar](repeating: 0, count: 64)
    for family in [AF_INET, AF_INET6] where inet_pton(family, s, &buf) == 1 {
        guard inet_ntop(family, buf, &text, socklen_t(text.count)) != nil else { return nil }
        return String(cString: text)
    }
    return nil
}

/// The config schema: one decode function per model type, plus the cross-checks (unique names and
/// addresses, cluster references). A model value comes back even when some of its optional fields
/// were wrong; the loader only returns a `Config` when no error was reported at all.
private final class Schema {
    let d: Decoder
    var listenerNames: [String: Int] = [:]
    var clusterNames: [String: Int] = [:]
    var addresses: [HostPort: Int] = [:]

    init(_ d: Decoder) { self.d = d }

    func config(_ root: Node?) -> Config? {
        guard let root, !root.isNull else {
            d.fail(1, "listeners", "no listeners")
            return nil
        }
        guard let m = d.mapping(root, "", keys: ["admin", "workers", "drain_timeout", "listeners", "clusters",
                                                   "overload", "node", "max_connections", "sidecar"]) else { return nil }
        let admin = m.optional("admin", admin)
        let workers = m.optional("workers") { d.int($0, $1, in: 0...256) }
        let drainTimeout = m.optional("drain_timeout") { d.duration($0, $1) }
        // Clusters first, so that listeners can check their references.
        let clusters = m.optional("clusters") { d.list($0, $1, cluster) }
        if !m.has("listeners") && m.nodes["sidecar"] == nil { d.fail(m.line, "listeners", "no listeners") }
        let listeners = m.optional("listeners") { d.list($0, $1, ifEmpty: "no listeners", listener) }
        let overload = m.optional("overload", overload)
        let node = m.optional("node", nodeName)
        let maxConnections = m.optional("max_connections", connectionLimit)
        let sidecar = m.nodes["sidecar"].flatMap { $0.isNull ? SidecarConfig() : self.sidecar($0, "sidecar") }
        guard let listeners = listeners ?? (sidecar != nil ? [] : nil) else { return nil }
        var c = Config(admin: admin, workers: workers ?? 0, drainTimeout: drainTimeout ?? 5_000,
                       listeners: listeners, clusters: clusters ?? [], overload: overload, node: node)
        c.maxConnections = maxConnections
        if let sidecar {
            let clash = c.addSidecar(sidecar)
            if !clash.isEmpty {
                d.fail(m.line, "sidecar", "the sidecar's listeners and clusters need these names, which are taken: "
                       + clash.joined(separator: ", "))
            }
            for (i, message) in c.applySidecarMTLS(sidecar) {
                d.fail(Self.line(m.nodes["sidecar"], ["services", i, "mtls"]) ?? m.line, "sidecar.services[\(i)].mtls", message)
            }
        }
        return c
    }

    /// The line of the node at `path` (map keys and list indexes) under `node`, if it is there.
    static func line(_ node: Node?, _ path: [any Sendable]) -> Int? {
        var n = node
        for step in path {
            switch (n?.value, step) {
            case (.map(let entries)?, let key as String): n = entries.first { $0.key == key }?.value
            case (.list(let items)?, let i as Int): n = i < items.count ? items[i] : nil
            default: return nil
            }
        }
        return n?.line
    }

    /// `node: NAME`: 1 ... 128 visible ASCII characters.
    func nodeName(_ n: Node, _ p: String) -> String? {
        guard let s = d.string(n, p) else { return nil }
        guard (1...128).contains(s.utf8.count), s.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            d.fail(n.line, p, "expected 1 to 128 visible ASCII characters")
            return nil
        }
        return s
    }

    /// `overload: { refuse_streams_above: SIZE, refuse_connections_above: SIZE }`.
    func overload(_ n: Node, _ p: String) -> OverloadConfig? {
        guard let m = d.mapping(n, p, keys: ["refuse_streams_above", "refuse_connections_above"]) else { return nil }
        let range = (1 << 20)...(1 << 40)
        let streams = m.required("refuse_streams_above") { d.size($0, $1, in: range) }
        let conns = m.optional("refuse_connections_above") { d.size($0, $1, in: range) }
        guard let streams else { return nil }
        if let conns, conns < streams {
            d.fail(m.line, Fields.join(p, "refuse_connections_above"), "must be at least refuse_streams_above")
            return nil
        }
        return OverloadConfig(refuseStreamsAbove: streams, refuseConnectionsAbove: conns)
    }

    func admin(_ n: Node, _ p: String) -> AdminConfig? {
        guard let m = d.mapping(n, p, keys: ["address", "token"]) else { return nil }
        let token = m.optional("token", adminToken)
        return m.required("address", listenAddress).map { AdminConfig(address: $0, token: token) }
    }

    /// Visible ASCII, no spaces: it is sent as `authorization: Bearer TOKEN`.
    func adminToken(_ n: Node, _ p: String) -> String? {
        guard let t = d.string(n, p) else { return nil }
        guard !t.isEmpty, t.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            d.fail(n.line, p, "expected a non-empty token of visible ASCII characters without spaces (the value is not shown)")
            return nil
        }
        return t
    }

    func listener(_ n: Node, _ p: String) -> ListenerConfig? {
        guard var m = d.mapping(n, p, keys: ["name", "address", "protocol", "request_header_timeout",
                                             "max_request_header_bytes", "idle_timeout", "http2", "routes",
                                             "virtual_hosts", "cluster", "request_timeout", "max_request_body",
                                             "headers_with_underscores", "per_connection_buffer_limit", "access_log",
                                             "tracing", "tls", "path_normalization", "authorization",
                                             "max_connections", "sni", "sniff_timeout", "max_sniff_bytes",
                                             "tunnel_idle_timeout", "connect"])
        else { return nil }
        let name = m.required("name") { self.name($0, $1, "listener", &listenerNames) }
        let address = m.required("address", listenAddress)
        let proto: ListenerProtocol? = m.has("protocol") ? m.optional("protocol") { n, p in
            d.value(n, p, "http, tcp or tls") { ["http": .http, "tcp": .tcp, "tls": .tls][$0] }
        } : .http
        let httpOnly = ["routes", "virtual_hosts", "request_header_timeout", "max_request_header_bytes", "http2", "tracing",
                        "request_timeout", "max_request_body", "headers_with_underscores", "per_connection_buffer_limit",
                        "path_normalization", "tunnel_idle_timeout", "connect"]
        switch proto {
        case .tcp:
            m.forbid(httpOnly, "only allowed on an http listener")
            m.forbid(["sni", "sniff_timeout", "max_sniff_bytes"], "only allowed on a tls listener")
        case .tls:
            m.forbid(httpOnly, "only allowed on an http listener")
            m.forbid(["tls"], "not allowed on a tls listener (it passes TLS through by SNI; to terminate TLS, put tls: on an http or tcp listener)")
        case .http:
            m.forbid(["cluster"], "only allowed on a tcp listener or a tls listener (an http listener uses routes)")
            m.forbid(["sni", "sniff_timeout", "max_sniff_bytes"], "only allowed on a tls listener")
        case .sidecarOutbound, .sidecarInbound, nil: break // bad protocol, already reported: check what is there, demand nothing
        }
        if m.has("routes") { m.forbid(["virtual_hosts"], "not allowed with routes (routes is one virtual host for any domain)") }
        let headerTimeout = m.optional("request_header_timeout") { d.duration($0, $1, positive: true) }
        let maxHeaderBytes = m.optional("max_request_header_bytes") { d.size($0, $1, in: 1024...1024 * 1024) }
        let idleTimeout = m.optional("idle_timeout") { d.duration($0, $1, positive: true) }
        let http2 = m.optional("http2", http2Settings)
        let requestTimeout = m.optional("request_timeout") { d.duration($0, $1) }
        let maxBody = m.optional("max_request_body") { d.size($0, $1, in: 0...(1 << 50)) }
        let underscores: HeadersWithUnderscores? = m.optional("headers_with_underscores", d.oneOf)
        let bufferLimit = m.optional("per_connection_buffer_limit") { d.size($0, $1, in: (64 << 10)...(1 << 30)) }
        let accessLog = m.optional("access_log", accessLog)
        let tracing = m.optional("tracing", tracing)
        let tls = m.optional("tls", listenerTLS)
        let normalization = m.optional("path_normalization", pathNormalization)
        let authorization = m.optional("authorization") {
            authorizationPolicy($0, $1, tcp: proto == .tcp || proto == .tls, passthrough: proto == .tls)
        }
        let maxConnections = m.optional("max_connections", connectionLimit)
        let tunnelIdleTimeout = m.optional("tunnel_idle_timeout") { d.duration($0, $1) }   // issue 18
        let connect = m.optional("connect") { n, p -> ConnectConfig? in
            guard let c = d.mapping(n, p, keys: ["cluster"]) else { return nil }
            return c.required("cluster", clusterRef).map(ConnectConfig.init)
        }
        var names = ListenerNames()
        let routes = m.optional("routes") { d.list($0, $1) { route($0, $1, &names) } }
        let hosts = m.optional("virtual_hosts") { d.list($0, $1) { virtualHost($0, $1, &names) } }
        let cluster = proto == .tcp ? m.required("cluster", clusterRef) : m.optional("cluster", clusterRef)
        var sniNames: [String: Int] = [:]
        let sni = m.optional("sni") { d.list($0, $1, ifEmpty: "at least one entry (or leave sni out)") { sniRoute($0, $1, &sniNames) } }
        let sniffTimeout = m.optional("sniff_timeout") { d.duration($0, $1, positive: true) }
        let maxSniff = m.optional("max_sniff_bytes") { d.size($0, $1, in: 1024...65_536) }
        if proto == .tls && !m.has("sni") && !m.has("cluster") {
            d.fail(m.line, Fields.join(p, "sni"), "a tls listener needs sni routes, a default cluster, or both")
        }
        guard let name, let address else { return nil }
        var l = ListenerConfig(name: name, address: address, protocol: proto ?? .http,
                              requestHeaderTimeout: headerTimeout ?? 10_000, maxRequestHeaderBytes: maxHeaderBytes ?? 60 * 1024,
                              idleTimeout: idleTimeout ?? 60_000, http2: http2 ?? HTTP2Settings(),
                              virtualHosts: hosts ?? routes.map { [VirtualHostConfig(name: "default", routes: $0)] } ?? [],
                              cluster: cluster, requestTimeout: requestTimeout ?? 60_000,
                              maxRequestBodyBytes: maxBody.map(UInt64.init) ?? 1 << 30,
                              headersWithUnderscores: underscores ?? .drop, perConnectionBufferLimit: bufferLimit ?? 1 << 20,
                              accessLog: accessLog, tracing: tracing)
        l.tls = tls
        if let normalization { l.pathNormalization = normalization }
        l.authorization = authorization
        l.maxConnections = maxConnections
        l.sni = sni ?? []
        if let sniffTimeout { l.sniffTimeout = sniffTimeout }
        if let maxSniff { l.maxSniffBytes = maxSniff }
        if let tunnelIdleTimeout { l.tunnelIdleTimeout = tunnelIdleTimeout }
        l.connect = connect
        return l
    }

    /// `tls: { certificates: [{ cert, key }], alpn, client_ca, min_version, ticket_key_rotation,
    /// forward_client_cert, close_expired, allow_plaintext }` on a listener.
    func listenerTLS(_ n: Node, _ p: String) -> ListenerTLSConfig? {
        guard let m = d.mapping(n, p, keys: ["certificates", "alpn", "client_ca", "min_version", "ticket_key_rotation",
                                             "forward_client_cert", "close_expired", "allow_plaintext"]) else { return nil }
        let certs = m.required("certificates") {
            d.list($0, $1, ifEmpty: "at least one certificate is required") { n, p -> TLSCertificateFiles? in
                guard let m = d.mapping(n, p, keys: ["cert", "key"]) else { return nil }
                let cert = m.required("cert", filePath), key = m.required("key", filePath)
                guard let cert, let key else { return nil }
                return TLSCertificateFiles(cert: cert, key: key)
            }
        }
        let alpn = m.optional("alpn", alpnList)
        let ca = m.optional("client_ca", filePath)
        let minVersion: TLSVersion? = m.optional("min_version", d.oneOf)
        let rotation = m.optional("ticket_key_rotation") { n, p -> Millis? in
            guard let ms = d.duration(n, p) else { return nil }
            guard ms >= 60_000 && ms <= 7 * 86_400_000 else {
                d.fail(n.line, p, "must be between 1m and 168h, got \(n.text)")
                return nil
            }
            return ms
        }
        let forward = m.optional("forward_client_cert", d.bool)
        let closeExpired = m.optional("close_expired", d.bool)
        let allowPlaintext = m.optional("allow_plaintext", d.bool)
        guard let certs else { return nil }
        return ListenerTLSConfig(certificates: certs, alpn: alpn ?? ["h2", "http/1.1"], clientCA: ca,
                                 minVersion: minVersion ?? .tls12, ticketKeyRotation: rotation ?? 3_600_000,
                                 forwardClientCert: forward, closeExpired: closeExpired ?? true,
                                 allowPlaintext: allowPlaintext ?? false)
    }

    /// `tls: { ca, server_name, verify_san, cert, key, alpn, min_version, close_expired }` on a cluster.
    func clusterTLS(_ n: Node, _ p: String) -> ClusterTLSConfig? {
        guard var m = d.mapping(n, p, keys: ["ca", "server_name", "verify_san", "cert", "key", "alpn", "min_version",
                                             "close_expired"])
        else { return nil }
        if m.has("cert") != m.has("key") {
            d.fail(n.line, p, "cert and key go together (a client certificate needs its key)")
            m.forbid(["cert", "key"], "needs both cert and key")
        }
        let ca = m.optional("ca", filePath)
        let sni = m.optional("server_name") { n, p in
            d.value(n, p, "a DNS name") { s in
                !s.isEmpty && s.utf8.count < 256 && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-.".contains($0)) } ? s : nil
            }
        }
        let sans = m.optional("verify_san") { d.list($0, $1, ifEmpty: "at least one name (or leave verify_san out)", d.string) }
        let cert = m.optional("cert", filePath), key = m.optional("key", filePath)
        let alpn = m.optional("alpn", alpnList)
        let minVersion: TLSVersion? = m.optional("min_version", d.oneOf)
        let closeExpired = m.optional("close_expired", d.bool)
        return ClusterTLSConfig(ca: ca, serverName: sni, verifySAN: sans ?? [], cert: cert, key: key, alpn: alpn ?? [],
                                minVersion: minVersion ?? .tls12, closeExpired: closeExpired ?? true)
    }

    func filePath(_ n: Node, _ p: String) -> String? {
        d.value(n, p, "a file path") { $0.isEmpty || $0.utf8.contains(0) ? nil : $0 }
    }

    func alpnList(_ n: Node, _ p: String) -> [String]? {
        d.list(n, p, ifEmpty: "at least one protocol") { n, p in
            d.value(n, p, "h2 or http/1.1") { ["h2", "http/1.1"].contains($0) ? $0 : nil }
        }
    }

    /// `max_connections: N`, 1 ... 10_000_000.
    func connectionLimit(_ n: Node, _ p: String) -> Int? { d.int(n, p, in: 1...10_000_000) }

    /// `path_normalization: false` (every step off), or `{ remove_dot_segments: BOOL,
    /// decode_unreserved: BOOL, merge_slashes: BOOL, escaped_slashes: keep | reject | decode }`.
    func pathNormalization(_ n: Node, _ p: String) -> PathNormalization? {
        if case .scalar = n.value {
            guard let on = d.bool(n, p) else { return nil }
            return on ? PathNormalization() : .off
        }
        guard let m = d.mapping(n, p, keys: ["remove_dot_segments", "decode_unreserved", "merge_slashes", "escaped_slashes"])
        else { return nil }
        var out = PathNormalization()
        if let v = m.optional("remove_dot_segments", d.bool) { out.removeDotSegments = v }
        if let v = m.optional("decode_unreserved", d.bool) { out.decodeUnreserved = v }
        if let v = m.optional("merge_slashes", d.bool) { out.mergeSlashes = v }
        out.escapedSlashes = m.optional("escaped_slashes", d.oneOf)
        return out
    }

    /// `authorization: { action: allow | deny, rules: [RULE], deny: [RULE] }`: `deny` rules are
    /// checked first; `rules` are allow rules (`action: allow`, the default) or more deny rules.
    /// On a TCP listener a rule may only name principals, source CIDRs, server names and ports; on a
    /// tls (passthrough) listener not principals either (`passthrough`).
    func authorizationPolicy(_ n: Node, _ p: String, tcp: Bool, passthrough: Bool = false) -> AuthorizationPolicy? {
        guard let m = d.mapping(n, p, keys: ["action", "rules", "deny"]) else { return nil }
        let action = m.optional("action") { d.value($0, $1, "allow or deny") { ["allow", "deny"].contains($0) ? $0 : nil } }
        var names: [String: Int] = [:]
        let deny = m.optional("deny") { d.list($0, $1) { n, p in self.authorizationRule(n, p, tcp: tcp, passthrough: passthrough, names: &names) } }
        let rules = m.optional("rules") { d.list($0, $1) { n, p in self.authorizationRule(n, p, tcp: tcp, passthrough: passthrough, names: &names) } }
        func named(_ list: [AuthorizationRule]?, _ prefix: String) -> [AuthorizationRule] {
            (list ?? []).enumerated().map { i, r in
                var r = r
                if r.name.isEmpty { r.name = "\(prefix)-\(i)" }
                return r
            }
        }
        let denyRules = named(deny, "deny"), ruleList = named(rules, "rule")
        let all = denyRules + ruleList
        var seen: [String: Int] = [:]
        for r in all where seen.updateValue(0, forKey: r.name) != nil {
            d.fail(m.line, Fields.join(p, "rules"), "rule name \"\(r.name)\" is used twice in this policy")
        }
        return action == "deny" ? AuthorizationPolicy(allow: [], deny: denyRules + ruleList)
            : AuthorizationPolicy(allow: ruleList, deny: denyRules)
    }

    /// `{ name: NAME, from: { principals: [..], source_cidrs: [..] },
    ///    to: { methods: [..], paths: [{ exact | prefix | regex: .. }], headers: [..], server_names: [..] } }`.
    func authorizationRule(_ n: Node, _ p: String, tcp: Bool, passthrough: Bool, names: inout [String: Int]) -> AuthorizationRule? {
        guard let m = d.mapping(n, p, keys: ["name", "from", "to"]) else { return nil }
        let name = m.optional("name") { self.name($0, $1, "rule", &names) }
        var rule = AuthorizationRule(name: name ?? "")
        _ = m.optional("from") { n, p -> Bool? in
            guard var f = d.mapping(n, p, keys: ["principals", "source_cidrs"]) else { return nil }
            if passthrough {
                f.forbid(["principals"], "not allowed on a tls listener: it passes TLS through without terminating it, so no client "
                         + "certificate is verified and a connection has no identity (match server_names or source_cidrs, or "
                         + "terminate TLS with tls: and client_ca on a tcp listener)")
            }
            rule.principals = f.optional("principals") { d.list($0, $1) { n, p in
                d.value(n, p, #"a principal ("spiffe://…", a prefix ending in "*", or "*")"#) { $0.isEmpty ? nil : PrincipalMatch($0) }
            } } ?? []
            rule.sourceCIDRs = f.optional("source_cidrs") { d.list($0, $1) { n, p in
                d.value(n, p, #"an address or range like "10.0.0.0/8", "192.168.1.7" or "fd00::/8""#) { CIDR($0) }
            } } ?? []
            return true
        }
        _ = m.optional("to") { n, p -> Bool? in
            guard var t = d.mapping(n, p, keys: ["methods", "paths", "headers", "server_names", "ports"]) else { return nil }
            if tcp {
                t.forbid(["methods", "paths", "headers"],
                         "not allowed on a \(passthrough ? "tls" : "tcp") listener (its rules see connections, not requests)")
            } else {
                t.forbid(["ports"], "only allowed on tcp and tls listeners (the port a connection was going to)")
            }
            rule.ports = t.optional("ports") { d.list($0, $1, ifEmpty: "at least one port") { d.int($0, $1, in: 1...65535) } } ?? []
            rule.methods = t.optional("methods") { d.list($0, $1) { d.checked($0, $1) { RouteSyntax.method($0) } } } ?? []
            rule.paths = t.optional("paths") { d.list($0, $1, authorizationPath) } ?? []
            rule.headers = t.optional("headers") { d.list($0, $1) { n, p -> AuthorizationHeaderMatch? in
                guard let f = fieldMatch(n, p, header: true) else { return nil }
                if f.ignoreCase {
                    d.fail(n.line, Fields.join(p, "ignore_case"), "not supported in authorization rules")
                    return nil
                }
                switch f.value {
                case .present: return AuthorizationHeaderMatch(name: f.name, .present, invert: f.invert)
                case .absent: return AuthorizationHeaderMatch(name: f.name, .present, invert: !f.invert)
                case .exact(let v): return AuthorizationHeaderMatch(name: f.name, .exact(v), invert: f.invert)
                case .prefix(let v): return AuthorizationHeaderMatch(name: f.name, .prefix(v), invert: f.invert)
                case .suffix(let v): return AuthorizationHeaderMatch(name: f.name, .suffix(v), invert: f.invert)
                case .contains(let v): return AuthorizationHeaderMatch(name: f.name, .contains(v), invert: f.invert)
                case .regex(let v): return AuthorizationHeaderMatch(name: f.name, .regex(v), invert: f.invert)
                }
            } } ?? []
            rule.serverNames = t.optional("server_names") { d.list($0, $1) { n, p in
                d.checked(n, p) { s in
                    let host = s.hasPrefix("*.") ? String(s.dropFirst(2)) : s
                    return RouteSyntax.domain(host) == nil && !host.contains(":") && !host.contains("*")
                        ? nil : #"expected a server name like "api.example.com" or "*.example.com""#
                }
            } } ?? []
            return true
        }
        return rule
    }

    /// `{ exact: /p }`, `{ prefix: /p }` or `{ regex: RE2 }` (matched against the normalized path).
    func authorizationPath(_ n: Node, _ p: String) -> AuthorizationPathMatch? {
        guard let m = d.mapping(n, p, keys: ["prefix", "exact", "regex"]) else { return nil }
        switch m.one(of: ["prefix", "exact", "regex"]) {
        case "prefix": return m.optional("prefix", absolutePath).map { .prefix($0) }
        case "exact": return m.optional("exact", absolutePath).map { .exact($0) }
        case "regex": return m.optional("regex") { regex($0, $1, ignoreCase: false) }.map { .regex($0) }
        default: return nil
        }
    }

    /// One `sni:` entry: `{ server_names: [api.example.com, "*.example.org"], cluster: NAME }`.
    func sniRoute(_ n: Node, _ p: String, _ seen: inout [String: Int]) -> SNIRoute? {
        guard let m = d.mapping(n, p, keys: ["server_names", "cluster"]) else { return nil }
        let names = m.required("server_names") { d.list($0, $1, ifEmpty: "at least one server name") { n, p in
            let s = d.checked(n, p) { ServerNameTable<Int>.problem($0) }
            if let s { d.unique(s.lowercased(), "server name \"\(s)\"", n, p, in: &seen) }
            return s
        } }
        let cluster = m.required("cluster", clusterRef)
        guard let names, let cluster else { return nil }
        return SNIRoute(serverNames: names, cluster: cluster)
    }

    /// `sidecar: { outbound_port, inbound_port, ipv6, passthrough, sniff_timeout, server_first_ports, services }`
    /// (docs/sidecar.md).
    func sidecar(_ n: Node, _ p: String) -> SidecarConfig? {
        guard let m = d.mapping(n, p, keys: ["outbound_port", "inbound_port", "ipv6", "passthrough", "sniff_timeout",
                                             "server_first_ports", "services", "inbound", "mtls",
                                             "access_log"]) else { return nil }
        var s = SidecarConfig()
        let port = { (n: Node, p: String) in self.d.int(n, p, in: 1...65_535).map { UInt16($0) } }
        if let v = m.optional("outbound_port", port) { s.outboundPort = v }
        if let v = m.optional("inbound_port", port) { s.inboundPort = v }
        if s.inboundPort == s.outboundPort {
            d.fail(m.line, Fields.join(p, "inbound_port"), "must differ from outbound_port (\(s.outboundPort))")
        }
        if let v = m.optional("ipv6", d.bool) { s.ipv6 = v }
        if let v = m.optional("passthrough", { d.value($0, $1, "allow or deny") { ["allow": true, "deny": false][$0] } }) {
            s.passthrough = v
        }
        if let v = m.optional("sniff_timeout", { d.duration($0, $1, positive: true) }) {
            if v < 10 || v > 10_000 { d.fail(m.line, Fields.join(p, "sniff_timeout"), "expected 10ms ... 10s") } else { s.sniffTimeout = v }
        }
        if let v = m.optional("server_first_ports", { d.list($0, $1, port) }) { s.serverFirstPorts = v }
        s.accessLog = m.optional("access_log", accessLog)
        s.mtls = m.optional("mtls", sidecarMTLS)
        var names: [String: Int] = [:]
        var keys: [String: Int] = [:]
        let trustDomain = s.mtls?.fromControl?.trustDomain ?? "mesh.local"
        if let v = m.optional("services", { d.list($0, $1) { sidecarService($0, $1, &names, &keys, trustDomain: trustDomain) } }) {
            s.services = v
        }
        var ports: [String: Int] = [:]
        if let v = m.optional("inbound", { d.list($0, $1) { n, p -> SidecarInboundPort? in
            guard var e = d.mapping(n, p, keys: ["port", "protocol", "authorization"]) else { return nil }
            let port = e.required("port") { d.int($0, $1, in: 1...65_535).map { UInt16($0) } }
            let proto: SidecarService.Kind? = e.optional("protocol", d.oneOf)
            if proto == .tcp { e.forbid(["authorization"], "not allowed with protocol: tcp (it is checked per HTTP request)") }
            let authz = e.optional("authorization") { authorizationPolicy($0, $1, tcp: false) }
            guard let port else { return nil }
            d.unique("\(port)", "inbound port \(port)", n, p, in: &ports)
            if port == s.inboundPort || port == s.outboundPort {
                d.fail(n.line, Fields.join(p, "port"), "\(port) is the sidecar's own listener")
            }
            return SidecarInboundPort(port: port, protocol: proto ?? .auto, authorization: authz)
        } }) { s.inbound = v }
        return s
    }

    /// Lowercase letters, digits, `-`, `.` (and `_` when allowed), 1 to `max` bytes: Kubernetes'
    /// namespace and service-account names, SPIFFE trust domains.
    static func isMeshName(_ s: String, max: Int, underscore: Bool) -> Bool {
        guard !s.isEmpty, s.utf8.count <= max else { return false }
        for b in s.utf8 {
            let ok = (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x2E || (underscore && b == 0x5F)
            if !ok { return false }
        }
        return true
    }

    /// `sidecar.mtls`: `{ cert, key, ca, mode }` (an operator's files) or `{ from_control: true,
    /// token_file, control, dir, trust_domain, bundle_refresh, mode }` (issued by `remora control`).
    func sidecarMTLS(_ n: Node, _ p: String) -> SidecarMTLS? {
        guard var t = d.mapping(n, p, keys: ["cert", "key", "ca", "mode", "from_control", "token_file", "control", "dir",
                                             "trust_domain", "bundle_refresh"]) else { return nil }
        let mode: SidecarMTLS.Mode? = t.optional("mode", d.oneOf)
        if t.optional("from_control", d.bool) == true {
            t.forbid(["cert", "key", "ca"], "not with from_control: true (the control server issues the certificate and the bundle)")
            let token = t.required("token_file", filePath)
            let control = t.optional("control") { n, p in
                d.value(n, p, "http://HOST:PORT (the control server)") { s -> String? in
                    guard s.hasPrefix("http://"), let hp = HostPort.parse(String(s.dropFirst(7).split(separator: "/").first ?? "")),
                          hp.port != 0 else { return nil }
                    return "http://\(hp)"
                }
            }
            let dir = t.optional("dir", filePath)
            let domain = t.optional("trust_domain") { n, p in
                d.value(n, p, "a trust domain like mesh.local (lowercase letters, digits, \".\", \"-\", \"_\")") { s -> String? in
                    Self.isMeshName(s, max: 255, underscore: true) ? s : nil
                }
            }
            var refresh: Millis?
            if let v = t.optional("bundle_refresh", { d.duration($0, $1, positive: true) }) {
                if v < 1_000 || v > 86_400_000 { d.fail(t.line, Fields.join(p, "bundle_refresh"), "expected 1s ... 24h") } else { refresh = v }
            }
            guard let token else { return nil }
            var source = MeshIdentitySource(tokenFile: token, control: control)
            if let dir { source.directory = dir.count > 1 && dir.hasSuffix("/") ? String(dir.dropLast()) : dir }
            if let domain { source.trustDomain = domain }
            if let refresh { source.bundleRefresh = refresh }
            return SidecarMTLS(fromControl: source, mode: mode ?? .permissive)
        }
        t.forbid(["token_file", "control", "dir", "trust_domain", "bundle_refresh"], "only with from_control: true")
        let cert = t.required("cert", filePath), key = t.required("key", filePath), ca = t.required("ca", filePath)
        guard let cert, let key, let ca else { return nil }
        return SidecarMTLS(cert: cert, key: key, ca: ca, mode: mode ?? .permissive)
    }

    /// One `sidecar.services` entry: `{ name, addresses: [VIP...], port, cluster, protocol: auto | http | tcp, routes,
    /// mtls, identities, service_account }`.
    func sidecarService(_ n: Node, _ p: String, _ names: inout [String: Int], _ keys: inout [String: Int],
                        trustDomain: String) -> SidecarService? {
        guard var m = d.mapping(n, p, keys: ["name", "addresses", "port", "cluster", "protocol", "routes", "mtls",
                                             "identities", "service_account"]) else { return nil }
        // `service_account: NS/SA`: the endpoints are sidecars of that identity (mtls, verified).
        let account = m.optional("service_account") { n, p in
            d.value(n, p, "NAMESPACE/SERVICE_ACCOUNT like shop/orders") { s -> String? in
                let parts = s.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, Self.isMeshName(parts[0], max: 63, underscore: false),
                      Self.isMeshName(parts[1], max: 253, underscore: false) else { return nil }
                return "spiffe://\(trustDomain)/ns/\(parts[0])/sa/\(parts[1])"
            }
        }
        if m.has("service_account") {
            m.forbid(["identities"], "not with service_account (it names the identity)")
        }
        let name = m.required("name") { self.name($0, $1, "service", &names) }
        let addresses = m.optional("addresses") { d.list($0, $1, ifEmpty: "at least one address (or leave addresses out: any address)") { n, p in
            d.value(n, p, #"an IP address like "10.96.0.10" or "fd00::10""#, canonicalIP)
        } }
        let port = m.required("port") { d.int($0, $1, in: 1...65_535).map { UInt16($0) } }
        let cluster = m.required("cluster", clusterRef)
        let proto: SidecarService.Kind? = m.optional("protocol", d.oneOf)
        if proto == .tcp { m.forbid(["routes"], "not allowed with protocol: tcp (routes are HTTP)") }
        var routeNames = ListenerNames()
        let routes = m.optional("routes") { d.list($0, $1) { route($0, $1, &routeNames) } }
        if let port, addresses != nil || !m.has("addresses") {
            for a in addresses ?? ["*"] {
                d.unique("\(a)|\(port)", "destination \(a == "*" ? "port" : a) \(port)", n, p, in: &keys)
            }
        }
        let mtls = m.optional("mtls", d.bool)
        if account != nil && mtls == false { d.fail(n.line, Fields.join(p, "mtls"), "service_account means mtls: true") }
        if mtls != true { m.forbid(["identities"], "only with mtls: true (the peer's certificate is checked for them)") }
        let identities = m.optional("identities") { d.list($0, $1, ifEmpty: "at least one identity (or leave identities out)") { n, p in
            d.value(n, p, #"a SAN: spiffe://TRUST_DOMAIN/ns/NS/sa/SA or a DNS name"#) { s in
                s.isEmpty || s.contains(where: { $0 == " " || $0 == "," }) ? nil : s
            }
        } }
        guard let name, let port, let cluster else { return nil }
        var s = SidecarService(name: name, addresses: addresses ?? [], port: port, cluster: cluster, protocol: proto ?? .auto,
                               routes: routes ?? [])
        s.mtls = mtls ?? false
        s.identities = identities ?? []
        if let account {
            s.mtls = true
            s.identities = [account]
        }
        return s
    }

    /// `tracing: { propagate: [w3c, b3], sample_percent: 0 ... 100, otlp: { endpoint: http://HOST:PORT } }`.
    func tracing(_ n: Node, _ p: String) -> TracingConfig? {
        guard let m = d.mapping(n, p, keys: ["propagate", "sample_percent", "otlp"]) else { return nil }
        let propagate = m.optional("propagate") { n, p -> [TracingConfig.Propagation]? in
            d.list(n, p) { n, p -> TracingConfig.Propagation? in d.oneOf(n, p) }
        }
        let percent = m.optional("sample_percent") { n, p -> Double? in
            guard let s = d.string(n, p), let v = Double(s), v >= 0, v <= 100 else {
                d.fail(n.line, p, "expected a number from 0 to 100")
                return nil
            }
            return v
        }
        let otlp = m.optional("otlp") { n, p -> OTLPConfig? in
            guard let o = d.mapping(n, p, keys: ["endpoint"]) else { return nil }
            return o.required("endpoint") { n, p -> OTLPConfig? in
                guard let s = d.string(n, p) else { return nil }
                guard let c = OTLPConfig.parse(s) else {
                    d.fail(n.line, p, "expected http://HOST:PORT (the collector's OTLP/HTTP address; /v1/traces is added)")
                    return nil
                }
                return c
            }
        }
        return TracingConfig(propagate: propagate ?? [.w3c], samplePercent: percent ?? 1, otlp: otlp)
    }

    /// `access_log: { path: FILE | stdout, format: json | text | "<format string>" }`.
    func accessLog(_ n: Node, _ p: String) -> AccessLogConfig? {
        guard let m = d.mapping(n, p, keys: ["path", "format"]) else { return nil }
        let path = m.required("path") { n, p -> String? in
            guard let s = d.string(n, p) else { return nil }
            guard s == "stdout" || s.hasPrefix("/") else {
                d.fail(n.line, p, "expected an absolute file path or stdout")
                return nil
            }
            return s
        }
        let format = m.optional("format") { n, p -> AccessLogFormat? in
            guard let s = d.string(n, p) else { return nil }
            switch s {
            case "json": return .json
            case "text": return .text(AccessLogFormat.envoyDefault)
            default:
                switch AccessLogFormat.parse(s) {
                case .success(let pieces): return .text(pieces)
                case .failure(let e): d.fail(n.line, p, e.message); return nil
                }
            }
        }
        guard let path else { return nil }
        return AccessLogConfig(path: path, format: format ?? .text(AccessLogFormat.envoyDefault))
    }

    /// Names that must be unique within one listener.
    struct ListenerNames {
        var routes: [String: Int] = [:]
        var hosts: [String: Int] = [:]
        var domains: [String: Int] = [:]
    }

    func virtualHost(_ n: Node, _ p: String, _ names: inout ListenerNames) -> VirtualHostConfig? {
        guard let m = d.mapping(n, p, keys: ["name", "domains", "routes"]) else { return nil }
        let name = m.required("name") { self.name($0, $1, "virtual host", &names.hosts) }
        let domains = m.required("domains") { d.list($0, $1, ifEmpty: "at least one domain is required") { n, p in
            let s = d.checked(n, p) { RouteSyntax.domain($0) }
            if let s { d.unique(s.lowercased(), "domain \"\(s)\"", n, p, in: &names.domains) }
            return s
        } }
        let routes = m.optional("routes") { d.list($0, $1) { route($0, $1, &names) } }
        guard let name, let domains else { return nil }
        return VirtualHostConfig(name: name, domains: domains, routes: routes ?? [])
    }

    func route(_ n: Node, _ p: String, _ names: inout ListenerNames) -> RouteConfig? {
        guard var m = d.mapping(n, p, keys: ["name", "match", "backends", "hash_on", "timeout", "mirror", "redirect",
                                             "direct_response", "rewrite", "request_headers", "response_headers",
                                             "request_timeout", "retry", "fault", "rate_limit", "authorization", "upgrade",
                                             "grpc_web"])
        else { return nil }
        let name = m.required("name") { self.name($0, $1, "route", &names.routes) }
        let match = m.optional("match", routeMatch)
        let actions = ["backends", "redirect", "direct_response"]
        let kind = actions.filter(m.has)
        if kind.isEmpty {
            d.fail(m.line, Fields.join(p, "backends"), #"missing required key "backends" (or "redirect" or "direct_response")"#)
        }
        m.forbid(Array(kind.dropFirst()), "not allowed with \(kind.first ?? "") (a route has one action)")
        if let first = kind.first, first != "backends" {
            m.forbid(["hash_on", "timeout", "mirror", "request_headers", "request_timeout", "retry", "fault", "rate_limit",
                      "upgrade", "grpc_web"],
                     "only allowed with backends")
        }
        if kind.first == "direct_response" { m.forbid(["rewrite"], "not allowed with direct_response") }
        let action: RouteAction?
        switch kind.first {
        case "redirect": action = m.optional("redirect", redirect).map(RouteAction.redirect)
        case "direct_response": action = m.optional("direct_response", directResponse).map(RouteAction.respond)
        default:
            let backends = m.optional("backends", backends)
            let hashOn = m.optional("hash_on", hashKey)
            let timeout = m.optional("timeout") { d.duration($0, $1) }
            let mirror = m.optional("mirror", mirror)
            let requestTimeout = m.optional("request_timeout") { d.duration($0, $1) }
            let retry = m.optional("retry", retryPolicy)
            let fault = m.optional("fault", faultPolicy)
            let rateLimit = m.optional("rate_limit", rateLimitPolicy)
            // `upgrade: [websocket]` (issue 18); `[]` refuses upgrades.
            let upgrade = m.optional("upgrade") { n, p -> [UpgradeProtocol]? in
                d.list(n, p) { n, p in d.value(n, p, "websocket (the one upgrade supported)") { UpgradeProtocol(rawValue: $0) } }
            }
            let grpcWeb = m.optional("grpc_web") { n, p -> GRPCWebConfig? in   // issue 18
                guard let g = d.mapping(n, p, keys: ["allow_origins"]) else { return nil }
                let origins = g.optional("allow_origins") { n, p in d.list(n, p) { d.string($0, $1) } }
                return GRPCWebConfig(allowOrigins: origins ?? [])
            }
            action = backends.map {
                var f = ForwardAction(backends: $0, hashOn: hashOn, timeout: timeout ?? 15_000, mirror: mirror,
                                      requestTimeout: requestTimeout, retry: retry)
                f.fault = fault
                f.rateLimit = rateLimit
                if let upgrade { f.upgrade = upgrade }
                f.grpcWeb = grpcWeb
                return .forward(f)
            }
        }
        let rewrite = m.optional("rewrite") { pathRewrite($0, $1, regexPath: match?.grpc == nil && match?.path.kind == .regex) }
        let requestHeaders = m.optional("request_headers", headerRewrite)
        let responseHeaders = m.optional("response_headers", headerRewrite)
        let authorization = m.optional("authorization") { authorizationPolicy($0, $1, tcp: false) }
        guard let name, let action else { return nil }
        var r = RouteConfig(name: name, match: match ?? RouteMatch(), action: action, rewrite: rewrite,
                            requestHeaders: requestHeaders ?? HeaderRewrite(), responseHeaders: responseHeaders ?? HeaderRewrite())
        r.authorization = authorization
        return r
    }

    func routeMatch(_ n: Node, _ p: String) -> RouteMatch? {
        guard var m = d.mapping(n, p, keys: ["path", "grpc", "methods", "headers", "query", "principal"]) else { return nil }
        if m.has("grpc") { m.forbid(["path"], "not allowed with grpc (grpc sets the path)") }
        let path = m.optional("path", pathMatch)
        let grpc = m.optional("grpc", grpcMatch)
        let methods = m.optional("methods") { d.list($0, $1) { d.checked($0, $1) { RouteSyntax.method($0) } } }
        let headers = m.optional("headers") { d.list($0, $1) { fieldMatch($0, $1, header: true) } }
        let query = m.optional("query") { d.list($0, $1) { fieldMatch($0, $1, header: false) } }
        let principal = m.optional("principal", principalMatch)
        var out = RouteMatch(path: path ?? .prefix("/"), grpc: grpc, methods: methods ?? [], headers: headers ?? [],
                             queryParameters: query ?? [])
        out.principal = principal
        return out
    }

    /// A route's `principal: { exact: ID }` or `{ prefix: ID }`.
    func principalMatch(_ n: Node, _ p: String) -> PrincipalMatch? {
        guard let m = d.mapping(n, p, keys: ["exact", "prefix"]) else { return nil }
        let text = { (n: Node, p: String) in self.d.value(n, p, "a non-empty identity") { $0.isEmpty ? nil : $0 } }
        switch m.one(of: ["exact", "prefix"]) {
        case "exact": return m.optional("exact", text).map { .exact($0) }
        case "prefix": return m.optional("prefix", text).map { .prefix($0) }
        default: return nil
        }
    }

    func pathMatch(_ n: Node, _ p: String) -> PathMatch? {
        guard let m = d.mapping(n, p, keys: ["prefix", "exact", "regex", "ignore_case"]) else { return nil }
        let ignoreCase = m.optional("ignore_case", d.bool) ?? false
        switch m.one(of: ["prefix", "exact", "regex"]) {
        case "prefix": return m.optional("prefix", absolutePath).map { .prefix($0, ignoreCase: ignoreCase) }
        case "exact": return m.optional("exact", absolutePath).map { .exact($0, ignoreCase: ignoreCase) }
        case "regex": return m.optional("regex") { regex($0, $1, ignoreCase: ignoreCase) }.map { .regex($0, ignoreCase: ignoreCase) }
        default: return nil
        }
    }

    func grpcMatch(_ n: Node, _ p: String) -> GRPCMatch? {
        guard let m = d.mapping(n, p, keys: ["service", "method"]) else { return nil }
        let identifier = { (n: Node, p: String, dots: Bool) in
            self.d.value(n, p, dots ? #"a service name like "pkg.v1.Greeter""# : #"a method name like "SayHello""#) { s in
                !s.isEmpty && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || (dots && $0 == ".")) } ? s : nil
            }
        }
        let service = m.required("service") { identifier($0, $1, true) }
        let method = m.optional("method") { identifier($0, $1, false) }
        return service.map { GRPCMatch(service: $0, method: method) }
    }

    /// A header (`header: true`) or query parameter condition.
    func fieldMatch(_ n: Node, _ p: String, header: Bool) -> FieldMatch? {
        let tests = ["exact", "prefix", "suffix", "contains", "regex", "present", "absent"]
        guard let m = d.mapping(n, p, keys: ["name"] + tests + ["ignore_case", "invert"]) else { return nil }
        let name = m.required("name") { n, p in
            header ? d.checked(n, p) { RouteSyntax.headerName($0) }
                : d.value(n, p, ##"a query parameter name (no "&", "=", "#" or spaces)"##) { s in
                    !s.isEmpty && !s.contains(where: { "&=# \t".contains($0) }) ? s : nil
                }
        }
        let ignoreCase = m.optional("ignore_case", d.bool) ?? false
        let invert = m.optional("invert", d.bool) ?? false
        let value: ValueMatch?
        switch m.one(of: tests) {
        case "present": value = m.optional("present", d.bool).map { $0 ? .present : .absent }
        case "absent": value = m.optional("absent", d.bool).map { $0 ? .absent : .present }
        case "regex": value = m.optional("regex") { regex($0, $1, ignoreCase: ignoreCase) }.map(ValueMatch.regex)
        case let test?:
            let s = m.optional(test) { d.checked($0, $1, RouteSyntax.headerValue) }
            value = s.map { ["exact": .exact($0), "prefix": .prefix($0), "suffix": .suffix($0)][test] ?? .contains($0) }
        case nil: value = nil
        }
        guard let name, let value else { return nil }
        return FieldMatch(name: name, value, ignoreCase: ignoreCase, invert: invert)
    }

    func backends(_ n: Node, _ p: String) -> [WeightedBackend]? {
        guard let list = d.list(n, p, ifEmpty: "at least one backend is required", backend) else { return nil }
        guard list.contains(where: { $0.weight > 0 }) else {
            d.fail(n.line, p, "at least one backend must have a weight above 0")
            return nil
        }
        var seen: Set<String> = []
        for (i, b) in list.enumerated() where !seen.insert(b.cluster).inserted {
            d.fail(n.line, "\(p)[\(i)].cluster", "cluster \"\(b.cluster)\" appears twice in this split (give it one backend with the sum of the weights)")
            return nil
        }
        return list
    }

    func backend(_ n: Node, _ p: String) -> WeightedBackend? {
        guard let m = d.mapping(n, p, keys: ["cluster", "weight"]) else { return nil }
        let cluster = m.required("cluster", clusterRef)
        let weight = m.optional("weight") { d.int($0, $1, in: 0...1_000_000) }
        return cluster.map { WeightedBackend(cluster: $0, weight: UInt32(weight ?? 1)) }
    }

    func hashKey(_ n: Node, _ p: String) -> HashKey? {
        guard let m = d.mapping(n, p, keys: ["header", "cookie"]) else { return nil }
        let name = { (n: Node, p: String) in self.d.checked(n, p) { RouteSyntax.headerName($0) } }
        switch m.one(of: ["header", "cookie"]) {
        case "header": return m.optional("header", name).map(HashKey.header)
        case "cookie": return m.optional("cookie", name).map(HashKey.cookie)
        default: return nil
        }
    }

    func mirror(_ n: Node, _ p: String) -> MirrorPolicy? {
        guard let m = d.mapping(n, p, keys: ["cluster", "percent"]) else { return nil }
        let cluster = m.required("cluster", clusterRef)
        let percent = m.optional("percent") { d.value($0, $1, #"a percentage from 0 to 100 like "5" or "0.25" (at most 4 decimals)"#,
                                                     ConfigValue.percent) }
        return cluster.map { MirrorPolicy(cluster: $0, perMillion: percent ?? 1_000_000) }
    }

    func redirect(_ n: Node, _ p: String) -> RedirectAction? {
        guard let m = d.mapping(n, p, keys: ["scheme", "host", "code", "strip_query"]) else { return nil }
        let scheme = m.optional("scheme") { d.value($0, $1, "http or https") { ["http", "https"].contains($0) ? $0 : nil } }
        let host = m.optional("host") { d.checked($0, $1, RouteSyntax.host) }
        let code = m.optional("code") { d.value($0, $1, "301, 302, 303, 307 or 308") { Int($0).flatMap { [301, 302, 303, 307, 308].contains($0) ? $0 : nil } } }
        let stripQuery = m.optional("strip_query", d.bool)
        return RedirectAction(scheme: scheme, host: host, code: code ?? 301, stripQuery: stripQuery ?? false)
    }

    func directResponse(_ n: Node, _ p: String) -> DirectResponse? {
        guard let m = d.mapping(n, p, keys: ["status", "body"]) else { return nil }
        let status = m.required("status") { d.int($0, $1, in: 200...599) }
        let body = m.optional("body", d.string)
        return status.map { DirectResponse(status: $0, body: body ?? "") }
    }

    func pathRewrite(_ n: Node, _ p: String, regexPath: Bool) -> PathRewrite? {
        guard var m = d.mapping(n, p, keys: ["path", "prefix", "regex", "substitution"]) else { return nil }
        let kind = m.one(of: ["path", "prefix", "regex"])
        if kind != "regex" { m.forbid(["substitution"], "only allowed with regex") }
        switch kind {
        case "path": return m.optional("path", rewrittenPath).map(PathRewrite.path)
        case "prefix":
            guard !regexPath else {
                d.fail(m.line, Fields.join(p, "prefix"), "needs a prefix or exact path match (use regex with a regex path)")
                return nil
            }
            return m.optional("prefix", rewrittenPath).map(PathRewrite.prefix)
        case "regex":
            let pattern = m.optional("regex") { regex($0, $1, ignoreCase: false) }
            let substitution = m.required("substitution") { n, p in
                d.checked(n, p) { s in pattern.flatMap { RouteSyntax.substitution(s, regex: $0) } }
            }
            guard let pattern, let substitution else { return nil }
            return .regex(pattern, substitution: substitution)
        default: return nil
        }
    }

    func headerRewrite(_ n: Node, _ p: String) -> HeaderRewrite? {
        guard let m = d.mapping(n, p, keys: ["set", "add", "remove"]) else { return nil }
        let values = { (n: Node, p: String) in
            self.d.entries(n, p) { e, p -> HeaderValue? in
                if let problem = RouteSyntax.mutableHeaderName(e.key) {
                    self.d.fail(e.keyLine, p, problem)
                    return nil
                }
                return self.d.checked(e.value, p, RouteSyntax.headerValue).map { HeaderValue(e.key, $0) }
            }
        }
        let set = m.optional("set", values)
        let add = m.optional("add", values)
        let remove = m.optional("remove") { d.list($0, $1) { d.checked($0, $1, RouteSyntax.mutableHeaderName) } }
        return HeaderRewrite(set: set ?? [], add: add ?? [], remove: remove ?? [])
    }

    /// An RE2 pattern that compiles.
    func regex(_ n: Node, _ p: String, ignoreCase: Bool) -> String? {
        d.checked(n, p) { RouteSyntax.regex($0, ignoreCase: ignoreCase) }
    }

    func absolutePath(_ n: Node, _ p: String) -> String? {
        d.value(n, p, #"a path starting with "/""#) { $0.hasPrefix("/") ? $0 : nil }
    }

    /// A path a rewrite produces: starts with "/", no query, fragment, spaces or control characters.
    func rewrittenPath(_ n: Node, _ p: String) -> String? {
        d.value(n, p, ##"a path starting with "/" (no "?", "#", spaces or control characters)"##) { s in
            s.hasPrefix("/") && !s.utf8.contains { $0 <= 0x20 || $0 == 0x7F || $0 == 0x3F || $0 == 0x23 } ? s : nil
        }
    }

    func cluster(_ n: Node, _ p: String) -> ClusterConfig? {
        guard var m = d.mapping(n, p, keys: ["name", "protocol", "endpoints", "connect_timeout", "max_idle_per_endpoint",
                                             "http2", "max_connects_per_second", "idle_timeout", "retry_budget",
                                             "lb", "hash_on", "circuit_breaker", "outlier_detection", "panic_threshold",
                                             "health_check", "tls", "slow_start", "dns_refresh", "dns_lookup_family"])
        else { return nil }
        let name = m.required("name") { self.name($0, $1, "cluster", &clusterNames) }
        var proto: ClusterProtocol? = m.optional("protocol", d.oneOf)
        var tls = m.optional("tls", clusterTLS)
        // A TLS cluster offering both h2 and http/1.1 lets the server's ALPN answer pick (`auto`).
        if proto == nil, let t = tls, t.alpn.contains("h2"), t.alpn.contains("http/1.1") { proto = .auto }
        let endpoints = m.required("endpoints") {
            d.list($0, $1, ifEmpty: "at least one endpoint is required", endpoint)
        }
        let connectTimeout = m.optional("connect_timeout") { d.duration($0, $1, positive: true) }
        let maxIdle = m.optional("max_idle_per_endpoint") { d.int($0, $1, in: 0...100_000) }
        let connectRate = m.optional("max_connects_per_second") { d.int($0, $1, in: 0...1_000_000) }
        let idleTimeout = m.optional("idle_timeout") { d.duration($0, $1, positive: true) }
        if proto != .http2 && proto != .auto { m.forbid(["http2"], "only allowed on a cluster with protocol: http2 or auto") }
        let http2 = m.optional("http2", http2Settings)
        let budget = m.has("retry_budget") ? m.optional("retry_budget", retryBudget) : RetryBudget()
        let lb: BalancerKind? = m.optional("lb", d.oneOf)
        if !(lb?.isConsistentHash ?? false) { m.forbid(["hash_on"], "only allowed with lb: ring_hash or maglev") }
        let hashOn = m.optional("hash_on", clusterHashKey)
        let breaker = m.optional("circuit_breaker", circuitBreaker)
        let outlier = m.optional("outlier_detection", outlierDetection)
        let panic = m.optional("panic_threshold", percentInt)
        let health = m.optional("health_check", healthCheck)
        if proto == .auto, let line = m.nodes["protocol"]?.line ?? m.nodes["tls"]?.line {
            if tls == nil && !m.has("tls") {
                d.fail(line, Fields.join(p, "protocol"), "auto needs tls: (the server's ALPN answer picks HTTP/2 or HTTP/1.1; without TLS there is none)")
            } else if let t = tls, !t.alpn.isEmpty && !(t.alpn.contains("h2") && t.alpn.contains("http/1.1")) {
                d.fail(m.nodes["tls"]?.line ?? line, Fields.join(p, "tls.alpn"), "with protocol: auto, alpn must offer both h2 and http/1.1")
            } else if tls?.alpn.isEmpty == true {
                tls?.alpn = ["h2", "http/1.1"]
            }
        }
        if lb?.isConsistentHash ?? false { m.forbid(["slow_start"], "not with lb: ring_hash or maglev (a key must stay where it is)") }
        let slowStart = m.optional("slow_start", slowStartConfig)
        let dnsRefresh = m.optional("dns_refresh") { d.duration($0, $1, positive: true) }
        let family: DNSLookupFamily? = m.optional("dns_lookup_family", d.oneOf)
        guard let name, let endpoints else { return nil }
        var c = ClusterConfig(name: name, protocol: proto ?? .http1, endpoints: endpoints.map(\.0),
                              connectTimeout: connectTimeout ?? 5_000, maxIdlePerEndpoint: maxIdle,
                              http2: http2 ?? HTTP2Settings(), maxConnectsPerSecond: connectRate ?? 1000,
                              idleTimeout: idleTimeout ?? 60_000, retryBudget: budget ?? nil)
        if endpoints.contains(where: { $0.1 != 1 }) { c.endpointWeights = endpoints.map(\.1) }
        if let lb { c.lb = lb }
        c.hashOn = hashOn
        c.circuitBreaker = breaker
        c.outlierDetection = outlier
        if let panic { c.panicThreshold = panic }
        c.healthCheck = health
        c.tls = tls
        c.slowStart = slowStart
        c.dnsRefresh = dnsRefresh
        if let family { c.dnsLookupFamily = family }
        return c
    }

    /// `slow_start: 30s`, or `{ window: 30s, aggression: 1.0, min_weight_percent: 10 }`.
    func slowStartConfig(_ n: Node, _ p: String) -> SlowStart? {
        if case .scalar = n.value { return d.duration(n, p, positive: true).map { SlowStart(window: $0) } }
        guard let m = d.mapping(n, p, keys: ["window", "aggression", "min_weight_percent"]) else { return nil }
        let window = m.required("window") { d.duration($0, $1, positive: true) }
        let aggression = m.optional("aggression") {
            d.value($0, $1, "a number above 0 and at most 100 like 1.0 or 2") { Double($0).flatMap { $0 > 0 && $0 <= 100 ? $0 : nil } }
        }
        let minimum = m.optional("min_weight_percent") {
            d.value($0, $1, "a whole percentage from 1 to 100") { s in
                Int(s.hasSuffix("%") ? String(s.dropLast()) : s).flatMap { (1...100).contains($0) ? $0 : nil }
            }
        }
        return window.map { SlowStart(window: $0, aggression: aggression ?? 1, minWeightPercent: minimum ?? 10) }
    }

    /// An endpoint: `"host:port"`, or `{ address: "host:port", weight: 3 }`.
    func endpoint(_ n: Node, _ p: String) -> (HostPort, Int)? {
        if case .scalar = n.value { return d.hostPort(n, p, portZero: false).map { ($0, 1) } }
        guard let m = d.mapping(n, p, keys: ["address", "weight"]) else { return nil }
        let address = m.required("address") { d.hostPort($0, $1, portZero: false) }
        let weight = m.optional("weight") { d.int($0, $1, in: 1...10_000) }
        return address.map { ($0, weight ?? 1) }
    }

    /// A cluster's `hash_on`: `{ header: name }`, `{ cookie: name }`, or `source_ip`.
    func clusterHashKey(_ n: Node, _ p: String) -> ClusterHashKey? {
        if case .scalar = n.value {
            return d.value(n, p, #"source_ip, or a mapping { header: name } or { cookie: name }"#) { $0 == "source_ip" ? .sourceIP : nil }
        }
        guard let m = d.mapping(n, p, keys: ["header", "cookie", "source_ip"]) else { return nil }
        let name = { (n: Node, p: String) in self.d.checked(n, p) { RouteSyntax.headerName($0) } }
        switch m.one(of: ["header", "cookie", "source_ip"]) {
        case "header": return m.optional("header", name).map(ClusterHashKey.header)
        case "cookie": return m.optional("cookie", name).map(ClusterHashKey.cookie)
        case "source_ip":
            return m.optional("source_ip") { d.value($0, $1, "true") { $0 == "true" ? ClusterHashKey.sourceIP : nil } }
        default: return nil
        }
    }

    /// `circuit_breaker: { max_connections, max_pending, max_requests, max_retries }`.
    func circuitBreaker(_ n: Node, _ p: String) -> CircuitBreakerConfig? {
        guard let m = d.mapping(n, p, keys: ["max_connections", "max_pending", "max_requests", "max_retries"]) else { return nil }
        var c = CircuitBreakerConfig()
        if let v = m.optional("max_connections", { d.int($0, $1, in: 1...1_000_000) }) { c.maxConnections = v }
        if let v = m.optional("max_pending", { d.int($0, $1, in: 1...1_000_000) }) { c.maxPending = v }
        if let v = m.optional("max_requests", { d.int($0, $1, in: 1...1_000_000) }) { c.maxRequests = v }
        if let v = m.optional("max_retries", { d.int($0, $1, in: 0...1_000_000) }) { c.maxRetries = v }
        return c
    }

    /// `outlier_detection: { consecutive_5xx, consecutive_gateway_errors, consecutive_local_failures,
    /// interval, base_ejection_time, max_ejection_time, max_ejection_percent }`.
    func outlierDetection(_ n: Node, _ p: String) -> OutlierDetectionConfig? {
        guard let m = d.mapping(n, p, keys: ["consecutive_5xx", "consecutive_gateway_errors", "consecutive_local_failures",
                                             "interval", "base_ejection_time", "max_ejection_time", "max_ejection_percent"])
        else { return nil }
        var o = OutlierDetectionConfig()
        if let v = m.optional("consecutive_5xx", { d.int($0, $1, in: 0...1_000) }) { o.consecutive5xx = v }
        if let v = m.optional("consecutive_gateway_errors", { d.int($0, $1, in: 0...1_000) }) { o.consecutiveGatewayErrors = v }
        if let v = m.optional("consecutive_local_failures", { d.int($0, $1, in: 0...1_000) }) { o.consecutiveLocalFailures = v }
        if let v = m.optional("interval", { d.duration($0, $1, positive: true) }) { o.interval = v }
        if let v = m.optional("base_ejection_time", { d.duration($0, $1, positive: true) }) { o.baseEjectionTime = v }
        if let v = m.optional("max_ejection_time", { d.duration($0, $1, positive: true) }) { o.maxEjectionTime = v }
        if let v = m.optional("max_ejection_percent", percentInt) { o.maxEjectionPercent = v }
        if o.maxEjectionTime < o.baseEjectionTime {
            d.fail(m.line, Fields.join(p, "max_ejection_time"), "must not be below base_ejection_time")
        }
        return o
    }

    /// `health_check: { http: { path, expect } | tcp: {} | grpc: { service }, interval, timeout, jitter, unhealthy_threshold,
    /// healthy_threshold }`.
    func healthCheck(_ n: Node, _ p: String) -> HealthCheckConfig? {
        guard var m = d.mapping(n, p, keys: ["http", "tcp", "grpc", "interval", "timeout", "jitter", "unhealthy_threshold",
                                             "healthy_threshold"]) else { return nil }
        let kind: HealthCheckConfig.Kind?
        switch m.one(of: ["http", "tcp", "grpc"]) {
        case "tcp":
            kind = m.optional("tcp") { n, p in d.mapping(n, p, keys: []).map { _ in HealthCheckConfig.Kind.tcp } }
        case "http":
            kind = m.optional("http") { n, p -> HealthCheckConfig.Kind? in
                guard let h = d.mapping(n, p, keys: ["path", "expect"]) else { return nil }
                let path = h.required("path", rewrittenPath)
                let expect = h.optional("expect") { d.list($0, $1, ifEmpty: "at least one status") { d.int($0, $1, in: 100...599) } }
                return path.map { .http(path: $0, expect: expect ?? [200]) }
            }
        case "grpc":
            kind = m.optional("grpc") { n, p -> HealthCheckConfig.Kind? in
                guard let g = d.mapping(n, p, keys: ["service"]) else { return nil }
                let service = g.optional("service") { d.value($0, $1, "a service name of printable ASCII (or \"\")") { s in
                    s.utf8.count <= 1_000 && s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F } ? s : nil
                } }
                return .grpc(service: service ?? "")
            }
        default: kind = nil
        }
        var c = HealthCheckConfig(kind: kind ?? .tcp)
        if let v = m.optional("interval", { d.duration($0, $1, positive: true) }) { c.interval = v }
        if let v = m.optional("timeout", { d.duration($0, $1, positive: true) }) { c.timeout = v }
        if let v = m.optional("jitter", percentInt) { c.jitterPercent = v }
        if let v = m.optional("unhealthy_threshold", { d.int($0, $1, in: 1...100) }) { c.unhealthyThreshold = v }
        if let v = m.optional("healthy_threshold", { d.int($0, $1, in: 1...100) }) { c.healthyThreshold = v }
        return kind == nil ? nil : c
    }

    /// A whole percentage 0 ... 100: `50`, `50%`.
    func percentInt(_ n: Node, _ p: String) -> Int? {
        d.value(n, p, #"a whole percentage from 0 to 100 like "50" or "50%""#) { s in
            Int(s.hasSuffix("%") ? String(s.dropLast()) : s).flatMap { (0...100).contains($0) ? $0 : nil }
        }
    }

    /// `retry_budget: { percent: 20, min_concurrency: 3 }`, or `retry_budget: off`.
    func retryBudget(_ n: Node, _ p: String) -> RetryBudget?? {
        if case .scalar = n.value { return d.value(n, p, #"a mapping, or "off""#, { $0 == "off" ? .some(nil) : nil }) }
        guard let m = d.mapping(n, p, keys: ["percent", "min_concurrency"]) else { return nil }
        let percent = m.optional("percent") { d.value($0, $1, "a percentage from 0 to 100", { Double($0).flatMap { (0...100).contains($0) ? $0 : nil } }) }
        let minimum = m.optional("min_concurrency") { d.int($0, $1, in: 0...100_000) }
        return .some(RetryBudget(percent: percent ?? 20, minConcurrency: minimum ?? 3))
    }

    /// A route's `retry:` (docs/config.md).
    func retryPolicy(_ n: Node, _ p: String) -> RetryPolicy? {
        guard let m = d.mapping(n, p, keys: ["attempts", "on", "status_codes", "per_try_timeout", "backoff", "methods",
                                             "hedge_after"])
        else { return nil }
        var r = RetryPolicy()
        if let v = m.optional("attempts", { d.int($0, $1, in: 1...10) }) { r.attempts = v }
        let names = RetryPolicy.Conditions.names
        if let on = m.optional("on", { d.list($0, $1) { n, p in
            d.value(n, p, "one of: " + names.map(\.0).joined(separator: ", ")) { s in names.first { $0.0 == s }?.1 }
        } }) {
            r.on = on.reduce(into: RetryPolicy.Conditions()) { $0.formUnion($1) }
        }
        if let codes = m.optional("status_codes", { d.list($0, $1) { d.int($0, $1, in: 100...599) } }) {
            r.statusCodes = codes
            if !m.has("on") { r.on.insert(.retriableStatusCodes) }
        }
        if let t = m.optional("per_try_timeout", { d.duration($0, $1) }) { r.perTryTimeout = t }
        if let h = m.optional("hedge_after", { d.duration($0, $1) }) { r.hedgeAfter = h }
        if m.has("backoff"), let b = m.optional("backoff", { n, p -> (UInt64, UInt64)? in
            guard let bm = d.mapping(n, p, keys: ["base", "max"]) else { return nil }
            let base = bm.optional("base") { d.duration($0, $1, positive: true) } ?? 25
            let cap = bm.optional("max") { d.duration($0, $1, positive: true) } ?? max(250, base)
            if cap < base { d.fail(bm.line, Fields.join(p, "max"), "must not be below base") }
            return (base, cap)
        }) { r.backoffBase = b.0; r.backoffMax = max(b.1, b.0) }
        if let methods = m.optional("methods", { d.list($0, $1) { d.checked($0, $1) { RouteSyntax.method($0) } } }) {
            r.methods = methods
        }
        return r
    }

    /// A route's `fault:` (docs/config.md): `delay: { fixed, percent }`, `abort: { status | grpc_status,
    /// percent }`, `only_with_header`.
    func faultPolicy(_ n: Node, _ p: String) -> FaultPolicy? {
        guard let m = d.mapping(n, p, keys: ["delay", "abort", "only_with_header"]) else { return nil }
        if !m.has("delay") && !m.has("abort") { d.fail(m.line, p, #"expected "delay", "abort" or both"#) }
        var f = FaultPolicy()
        let percent = { (n: Node, p: String) in
            self.d.value(n, p, "a percentage from 0 to 100", { Double($0).flatMap { (0...100).contains($0) ? $0 : nil } })
        }
        if let dm = m.optional("delay", { d.mapping($0, $1, keys: ["fixed", "percent"]) }) {
            f.delay = dm.required("fixed") { d.duration($0, $1, positive: true) } ?? 0
            f.delayShare = FaultPolicy.share(percent: dm.required("percent", percent) ?? 0)
        }
        if let am = m.optional("abort", { d.mapping($0, $1, keys: ["status", "grpc_status", "percent"]) }) {
            if !am.has("status") && !am.has("grpc_status") {
                d.fail(am.line, Fields.join(p, "abort"), #"expected "status", "grpc_status" or both"#)
            }
            if let s = am.optional("status", { d.int($0, $1, in: 200...599) }) { f.abortStatus = s }
            if let g = am.optional("grpc_status", { d.int($0, $1, in: 1...16) }) { f.abortGRPCStatus = g }
            f.abortShare = FaultPolicy.share(percent: am.required("percent", percent) ?? 0)
        }
        if let h = m.optional("only_with_header", { d.checked($0, $1) { RouteSyntax.headerName($0) } }) {
            f.onlyWithHeader = h.lowercased()
        }
        return f
    }

    /// A route's `rate_limit: { per_second, burst }` (docs/config.md).
    func rateLimitPolicy(_ n: Node, _ p: String) -> RateLimitPolicy? {
        guard let m = d.mapping(n, p, keys: ["per_second", "burst"]) else { return nil }
        let rate = m.required("per_second") { d.int($0, $1, in: 1...1_000_000) }
        let burst = m.optional("burst") { d.int($0, $1, in: 1...1_000_000) }
        guard let rate else { return nil }
        return RateLimitPolicy(perSecond: UInt64(rate), burst: burst.map(UInt64.init))
    }

    /// `http2: { max_concurrent_streams, initial_stream_window, connection_window, max_header_list_size }`.
    func http2Settings(_ n: Node, _ p: String) -> HTTP2Settings? {
        guard let m = d.mapping(n, p, keys: ["max_concurrent_streams", "initial_stream_window", "connection_window",
                                             "max_header_list_size"]) else { return nil }
        var s = HTTP2Settings()
        if let v = m.optional("max_concurrent_streams", { d.int($0, $1, in: 1...10_000) }) { s.maxConcurrentStreams = v }
        if let v = m.optional("initial_stream_window", { d.size($0, $1, in: 65_536...(16 << 20)) }) { s.initialStreamWindow = v }
        if let v = m.optional("connection_window", { d.size($0, $1, in: 65_536...(1 << 30)) }) { s.connectionWindow = v }
        if let v = m.optional("max_header_list_size", { d.size($0, $1, in: 1024...(1 << 20)) }) { s.maxHeaderListSize = v }
        return s
    }

    // MARK: Cross-checks

    /// A valid name not used before among `names`.
    func name(_ n: Node, _ p: String, _ what: String, _ names: inout [String: Int]) -> String? {
        guard let s = d.name(n, p) else { return nil }
        d.unique(s, "\(what) name \"\(s)\"", n, p, in: &names)
        return s
    }

    /// A listener or admin address; two of them may not share a host:port (unless the port is 0).
    func listenAddress(_ n: Node, _ p: String) -> HostPort? {
        guard let a = d.hostPort(n, p, portZero: true) else { return nil }
        if a.port != 0 { d.unique(a, "address \(a)", n, p, in: &addresses) }
        return a
    }

    /// The name of a cluster defined under `clusters`.
    func clusterRef(_ n: Node, _ p: String) -> String? {
        guard let s = d.string(n, p) else { return nil }
        guard clusterNames[s] != nil else {
            let defined = clusterNames.sorted { ($0.value, $0.key) < ($1.value, $1.key) }.map(\.key)
            d.fail(n.line, p, "cluster \"\(s)\" is not defined "
                + (defined.isEmpty ? "(no clusters are defined)" : "(defined: \(defined.joined(separator: ", ")))"))
            return nil
        }
        return s
    }
}
