/// Where policies read time: monotonic milliseconds from an arbitrary origin. The proxy passes its
/// event loop's cached time (`EventLoop` conforms in RemoraProxy); tests pass a `ManualClock` and move
/// it by hand, so timing logic is tested without real timers.
public protocol Clock {
    /// Milliseconds since an arbitrary fixed origin; never decreases.
    var nowMillis: UInt64 { get }
}

/// A clock that moves only when told to (tests).
public final class ManualClock: Clock {
    public var nowMillis: UInt64
    public init(_ start: UInt64 = 0) { nowMillis = start }
    /// Moves the clock `ms` milliseconds forward.
    public func advance(_ ms: UInt64) { nowMillis &+= ms }
}
