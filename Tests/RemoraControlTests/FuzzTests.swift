import RemoraConfig
import RemoraControl
import RemoraCore
import Testing

/// A small deterministic generator (tests inject randomness).
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Network input and stored documents never crash the parsers: random and mutated inputs either
/// parse or are refused with a ControlError.
@Suite struct FuzzTests {
    @Test func requestTargets() {
        var rng = SplitMix(state: 1)
        let pieces = ["/v1/", "snapshot", "groups", "split", "status", "ack", "nack", "?", "&", "=", "%", "%2", "%zz", "%41",
                      "%FF", "+", "group", "node", "version", "wait", "admin", "route", "force", "web", "1", "99999999999999999999",
                      "[::1]:1", "/", "#", "é", "", " ", "-"]
        let methods = ["GET", "PUT", "POST", "HEAD", "DELETE", ""]
        for _ in 0..<20_000 {
            var t = ""
            for _ in 0..<rng.below(12) { t += pieces[rng.below(pieces.count)] }
            var body: [UInt8] = []
            for _ in 0..<rng.below(16) { body.append(UInt8(truncatingIfNeeded: rng.next())) }
            _ = ControlRequest.parse(method: methods[rng.below(methods.count)], target: t, body: body)
            _ = try? ControlRequest.parseWeights(String(decoding: body, as: UTF8.self))
            _ = decodeField(t)
        }
    }

    @Test func mutatedDocuments() {
        var rng = SplitMix(state: 2)
        let source = Array(realistic.utf8)
        let junk: [UInt8] = Array("{}[],:-&*!|>'\"#\n \t?%@`".utf8) + [0xC3, 0xA9, 0xFF, 0x00]
        var edited = 0
        for _ in 0..<1_000 {
            var doc = source
            for _ in 0..<(1 + rng.below(4)) {
                let at = rng.below(doc.count)
                switch rng.below(3) {
                case 0: doc.remove(at: at)
                case 1: doc.insert(junk[rng.below(junk.count)], at: at)
                default: doc[at] = junk[rng.below(junk.count)]
                }
            }
            let text = String(decoding: doc, as: UTF8.self)
            for route in ["split", "web/split", "api/split", "rest"] {
                guard let out = try? WeightEdit.apply(to: text, route: route, weights: [ClusterWeight("v1", 7)]) else { continue }
                edited += 1
                // Oracle: a valid document stays the same configuration but for the weights.
                if case .success(let before) = ConfigLoader.parse(yaml: text, file: "f") {
                    let after = try? ConfigLoader.parse(yaml: out, file: "f").get()
                    if after != before.settingWeights(route: route, [ClusterWeight("v1", 7)]) {
                        Issue.record("route \(route): the edit changed more than the weights\n--- in\n\(text)\n--- out\n\(out)")
                        return
                    }
                }
            }
            _ = CanaryCounts(stats: text, route: "split", cluster: "v2")
        }
        #expect(edited > 0)
    }
}
