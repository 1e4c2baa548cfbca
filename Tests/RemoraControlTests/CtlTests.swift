import RemoraConfig
import RemoraControl
import RemoraCore
import Testing

private func parse(_ s: String) throws(CtlUsageError) -> CtlInvocation {
    try CtlInvocation.parse(s.split(separator: " ").map(String.init))
}

private func usageError(_ s: String) -> String? {
    do {
        let r = try parse(s)
        Issue.record("\(s): accepted as \(r)")
        return nil
    } catch {
        return error.message
    }
}

@Suite struct CtlArgumentTests {
    @Test func commands() throws {
        #expect(try parse("status") == CtlInvocation(control: .default, tokenFile: nil, command: .status))
        #expect(try parse("--control http://10.1.2.3:7000/ status").control == ControlURL(host: "10.1.2.3", port: 7000))
        #expect(try parse("status --control=http://[::1]:7000").control == ControlURL(host: "::1", port: 7000))
        #expect(try parse("get web --token-file /t").tokenFile == "/t")
        #expect(try parse("get web").command == .get(group: "web"))
        #expect(try parse("apply web web.yaml").command == .apply(group: "web", file: "web.yaml", force: false))
        #expect(try parse("apply web - --force").command == .apply(group: "web", file: "-", force: true))
        #expect(try parse("apply web -f web.yaml").command == .apply(group: "web", file: "web.yaml", force: false))
        #expect(try parse("split web split v1=95 v2=5").command
                == .split(group: "web", route: "split", weights: [ClusterWeight("v1", 95), ClusterWeight("v2", 5)]))
        #expect(try parse("split web web/split v1=95").command
                == .split(group: "web", route: "web/split", weights: [ClusterWeight("v1", 95)]))
        #expect(try parse("split web split --canary v2 --step 5 --every 30s").command
                == .canary(CanaryOptions(group: "web", route: "split", canary: "v2", step: 5, every: 30_000, max5xxRate: 0.01)))
        #expect(try parse("split web split --canary=v2 --step=10 --every=2m --max-5xx-rate=0.05").command
                == .canary(CanaryOptions(group: "web", route: "split", canary: "v2", step: 10, every: 120_000, max5xxRate: 0.05)))
    }

    @Test func errors() {
        #expect(usageError("") == "name a command: status, get, apply, split or top")
        #expect(usageError("stats") == "unknown command stats (expected status, get, apply, split or top)")
        #expect(usageError("status web") == "status takes no arguments, got web")
        #expect(usageError("get") == "usage: get GROUP")
        #expect(usageError("get a b") == "usage: get GROUP")
        #expect(usageError("get ../x")?.hasPrefix("group: expected a name") == true)
        #expect(usageError("apply web") == "usage: apply GROUP FILE [--force]")
        #expect(usageError("status --force") == "option --force does not apply to status")
        #expect(usageError("status --bogus") == "unknown option --bogus")
        #expect(usageError("status -x") == "unknown option -x")
        #expect(usageError("status --control") == "option --control needs a value")
        #expect(usageError("status --control ftp://x") == "--control: expected http://HOST:PORT, got ftp://x")
        #expect(usageError("status --control http://h:1/path") == "--control: expected http://HOST:PORT, got http://h:1/path")
        #expect(usageError("status --control http://h:1 --control http://h:2") == "option --control given twice")
        #expect(usageError("apply web f --force=1") == "option --force takes no value")
        #expect(usageError("split web")?.hasPrefix("usage: split GROUP ROUTE") == true)
        #expect(usageError("split web r") == "split: give the weights (C1=W C2=W ...) or --canary C --step N --every D")
        #expect(usageError("split web r v1") == "expected CLUSTER=WEIGHT, got v1")
        #expect(usageError("split web r v1=x") == "v1: expected a weight from 0 to 1000000, got x")
        #expect(usageError("split web r v1=1 v1=2") == "v1: given twice")
        #expect(usageError("split web a/b/c v1=1") == "route: expected ROUTE or LISTENER/ROUTE, got \"a/b/c\"")
        #expect(usageError("split web r v1=1 --step 5") == "option --step does not apply to split without --canary")
        #expect(usageError("split web r --canary v2 v1=5 --step 5 --every 1s") == "split --canary takes no weights (the walk sets them), got v1=5")
        #expect(usageError("split web r --canary v2 --every 1s") == "split --canary needs --step N (percentage points per step)")
        #expect(usageError("split web r --canary v2 --step 5") == "split --canary needs --every D (e.g. 30s)")
        #expect(usageError("split web r --canary v2 --step 0 --every 1s") == "--step: expected 1 to 100, got 0")
        #expect(usageError("split web r --canary v2 --step 101 --every 1s") == "--step: expected 1 to 100, got 101")
        #expect(usageError("split web r --canary v2 --step 5 --every soon") == "--every: expected a duration like \"30s\" or \"2m\", got soon")
        #expect(usageError("split web r --canary v2 --step 5 --every 0") == "--every: expected a duration like \"30s\" or \"2m\", got 0")
        #expect(usageError("split web r --canary v2 --step 5 --every 1s --max-5xx-rate 2") == "--max-5xx-rate: expected a number from 0 to 1, got 2")
        #expect(usageError("split web r --canary a/b --step 5 --every 1s") == "--canary: not a cluster name: a/b")
        #expect(usageError("get web --canary v2") == "option --canary does not apply to get")
    }
}

@Suite struct CanaryTests {
    let b = [WeightedBackend(cluster: "v1", weight: 90), WeightedBackend(cluster: "v2", weight: 10)]

    @Test func plan() throws {
        let p = try CanaryPlan(backends: b, canary: "v2", step: 5)
        #expect(p.start == 10)
        #expect(p.targets == Array(stride(from: 15, through: 100, by: 5)))
        #expect(p.weights(percent: 15) == [ClusterWeight("v2", 15), ClusterWeight("v1", 85)])
        #expect(p.weights(percent: 0) == [ClusterWeight("v2", 0), ClusterWeight("v1", 100)])
        #expect(try CanaryPlan(backends: b, canary: "v2", step: 30).targets == [40, 70, 100])
        #expect(try CanaryPlan(backends: b, canary: "v1", step: 30).targets == [100])
        // Several others share the rest in proportion, summing to exactly 100.
        let three = [WeightedBackend(cluster: "a", weight: 2), WeightedBackend(cluster: "b", weight: 1),
                     WeightedBackend(cluster: "c", weight: 0)]
        let p3 = try CanaryPlan(backends: three, canary: "c", step: 7)
        #expect(p3.start == 0)
        #expect(p3.weights(percent: 7) == [ClusterWeight("c", 7), ClusterWeight("a", 62), ClusterWeight("b", 31)])
        for t in p3.targets { #expect(p3.weights(percent: t).reduce(0) { $0 + $1.weight } == 100) }
        // Others all at 0: equal shares.
        let z = try CanaryPlan(backends: [WeightedBackend(cluster: "a", weight: 0), WeightedBackend(cluster: "b", weight: 0),
                                          WeightedBackend(cluster: "c", weight: 5)], canary: "c", step: 50)
        #expect(z.start == 100)
        #expect(z.weights(percent: 0) == [ClusterWeight("c", 0), ClusterWeight("a", 50), ClusterWeight("b", 50)])
        #expect(throws: ControlError.self) { _ = try CanaryPlan(backends: b, canary: "v9", step: 5) }
        #expect(throws: ControlError.self) { _ = try CanaryPlan(backends: [b[0]], canary: "v1", step: 5) }
    }

    @Test func countsFromStats() {
        let stats = """
            listener.web.downstream_rq_total 100
            route.web.split.v2.upstream_rq_total 40
            route.web.split.v2.upstream_rq_5xx 3
            route.web.split.v1.upstream_rq_total 60
            route.web.split.v1.upstream_rq_5xx 9
            route.api.split.v2.upstream_rq_total 10
            route.api.split.v2.upstream_rq_5xx 1
            route.web.other.v2.upstream_rq_total 1000
            cluster.v2.upstream_rq_5xx 77
            """
        #expect(CanaryCounts(stats: stats, route: "split", cluster: "v2") == CanaryCounts(total: 50, errors: 4))
        #expect(CanaryCounts(stats: stats, route: "web/split", cluster: "v2") == CanaryCounts(total: 40, errors: 3))
        #expect(CanaryCounts(total: 50, errors: 4).since(CanaryCounts(total: 40, errors: 3)) == CanaryCounts(total: 10, errors: 1))
        // A restarted proxy: its counters went down, so what it has now is the step's.
        #expect(CanaryCounts(total: 5, errors: 0).since(CanaryCounts(total: 40, errors: 3)) == CanaryCounts(total: 5, errors: 0))
    }
}

/// A control server with one group and `proxies` proxies that ACK every version at once; the canary
/// answers 5xx for `errorsFrom`% and above.
final class FakeMesh: HTTPTransport {
    var document = small
    var version: UInt64 = 1
    var proxies = 2
    var errorsFrom = 101
    var nackAt: UInt64 = 0
    var splits: [String] = []
    var counters: [String: CanaryCounts] = [:]
    var canaryPercent: Int {
        (try? ConfigLoader.parse(yaml: document, file: "web").get())?.backends(ofRoute: "split")?
            .first { $0.cluster == "v2" }.map { Int($0.weight) } ?? 0
    }

    func request(_ method: String, host: String, port: UInt16, target: String,
                 headers: [(name: String, value: String)], body: [UInt8]) throws(ControlError) -> HTTPResult {
        let text = String(decoding: body, as: UTF8.self)
        switch (method, target) {
        case ("GET", "/v1/groups/web"):
            return HTTPResult(status: 200, headers: [("x-remora-version", "\(version)")], text: document)
        case ("POST", "/v1/groups/web/split?route=split"):
            splits.append(text)
            document = try WeightEdit.apply(to: document, route: "split", weights: try ControlRequest.parseWeights(text))
            version += 1
            return HTTPResult(status: 200, headers: [("x-remora-version", "\(version)")], text: "version \(version)\n")
        case ("GET", "/v1/status"):
            let state = version == nackAt ? "NACK web@\(version):1:%20bad" : "ACK -"
            return HTTPResult(status: 200, text: (0..<proxies).map { "n\($0) web \(version) \(state) 0 127.0.0.1:\(9000 + $0)\n" }.joined())
        case ("GET", "/stats"):
            // Each read: 100 more canary requests, 10 of them 5xx when the canary is past the bad share.
            let key = "\(port)"
            var c = counters[key] ?? CanaryCounts()
            c.total += 100
            if canaryPercent >= errorsFrom { c.errors += 10 }
            counters[key] = c
            return HTTPResult(status: 200, text: "route.web.split.v2.upstream_rq_total \(c.total)\nroute.web.split.v2.upstream_rq_5xx \(c.errors)\n")
        default:
            throw ControlError(0, "unexpected \(method) \(target)")
        }
    }
}

@Suite struct CanaryWalkTests {
    func ctl(_ mesh: FakeMesh) -> (Ctl, () -> [String]) {
        let c = Ctl(control: .default, token: nil, transport: mesh)
        final class Lines { var all: [String] = [] }
        let lines = Lines()
        c.out = { lines.all.append($0) }
        c.err = { lines.all.append("E: " + $0) }
        c.sleep = { _ in }
        return (c, { lines.all })
    }

    @Test func walksToOneHundred() {
        let mesh = FakeMesh()
        let (c, lines) = ctl(mesh)
        let opts = CanaryOptions(group: "web", route: "split", canary: "v2", step: 30, every: 1_000, max5xxRate: 0.01)
        #expect(c.run(.canary(opts)) == 0)
        #expect(mesh.splits == ["v2=40 v1=60", "v2=70 v1=30", "v2=100 v1=0"])
        #expect(mesh.canaryPercent == 100)
        #expect(lines().last == "v2 now takes 100% of web/split")
        #expect(lines().contains("  v2: 200 requests, 0 5xx (0.00%) on 2 proxy(ies)"))
    }

    @Test func stopsAndRollsBackOnErrors() {
        let mesh = FakeMesh()
        mesh.errorsFrom = 30
        let (c, lines) = ctl(mesh)
        let opts = CanaryOptions(group: "web", route: "split", canary: "v2", step: 10, every: 1_000, max5xxRate: 0.05)
        #expect(c.run(.canary(opts)) == 1)
        #expect(mesh.splits == ["v2=20 v1=80", "v2=30 v1=70", "v2=0 v1=100"])
        #expect(mesh.canaryPercent == 0)
        #expect(lines().last == "E: canary stopped: v2's 5xx rate over the last step was 10.00% (20 of 200), above 5.00%; v2 set back to 0% (version 4)")
    }

    @Test func stopsOnANack() {
        let mesh = FakeMesh()
        mesh.nackAt = 3
        let (c, lines) = ctl(mesh)
        let opts = CanaryOptions(group: "web", route: "split", canary: "v2", step: 10, every: 1_000, max5xxRate: 0.05)
        #expect(c.run(.canary(opts)) == 1)
        #expect(mesh.canaryPercent == 0)
        #expect(lines().last?.hasPrefix("E: canary stopped: proxy n0 refused version 3: web@3:1: bad") == true)
    }

    @Test func statusTable() {
        final class Status: HTTPTransport {
            func request(_ method: String, host: String, port: UInt16, target: String,
                         headers: [(name: String, value: String)], body: [UInt8]) throws(ControlError) -> HTTPResult {
                #expect(headers.first { $0.name == "authorization" }?.value == "Bearer s3cret")
                return HTTPResult(status: 200, text: """
                    web-1 web 7 ACK - 2 127.0.0.1:9901
                    web-2 web 7 NACK web@7:3:%20listeners[0].address:%20bad%0Asecond%20error 12 [::1]:9902
                    api-1 api 1 PENDING - 0 -

                    """)
            }
        }
        let c = Ctl(control: .default, token: "s3cret", transport: Status())
        var out: [String] = []
        c.out = { out.append($0) }
        #expect(c.run(.status) == 0)
        #expect(out == ["""
            NODE   GROUP  VERSION  STATE    REASON                                        LAST SEEN  ADMIN
            web-1  web    7        ACK      -                                             2s ago     127.0.0.1:9901
            web-2  web    7        NACK     web@7:3: listeners[0].address: bad (+1 more)  12s ago    [::1]:9902
            api-1  api    1        PENDING  -                                             0s ago     -
            """])
    }
}
