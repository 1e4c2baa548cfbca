import RemoraControl
import Testing

private func parse(_ method: String, _ target: String, _ body: String = "") -> Result<ControlRequest, ControlError> {
    ControlRequest.parse(method: method, target: target, body: Array(body.utf8))
}

private func ok(_ method: String, _ target: String, _ body: String = "") -> ControlRequest? {
    switch parse(method, target, body) {
    case .success(let r): return r
    case .failure(let e):
        Issue.record("\(method) \(target): \(e)")
        return nil
    }
}

private func status(_ method: String, _ target: String, _ body: String = "") -> Int {
    if case .failure(let e) = parse(method, target, body) { return e.status }
    return 0
}

@Suite struct ControlRequestTests {
    @Test func snapshotPolls() {
        #expect(ok("GET", "/v1/snapshot?group=web&node=web-1&version=7&admin=127.0.0.1:9901&wait=10")
                == .snapshot(group: "web", node: "web-1", version: 7, admin: "127.0.0.1:9901", wait: 10))
        // Defaults: version 0, wait 30 s, no admin; order does not matter.
        #expect(ok("GET", "/v1/snapshot?node=n&group=g") == .snapshot(group: "g", node: "n", version: 0, admin: nil, wait: 30))
        #expect(ok("GET", "/v1/snapshot?group=g&node=n&wait=0")
                == .snapshot(group: "g", node: "n", version: 0, admin: nil, wait: 0))
        #expect(ok("GET", "/v1/snapshot?group=g&node=n&admin=%5B::1%5D:9901")
                == .snapshot(group: "g", node: "n", version: 0, admin: "[::1]:9901", wait: 30))
        // Percent-encoding and "+" in values, a fragment, the first of repeated parameters.
        #expect(ok("GET", "/v1/snapshot?group=w%65b&node=pod%3A1&node=other#frag")
                == .snapshot(group: "web", node: "pod:1", version: 0, admin: nil, wait: 30))
        // HEAD is a GET.
        #expect(ok("HEAD", "/v1/snapshot?group=g&node=n") == .snapshot(group: "g", node: "n", version: 0, admin: nil, wait: 30))
    }

    @Test func badQueries() {
        #expect(status("GET", "/v1/snapshot?node=n") == 400)                      // group missing
        #expect(status("GET", "/v1/snapshot?group=g") == 400)                     // node missing
        #expect(status("GET", "/v1/snapshot?group=g&node=") == 400)               // node empty
        #expect(status("GET", "/v1/snapshot?group=g&node=n&version=-1") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n&version=1x") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n&version=99999999999999999999") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n&version=9007199254740993") == 400)   // > 2^53
        #expect(status("GET", "/v1/snapshot?group=g&node=n&wait=3601") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n&wait=1.5") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n&admin=nope") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=n%2") == 400)            // bad escape
        #expect(status("GET", "/v1/snapshot?group=g&node=%FF") == 400)            // not UTF-8
        #expect(status("GET", "/v1/snapshot?group=../etc&node=n") == 400)         // not a group name
        #expect(status("GET", "/v1/snapshot?group=.hidden&node=n") == 400)
        #expect(status("GET", "/v1/snapshot?group=g&node=a%20b") == 400)          // space in a node id
        #expect(status("GET", "/v1/snapshot?group=" + String(repeating: "g", count: 129) + "&node=n") == 400)
    }

    @Test func reports() {
        #expect(ok("POST", "/v1/ack?group=web&node=n1&version=3") == .ack(group: "web", node: "n1", version: 3))
        #expect(ok("POST", "/v1/nack?group=web&node=n1&version=4", "web@4:3: listeners[0]: bad\nsecond")
                == .nack(group: "web", node: "n1", version: 4, reason: "web@4:3: listeners[0]: bad\nsecond"))
        #expect(status("POST", "/v1/ack?group=web&node=n1") == 400)               // version required
        #expect(status("GET", "/v1/ack?group=web&node=n1&version=3") == 405)
    }

    @Test func groups() {
        #expect(ok("PUT", "/v1/groups/web", "listeners: []") == .put(group: "web", document: "listeners: []", force: false))
        #expect(ok("PUT", "/v1/groups/web?force=1", "x") == .put(group: "web", document: "x", force: true))
        #expect(ok("PUT", "/v1/groups/web?force=0", "x") == .put(group: "web", document: "x", force: false))
        #expect(status("PUT", "/v1/groups/web?force=yes", "x") == 400)
        #expect(ok("GET", "/v1/groups/web") == .getGroup("web"))
        #expect(ok("GET", "/v1/groups/web%2Dcanary") == .getGroup("web-canary"))
        #expect(ok("GET", "/v1/groups") == .listGroups)
        #expect(ok("GET", "/v1/status") == .status)
        #expect(status("GET", "/v1/groups/a%2Fb") == 400)                         // "/" in a group name
        #expect(status("DELETE", "/v1/groups/web") == 405)
        #expect(status("POST", "/v1/status") == 405)
        #expect(status("GET", "/v2/status") == 404)
        #expect(status("GET", "/v1/nope") == 404)
        #expect(status("GET", "/") == 404)
    }

    @Test func splits() {
        #expect(ok("POST", "/v1/groups/web/split?route=split", "v1=95 v2=5")
                == .split(group: "web", route: "split", weights: [ClusterWeight("v1", 95), ClusterWeight("v2", 5)]))
        #expect(ok("POST", "/v1/groups/web/split?route=web%2Fsplit", "v1=1,v2=0\n")
                == .split(group: "web", route: "web/split", weights: [ClusterWeight("v1", 1), ClusterWeight("v2", 0)]))
        #expect(status("POST", "/v1/groups/web/split", "v1=1") == 400)                   // no route
        #expect(status("POST", "/v1/groups/web/split?route=a/b/c", "v1=1") == 400)
        #expect(status("POST", "/v1/groups/web/split?route=r", "") == 400)                // no weights
        #expect(status("POST", "/v1/groups/web/split?route=r", "v1") == 400)
        #expect(status("POST", "/v1/groups/web/split?route=r", "v1=-1") == 400)
        #expect(status("POST", "/v1/groups/web/split?route=r", "v1=1000001") == 400)
        #expect(status("POST", "/v1/groups/web/split?route=r", "v1=1 v1=2") == 400)
        #expect(status("POST", "/v1/groups/web/split?route=r", "v 1=1") == 400)
        #expect(status("GET", "/v1/groups/web/split?route=r", "v1=1") == 405)
    }

    @Test func weightErrorsSayWhatIsWrong() {
        #expect(throws: ControlError(400, "v2: expected a weight from 0 to 1000000, got x")) {
            _ = try ControlRequest.parseWeights("v1=1 v2=x")
        }
        #expect(throws: ControlError(400, "expected CLUSTER=WEIGHT, got v3")) { _ = try ControlRequest.parseWeights("v3") }
    }

    @Test func statusFieldsRoundTrip() {
        for s in ["", "-", "plain", "two words", "line one\nline two\ttab", "100% sure", "ünï"] {
            let e = encodeField(s)
            #expect(!e.contains(" ") && !e.contains("\n") && !e.isEmpty)
            #expect(decodeField(e) == s)
        }
        #expect(encodeField("a b") == "a%20b")
        #expect(encodeField("") == "-")
    }
}
