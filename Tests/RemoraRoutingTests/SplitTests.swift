import RemoraCore
import RemoraPolicy
import Testing
@testable import RemoraRouting

@Suite struct SplitTests {
    func split(_ weights: [UInt32], hashOn: HashKey? = nil) throws -> RouteTable {
        try table([forward("s", to: weights.enumerated().map { WeightedBackend(cluster: ["a", "b", "c"][$0.offset], weight: $0.element) },
                           hashOn: hashOn)])
    }

    /// The random word is scaled onto [0, Σw): each backend owns exactly its weight's share of it.
    @Test func pickIsExactOverTheWeightSpace() throws {
        let t = try split([3, 1])
        #expect((0..<4).map { t.pick(0, Req(), random: UInt64($0) << 62) } == [0, 0, 0, 1])
        #expect(t.pick(0, Req(), random: (3 << 62) - 1) == 0)
        #expect(t.pick(0, Req(), random: .max) == 1)
        let drained = try split([0, 5, 0])
        #expect([0, 1 << 63, .max].map { drained.pick(0, Req(), random: $0) } == [1, 1, 1])
    }

    @Test(arguments: [([99, 1], 20_000), ([90, 10], 20_000), ([99, 1], 200_000), ([9_999, 1], 1_000_000), ([2, 0, 1], 30_000)]
          as [([UInt32], Int)])
    func weightedSharesWithinFourSigma(weights: [UInt32], picks: Int) throws {
        let t = try split(weights)
        var rng = FastRandom(seed: UInt64(picks) &* 0x9E37_79B9)
        var counts = [Int](repeating: 0, count: weights.count)
        for _ in 0..<picks { counts[t.pick(0, Req(), random: rng.next())] += 1 }
        let total = Double(weights.reduce(0, +))
        for (i, w) in weights.enumerated() {
            #expect(withinFourSigma(counts[i], n: picks, p: Double(w) / total), "\(weights): \(counts)")
        }
    }

    /// 20,000 users; the same key always lands on the same backend, whatever the random word.
    @Test func stickyKeyIsStable() throws {
        let t = try split([90, 10], hashOn: .header("x-user-id"))
        var rng = FastRandom(seed: 1)
        var canary = 0
        for u in 0..<20_000 {
            let r = Req("/", [("X-User-Id", "user-\(u)")])
            let first = t.pick(0, r, random: rng.next())
            #expect(t.pick(0, r, random: rng.next()) == first)
            canary += first
        }
        #expect(withinFourSigma(canary, n: 20_000, p: 0.1), "\(canary)")
    }

    /// 1 % -> 5 %: exactly the users whose point falls in the range the canary gained move, all
    /// from stable to canary; ~4 % of them. Also when the total changes (99/1 -> 99/5).
    @Test(arguments: [([99, 1], [95, 5], 0.04), ([99, 1], [99, 5], 5.0 / 104 - 0.01), ([95, 5], [99, 1], 0.04)]
          as [([UInt32], [UInt32], Double)])
    func stickyMovesOnlyWhoMust(before: [UInt32], after: [UInt32], share: Double) throws {
        let old = try split(before, hashOn: .header("x-user-id")), new = try split(after, hashOn: .header("x-user-id"))
        let grows = after[1] * (before[0] + before[1]) > before[1] * (after[0] + after[1])
        var moved = 0
        for u in 0..<20_000 {
            let r = Req("/", [("x-user-id", "user-\(u)")])
            let (a, b) = (old.pick(0, r, random: 0), new.pick(0, r, random: 0))
            if a != b {
                moved += 1
                #expect(grows ? (a == 0 && b == 1) : (a == 1 && b == 0))
            }
        }
        #expect(withinFourSigma(moved, n: 20_000, p: share), "moved \(moved)")
    }

    @Test func cookieKeyAndFallbacks() throws {
        let byCookie = try split([50, 50], hashOn: .cookie("uid"))
        let byHeader = try split([50, 50], hashOn: .header("x-uid"))
        for u in 0..<200 {
            let expected = byHeader.pick(0, Req("/", [("x-uid", "u\(u)")]), random: 0)
            for cookie in ["uid=u\(u)", "a=1; uid=u\(u)", "xuid=0;uid=u\(u) ; b=2", "uid=u\(u);"] {
                #expect(byCookie.pick(0, Req("/", [("Cookie", cookie)]), random: 0) == expected, "\(cookie)")
                #expect(byCookie.pick(0, Req("/", [("cookie", cookie)]), random: .max) == expected, "\(cookie)")
            }
            // HTTP/2 may split cookies over several headers.
            #expect(byCookie.pick(0, Req("/", [("cookie", "a=1"), ("cookie", "uid=u\(u)")]), random: 0) == expected)
        }
        // No key, an empty key, another cookie: the random word decides.
        for r in [Req("/"), Req("/", [("x-uid", "")]), Req("/", [("cookie", "uid=")]), Req("/", [("cookie", "xuid=1; uidx=2")])] {
            #expect(byHeader.pick(0, r, random: 0) == 0 && byHeader.pick(0, r, random: .max) == 1)
            #expect(byCookie.pick(0, r, random: 0) == 0 && byCookie.pick(0, r, random: .max) == 1)
        }
    }

    /// The sticky hash is part of the routing contract (changing it moves every user once).
    @Test func stickyHashIsPinned() {
        let h = { (s: String) in Array(s.utf8).withUnsafeBytes { Bytes.stickyHash($0) } }
        #expect(h("") == h(""))
        #expect(Set(["", "a", "b", "ab", "ba", "user-1", "user-2", "12345678", "123456789"].map(h)).count == 9)
        #expect(h("user-1") == 0x474F_6E4C_5C43_95BB, "\(String(h("user-1"), radix: 16))")
        #expect(h("a somewhat longer user identifier") == 0xDF01_FBF8_DB74_8071,
                "\(String(h("a somewhat longer user identifier"), radix: 16))")
    }

    @Test func singleBackendIgnoresEverything() throws {
        let t = try split([7], hashOn: .header("x"))
        #expect([0, .max].map { t.pick(0, Req("/", [("x", "1")]), random: $0) } == [0, 0])
    }
}
