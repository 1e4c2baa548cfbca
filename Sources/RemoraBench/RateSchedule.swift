import Glibc

/// Monotonic time in ns (CLOCK_MONOTONIC, a vDSO call: no syscall). Latency needs sub-ms
/// resolution, which the loop's cached millisecond clock does not have.
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Open loop: the intended send time of every request of one thread. Pure (time is passed in).
///
/// The run's requests are numbered 0, 1, 2, … across all threads, request `g` is due at
/// `start + g / rate`, and thread `k` of `T` sends the requests with `g ≡ k (mod T)`: the threads'
/// schedules interleave into one evenly spaced stream at the total rate, as one sender would.
/// A send that leaves later than its intended time still has its latency measured from the
/// intended time (coordinated omission corrected, as wrk2 does).
public struct RateSchedule: Sendable {
    /// Intended time of request 0 of the run, ns (monotonic clock).
    public let start: UInt64
    /// ns between two requests of the run (1e9 / total rate).
    public let interval: Double
    /// This thread's index, 0 ..< threads.
    public let phase: UInt64
    /// Threads sharing the run's schedule, ≥ 1.
    public let stride: UInt64
    /// Requests this thread may still schedule (UInt64.max = no limit).
    public private(set) var remaining: UInt64
    /// Requests of this thread scheduled so far.
    public private(set) var taken: UInt64 = 0

    public init(start: UInt64, rate: Double, thread: Int, threads: Int, limit: UInt64 = .max) {
        precondition(rate > 0 && threads > 0 && thread >= 0 && thread < threads)
        self.start = start
        interval = 1e9 / rate
        phase = UInt64(thread)
        stride = UInt64(threads)
        remaining = limit
    }

    /// Intended time of this thread's `j`-th request, ns.
    @inline(__always)
    public func intended(_ j: UInt64) -> UInt64 {
        start &+ UInt64((Double(phase &+ j &* stride) * interval).rounded())
    }

    /// Intended time of the next request to schedule, or nil when the limit is reached.
    @inline(__always)
    public var next: UInt64? { remaining == 0 ? nil : intended(taken) }

    /// The next request's intended time if it is due at `now` (and counts it as taken), else nil.
    @inline(__always)
    public mutating func take(now: UInt64) -> UInt64? {
        guard remaining > 0 else { return nil }
        let t = intended(taken)
        guard t <= now else { return nil }
        taken &+= 1
        if remaining != .max { remaining -= 1 }
        return t
    }

    /// Stops scheduling (end of the run).
    public mutating func stop() { remaining = 0 }

    /// Milliseconds to arm the loop's timer for, when the next request is `deltaNs` away.
    ///
    /// libuv timers have 1 ms resolution and fire late rather than early, so waiting the full
    /// rounded-up delay would make sends up to ~1 ms late. The delay is rounded down after adding
    /// 0.25 ms: below 0.75 ms the loop polls without blocking (0), above it sleeps and wakes at most
    /// ~0.25 ms + the wake-up jitter after the intended time.
    @inline(__always)
    public static func timerDelayMs(deltaNs: Int64) -> UInt64 {
        if deltaNs <= 0 { return 0 }
        return UInt64((deltaNs + 250_000) / 1_000_000)
    }
}

/// A FIFO of UInt64 that grows by doubling and never shrinks during a run (open loop: the intended
/// times of requests waiting for a free connection). Not thread-safe.
public struct UInt64Ring {
    var storage: UnsafeMutablePointer<UInt64>
    var capacity: Int
    var head = 0
    public private(set) var count = 0

    public init(capacity: Int = 1024) {
        self.capacity = max(16, capacity)
        storage = .allocate(capacity: self.capacity)
    }

    public var isEmpty: Bool { count == 0 }

    @inline(__always)
    public var first: UInt64? { count == 0 ? nil : storage[head] }

    @inline(__always)
    public mutating func push(_ v: UInt64) {
        if count == capacity { grow() }
        var i = head + count
        if i >= capacity { i -= capacity }
        storage[i] = v
        count += 1
    }

    @inline(__always)
    public mutating func pop() -> UInt64? {
        guard count > 0 else { return nil }
        let v = storage[head]
        head += 1
        if head == capacity { head = 0 }
        count -= 1
        return v
    }

    public mutating func removeAll() { head = 0; count = 0 }

    mutating func grow() {
        let n = capacity * 2
        let s = UnsafeMutablePointer<UInt64>.allocate(capacity: n)
        for k in 0..<count { s[k] = storage[(head + k) % capacity] }
        storage.deallocate()
        storage = s
        capacity = n
        head = 0
    }

    /// Frees the storage (the owner calls this once).
    public mutating func release() { storage.deallocate(); capacity = 0; count = 0 }
}
