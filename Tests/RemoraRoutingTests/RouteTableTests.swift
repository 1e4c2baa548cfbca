import Testing
import RemoraCore
@testable import RemoraRouting

@Suite struct RouteTableTests {
    func table(_ routes: [RouteConfig]) -> RouteTable {
        RouteTable(routes, clusterIndex: { ["a": 0, "b": 1, "c": 2][$0] })
    }

    func match(_ t: RouteTable, _ target: String) -> Int? {
        var bytes = Array(target.utf8)
        return bytes.withUnsafeMutableBytes { t.match(target: UnsafeRawBufferPointer($0)) }
    }

    @Test func firstMatchWinsAndQueryIsIgnored() {
        let t = table([
            RouteConfig(name: "exact", match: RouteMatch(path: .exact("/api")), backends: [.init(cluster: "a")]),
            RouteConfig(name: "api", match: RouteMatch(path: .prefix("/api/")), backends: [.init(cluster: "b")]),
            RouteConfig(name: "rest", match: RouteMatch(path: .prefix("/")), backends: [.init(cluster: "c")]),
        ])
        #expect(match(t, "/api") == 0)
        #expect(match(t, "/api?x=1") == 0)
        #expect(match(t, "/api/v1") == 1)
        #expect(match(t, "/apix") == 2)
        #expect(match(t, "http://host:80/api/x") == 1)
        #expect(match(t, "*") == nil)
    }

    @Test func weightedSplitFollowsWeights() {
        let t = table([RouteConfig(name: "s", backends: [.init(cluster: "a", weight: 99), .init(cluster: "b", weight: 1),
                                                        .init(cluster: "c", weight: 0)])])
        var rng = FastRandom(seed: 42)
        var counts = [0, 0, 0]
        let n = 100_000
        for _ in 0..<n { counts[t.pickCluster(route: 0, random: rng.next())] += 1 }
        #expect(counts[2] == 0)
        // 1 % share: expect 1000, binomial sd ~31.5; allow 4 sd.
        #expect(abs(counts[1] - 1000) < 126)
    }

    @Test func pickIsExactOverTheWeightSpace() {
        let t = table([RouteConfig(name: "s", backends: [.init(cluster: "a", weight: 3), .init(cluster: "b", weight: 1)])])
        #expect((0..<4).map { t.pickCluster(route: 0, random: UInt64($0)) } == [0, 0, 0, 1])
    }
}
