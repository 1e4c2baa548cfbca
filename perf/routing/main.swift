// Route matching micro-benchmark: ns per match on 100-route tables, release build only.
//   swift run -c release RemoraRoutingBench [iterations]
// Prints one markdown table; see perf/routing/README.md for the scenarios.
#if canImport(Glibc)
import Glibc
#endif
import RemoraCore
import RemoraPolicy
import RemoraRouting

let iterations = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 1_000_000 : 1_000_000
/// Only the scenarios whose name contains this (for profiling one of them).
let only = CommandLine.arguments.count > 2 ? CommandLine.arguments[2] : ""

func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The 100 routes of the mixed table: prefix, regex path, header-conditioned, exact, gRPC, method
/// + query, in turn (route i is of kind i % 6).
func mixedRoutes() -> [RouteConfig] {
    (0..<100).map { i -> RouteConfig in
        let match: RouteMatch = switch i % 6 {
        case 0: RouteMatch(path: .prefix("/svc\(i)/"))
        case 1: RouteMatch(path: .regex("/api/v\(i)/users/[0-9]+(/orders)?"))
        case 2: RouteMatch(path: .prefix("/api/"), headers: [FieldMatch(name: "x-tenant", .exact("tenant-\(i)"))])
        case 3: RouteMatch(path: .exact("/exact/\(i)"), methods: ["GET", "HEAD"])
        case 4: RouteMatch(grpc: GRPCMatch(service: "pkg.v1.Svc\(i)"))
        default: RouteMatch(path: .prefix("/search\(i)"), methods: ["GET"], queryParameters: [FieldMatch(name: "q", .present)])
        }
        return RouteConfig(name: "r\(i)", match: match, action: .forward(ForwardAction(
            backends: [WeightedBackend(cluster: "stable", weight: 99), WeightedBackend(cluster: "canary", weight: 1)],
            hashOn: i % 2 == 0 ? .header("x-user-id") : nil)))
    }
}

func prefixRoutes() -> [RouteConfig] {
    (0..<100).map { i in
        RouteConfig(name: "p\(i)", match: RouteMatch(path: .prefix("/svc\(i)/")),
                    action: .forward(ForwardAction(backends: [WeightedBackend(cluster: "stable")])))
    }
}

func compile(_ routes: [RouteConfig]) -> RouteTable {
    let l = ListenerConfig(name: "bench", address: HostPort(host: "127.0.0.1", port: 0),
                           virtualHosts: [VirtualHostConfig(name: "default", routes: routes)])
    return try! RouteTable(l, clusters: ["stable": 0, "canary": 1])
}

/// A browser-like request head: 9 headers.
func withRequest<T>(_ target: String, method: String = "GET", extra: [(String, String)] = [], _ body: (RequestView) -> T) -> T {
    let headers = [("Host", "api.example.com"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/130.0"),
                   ("Accept", "application/json"), ("Accept-Encoding", "gzip, deflate, br"), ("Accept-Language", "en-US,en;q=0.5"),
                   ("X-Request-Id", "6f1c2a9e-3b7d-4e55-9a0e-2c1f7b8d4e61"), ("Cookie", "session=abc123; theme=dark"),
                   ("X-User-Id", "user-48213")] + extra
    var bytes: [UInt8] = [], spans: [Range<Int>] = []
    for s in [method, target, "api.example.com"] + headers.flatMap({ [$0.0, $0.1] }) {
        spans.append(bytes.count..<bytes.count + s.utf8.count)
        bytes += s.utf8
    }
    return bytes.withUnsafeBytes { b in
        let part = { (i: Int) in UnsafeRawBufferPointer(rebasing: b[spans[i]]) }
        let refs = headers.indices.map { HeaderRef(name: part(3 + 2 * $0), value: part(4 + 2 * $0)) }
        return refs.withUnsafeBufferPointer { body(RequestView(method: part(0), target: part(1), authority: part(2), headers: $0)) }
    }
}

/// Median and minimum ns per call of `op` over 7 runs of `iterations` calls.
func measure(_ name: String, _ op: () -> Int) -> (median: Double, min: Double, sink: Int) {
    var sink = 0
    if !name.contains(only) { return (0, 0, 0) }
    for _ in 0..<(iterations / 10) { sink &+= op() }   // warm up (RE2 builds its DFA lazily)
    var runs: [Double] = []
    for _ in 0..<7 {
        let start = now()
        for _ in 0..<iterations { sink &+= op() }
        runs.append(Double(now() - start) / Double(iterations))
    }
    runs.sort()
    return (runs[3], runs[0], sink)
}

var rows: [(String, (median: Double, min: Double, sink: Int))] = []

let mixed = compile(mixedRoutes()), prefix = compile(prefixRoutes())

// 97 % 6 == 1: a regex route near the end; every earlier kind is tried and rejected first.
withRequest("/api/v97/users/12345/orders?page=2") { r in
    precondition(mixed.match(r) == 97)
    rows.append(("mixed, match at route 97 (regex)", measure("mixed, match at route 97 (regex)") { mixed.match(r) ?? -1 }))
}
withRequest("/api/list", extra: [("X-Tenant", "tenant-98")]) { r in
    precondition(mixed.match(r) == 98)
    rows.append(("mixed, match at route 98 (header)", measure("mixed, match at route 98 (header)") { mixed.match(r) ?? -1 }))
}
withRequest("/pkg.v1.Svc94/Get", method: "POST", extra: [("Content-Type", "application/grpc")]) { r in
    precondition(mixed.match(r) == 94)
    rows.append(("mixed, match at route 94 (gRPC)", measure("mixed, match at route 94 (gRPC)") { mixed.match(r) ?? -1 }))
}
withRequest("/nothing/here?x=1") { r in
    precondition(mixed.match(r) == nil)
    rows.append(("mixed, no match (all 100 tried)", measure("mixed, no match (all 100 tried)") { mixed.match(r) ?? -1 }))
}
withRequest("/svc97/items/42") { r in
    precondition(prefix.match(r) == 97)
    rows.append(("prefix-only, match at route 97", measure("prefix-only, match at route 97") { prefix.match(r) ?? -1 }))
}
withRequest("/svc96/x") { r in
    var rng = FastRandom(seed: 1)
    rows.append(("match + sticky pick (x-user-id)", measure("match + sticky pick (x-user-id)") { mixed.pick(route: mixed.match(r)!, request: r, random: rng.next()).slot }))
}

print("| \(iterations) matches × 7 runs | median ns | min ns |")
print("|---|---:|---:|")
for (name, m) in rows { print("| \(name) | \(String(format1(m.median))) | \(String(format1(m.min))) |") }
print("\n(sink \(rows.reduce(0) { $0 &+ $1.1.sink }))")

func format1(_ x: Double) -> String {
    let tenths = Int((x * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}
