import RemoraCore
@testable import RemoraRouting

/// A request as test cases write it.
struct Req: Sendable, CustomStringConvertible {
    var method = "GET"
    var target = "/"
    var authority = "example.com"
    var headers: [Header] = []

    struct Header: Sendable { var name: String; var value: String }

    init(_ target: String = "/", method: String = "GET", authority: String = "example.com", _ headers: [(String, String)] = []) {
        self.target = target; self.method = method; self.authority = authority
        self.headers = headers.map { Header(name: $0.0, value: $0.1) }
    }

    var description: String { "\(method) \(authority)\(target) \(headers.map { "\($0.name): \($0.value)" })" }

    /// Calls `body` with a `RequestView` over this request's bytes.
    func with<T>(_ body: (RequestView) -> T) -> T {
        var bytes: [UInt8] = [], spans: [Range<Int>] = []
        for s in [method, target, authority] + headers.flatMap({ [$0.name, $0.value] }) {
            spans.append(bytes.count..<bytes.count + s.utf8.count)
            bytes += s.utf8
        }
        return bytes.withUnsafeBytes { b in
            let part = { (i: Int) in UnsafeRawBufferPointer(rebasing: b[spans[i]]) }
            let refs = headers.indices.map { HeaderRef(name: part(3 + 2 * $0), value: part(4 + 2 * $0)) }
            return refs.withUnsafeBufferPointer { body(RequestView(method: part(0), target: part(1), authority: part(2), headers: $0)) }
        }
    }
}

let clusterIndex = ["a": 0, "b": 1, "c": 2, "shadow": 3]

func listener(_ hosts: [VirtualHostConfig]) -> ListenerConfig {
    ListenerConfig(name: "web", address: HostPort(host: "127.0.0.1", port: 0), virtualHosts: hosts)
}

/// A table of routes in one catch-all virtual host.
func table(_ routes: [RouteConfig]) throws -> RouteTable {
    try RouteTable(listener([VirtualHostConfig(name: "default", routes: routes)]), clusters: clusterIndex)
}

func forward(_ name: String, _ match: RouteMatch = RouteMatch(), to backends: [WeightedBackend] = [.init(cluster: "a")],
             hashOn: HashKey? = nil, mirror: MirrorPolicy? = nil, rewrite: PathRewrite? = nil) -> RouteConfig {
    RouteConfig(name: name, match: match, action: .forward(ForwardAction(backends: backends, hashOn: hashOn, mirror: mirror)),
                rewrite: rewrite)
}

extension RouteTable {
    func match(_ r: Req) -> Int? { r.with { match($0) } }
    func pick(_ route: Int, _ r: Req, random: UInt64) -> Int { r.with { pick(route: route, request: $0, random: random).cluster } }
}

func string(_ b: ByteBuffer) -> String { String(decoding: b.bytes, as: UTF8.self) }

func string(_ b: UnsafeRawBufferPointer) -> String { String(decoding: b, as: UTF8.self) }

/// |observed - n p| within 4 binomial standard deviations.
func withinFourSigma(_ observed: Int, n: Int, p: Double) -> Bool {
    let sd = (Double(n) * p * (1 - p)).squareRoot()
    return abs(Double(observed) - Double(n) * p) <= 4 * sd
}
