/// When a proxy renews its workload certificate (docs/sidecar.md "Identity from the control
/// server"): at half its lifetime, give or take a jitter so that proxies started together do not
/// all ask at once; after a failed renewal, again after a backoff that grows from `retryBase` to
/// `retryCap` but never waits more than a tenth of the time the certificate has left. Pure: times
/// in milliseconds and the random draw in [0, 1) are given (tests use fixed ones).
public struct RenewalSchedule: Sendable, Equatable {
    /// Share of the lifetime after which to renew. 0.5.
    public var fraction = 0.5
    /// The renewal falls anywhere within ± this share of the lifetime around `fraction`. 0.05.
    public var jitter = 0.05
    /// First retry delay after a failure, ms. 1 s.
    public var retryBase: Int64 = 1_000
    /// Longest retry delay, ms. 30 s.
    public var retryCap: Int64 = 30_000

    public init() {}

    /// When to renew a certificate valid from `notBefore` to `notAfter` (ms).
    public func renewAt(notBefore: Int64, notAfter: Int64, random: Double) -> Int64 {
        let life = Double(max(0, notAfter - notBefore))
        let r = min(max(random, 0), 1)
        let share = min(max(fraction + jitter * (2 * r - 1), 0), 1)
        return notBefore + Int64(life * share)
    }

    /// The wait after the `failures`-th failure in a row (1 = the first): `retryBase` doubling up to
    /// `retryCap`, at most a tenth of what is left until `notAfter` (and at least 200 ms), drawn
    /// from the upper half of that (`random` in [0, 1)).
    public func retryDelay(failures: Int, now: Int64, notAfter: Int64, random: Double) -> Int64 {
        let shift = min(max(failures - 1, 0), 20)
        var d = min(retryCap, retryBase << Int64(shift))
        d = min(d, max(0, notAfter - now) / 10)
        d = max(d, 200)
        let r = min(max(random, 0), 1)
        return d / 2 + Int64(Double(d / 2) * r)
    }
}
